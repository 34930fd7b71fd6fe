"""The evaluation report: sections, flagged gaps, escaping, self-contained HTML, files on disk."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from convrl.eval.judges import JudgePanel
from convrl.eval.metrics import analyze
from convrl.eval.report import build_report, write_report
from convrl.eval.selfplay import SelfPlayResult, SelfPlaySettings, selfplay_metrics, simulate, summarize
from tests.test_eval_fixtures import ScriptedGenerator, synthetic_scores


@pytest.fixture(scope="module")
def panel():
    return JudgePanel()


@pytest.fixture(scope="module")
def selfplay(personas, panel):
    st = SelfPlaySettings(conversations=2, turns=10)
    bots = {"candidate": lambda c: "I'm sorry to hear that. My dog Biscuit helps me relax. How are you feeling?",
            "baseline": lambda c: "I don't have a dog. As an AI I cannot feel."}
    frames = []
    for name, reply in bots.items():
        t = simulate(ScriptedGenerator(reply), ScriptedGenerator(lambda c: "Okay. What else?"), personas, st)
        t.insert(0, "model", name)
        frames.append(t)
    tr = pd.concat(frames, ignore_index=True)
    per_turn, per_conv = selfplay_metrics(tr, {p.persona_id: p for p in personas}, panel)
    return SelfPlayResult(tr, per_turn, per_conv, summarize(per_conv))


def _report(personas, panel, selfplay=None, hack=False, **kw):
    scores = synthetic_scores(18, personas=personas, judges=panel, hack=hack)
    a = analyze(scores, n_boot=200, selfplay=selfplay.summary if selfplay else None)
    return build_report(a, "base model tiny-llama (no champion yet)", selfplay=selfplay, **kw)


def test_report_has_every_section(personas, panel, selfplay):
    r = _report(personas, panel, selfplay, no_repeat_ngram_size=4, precision="bf16")
    # The decoding both models were compared under is stated (issue 13: "state which settings").
    assert "greedy bf16 decoding with no repeated 4-token n-gram" in r.html and "4-token n-gram" in r.markdown
    for title in ("At a glance", "Use-case metrics", "Reward heads vs held-out judges",
                  "Reward heads that pull against each other", "Per persona",
                  "Multi-turn self-play", "Sample replies side by side", "All metrics", "How to read this report"):
        assert f"{title}" in r.html and f"## {title}" in r.markdown, title
    for label in ("Engagement rate (%)", "Response relevance (%)", "Personality consistency (%)",
                  "Emotional appropriateness (%)", "Predicted user satisfaction (1-5)", "Multi-turn coherence"):
        assert label in r.html
    assert {"use_case", "reward_vs_judge", "reward_judge_scatter", "per_persona", "selfplay"} <= set(r.figures)
    # The self-play transcript is shown side by side, contradictions marked on the offending turn.
    assert "Conversation 1" in r.html and "class='cols'" in r.html and "msg assistant warn" in r.html
    assert "character break" in r.html
    r.close()


def test_reward_judge_gap_is_flagged_only_when_present(personas, panel):
    hacked = _report(personas, panel, hack=True)
    assert "reward-judge gap" in hacked.html and "class='flag'" in hacked.html and "**FLAG**" in hacked.markdown
    honest = _report(personas, panel)
    assert "no reward-judge gap" in honest.html and "class='flag'" not in honest.html
    hacked.close()
    honest.close()


def test_report_is_self_contained_and_escapes_model_text(personas, panel):
    scores = synthetic_scores(12, personas=personas, judges=panel)
    scores.loc[0, "response"] = "<script>alert('x')</script> & more"
    r = build_report(analyze(scores, n_boot=100), "base <b>model</b>", decision={"outcome": "promote",
                                                                              "reasons": ["composite up"]})
    assert "<script>" not in r.html and "&lt;script&gt;" in r.html and "base &lt;b&gt;model&lt;/b&gt;" in r.html
    assert not re.search(r"(src|href)=['\"]https?://", r.html)          # opens offline, no external assets
    assert r.html.count("data:image/png;base64,") == len(r.figures)
    assert "Decision: <span class='promote'>promote</span>" in r.html
    r.close()


def test_write_report_files(tmp_path, personas, panel, selfplay):
    r = _report(personas, panel, selfplay)
    html_path = write_report(r, tmp_path / "report")
    assert html_path.read_text().startswith("<!doctype html>")
    md = (tmp_path / "report" / "report.md").read_text()
    for name in r.figures:
        assert (tmp_path / "report" / "figures" / f"{name}.png").stat().st_size > 1000
        assert f"(figures/{name}.png)" in md
    r.close()


def test_headline_shows_each_use_case_rate_beside_its_expected_range(personas, panel, selfplay):
    from convrl.eval.metrics import LABELS, TARGETS, target_gap

    assert target_gap("engagement_rate", 29.0) == -41.0 and target_gap("relevance_rate", 85.0) == 0.0
    assert target_gap("satisfaction", 4.7) == pytest.approx(0.2) and target_gap("composite", 0.5) is None
    r = _report(personas, panel, selfplay)
    glance = r.markdown.split("## At a glance")[1].split("##")[0]
    for metric, (lo, hi) in TARGETS.items():
        line = next(x for x in glance.splitlines() if x.startswith(f"- {LABELS[metric]}"))
        assert f"expected {lo:g}-{hi:g}" in line and ("gap" in line or "within the expected range" in line), line
    assert "expected 70-85%" in r.html
    # Self-play's fact recall is a headline figure too, for both models.
    assert "Facts recalled later in self-play" in r.html
    a = analyze(synthetic_scores(18, personas=personas, judges=panel), n_boot=100, selfplay=selfplay.summary)
    assert "engagement_rate_target_gap" in a.headline and "selfplay_fact_recall" in a.headline
    r.close()


def test_headline_shows_replies_cut_at_the_token_budget(personas, panel):
    scores = synthetic_scores(18, personas=personas, judges=panel)
    # The baseline's replies all run into the budget; the candidate ends two in three.
    scores["cut_off"] = [0.0 if (m == "candidate" and i % 3) else 1.0 for i, m in enumerate(scores["model"])]
    a = analyze(scores, n_boot=100)
    assert a.summary["baseline/cut_off"] == 1.0 and a.summary["candidate/cut_off"] == pytest.approx(1 / 3)
    r = build_report(a, "base model tiny-llama")
    glance = r.markdown.split("## At a glance")[1].split("##")[0]
    assert "- Replies cut at the token budget: **33%** (baseline 100%, -67 pp)" in glance
    assert "class='up'>-67 pp" in r.html  # fewer cut replies is better
    r.close()


def _heads_frame(n: int, seed: int, relevance_from_personality: float) -> pd.DataFrame:
    import numpy as np

    rng = np.random.default_rng(seed)
    personality = rng.random(n)
    relevance = relevance_from_personality * personality + (1 - abs(relevance_from_personality)) * rng.random(n)
    return pd.DataFrame({"model": ["baseline"] * n + ["candidate"] * n,
                         "personality": np.r_[personality, rng.random(n)],
                         "relevance": np.r_[relevance, rng.random(n)],
                         "quality": np.r_[rng.random(n), rng.random(n)], "engagement": np.r_[rng.random(n), rng.random(n)]})


def test_head_conflicts_flags_heads_that_pull_against_each_other():
    from convrl.eval.metrics import head_conflicts

    c = head_conflicts(_heads_frame(96, 0, -0.8)).set_index(["head_a", "head_b"])
    assert len(c) == 6 and c["n"].eq(96).all()          # every pair of the four weighted heads, baseline rows only
    pr = c.loc[("personality", "relevance")]
    assert pr["rho"] < -0.5 and pr["lo"] < pr["rho"] < pr["hi"] < 0 and pr["conflict"]
    assert int(c["conflict"].sum()) == 1                 # independent heads are not flagged
    # Positively related heads are not a conflict, and the CI narrows with more replies.
    c2 = head_conflicts(_heads_frame(400, 1, 0.8)).set_index(["head_a", "head_b"]).loc[("personality", "relevance")]
    assert c2["rho"] > 0.5 and not c2["conflict"] and (c2["hi"] - c2["lo"]) < (pr["hi"] - pr["lo"])
    # A constant head (no persona cards) has no correlation and is never flagged.
    flat = _heads_frame(50, 2, -0.8).assign(personality=0.5)
    row = head_conflicts(flat).set_index(["head_a", "head_b"]).loc[("personality", "relevance")]
    assert row["rho"] != row["rho"] and not row["conflict"]


def test_report_shows_conflicting_heads_and_counts_them_in_the_headline(personas, panel):
    import numpy as np

    scores = synthetic_scores(40, personas=personas, judges=panel)
    base = scores["model"] == "baseline"
    # Make the baseline's relevance the mirror image of its personality: the pair RL would trade.
    scores.loc[base, "relevance"] = 1.0 - scores.loc[base, "personality"].to_numpy() + np.linspace(0, 0.01, base.sum())
    a = analyze(scores, n_boot=100)
    assert a.headline["reward_conflicts"] >= 1
    r = build_report(a, "base model tiny-llama")
    assert "Reward heads that pull against each other" in r.html
    assert "conflict: RL can trade one for the other" in r.html
    assert "| personality | relevance |" in r.markdown or "| relevance | personality |" in r.markdown
    r.close()


def _rated_sessions(n: int = 70) -> list[dict]:
    """Whole rated conversations with per-turn satisfaction, as the dialogue judge trains on them."""
    good = [("I'm glad you asked! My dog Biscuit loves long walks. What do you enjoy?", "That's lovely, thanks!", 5.0)]
    bad = [("I don't have a dog. As an AI I cannot feel.", "That makes no sense, you are a bot.", 1.0)]
    out = []
    for i in range(n):
        ok = i % 2 == 0
        msgs = [{"role": "user", "content": f"Hi there, how is your day {i}?"}]
        for bot, user, score in (good if ok else bad) * (2 + i % 3):
            msgs += [{"role": "assistant", "content": bot, "ratings": {"satisfaction": score}},
                     {"role": "user", "content": user}]
        out.append({"id": f"s{i}", "messages": msgs, "persona": ["i have a dog named biscuit."],
                    "score": 4.5 if ok else 1.5, "source": "satisfaction-TEST"})
    return out


def test_selfplay_is_rated_whole_by_the_dialogue_judge(personas, panel, selfplay, tiny_encoder):
    from convrl.eval.selfplay import judge_conversations
    from convrl.rewards.dialogue import train_dialogue_judge

    judge, _ = train_dialogue_judge(tiny_encoder, _rated_sessions())
    rated = judge_conversations(selfplay, judge, tiny_encoder, {p.persona_id: p for p in personas})
    pc = rated.per_conv
    assert len(pc) == len(selfplay.per_conv) and pc["dialogue_judge"].between(0, 1).all()
    assert pc["reaction"].notna().all() and "candidate/dialogue_judge" in rated.summary
    assert "candidate/reaction" in rated.summary and "candidate/coherence" in rated.summary
    # Judging again replaces the columns instead of adding more.
    again = judge_conversations(rated, judge, tiny_encoder, {p.persona_id: p for p in personas})
    assert list(again.per_conv.columns) == list(pc.columns)
    r = _report(personas, panel, rated)
    assert "Dialogue judge: the whole conversation as people rate dialogues (0-1)" in r.html
    assert "Satisfaction read from the simulated user's answers (1-5)" in r.markdown
    r.close()
