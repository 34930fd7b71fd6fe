"""The arena page in a real headless Chromium (the system package) driven by Playwright.

A person's path: open /arena, send a message, see two anonymous replies, pick
one, send again, pick a tie. Each choice must land in MLflow as a preference
holding both replies and the variants behind A and B, which the page never
showed. Skips with the reason when Playwright or a Chromium binary is missing.
"""

from __future__ import annotations

import os
import shutil

import pytest
import requests

from tests.serve_support import live_server, tiny_serve_config

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright-python is not installed (dev extra)")


def _chromium() -> str:
    for candidate in (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(candidate) if candidate else None
        if path:
            return path
    pytest.skip("no Chromium binary on PATH (apt-get install chromium, or set $CHROMIUM)")


@pytest.fixture(scope="module")
def live(mlflow_store, tiny_policy_dir, tmp_path_factory):
    cfg = tiny_serve_config(tiny_policy_dir, tmp_path_factory.mktemp("arena"), "serve.experiment=arena-test")
    with live_server(cfg) as (url, server):
        yield url, server


@pytest.fixture(scope="module")
def browser():
    exe = _chromium()
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, headless=True, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_blind_side_by_side_choices_are_stored(live, browser):
    from convrl.tracking import traces

    url, server = live
    page = browser.new_page()
    page.goto(url + "/arena")
    assert "convrl arena" in page.title()
    assert page.locator("#pick-a").is_disabled()
    page.fill("#message", "Hi! My name is Ada and I like chess.")
    page.click("#send")
    page.wait_for_selector("#reply-a-1", timeout=60_000)
    page.wait_for_selector("#reply-b-1")
    reply_a, reply_b = page.inner_text("#reply-a-1"), page.inner_text("#reply-b-1")
    html = page.content()
    assert "champion" not in html and "challenger" not in html  # blind
    page.click("#pick-b")
    page.wait_for_function("document.body.dataset.votes === '1'")
    assert "chosen" in page.get_attribute("#reply-b-1", "class")
    page.fill("#message", "What game do I like?")
    page.click("#send")
    page.wait_for_selector("#reply-a-2", timeout=60_000)
    page.click("#pick-tie")
    page.wait_for_function("document.body.dataset.votes === '2'")
    page.close()

    assert server.writer.flush(60)
    prefs = traces.search_preferences("arena-test")
    assert list(prefs.choice) == ["b", "tie"]
    first, second = prefs.iloc[0], prefs.iloc[1]
    assert (first.reply_a, first.reply_b) == (reply_a.strip(), reply_b.strip())
    assert first.chosen == first.reply_b and {first.variant_a, first.variant_b} == {"champion", "challenger"}
    assert first.chosen_variant == first.variant_b and first.session_id == second.session_id
    # The chosen reply continued the conversation for both sides.
    assert first.reply_b in [m["content"] for m in second.prompt_messages]
    assert first.prompt_messages[-1]["content"] == "Hi! My name is Ada and I like chess."
    # Every arena reply is also a served turn.
    turns = traces.search_turns("arena-test")
    assert (turns.source == "arena").sum() == 4


def test_arena_api_rejects_out_of_order_use(live):
    url = live[0]
    arena = "0123456789abcdef"
    r = requests.post(url + "/arena/api/choice", json={"arena_id": arena, "turn": 1, "choice": "a"})
    assert r.status_code == 404 and "send a message first" in r.json()["error"]["message"]
    assert requests.post(url + "/arena/api/turn", json={"arena_id": arena, "message": "hello"}).status_code == 200
    r = requests.post(url + "/arena/api/turn", json={"arena_id": arena, "message": "again"})
    assert r.status_code == 409 and "pick the better reply" in r.json()["error"]["message"]
    r = requests.post(url + "/arena/api/choice", json={"arena_id": arena, "turn": 1, "choice": "both"})
    assert r.status_code == 400
    assert requests.post(url + "/arena/api/choice",
                         json={"arena_id": arena, "turn": 1, "choice": "a"}).json()["recorded"] is True
