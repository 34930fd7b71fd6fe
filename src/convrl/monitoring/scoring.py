"""Score served turns with the reward heads and the held-out judges, and summarise per version and day.

Each served turn is a (context, reply, persona) triple: the context is the
request's messages, the persona the card the session was served with. The
reward heads (``RewardScorer``: quality, personality, engagement, relevance and
their weighted ``composite``) and the held-out judges (``JudgePanel``:
``judge_*``) score it exactly as evaluation does, so production numbers are
comparable with the offline report. Two cheap signals sit beside them: an
``empty`` flag (blank or degenerate reply) and the reply's trigram
``repetition`` rate; ``gap`` is reward composite minus judge composite, whose
rise flags a policy pleasing its reward models rather than people. Given a
reaction model (``convrl.rewards.reactions``, trained on turns people rated),
``reaction`` is each reply's predicted satisfaction (1-5) read from the user's
next turn in the same session: how the user took it, on every turn, where
explicit ratings come from few sessions (NaN on a session's last turn)::

    from convrl.monitoring.scoring import score_turns, daily_summary
    scored = score_turns(turns, scorer, JudgePanel(), personas_by_id)
    daily = daily_summary(scored)     # one row per (model_version, day)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from convrl.data.personas import Persona
from convrl.rewards.heads import HEADS, is_degenerate, repetition_rate

SCORE_COLUMNS = (*HEADS, "composite", "judge_composite", "judge_quality", "judge_personality",
                 "judge_engagement", "judge_relevance", "judge_emotion", "judge_fluency", "judge_civility", "gap",
                 "empty", "uncivil", "repetition")
DAILY_METRICS = ("composite", *HEADS, "judge_composite", "gap", "empty", "uncivil", "repetition", "reaction", "rating",
                 "thumbs", "latency_s", "completion_tokens")


def next_user_turns(turns: pd.DataFrame) -> list[str | None]:
    """For each turn, the user's message that followed its reply in the same session (None on the last turn)."""
    out: list[str | None] = [None] * len(turns)
    for _, idx in turns.groupby("session_id", sort=False).groups.items():
        order = turns.loc[idx].sort_values("timestamp", kind="stable").index.tolist()
        for this, nxt in zip(order, order[1:]):
            users = [m.get("content", "") for m in turns.at[nxt, "messages"] if m.get("role") == "user"]
            out[turns.index.get_loc(this)] = users[-1] if users else None
    return out


def reaction_scores(turns: pd.DataFrame, reaction) -> np.ndarray:
    """``reaction.predict`` for each turn that the user answered; NaN for the others."""
    nxt = next_user_turns(turns)
    rows = [i for i, u in enumerate(nxt) if u is not None]
    out = np.full(len(turns), np.nan)
    if rows:
        out[rows] = reaction.predict([turns["reply"].iloc[i] for i in rows], [nxt[i] for i in rows])
    return out


def score_turns(turns: pd.DataFrame, scorer, panel, personas_by_id: dict[str, Persona],
                batch_size: int = 256, progress: bool = False, reaction=None) -> pd.DataFrame:
    """``turns`` (``frames.normalise_turns``) with every score column added, scored in batches.

    ``reaction``: a fitted ``ReactionModel`` for the ``reaction`` column (left out without one).
    """
    out = turns.copy().reset_index(drop=True)
    if out.empty:
        for c in SCORE_COLUMNS:
            out[c] = pd.Series(dtype=float)
        out["day"] = pd.Series(dtype="object")
        return out
    contexts = [[m for m in msgs if m.get("role") in ("system", "user", "assistant")] for msgs in out["messages"]]
    replies = out["reply"].tolist()
    unknown = sorted({p for p in out["persona"] if p and p not in personas_by_id})
    if unknown:
        # A card the monitor cannot see would score personality as if the reply ignored it.
        raise ValueError(f"served personas {unknown} are not known to the monitor; pass their cards "
                         f"(bundled: {sorted(personas_by_id)})")
    personas = [personas_by_id.get(p) if p else None for p in out["persona"]]
    heads: dict[str, list] = {h: [] for h in (*HEADS, "composite")}
    judges = []
    starts = range(0, len(out), batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="scoring served turns", unit="batch")
    for s in starts:
        sl = slice(s, s + batch_size)
        batch = scorer.score(contexts[sl], replies[sl], personas[sl])
        for h in HEADS:
            heads[h].extend(batch.heads[h].tolist())
        heads["composite"].extend(batch.composite.tolist())
        judges.append(panel.score(contexts[sl], replies[sl], personas[sl]))
    for name, values in heads.items():
        out[name] = np.asarray(values, dtype=float)
    jd = pd.concat(judges, ignore_index=True)
    for c in ("judge_composite", "judge_quality", "judge_personality", "judge_engagement", "judge_relevance",
              "judge_emotion", "judge_fluency", "judge_civility"):
        out[c] = jd[c].to_numpy(dtype=float)
    out["uncivil"] = (out["judge_civility"] < 1.0).astype(float)
    out["gap"] = out["composite"] - out["judge_composite"]
    out["empty"] = np.array([is_degenerate(r) for r in replies], dtype=float)
    out["repetition"] = np.array([repetition_rate(r) for r in replies], dtype=float)
    if reaction is not None and reaction.fitted:
        out["reaction"] = reaction_scores(out, reaction)
    out["day"] = out["timestamp"].dt.strftime("%Y-%m-%d")
    return out


def daily_summary(scored: pd.DataFrame) -> pd.DataFrame:
    """Means of every metric per (model_version, day), with turn, session and feedback counts."""
    cols = [c for c in DAILY_METRICS if c in scored.columns]
    if scored.empty:
        return pd.DataFrame(columns=["model_version", "day", "turns", "sessions", "rated", "thumbed", *cols])
    frame = scored.assign(model_version=scored["model_version"].fillna("unknown"))
    g = frame.groupby(["model_version", "day"], sort=True)
    out = g[cols].mean()
    out.insert(0, "thumbed", g["thumbs"].count())
    out.insert(0, "rated", g["rating"].count())
    out.insert(0, "sessions", g["session_id"].nunique())
    out.insert(0, "turns", g["trace_id"].count())
    return out.reset_index()
