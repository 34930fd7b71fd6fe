"""``convrl serve`` end to end on 127.0.0.1 with the official ``openai`` client, over two tiny models."""

from __future__ import annotations

import json
import threading
import time

import pytest
import requests

from tests.serve_support import live_server, tiny_serve_config

openai = pytest.importorskip("openai")


@pytest.fixture(scope="module")
def live(mlflow_store, tiny_policy_dir, tmp_path_factory):
    cfg = tiny_serve_config(tiny_policy_dir, tmp_path_factory.mktemp("serve"))
    with live_server(cfg) as (url, server):
        yield url, server


@pytest.fixture(scope="module")
def client(live):
    return openai.OpenAI(base_url=live[0] + "/v1", api_key="unused-on-loopback", max_retries=0)


def _chat(client, text: str, session: str, **kw):
    return client.chat.completions.with_raw_response.create(
        model="convrl-policy", messages=[{"role": "user", "content": text}], max_tokens=6,
        extra_headers={"X-Session-Id": session}, **kw)


def _traced(server):
    """The served turns in MLflow by completion id, once the writer has flushed."""
    from convrl.tracking import traces

    assert server.writer.flush(60)
    return traces.search_turns("serve-test").set_index("turn_id")


def test_models_and_a_completion(client):
    ids = [m.id for m in client.models.list().data]
    assert ids == ["convrl-policy", "convrl-policy@champion", "convrl-policy@challenger"]
    raw = _chat(client, "Hello, how are you today?", "s-basic")
    resp = raw.parse()
    assert resp.id.startswith("chatcmpl-") and resp.object == "chat.completion"
    assert resp.choices[0].message.role == "assistant" and isinstance(resp.choices[0].message.content, str)
    assert resp.choices[0].finish_reason in ("stop", "length")
    assert 0 < resp.usage.completion_tokens <= 7 and resp.usage.prompt_tokens > 10  # persona prompt included
    assert raw.headers["x-session-id"] == "s-basic"
    assert raw.headers["x-convrl-variant"] in ("champion", "challenger")
    assert resp.model == "convrl-policy@" + raw.headers["x-convrl-variant"]


def test_streaming_matches_usage_and_ends(client):
    stream = client.chat.completions.create(
        model="convrl-policy@champion", messages=[{"role": "user", "content": "Tell me something nice."}],
        max_tokens=8, stream=True, stream_options={"include_usage": True}, temperature=0)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
    assert len({c.id for c in chunks}) == 1
    # Greedy: the same request without streaming gives the same text.
    plain = client.chat.completions.create(
        model="convrl-policy@champion", messages=[{"role": "user", "content": "Tell me something nice."}],
        max_tokens=8, temperature=0)
    assert plain.choices[0].message.content == text.strip()


def test_a_session_stays_on_its_variant_and_both_get_traffic(client):
    seen = {}
    for i in range(12):
        variants = {_chat(client, f"hi {j}", f"route-{i}").headers["x-convrl-variant"] for j in range(2)}
        assert len(variants) == 1, f"session route-{i} moved between variants"
        seen[i] = variants.pop()
    assert set(seen.values()) == {"champion", "challenger"}


def test_concurrent_requests_are_batched(live, client, monkeypatch):
    server = live[1]
    # A decode step of the tiny model takes ~1 ms, less than the requests' HTTP arrival spread on a busy machine:
    # slow it to the tens of ms of a real model, so the 8 requests overlap as they would in production.
    widths = []
    for dec in server.engine.decoders.values():
        def slow(tokens, step=dec.step):
            time.sleep(0.04)
            widths.append(len(tokens))
            return step(tokens)
        monkeypatch.setattr(dec, "step", slow)
    before = server.engine.requests
    errors = []

    def one(i):
        try:
            client.chat.completions.create(model="convrl-policy", messages=[{"role": "user", "content": f"hi {i}"}],
                                           max_tokens=24, extra_headers={"X-Session-Id": f"batch-{i}"})
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert server.engine.requests - before == 8
    assert max(widths) >= 3, f"decode steps never ran more than {max(widths)} rows together"
    health = requests.get(live[0] + "/healthz", timeout=10).json()
    assert health["decoding"] == 0 and health["prefix_tokens_reused"] > 0  # the persona prompt was shared


def test_feedback_lands_on_the_trace_and_history_is_kept(live, client):
    url, server = live
    first = _chat(client, "My name is Ada and I love chess.", "s-feedback").parse()
    # Only the new message: the server keeps the session's history.
    second = _chat(client, "What do I love?", "s-feedback").parse()
    r = requests.post(url + "/v1/feedback", json={"id": second.id, "thumbs": True, "rating": 4, "comment": "ok"})
    assert r.status_code == 202, r.text
    row = _traced(server).loc[second.id]
    assert row.session_id == "s-feedback" and row.thumbs and row.rating == 4
    prompt = [m["content"] for m in row.messages]
    assert "My name is Ada and I love chess." in prompt and first.choices[0].message.content in prompt
    assert prompt[0].startswith("You are ")  # the persona card's system prompt
    assert row.model_version == "base" and row.variant in ("champion", "challenger")
    assert row.latency_s > 0 and row.completion_tokens >= 1


def test_pii_never_reaches_the_journal_or_mlflow(live, client):
    url, server = live
    resp = _chat(client, "write to grace@example.org please", "s-pii").parse()
    assert "grace@example.org" not in server.writer.journal.read_text()
    row = _traced(server).loc[resp.id]
    assert "grace@example.org" not in json.dumps(row.messages) and "[EMAIL]" in json.dumps(row.messages)


def test_a_request_picks_its_sessions_persona(live, client):
    from convrl.data.personas import load_persona

    server = live[1]
    default = server.cfg.serve.persona
    calm, cheerful = load_persona("calm_expert"), load_persona("cheerful_guide")
    assert default not in (calm.persona_id, cheerful.persona_id)
    assert len({calm.system_prompt(), cheerful.system_prompt(), load_persona(default).system_prompt()}) == 3
    picked = _chat(client, "Hello there.", "s-persona", extra_body={"persona": "calm_expert"}).parse()
    kept = _chat(client, "And how are you?", "s-persona").parse()  # names none: the session keeps its card
    switched = _chat(client, "Cheer me up.", "s-persona", extra_body={"persona": "cheerful_guide"}).parse()
    plain = _chat(client, "Hello there.", "s-persona-default").parse()
    turns = _traced(server)
    for resp, card in ((picked, calm), (kept, calm), (switched, cheerful), (plain, load_persona(default))):
        row = turns.loc[resp.id]
        assert row.persona == card.persona_id, (resp.id, row.persona)
        assert row.messages[0]["role"] == "system" and row.messages[0]["content"].startswith(card.system_prompt())
    assert picked.usage.prompt_tokens != plain.usage.prompt_tokens  # the model saw another system prompt


def test_a_long_sessions_context_is_trimmed_to_context_turns(live, client):
    server = live[1]
    keep = server.cfg.serve.context_turns
    first = "My name is Ada. Zanzibar, Zanzibar: I dream of Zanzibar."
    texts = [first] + [f"Question {k}: what should I pack?" for k in range(1, keep // 2 + 2)]
    ids = [_chat(client, text, "s-long").parse().id for text in texts]  # only the new message each time
    turns = _traced(server)
    prompts = [[m for m in turns.loc[i].messages if m["role"] != "system"] for i in ids]
    # Request k (from 0) sees the session's 2k+1 user/assistant messages until the window is full, then
    # the oldest fall out (the window opens on a user message: an odd count, at most context_turns).
    cap = keep if keep % 2 else keep - 1
    assert [len(p) for p in prompts] == [min(2 * k + 1, cap) for k in range(len(texts))]
    last = prompts[-1]
    assert last[-1] == {"role": "user", "content": texts[-1]} and last[0]["role"] == "user"
    assert all(first not in m["content"] for m in last)
    assert prompts[0][0]["content"] == first
    # What fell out is folded into the memory in the system prompt, not simply lost.
    system = turns.loc[ids[-1]].messages[0]["content"]
    assert "earlier topics:" in system and "zanzibar" in system and "name: Ada" in system


@pytest.mark.parametrize("body,status,needle", [
    (b"{not json", 400, "not valid JSON"),
    (json.dumps({"model": "gpt-4", "messages": [{"role": "user", "content": "hi"}]}), 404, "unknown model"),
    (json.dumps({"model": "convrl-policy"}), 400, "messages: required field is missing"),
    (json.dumps({"model": "convrl-policy", "messages": []}), 400, "messages"),
    (json.dumps({"model": "convrl-policy", "messages": [{"role": "wizard", "content": "hi"}]}), 400,
     "allowed roles"),
    (json.dumps({"model": "convrl-policy", "messages": [{"role": "user", "content": "hi"},
                                                        {"role": "assistant", "content": "yo"}]}), 400,
     "last message must be a non-empty user message"),
    (json.dumps({"model": "convrl-policy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9999}),
     400, "over this server's limit"),
    (json.dumps({"model": "convrl-policy", "messages": [{"role": "user", "content": "hi"}], "persona": "../x"}),
     400, "unknown persona"),
    (json.dumps({"model": "convrl-policy", "messages": [{"role": "user", "content": "x" * 20000}]}), 413,
     "too large"),
])
def test_bad_requests_get_clear_4xx(live, body, status, needle):
    url = live[0]
    r = requests.post(url + "/v1/chat/completions", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert requests.get(url + "/healthz").json()["status"] == "ok"


def test_chunked_huge_body_is_refused(live):
    def body():
        for _ in range(20):
            yield b"x" * 1000

    r = requests.post(live[0] + "/v1/chat/completions", data=body(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413


def test_bad_feedback(live, client):
    url = live[0]
    ok = _chat(client, "hello", "s-badfb").parse()
    cases = [({"id": "chatcmpl-nope", "thumbs": True}, 404), ({"id": ok.id, "rating": 9}, 400),
             ({"id": ok.id, "thumbs": "yes"}, 400), ({"id": ok.id}, 400), ({"thumbs": True}, 400)]
    for payload, status in cases:
        r = requests.post(url + "/v1/feedback", json=payload)
        assert r.status_code == status, (payload, r.text)
        assert r.json()["error"]["message"]


def test_api_key_when_set(live):
    url, server = live
    server.api_key = "s3cret"
    try:
        assert requests.get(url + "/v1/models").status_code == 401
        assert requests.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert requests.get(url + "/v1/models", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert requests.get(url + "/healthz").status_code == 200
    finally:
        server.api_key = ""


def test_binding_beyond_loopback_needs_a_key(tiny_policy_dir, tmp_path):
    from convrl.serving.server import Server
    from convrl.serving.variants import ServeError, resolve_variants

    cfg = tiny_serve_config(tiny_policy_dir, tmp_path, "serve.host=0.0.0.0")
    assert cfg.serve.host == "0.0.0.0"
    with pytest.raises(ServeError, match="API key"):
        Server(cfg, resolve_variants(cfg.serve, cfg.registry.model_name), api_key="")
    from convrl.config import load_config

    assert load_config("tiny").serve.host == "127.0.0.1"


def test_routing_is_stable_and_follows_the_fraction():
    from convrl.serving.sessions import route

    ids = [f"user-{i}" for i in range(4000)]
    share = sum(route(s, 0.2, True) == "challenger" for s in ids) / len(ids)
    assert 0.17 < share < 0.23
    assert all(route(s, 0.2, True) == route(s, 0.2, True) for s in ids[:100])
    assert {route(s, 0.2, False) for s in ids} == {"champion"}


def test_row_sampler_draws_from_each_rows_distribution():
    import torch

    from convrl.serving.batching import RowSampler

    logits = torch.randn(3, 40, generator=torch.Generator().manual_seed(0)) * 2
    sampler = RowSampler([1.0, 0.0, 0.5], [1.0, 1.0, 0.6], seed=3)
    counts = torch.zeros(3, 40)
    for _ in range(6000):
        out = sampler(None, logits.clone())
        assert bool((out.isfinite().sum(-1) == 1).all())  # exactly one token left per row
        counts[torch.arange(3), out.argmax(-1)] += 1
    freq = counts / counts.sum(-1, keepdim=True)
    assert (freq[0] - torch.softmax(logits[0], -1)).abs().max() < 0.03  # plain sampling at temperature 1
    assert freq[1, logits[1].argmax()] == 1.0  # temperature 0 = greedy
    p = torch.softmax(logits[2] / 0.5, -1)
    sp, order = p.sort(descending=True)
    nucleus = set(order[(sp.cumsum(0) - sp) < 0.6].tolist())
    assert set(freq[2].nonzero().flatten().tolist()) <= nucleus  # nothing outside top-p
