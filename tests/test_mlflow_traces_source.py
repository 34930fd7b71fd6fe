"""The ``mlflow-traces:`` source: served sessions with feedback and arena choices -> canonical schema -> DPO pairs."""

from __future__ import annotations

import time

import pandas as pd
import pytest

import convrl.tracking.trace_source  # noqa: F401 - the MLflow reader behind mlflow-traces:

from convrl.data.ingest import IngestError, ingest
from convrl.data.preferences import preference_pairs
from convrl.data.sources.mlflow_traces import arena_conversations, parse_time, session_conversations

EXP = "convrl-serving-test"


def _turn(session, t, messages, reply, rating=None, thumbs=None, persona="empathetic_coach"):
    return {"trace_id": f"tr-{session}-{t}", "session_id": session, "timestamp": pd.Timestamp(t, unit="s", tz="UTC"),
            "variant": "champion", "model_version": "1", "persona": persona, "messages": messages, "reply": reply,
            "thumbs": thumbs, "rating": rating}


def test_session_becomes_one_conversation_with_feedback_on_its_reply():
    sys = {"role": "system", "content": "You are Sam. Memory: earlier the user said hi."}
    turns = pd.DataFrame([
        _turn("s1", 1, [sys, {"role": "user", "content": "I failed my exam."}], "I'm sorry. What happened?",
              rating=4),
        # The second request's history holds the first reply as the client saw it, plus the new message.
        _turn("s1", 2, [sys, {"role": "user", "content": "I failed my exam."},
                        {"role": "assistant", "content": "I'm sorry. What happened?"},
                        {"role": "user", "content": "I did not sleep."}], "That sounds exhausting.", thumbs=True),
        # Later turns may see a shortened history (older turns summarised into memory): only the new part counts.
        _turn("s1", 3, [sys, {"role": "assistant", "content": "That sounds exhausting."},
                        {"role": "user", "content": "Any tips?"}, {"role": "tool", "content": "{}"}], "Sleep first."),
        _turn("s2", 1, [{"role": "user", "content": "hello"}], "Hi!", thumbs=False, persona="calm_expert"),
    ])
    convs = {c.conversation_id: c for c in session_conversations(turns)}
    assert set(convs) == {"mlflow-s1", "mlflow-s2"}
    s1 = convs["mlflow-s1"]
    assert [(t["role"], t["text"]) for t in s1.turns] == [
        ("user", "I failed my exam."), ("assistant", "I'm sorry. What happened?"), ("user", "I did not sleep."),
        ("assistant", "That sounds exhausting."), ("user", "Any tips?"), ("assistant", "Sleep first.")]
    assert s1.turns[1]["feedback_rating"] == 4 and s1.turns[1]["feedback_thumb"] is None
    assert s1.turns[3]["feedback_thumb"] == 1.0 and s1.turns[5]["feedback_rating"] is None
    assert s1.persona_id == "empathetic_coach" and convs["mlflow-s2"].persona_id == "calm_expert"
    assert convs["mlflow-s2"].turns[1]["feedback_thumb"] == 0.0
    assert s1.split in ("train", "validation", "test")


def test_arena_choices_become_chosen_and_rejected_halves():
    prefs = pd.DataFrame([
        {"trace_id": "p1", "prompt_messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "hi"}],
         "chosen": "Hello! How are you?", "rejected": "no", "persona": "cheerful_guide"},
        {"trace_id": "p2", "prompt_messages": [{"role": "user", "content": "hi"}], "chosen": "", "rejected": ""},
    ])
    out = list(arena_conversations(prefs))
    convs = [c for c in out if hasattr(c, "turns")]
    assert [c.conversation_id for c in convs] == ["arena-p1-chosen", "arena-p1-rejected"]
    assert [c.turns[1]["feedback_thumb"] for c in convs] == [1.0, 0.0]
    assert all(c.split == "train" and c.turns[0] == {"role": "user", "text": "hi"} for c in convs)
    assert out[-1].reason.startswith("arena choice without two replies")


def test_parse_time():
    now = pd.Timestamp("2026-11-20T12:00:00Z")
    assert parse_time("7d", "s", now) == pd.Timestamp("2026-11-13T12:00:00Z")
    assert parse_time("90m", "s", now) == pd.Timestamp("2026-11-20T10:30:00Z")
    assert parse_time("2026-11-01", "s") == pd.Timestamp("2026-11-01T00:00:00Z")
    assert parse_time(None, "s") is None
    with pytest.raises(IngestError, match="relative time"):
        parse_time("last week", "s")


@pytest.fixture(scope="module")
def served_store(mlflow_store):
    """Real traces in a SQLite store, written through the serving API."""
    from convrl.tracking import traces

    coach = [{"role": "system", "content": "You are Sam, a warm coach."}]
    start = time.time() - 3600
    for s in range(4):
        msgs = coach + [{"role": "user", "content": f"I am worried about exam number {s}."}]
        for k, reply in enumerate(["That sounds stressful. What worries you most?",
                                   "Let's plan it step by step; which topic first?"]):
            tid = traces.log_turn(EXP, session_id=f"sess-{s}", variant="champion" if s % 2 else "challenger",
                                  model_name="convrl-policy", model_version="1" if s % 2 else "2",
                                  persona="empathetic_coach", messages=msgs, reply=reply, latency_s=0.3,
                                  prompt_tokens=20, completion_tokens=9, timestamp=start + 60 * s + k)
            if k == 0:
                traces.log_feedback(tid, rating=5 if s % 2 else 2)
            msgs = msgs + [{"role": "assistant", "content": reply},
                           {"role": "user", "content": f"Mostly topic {k} (mail me at a{s}@example.com)"}]
    for i, (a, b, choice) in enumerate([("Sure! Which part feels hardest?", "ok", "a"),
                                        ("No.", "Happy to help: what is the deadline?", "b"),
                                        ("Fine.", "Also fine.", "tie")]):
        traces.log_preference(EXP, session_id=f"arena-{i}", prompt_messages=coach + [
            {"role": "user", "content": f"Can you help me revise, question {i}?"}], reply_a=a, reply_b=b,
            variant_a="challenger", variant_b="champion", choice=choice, persona="empathetic_coach",
            timestamp=start + 1000 + i)
    return EXP


def test_ingest_reads_served_traces_and_arena_pairs(served_store):
    res = ingest([f"mlflow-traces:{served_store}?split=source"], quarantine_threshold=0.0)
    t = res.turns
    sessions = t[t["conversation_id"].str.startswith("mlflow-")]
    assert sessions["conversation_id"].nunique() == 4
    first = sessions[sessions["role"] == "assistant"].groupby("conversation_id").head(1)
    assert sorted(first["feedback_rating"].tolist()) == [2.0, 2.0, 5.0, 5.0]
    assert "[EMAIL]" in " ".join(sessions["text"]) and "@example.com" not in " ".join(t["text"])
    assert set(sessions["persona_id"]) == {"empathetic_coach"}
    assert res.stats["skipped"] == {"arena choice without two replies (tie or skipped)": 1}
    pairs = preference_pairs(t, context_turns=1, min_margin=1.0, split="train")
    arena = sorted((p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs)
    assert ("Happy to help: what is the deadline?", "No.") in arena
    assert ("Sure! Which part feels hardest?", "ok") in arena


def test_since_and_variant_filters_and_errors(served_store):
    with pytest.raises(IngestError, match="no (usable )?conversations"):  # nothing served in the last minute
        ingest([f"mlflow-traces:{served_store}?since=1m&arena=0"])
    champ = ingest([f"mlflow-traces:{served_store}?variant=champion&arena=0"]).turns
    assert champ["conversation_id"].nunique() == 2
    rated = ingest([f"mlflow-traces:{served_store}?feedback=only&arena=0"]).turns
    assert rated["conversation_id"].nunique() == 4
    with pytest.raises(IngestError, match="unknown option"):
        ingest([f"mlflow-traces:{served_store}?sinse=7d"])
    with pytest.raises(IngestError, match="name the MLflow experiment"):
        ingest(["mlflow-traces:"])
    with pytest.raises(IngestError, match="must be before"):
        ingest([f"mlflow-traces:{served_store}?since=1d&until=2d"])


@pytest.mark.slow
def test_dpo_trains_on_arena_choices_read_back_from_mlflow(mlflow_store, tiny_policy_dir, tmp_path):
    """Arena choices -> ``mlflow-traces:`` ingest -> preference pairs -> TRL's DPOTrainer, with no reward model."""
    import json
    from pathlib import Path

    from convrl.config import Config, RLConfig
    from convrl.config.rl import DPOSection
    from convrl.rl.dpo import MIN_RATED_PAIRS, train_dpo
    from convrl.tracking import traces

    exp, start = "convrl-arena-dpo-test", time.time() - 600
    topics = ["hiking", "baking bread", "chess", "painting", "a job interview", "moving house", "my sister's wedding",
              "learning Spanish", "a marathon", "gardening", "a road trip", "my exam", "adopting a cat", "a concert",
              "fixing my bike", "a camping trip", "writing a novel", "a birthday party"]
    assert len(topics) >= MIN_RATED_PAIRS + 2
    choices = {}
    for i, topic in enumerate(topics):  # distinct texts: ingest would drop near-duplicate conversations
        user, good, bad = (f"I keep thinking about {topic}.", f"Oh, {topic}! What draws you to it most?",
                           f"{'Meh' if i % 2 else 'Whatever'}, {topic} sounds dull to me.")
        choice = "a" if i % 2 else "b"  # the preferred reply sits on either side
        a, b = (good, bad) if choice == "a" else (bad, good)
        traces.log_preference(exp, session_id=f"arena-{i}", prompt_messages=[{"role": "user", "content": user}],
                              reply_a=a, reply_b=b, variant_a="challenger", variant_b="champion", choice=choice,
                              persona="empathetic_coach", timestamp=start + i)
        choices[user] = (good, bad)
    # Ingest's own split keeps each pair's halves together: every choice is a pair in some split.
    split_by_ingest = ingest([f"mlflow-traces:{exp}"], quarantine_threshold=0.0).turns
    assert sum(len(preference_pairs(split_by_ingest, context_turns=1, split=s))
               for s in ("train", "validation", "test")) == len(topics)
    # Retraining on arena choices keeps them all in train (split=source), as the scheduled pipeline does.
    turns = ingest([f"mlflow-traces:{exp}?split=source"], quarantine_threshold=0.0).turns
    cfg = Config(rl=RLConfig(algorithm="dpo", max_steps=2, prompts_per_step=2, save_steps=2, precision="fp32",
                             dpo=DPOSection(candidates=2)))
    # scorer=None: with enough human choices DPO needs no reward model (a fallback to ranking would fail here).
    res = train_dpo(cfg, tiny_policy_dir, [], None, tmp_path, turns=turns)
    assert res.steps == 2 and res.history[0]["dpo/rated"] == 1.0
    pairs = pd.read_json(tmp_path / "preference_pairs.jsonl", lines=True)
    assert len(pairs) == len(topics)  # each one as the person chose
    for _, p in pairs.iterrows():
        assert (p["chosen"][0]["content"], p["rejected"][0]["content"]) == choices[p["prompt"][-1]["content"]]
    assert json.loads((Path(res.policy_dir) / "convrl_training.json").read_text())["algorithm"] == "dpo"
