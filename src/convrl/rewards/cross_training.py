"""Training data for the cross-encoder heads: human ratings where they exist, true-vs-negative replies elsewhere.

Each example is ``{first, response, labels: {task: target in [0, 1]}, group}``
(``first`` = persona + context, see ``cross_encoder.pair_text``); ``group`` is
the dialogue, used for the dev split (``human_data.held_out``). Sources:

* rated dialogues (ConvAI2 human evaluation, user satisfaction): every rated
  assistant turn on the *training side* of the same dialogue split meta-eval
  holds out. ConvAI2's per-message thumb labels ``quality``; the human's 1-5
  dialogue score (rescaled) labels ``engagement`` on every bot turn, as does a
  turn's satisfaction; a random reply from another dialogue gets 0 on
  ``relevance`` and ``quality``;
* next-utterance pairs (DailyDialog *train* split only, PersonaChat): the true
  reply 1, a random reply from another dialogue 0, another reply of the same
  dialogue 0 (the hard negative) on ``relevance``;
* persona pairs (PersonaChat): the speaker's own turn 1, the partner's turn
  (same dialogue, other persona) 0 on ``personality``.

Predictive Engagement and HolisticEval (DailyDialog *test* queries) and
HH-RLHF / ToxiChat are never used here: they stay held-out evaluation sets::

    train, dev, counts = cross_examples(rc, seed=13)   # rc: RewardsConfig (which folders, how many)
"""

from __future__ import annotations

import random

from convrl.rewards.cross_encoder import pair_text
from convrl.rewards.heads import recent_context
from convrl.rewards.human_data import held_out


def _ctx_text(messages: list[dict]) -> str:
    return recent_context(messages, budget=400)


def rated_examples(dialogues: list[dict], rng: random.Random, max_items: int, seed: int = 13) -> list[dict]:
    """Training-side rated turns of ConvAI2 / satisfaction dialogues (``human_data`` dialogue records)."""
    pool = [m["content"] for d in dialogues for m in d["messages"] if m["role"] == "assistant"]
    out = []
    for d in dialogues:
        if held_out(d["id"], 0.3, seed):
            continue  # meta-eval's held-out dialogues never train
        card = " ".join(d.get("persona") or [])
        msgs = d["messages"]
        for i, m in enumerate(msgs):
            r = m.get("ratings") or {}
            if m["role"] != "assistant" or not r or not any(x["role"] == "user" for x in msgs[:i]):
                continue
            labels = {}
            if "thumb" in r:
                labels["quality"] = float(r["thumb"])
            if "dialogue_score" in r:
                labels["engagement"] = (r["dialogue_score"] - 1) / 4
            if "satisfaction" in r:
                labels["engagement"] = (r["satisfaction"] - 1) / 4
            if not labels:
                continue
            first = pair_text(_ctx_text(msgs[max(0, i - 6):i]), card)
            out.append({"first": first, "response": m["content"], "labels": labels, "group": d["id"]})
            out.append({"first": first, "response": rng.choice(pool), "labels": {"relevance": 0.0, "quality": 0.0},
                        "group": d["id"]})
    rng.shuffle(out)
    return out[:max_items] if max_items else out


def next_utterance_examples(dialogues: list[dict], rng: random.Random, max_items: int) -> list[dict]:
    """``dialogues``: ``{id, turns: [text], personas?: [a, b]}``; speaker k % 2 says turn k."""
    pool = [(d_i, t) for d_i, d in enumerate(dialogues) for t in d["turns"]]
    out = []
    for d_i, d in enumerate(dialogues):
        turns = d["turns"]
        personas = d.get("personas") or [[], []]
        for i in range(1, len(turns)):
            window = turns[max(0, i - 4):i]
            msgs = [{"role": "user" if (len(window) - 1 - j) % 2 == 0 else "assistant", "content": t}
                    for j, t in enumerate(window)]
            card = " ".join(personas[i % 2]) if len(personas) > i % 2 else ""
            first = pair_text(_ctx_text(msgs), card)
            others = [t for k, t in enumerate(turns) if abs(k - i) > 1]
            rand = rng.choice(pool)
            while rand[0] == d_i and len(dialogues) > 1:
                rand = rng.choice(pool)
            labels = {"relevance": 1.0}
            if card:
                labels["personality"] = 1.0
            out.append({"first": first, "response": turns[i], "labels": labels, "group": d["id"]})
            out.append({"first": first, "response": rand[1], "labels": {"relevance": 0.0}, "group": d["id"]})
            if others:
                out.append({"first": first, "response": rng.choice(others), "labels": {"relevance": 0.0},
                            "group": d["id"]})
            partner = [t for k, t in enumerate(turns) if k % 2 != i % 2 and k != i - 1]
            if card and partner:
                # The partner's turn answers in the same dialogue but speaks for the other persona.
                out.append({"first": first, "response": rng.choice(partner), "labels": {"personality": 0.0},
                            "group": d["id"]})
    rng.shuffle(out)
    return out[:max_items] if max_items else out


def cross_examples(rc, seed: int = 13, dev_fraction: float = 0.1, max_dev: int = 0) -> tuple[list[dict], list[dict], dict]:
    """Train and dev examples from the folders the rewards config names; dev is split by dialogue (``split_dev``)."""
    from convrl.rewards.corpora import dailydialog_dialogues, personachat_dialogues
    from convrl.rewards.dialogue import rated_dialogues

    rng = random.Random(seed)
    cap = rc.cross_max_examples
    examples, counts = [], {}
    if rc.engagement_data:
        got = rated_examples(rated_dialogues(rc.engagement_data), rng, cap // 2, seed)
        examples += got
        counts["rated"] = len(got)
    if rc.relevance_data:
        dd = [{"id": f"dd-{d['id']}", "turns": d["turns"]} for d in dailydialog_dialogues(rc.relevance_data, "train")]
        got = next_utterance_examples(dd, rng, cap // 4)
        examples += got
        counts["dailydialog_train"] = len(got)
    if rc.personality_data:
        pc = [{"id": d["id"], "turns": [t for _, t in d["turns"]], "personas": d["personas"]}
              for d in personachat_dialogues(rc.personality_data, "valid")]
        got = next_utterance_examples(pc, rng, cap // 4)
        examples += got
        counts["personachat_valid"] = len(got)
    if not examples:
        raise ValueError("cross-encoder heads: no training data; set rewards.engagement_data, relevance_data "
                         "and/or personality_data")
    train, dev = split_dev(examples, dev_fraction, seed, max_dev)
    counts.update({"train": len(train), "dev": len(dev)})
    return train, dev, counts


def split_dev(examples: list[dict], dev_fraction: float, seed: int, max_dev: int = 0) -> tuple[list[dict], list[dict]]:
    """Train / dev by dialogue; dev shuffled, then capped at ``max_dev`` (0 = all).

    The examples arrive grouped by source (rated turns, then DailyDialog, then PersonaChat), so an unshuffled
    cap kept only rated turns: early stopping then never saw a relevance or personality label (a 672-step
    fine-tune here picked its step by engagement and quality alone)."""
    is_dev = [held_out(e["group"], dev_fraction, seed + 7) for e in examples]
    dev = [e for e, d in zip(examples, is_dev) if d]
    train = [e for e, d in zip(examples, is_dev) if not d]
    random.Random(seed + 11).shuffle(dev)
    return train, (dev[:max_dev] if max_dev else dev)
