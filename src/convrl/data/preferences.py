"""Preference pairs from rated turns, in TRL's conversational preference format.

A pair needs two assistant replies to the same prompt, one rated clearly
better. Logged data rarely repeats a whole conversation, so the prompt is the
last ``context_turns`` turns before the reply (0 = the whole prefix; 1 = the
user message alone, which pairs the many replies to "hi" in ConvAI2), and
replies whose prompts match exactly (case and spacing aside) are compared.
A reply's score is its ``feedback_rating`` (1-5), else its thumb (up = 5,
down = 1). Pairs never cross splits, so evaluation data cannot leak into
training pairs::

    from convrl.data.preferences import preference_pairs
    pairs = preference_pairs(turns, context_turns=1, min_margin=1.0, split="train")
    pairs[0]
    # {"prompt": [{"role": "user", "content": "hi"}],
    #  "chosen": [{"role": "assistant", "content": "Hello! How is your day going?"}],
    #  "rejected": [{"role": "assistant", "content": "i like cheese"}]}
    datasets.Dataset.from_list(pairs)   # ready for trl.DPOTrainer / RewardTrainer

``with_metadata=True`` adds the scores, conversation ids, split and persona.
"""

from __future__ import annotations

import math
from itertools import islice

import pandas as pd

THUMB_SCORES = {1.0: 5.0, 0.0: 1.0}


def turn_score(rating, thumb) -> float | None:
    if rating is not None and not (isinstance(rating, float) and math.isnan(rating)):
        return float(rating)
    if thumb is not None and not (isinstance(thumb, float) and math.isnan(thumb)):
        return THUMB_SCORES.get(float(thumb))
    return None


def _key(context: list[dict]) -> tuple:
    return tuple((m["role"], " ".join(m["content"].lower().split())) for m in context)


def rated_replies(turns: pd.DataFrame, context_turns: int = 0, include_system: bool = False,
                  split: str | None = None) -> list[dict]:
    """Every scored assistant turn with the prompt before it (ending on a user turn)."""
    t = turns if split is None else turns[turns["split"] == split]
    if not include_system:
        t = t[t["role"] != "system"]
    t = t.sort_values(["conversation_id", "turn_index"], kind="stable")
    cols = [t[c].tolist() for c in ("conversation_id", "role", "text", "feedback_rating", "feedback_thumb",
                                    "split", "persona_id")]
    out, msgs, current = [], [], None
    # One pass over plain lists: a groupby with a Python body per conversation is ~50x slower here.
    for cid, role, text, rating, thumb, spl, persona in zip(*cols):
        if cid != current:
            current, msgs = cid, []
        if role == "assistant" and msgs and msgs[-1]["role"] == "user":
            score = turn_score(rating, thumb)
            if score is not None:
                context = list(msgs) if not context_turns else msgs[-context_turns:]
                out.append({"prompt": context, "reply": text, "score": score, "conversation_id": cid,
                            "split": spl, "persona_id": persona})
        msgs.append({"role": role, "content": text})
    return out


def preference_pairs(turns: pd.DataFrame, context_turns: int = 0, min_margin: float = 1.0,
                     max_pairs_per_prompt: int = 4, split: str | None = None, include_system: bool = False,
                     with_metadata: bool = False) -> list[dict]:
    """(prompt, chosen, rejected) triples where two replies to the same prompt differ by ``min_margin``.

    Within a prompt the best reply is paired with the worst first, then the
    next ones, up to ``max_pairs_per_prompt`` pairs; ties in score keep
    conversation order, so the output is deterministic.
    """
    if min_margin <= 0:
        raise ValueError("min_margin must be positive: a pair needs one reply rated better than the other")
    groups: dict[tuple, list[dict]] = {}
    for r in rated_replies(turns, context_turns, include_system, split):
        groups.setdefault((r["split"], _key(r["prompt"])), []).append(r)
    pairs = []
    for (_, _key_), replies in sorted(groups.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        if len(replies) < 2:
            continue
        ranked = sorted(replies, key=lambda r: -r["score"])
        candidates = ((hi, lo) for hi in ranked for lo in reversed(ranked)
                      if hi["score"] - lo["score"] >= min_margin
                      and " ".join(hi["reply"].split()).lower() != " ".join(lo["reply"].split()).lower())
        for hi, lo in islice(candidates, max_pairs_per_prompt):
            pair = {"prompt": hi["prompt"], "chosen": [{"role": "assistant", "content": hi["reply"]}],
                    "rejected": [{"role": "assistant", "content": lo["reply"]}]}
            if with_metadata:
                pair.update(score_chosen=hi["score"], score_rejected=lo["score"], split=hi["split"],
                            conversation_id_chosen=hi["conversation_id"],
                            conversation_id_rejected=lo["conversation_id"], persona_id=hi["persona_id"])
            pairs.append(pair)
    return pairs
