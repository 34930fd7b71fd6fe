"""Multi-turn self-play: the conversation loop (scripted generators) and its coherence metrics."""

from __future__ import annotations

import pandas as pd
import pytest

from convrl.eval.judges import JudgePanel
from convrl.data.usersim import GREETING, USER_PROFILES
from convrl.eval.selfplay import SelfPlaySettings, run_selfplay, selfplay_metrics, simulate, summarize, window
from tests.test_eval_fixtures import ScriptedGenerator


@pytest.fixture(scope="module")
def panel():
    return JudgePanel()


def _echo(conv):
    return f"I love hiking with my dog Biscuit. Tell me more about {conv[-1]['content'].rstrip('?.!')}?"


def _user(conv):
    return "Hmm, I guess. What else should I do?"


def test_window_keeps_the_last_k_messages_and_starts_on_a_user_turn():
    h = [{"role": r, "content": str(i)} for i, r in enumerate(["user", "assistant"] * 4)]
    w = window(h, 3)
    assert [m["content"] for m in w] == ["6", "7"]
    assert window(h, 4)[0]["content"] == "4" and len(window(h, 4)) == 4
    assert window(h, 100) == h


def test_simulate_runs_n_turns_with_a_scripted_topic_change(personas):
    st = SelfPlaySettings(conversations=2, turns=10, context_turns=4, recall_probes=False)
    policy, user = ScriptedGenerator(_echo), ScriptedGenerator(_user)
    tr = simulate(policy, user, personas, st)
    for c in (0, 1):
        conv = tr[tr["conversation"] == c]
        assert (conv["role"] == "assistant").sum() == 10 and (conv["role"] == "user").sum() == 10
        assert conv["role"].tolist() == ["user", "assistant"] * 10
        assert conv["text"].iloc[0] == USER_PROFILES[c].opener
        pivot = conv[(conv["role"] == "user") & conv["scripted"] & (conv["turn"] > 0)]
        assert pivot["turn"].tolist() == [5] and pivot["text"].iloc[0] == USER_PROFILES[c].pivot
    assert tr["persona_id"].unique().tolist() == [personas[0].persona_id, personas[1].persona_id]
    # The context window: system prompt + at most K messages (+ a greeting for the simulator), user turn first.
    for view in (v for call in policy.calls for v in call):
        assert view[0]["role"] == "system" and view[1]["role"] == "user" and len(view) <= 1 + 4
    for view in (v for call in user.calls for v in call):
        assert view[0]["role"] == "system" and view[1]["role"] == "user" and len(view) <= 2 + 4
    # The simulator sees the conversation from the user's side: its own lines are "assistant".
    first = user.calls[0][0]
    assert [m["role"] for m in first] == ["system", "user", "assistant", "user"]
    assert first[1]["content"] == GREETING and first[2]["content"] == USER_PROFILES[0].opener
    assert first[3]["content"].startswith("I love hiking")  # the policy's first reply
    assert len(policy.calls) == 10 and len(user.calls) == 8  # no simulator call after the last turn or at the pivot


def test_recall_probes_ask_for_facts_after_they_left_the_window(personas, panel):
    """Facts stated early reach the assistant only through the context manager's memory line."""
    from convrl.eval.recall import FACTS

    def from_memory(conv):
        # A bot that answers from the memory line in its system prompt, and one that cannot remember.
        return conv[0]["content"].split("about the user:")[-1] if "about the user:" in conv[0]["content"] else "Hm."

    st = SelfPlaySettings(conversations=1, turns=10, context_turns=4)
    frames = []
    for name, bot in {"remembers": from_memory, "forgets": lambda c: "I'm not sure, tell me again?"}.items():
        policy = ScriptedGenerator(bot)
        t = simulate(policy, ScriptedGenerator(_user), personas, st)
        t.insert(0, "model", name)
        frames.append(t)
    tr = pd.concat(frames, ignore_index=True)
    conv = tr[tr["model"] == "remembers"]
    facts = FACTS[USER_PROFILES[0].user_id]
    users = conv[conv["role"] == "user"]["text"].tolist()
    assert users[1:4] == [f.statement for f in facts] and users[7:10] == [f.probe for f in facts]
    assert (conv[conv["role"] == "user"]["recall_probe"] != "").sum() == 3
    # When the first probe is answered, its statement is out of the verbatim window but in the memory line.
    view = policy.calls[7][0]
    assert all(facts[0].statement not in m["content"] for m in view[1:]) and "name: Jamie" in view[0]["content"]
    _, per_conv = selfplay_metrics(tr, {p.persona_id: p for p in personas}, panel)
    pc = per_conv.set_index("model")
    assert pc.loc["remembers", "fact_recall"] == 1.0 and pc.loc["forgets", "fact_recall"] == 0.0
    assert "remembers/fact_recall" in summarize(per_conv)


def _transcripts(personas, bots: dict) -> pd.DataFrame:
    st = SelfPlaySettings(conversations=1, turns=10, context_turns=6, recall_probes=False)
    frames = []
    for name, reply in bots.items():
        t = simulate(ScriptedGenerator(reply), ScriptedGenerator(_user), personas, st)
        t.insert(0, "model", name)
        frames.append(t)
    return pd.concat(frames, ignore_index=True)


def test_selfplay_metrics_known_answers(personas, panel):
    bots = {"contradicting": lambda c: "I don't have a dog. As an AI I cannot feel anything.",
            "echo": lambda c: f"I'm sorry. My dog Biscuit says: {c[-1]['content']}",
            "empty": lambda c: ""}
    tr = _transcripts(personas, bots)
    per_turn, per_conv = selfplay_metrics(tr, {p.persona_id: p for p in personas}, panel)
    pc = per_conv.set_index("model")
    assert len(per_turn) == 30 and (per_conv["turns"] == 10).all()
    assert pc.loc["contradicting", "contradiction_rate"] == 1.0
    assert pc.loc["contradicting", "persona_consistency"] == 0.0
    assert pc.loc["contradicting", "self_repetition"] == 1.0        # the same line every turn
    assert pc.loc["echo", "contradiction_rate"] == 0.0
    assert pc.loc["echo", "pivot_followed"] == 1.0                  # it repeats the new topic back
    assert pc.loc["echo", "user_following"] > pc.loc["contradicting", "user_following"]
    assert pc.loc["echo", "coherence"] > pc.loc["contradicting", "coherence"]
    assert pc.loc["empty", "coherence"] == 0.0 and pc.loc["empty", "degenerate_rate"] == 1.0
    assert pc.loc["empty", "unprompted_shift_rate"] == 0.0          # silence is a failure, not a topic change
    s = summarize(per_conv)
    assert s["echo/turns"] == 10.0 and "contradicting/coherence" in s


def test_selfplay_with_the_tiny_random_model(personas, panel, tiny_policy_dir, tiny_encoder, one_thread):
    from convrl.eval.selfplay import evaluate_selfplay

    st = SelfPlaySettings(conversations=1, turns=10, max_new_tokens=4, context_turns=4)
    result = evaluate_selfplay({"candidate": tiny_policy_dir, "baseline": tiny_policy_dir}, tiny_policy_dir,
                               personas, st, panel, encoder=tiny_encoder)
    assert len(result.transcripts) == 2 * 20
    assert (result.per_conv["turns"] == 10).all()
    # Same model, same seeds: both sides of the comparison produce the same conversation.
    a, b = (result.transcripts[result.transcripts["model"] == m]["text"].tolist() for m in ("candidate", "baseline"))
    assert a == b
    assert result.per_conv["persona_embed_sim"].notna().all()
    assert result.summary["candidate/conversations"] == 1.0


def test_run_selfplay_reuses_the_user_model_for_the_base_policy(monkeypatch, personas):
    loaded = []

    class FakeGen(ScriptedGenerator):
        def __init__(self, d, dtype):
            loaded.append((d, dtype))
            super().__init__(_echo)

    monkeypatch.setattr("convrl.rl.generation.Generator", FakeGen)
    tr = run_selfplay({"candidate": "cand", "baseline": "base"}, "base", personas[:1],
                      SelfPlaySettings(conversations=1, turns=2, precision="bf16"))
    # Both sides load once, in the evaluation's precision.
    assert loaded == [("base", "bf16"), ("cand", "bf16")] and set(tr["model"]) == {"candidate", "baseline"}


def test_selfplay_assistant_turns_decode_with_the_ban_and_user_turns_without(personas):
    class Recording:
        def __init__(self):
            self.kwargs = []

        def generate(self, conversations, **kwargs):
            self.kwargs.append(kwargs)
            return ["Fine, thanks." for _ in conversations]

    policy, user = Recording(), Recording()
    simulate(policy, user, personas, SelfPlaySettings(conversations=1, turns=3, recall_probes=False,
                                                      no_repeat_ngram_size=4))
    assert [k["no_repeat_ngram_size"] for k in policy.kwargs] == [4, 4, 4] and not policy.kwargs[0]["do_sample"]
    assert user.kwargs and all("no_repeat_ngram_size" not in k for k in user.kwargs)
