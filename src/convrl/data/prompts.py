"""Turn canonical conversations into persona-conditioned chat prompts.

A prompt is a conversation prefix that ends with a user turn, preceded by the
persona's system prompt: exactly the conversational format TRL trainers take
(``[{"role": "system", ...}, {"role": "user", ...}, ...]``). The logged
assistant reply, when there is one, travels along as ``reference``, and the
user turns that followed it as ``next_user_turns`` (replayed by multi-turn
rollouts with ``rl.multiturn.user_simulator: logged``).
"""

from __future__ import annotations

import random

import pandas as pd

from convrl.data.personas import Persona


def conversation_prefixes(turns: pd.DataFrame, split: str, max_turns: int) -> list[dict]:
    """Every prefix ending on a user turn: {conversation_id, context, reference}."""
    out: list[dict] = []
    sub = turns[(turns["split"] == split) & (turns["role"] != "system")]
    for cid, grp in sub.sort_values(["conversation_id", "turn_index"]).groupby("conversation_id", sort=True):
        msgs = [{"role": r, "content": t} for r, t in zip(grp["role"], grp["text"])]
        for i, m in enumerate(msgs):
            if m["role"] != "user":
                continue
            context = msgs[max(0, i + 1 - max_turns): i + 1]
            while context and context[0]["role"] != "user":
                context = context[1:]
            nxt = msgs[i + 1]["content"] if i + 1 < len(msgs) and msgs[i + 1]["role"] == "assistant" else ""
            # What the user said next in the log: the "logged" user simulator of multi-turn rollouts replays it.
            later_users = [m["content"] for m in msgs[i + 1:] if m["role"] == "user"][:8]
            out.append({"conversation_id": cid, "context": context, "reference": nxt,
                        "next_user_turns": later_users, "history": msgs[: i + 1]})
    return out


def build_prompts(turns: pd.DataFrame, personas: list[Persona], split: str, n: int, max_turns: int,
                  seed: int, user_emotion=None, token_budget: int = 512) -> list[dict]:
    """``n`` prompts (0 = all) sampled deterministically, personas assigned round-robin.

    ``user_emotion`` optionally maps the last user text to an emotion label, so
    the system prompt can tell the persona which tone to take. The context is
    what ``ConversationContextManager`` shows a deployed model: the last
    ``max_turns`` turns within ``token_budget``, older turns folded into a
    memory line (topics, what the user said about themself) in the system prompt.
    """
    from convrl.data.context import ConversationContextManager

    prefixes = conversation_prefixes(turns, split, max_turns)
    if not prefixes:
        raise ValueError(f"no prompts in split '{split}': it has no user turns")
    rng = random.Random(seed)
    rng.shuffle(prefixes)
    if n:
        prefixes = prefixes[:n]
    rows = []
    for i, p in enumerate(prefixes):
        persona = personas[i % len(personas)]
        emotion = user_emotion(p["context"][-1]["content"]) if user_emotion else None
        ctx = ConversationContextManager(max_context_length=max_turns, token_budget=token_budget)
        for m in p["history"]:
            ctx.add(m["role"], m["content"])
        rows.append({"prompt": ctx.messages(persona.system_prompt(emotion)),
                     "persona_id": persona.persona_id, "conversation_id": p["conversation_id"],
                     "reference": p["reference"], "user_emotion": emotion or "neutral",
                     "next_user_turns": p["next_user_turns"]})
    return rows
