"""Multi-turn self-play: the policy talks with a simulated user for N turns; coherence metrics.

The simulated user is the frozen base model prompted with a user profile
(who they are, their goal, how they feel). The simulator sees the last
``context_turns`` messages; the assistant sees what ``convrl chat`` shows it:
the context manager's window of ``context_turns`` messages and its memory line
(``convrl.data.context``). Halfway through,
the user changes the subject with a scripted message (the profile's ``pivot``)
so every conversation has one known topic transition to handle::

    from convrl.eval.selfplay import SelfPlaySettings, run_selfplay, selfplay_metrics, summarize
    result = evaluate_selfplay({"candidate": cand_dir, "baseline": base_dir}, base_dir, personas,
                               SelfPlaySettings(conversations=2, turns=10, max_new_tokens=32), JudgePanel())
    result.summary["candidate/coherence"], result.transcripts, result.per_turn, result.per_conv

Policy replies are greedy with ``no_repeat_ngram_size`` (as ``convrl chat``
decodes) and user turns sampled with fixed seeds, so both models meet the same
users with the same randomness. Per conversation:

* ``persona_consistency``: mean held-out personality judge over the assistant
  turns; ``persona_drift``: second-half minus first-half mean (negative =
  falling out of character); ``persona_embed_sim`` / ``persona_embed_std``:
  encoder cosine of each turn with the persona card (mean, spread), if an
  encoder is given;
* ``contradiction_rate``: share of assistant turns contradicting a persona fact,
  an earlier own statement, or breaking character;
* ``self_repetition``: share of turns that near-copy an earlier own turn;
* ``user_following``: relevance judge of each reply to the user turn before it;
  ``unprompted_shift_rate``: replies unrelated to both the user turn and the
  previous reply; ``pivot_followed``: after the scripted topic change, the reply
  is closer to the new topic than to the opening one;
* ``degenerate_rate``: empty or garbled assistant turns;
* ``fact_recall``: share of the user's scripted questions about facts they gave
  earlier (name, preference, plan; ``eval.recall``) whose answer names the fact,
  asked after the facts left the verbatim window (the assistant sees them only
  through the context manager's memory line, as in ``convrl chat``);
* ``coherence``: mean over turns of 0.3 persona score + 0.25 (no contradiction)
  + 0.2 (no self-repetition) + 0.25 relevance to the user turn; a degenerate
  turn scores 0;
* with a trained dialogue judge (``rewards.dialogue_data``; ``judge_conversations``):
  ``dialogue_judge``, its rating of the whole conversation (0-1, learned from
  people's ratings of whole dialogues), and ``reaction``, the satisfaction its
  reaction model reads from the simulated user's answers (1-5, mean over the
  replies that were answered).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import TfidfVectorizer

from convrl.data.personas import Persona
from convrl.data.usersim import USER_PROFILES, UserProfile, clean_user, user_system_prompt, user_view
from convrl.eval.fluency import is_degenerate
from convrl.eval.judges import contradictions, judge_user_emotion


@dataclass
class SelfPlaySettings:
    conversations: int = 2
    turns: int = 10
    max_new_tokens: int = 32
    context_turns: int = 6
    seed: int = 13
    user_temperature: float = 0.8
    recall_probes: bool = True
    token_budget: int = 1024
    no_repeat_ngram_size: int = 0
    precision: str = "fp32"  # of both sides' weights (eval.precision, resolved: bf16 or fp32)


def window(history: list[dict], k: int) -> list[dict]:
    """The last ``k`` messages, starting on a user turn (chat templates expect that)."""
    w = history[-k:] if k > 0 else list(history)
    while w and w[0]["role"] != "user":
        w = w[1:]
    return w


def simulate(policy, user, personas: list[Persona], settings: SelfPlaySettings,
             profiles: tuple[UserProfile, ...] = USER_PROFILES) -> pd.DataFrame:
    """Run ``settings.conversations`` conversations in lockstep (one batched generate per side per turn).

    ``policy`` and ``user`` are ``convrl.rl.generation.Generator`` objects (they may be the same).
    Returns one row per message: conversation, turn, role, text, persona_id, user_id, scripted.
    """
    from convrl.data.context import ConversationContextManager
    from convrl.eval.recall import recall_script

    n = settings.conversations
    convs = [(personas[c % len(personas)], profiles[c % len(profiles)]) for c in range(n)]
    histories = [[{"role": "user", "content": prof.opener}] for _, prof in convs]
    # What the assistant sees: the context manager's window plus its memory line, as in `convrl chat`.
    contexts = [ConversationContextManager(max_context_length=settings.context_turns,
                                           token_budget=settings.token_budget) for _ in range(n)]
    for ctx, h in zip(contexts, histories):
        ctx.add("user", h[0]["content"])
    scripted = [[True] for _ in range(n)]
    probes: list[list[str]] = [[""] for _ in range(n)]  # per user message: the recall answers it asks for
    scripts = [recall_script(prof, settings.turns) if settings.recall_probes else {} for _, prof in convs]
    pivot_turn = settings.turns // 2
    for t in range(settings.turns):
        views = []
        for (persona, _), h, ctx in zip(convs, histories, contexts):
            emotion = judge_user_emotion(h[-1]["content"])
            views.append(ctx.messages(persona.system_prompt(emotion)))
        replies = policy.generate(views, max_new_tokens=settings.max_new_tokens, batch_size=max(1, n),
                                  do_sample=False, seed=settings.seed + t,
                                  no_repeat_ngram_size=settings.no_repeat_ngram_size)
        for h, ctx, r in zip(histories, contexts, replies):
            h.append({"role": "assistant", "content": r})
            ctx.add("assistant", r)
        if t == settings.turns - 1:
            break
        said = [None] * n
        if t + 1 != pivot_turn and not all(t in sc for sc in scripts):
            sim_views = [[{"role": "system", "content": user_system_prompt(prof)}]
                         + user_view(h, settings.context_turns) for (_, prof), h in zip(convs, histories)]
            said = user.generate(sim_views, max_new_tokens=settings.max_new_tokens, batch_size=max(1, n),
                                 do_sample=True, temperature=settings.user_temperature, seed=settings.seed + 1000 + t)
        for c, ((_, prof), h, ctx) in enumerate(zip(convs, histories, contexts)):
            line = scripts[c].get(t)
            if line is not None:
                text, is_scripted = line.text, True
            elif t + 1 == pivot_turn:
                text, is_scripted = prof.pivot, True
            else:
                text, is_scripted = clean_user(said[c], "Tell me more."), False
            h.append({"role": "user", "content": text})
            ctx.add("user", text)
            scripted[c].append(is_scripted)
            probes[c].append("|".join(line.fact.answers) if line is not None and line.kind == "probe" else "")
    rows = []
    for c, ((persona, prof), h) in enumerate(zip(convs, histories)):
        turn, k = 0, 0
        for m in h:
            rows.append({"conversation": c, "turn": turn, "role": m["role"], "text": m["content"],
                         "persona_id": persona.persona_id, "user_id": prof.user_id,
                         "scripted": m["role"] == "user" and scripted[c][k],
                         "recall_probe": probes[c][k] if m["role"] == "user" else ""})
            if m["role"] == "user":
                k += 1
            else:
                turn += 1
    return pd.DataFrame(rows)


def run_selfplay(model_dirs: dict[str, str], user_model_dir: str, personas: list[Persona],
                 settings: SelfPlaySettings, cache=None) -> pd.DataFrame:
    """Self-play for every model against the same simulated user; a ``model`` column tells them apart.

    ``cache`` (``convrl.eval.reply_cache.ReplyCache``) returns a model's transcripts when the model, the
    simulated user, the personas, the settings and the decoding code are those of an earlier run.
    """
    from convrl.eval.reply_cache import ReplyCache, model_fingerprint
    from convrl.rl.generation import Generator

    cache = cache or ReplyCache(None)
    # What besides the model decides a transcript; the same for every model compared.
    key = ({"user_model": model_fingerprint(user_model_dir), "settings": asdict(settings),
            "personas": [asdict(p) for p in personas]} if cache.enabled else {})
    user = None
    frames = []
    for name, d in model_dirs.items():
        cached = cache.lookup("selfplay", d, key)
        if cached:
            df = pd.DataFrame(cached)
        else:
            user = user or Generator(user_model_dir, dtype=settings.precision)
            # The baseline is often the base model itself: reuse the loaded copy.
            policy = user if d == user_model_dir else Generator(d, dtype=settings.precision)
            df = simulate(policy, user, personas, settings)
            cache.store("selfplay", d, key, df.to_dict("records"))
            del policy
        df.insert(0, "model", name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def _similarity(texts: list[str]) -> np.ndarray:
    """Pairwise 0.5 word + 0.5 character TF-IDF cosine within one conversation."""
    mats = []
    for vec in (TfidfVectorizer(sublinear_tf=True, token_pattern=r"[a-zA-Z0-9']{2,}", stop_words="english"),
                TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(3, 5))):
        try:
            m = vec.fit_transform([t.lower() for t in texts])
            mats.append((m @ m.T).toarray())
        except ValueError:
            mats.append(np.zeros((len(texts), len(texts))))
    return 0.5 * mats[0] + 0.5 * mats[1]


def selfplay_metrics(transcripts: pd.DataFrame, personas_by_id: dict[str, Persona], panel,
                     encoder=None, shift_threshold: float = 0.1,
                     repeat_threshold: float = 0.8) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per assistant turn and per conversation metrics (see the module docstring)."""
    turn_rows, conv_rows = [], []
    for (model, c), conv in transcripts.groupby(["model", "conversation"], sort=False):
        conv = conv.reset_index(drop=True)
        persona = personas_by_id.get(conv["persona_id"].iloc[0])
        texts = conv["text"].tolist()
        sim = _similarity(texts)
        a_idx = [i for i in range(len(conv)) if conv["role"][i] == "assistant"]
        prev_user = [max(j for j in range(i) if conv["role"][j] == "user") for i in a_idx]
        replies = [texts[i] for i in a_idx]
        users = [texts[j] for j in prev_user]
        judged = panel.score(users, replies, [persona] * len(replies))
        following = judged["judge_relevance"].to_numpy(dtype=float)
        emb_sim = None
        if encoder is not None and persona is not None and replies:
            e = encoder.encode(replies + [persona.card_text()])
            emb_sim = np.clip(e[:-1] @ e[-1], -1, 1)
        contra, repeats, shifts = [], [], []
        for k, (i, j) in enumerate(zip(a_idx, prev_user)):
            contra.append(contradictions(replies[k], persona, earlier=replies[:k]))
            repeats.append(k > 0 and max(sim[i, a] for a in a_idx[:k]) >= repeat_threshold)
            # An empty or garbled reply is a failure the fluency judge counts, not a change of topic.
            shifts.append(k > 0 and not is_degenerate(replies[k]) and sim[i, j] < shift_threshold
                          and sim[i, a_idx[k - 1]] < shift_threshold)
            broken = is_degenerate(replies[k])
            # A silent or garbled turn earns nothing, not even for "not contradicting" or "not repeating".
            coh = 0.0 if broken else (0.3 * judged["judge_personality"][k] + 0.25 * (not contra[-1])
                                      + 0.2 * (not repeats[-1]) + 0.25 * following[k])
            turn_rows.append({"model": model, "conversation": c, "turn": k, "persona_id": conv["persona_id"][0],
                              "coherence": float(coh), "degenerate": broken,
                              "persona_score": float(judged["judge_personality"][k]),
                              "engagement": float(judged["judge_engagement"][k]),
                              "emotion": float(judged["judge_emotion"][k]),
                              "fluency": float(judged["judge_fluency"][k]),
                              "user_following": float(following[k]), "contradictions": len(contra[-1]),
                              "contradiction_notes": "; ".join(contra[-1]), "self_repeat": bool(repeats[-1]),
                              "unprompted_shift": bool(shifts[-1]),
                              "persona_embed_sim": float(emb_sim[k]) if emb_sim is not None else float("nan")})
        p = judged["judge_personality"].to_numpy(dtype=float)
        half = len(p) // 2
        row = {"model": model, "conversation": c, "persona_id": conv["persona_id"][0],
               "user_id": conv["user_id"][0], "turns": len(a_idx),
               "persona_consistency": float(p.mean()) if len(p) else 0.0,
               "persona_drift": float(p[half:].mean() - p[:half].mean()) if half else 0.0,
               "contradiction_rate": float(np.mean([len(x) > 0 for x in contra])) if contra else 0.0,
               "self_repetition": float(np.mean(repeats[1:])) if len(repeats) > 1 else 0.0,
               "user_following": float(following.mean()) if len(following) else 0.0,
               "unprompted_shift_rate": float(np.mean(shifts[1:])) if len(shifts) > 1 else 0.0,
               "pivot_followed": _pivot_followed(conv, a_idx, sim),
               "engagement": float(judged["judge_engagement"].mean()) if len(p) else 0.0,
               "persona_embed_sim": float(emb_sim.mean()) if emb_sim is not None else float("nan"),
               "persona_embed_std": float(emb_sim.std()) if emb_sim is not None else float("nan")}
        row["fact_recall"] = _fact_recall(conv, a_idx)
        mine = turn_rows[-len(a_idx):] if a_idx else []
        row["coherence"] = float(np.mean([r["coherence"] for r in mine])) if mine else 0.0
        row["degenerate_rate"] = float(np.mean([r["degenerate"] for r in mine])) if mine else 0.0
        conv_rows.append(row)
    return pd.DataFrame(turn_rows), pd.DataFrame(conv_rows)


def _fact_recall(conv: pd.DataFrame, a_idx: list[int]) -> float:
    """Share of the user's recall probes whose next assistant reply names the fact; NaN without probes."""
    from convrl.eval.recall import recalled

    if "recall_probe" not in conv:
        return float("nan")
    hits = []
    for i in range(len(conv)):
        answers = conv["recall_probe"][i]
        if conv["role"][i] == "user" and isinstance(answers, str) and answers:
            nxt = [a for a in a_idx if a > i]
            hits.append(bool(nxt) and recalled(conv["text"][nxt[0]], tuple(answers.split("|"))))
    return float(np.mean(hits)) if hits else float("nan")


def _pivot_followed(conv: pd.DataFrame, a_idx: list[int], sim: np.ndarray) -> float:
    """1 if the reply to the scripted topic change is closer to it than to the opener; NaN without a pivot."""
    pivots = [i for i in range(1, len(conv)) if conv["role"][i] == "user" and bool(conv["scripted"][i])]
    after = [a for a in a_idx if pivots and a > pivots[0]]
    if not pivots or not after:
        return float("nan")
    return float(sim[after[0], pivots[0]] > sim[after[0], 0])


SUMMARY_METRICS = ("coherence", "persona_consistency", "persona_drift", "contradiction_rate", "self_repetition",
                   "degenerate_rate", "user_following", "unprompted_shift_rate", "pivot_followed", "engagement",
                   "persona_embed_sim", "persona_embed_std", "fact_recall", "dialogue_judge", "reaction")


def summarize(per_conv: pd.DataFrame) -> dict[str, float]:
    """``{model}/{metric}`` means over conversations (NaN-aware)."""
    out: dict[str, float] = {}
    for model, grp in per_conv.groupby("model", sort=False):
        for m in SUMMARY_METRICS:
            if m in grp and grp[m].notna().any():
                out[f"{model}/{m}"] = float(grp[m].mean())
        out[f"{model}/conversations"] = float(len(grp))
        out[f"{model}/turns"] = float(grp["turns"].mean())
    return out


@dataclass
class SelfPlayResult:
    transcripts: pd.DataFrame
    per_turn: pd.DataFrame
    per_conv: pd.DataFrame
    summary: dict[str, float] = field(default_factory=dict)


def evaluate_selfplay(model_dirs: dict[str, str], user_model_dir: str, personas: list[Persona],
                      settings: SelfPlaySettings, panel, encoder=None, cache=None) -> SelfPlayResult:
    """Run self-play for every model and measure it (``cache``: see ``run_selfplay``)."""
    transcripts = run_selfplay(model_dirs, user_model_dir, personas, settings, cache=cache)
    per_turn, per_conv = selfplay_metrics(transcripts, {p.persona_id: p for p in personas}, panel, encoder)
    return SelfPlayResult(transcripts, per_turn, per_conv, summarize(per_conv))


def judge_conversations(result: SelfPlayResult, judge, encoder, personas_by_id: dict[str, Persona]) -> SelfPlayResult:
    """Add the dialogue judge's rating of each whole conversation and the reaction model's reading of the
    simulated user's answers (``rewards.dialogue.DialogueJudge``) to ``per_conv``, and summarise again."""
    from convrl.rewards.heads import persona_sentences
    from convrl.rewards.reactions import replies_with_answers

    keys, convs, cards, reactions = [], [], [], []
    for (model, c), conv in result.transcripts.groupby(["model", "conversation"], sort=False):
        keys.append((model, c))
        messages = [{"role": r, "content": t} for r, t in zip(conv["role"], conv["text"])]
        convs.append(messages)
        cards.append(persona_sentences(personas_by_id.get(conv["persona_id"].iloc[0])))
        answered = [(m["content"], a) for m, a in replies_with_answers(messages) if a is not None]
        pred = judge.reaction.predict([r for r, _ in answered], [a for _, a in answered])
        reactions.append(float(np.mean(pred)) if answered else float("nan"))
    scored = pd.DataFrame(keys, columns=["model", "conversation"]).assign(
        dialogue_judge=judge.score(encoder, convs, cards).astype(float) if convs else [], reaction=reactions)
    per_conv = result.per_conv.drop(columns=["dialogue_judge", "reaction"], errors="ignore").merge(
        scored, on=["model", "conversation"], how="left")
    return SelfPlayResult(result.transcripts, result.per_turn, per_conv, summarize(per_conv))
