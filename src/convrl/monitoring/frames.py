"""The served-turns table every monitoring function reads, and its per-session view.

``convrl.tracking.traces.search_turns`` returns one row per served turn (one
MLflow trace each): ``trace_id, session_id, timestamp, variant, model_version,
persona, messages, reply, latency_s, completion_tokens, thumbs, rating`` (and a
few more). ``messages`` is the prompt the model saw (OpenAI messages), ``reply``
the served answer, ``thumbs`` 1/0 and ``rating`` 1-5 the user's latest feedback
(NaN when none)::

    from convrl.monitoring.frames import normalise_turns, session_table
    turns = normalise_turns(raw)            # checked columns, UTC timestamps, float feedback
    sessions = session_table(scored_turns)  # one row per session, for the online A/B
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TURN_COLUMNS = ("trace_id", "session_id", "timestamp", "variant", "model_version", "persona", "messages",
                "reply", "latency_s", "completion_tokens", "thumbs", "rating")
NUMERIC = ("latency_s", "completion_tokens", "thumbs", "rating")
REQUIRED = ("trace_id", "session_id", "timestamp", "messages", "reply")


class MonitoringDataError(ValueError):
    """The served-turns table cannot be used; the message says what is wrong."""


def normalise_turns(df: pd.DataFrame) -> pd.DataFrame:
    """Check the required columns, add missing optional ones, parse timestamps as UTC, sort by time."""
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise MonitoringDataError(f"served-turns table lacks column(s) {missing}; expected {list(TURN_COLUMNS)} "
                                  "(convrl.tracking.traces.search_turns)")
    out = df.copy()
    for c in TURN_COLUMNS:
        if c not in out.columns:
            out[c] = np.nan if c in NUMERIC else None
    out["timestamp"] = _utc(out["timestamp"])
    for c in NUMERIC:
        # Feedback arrives as bool thumbs / int ratings, None where the user gave none.
        out[c] = pd.to_numeric(out[c].map(lambda v: np.nan if v is None else float(v)), errors="coerce")
    bad = out["rating"].notna() & ~out["rating"].between(1, 5)
    bad |= out["thumbs"].notna() & ~out["thumbs"].isin([0.0, 1.0])
    if bad.any():
        raise MonitoringDataError(f"{int(bad.sum())} turn(s) carry feedback outside rating 1-5 / thumbs 0-1 "
                                  f"(e.g. trace {out.loc[bad, 'trace_id'].iloc[0]})")
    not_list = ~out["messages"].map(lambda m: isinstance(m, (list, tuple, np.ndarray)))
    if not_list.any():
        raise MonitoringDataError(f"{int(not_list.sum())} turn(s) have messages that are not a list of "
                                  f"{{role, content}} dicts (e.g. trace {out.loc[not_list, 'trace_id'].iloc[0]})")
    out["messages"] = out["messages"].map(lambda m: [dict(x) for x in m])
    out["reply"] = out["reply"].map(lambda r: r if isinstance(r, str) else "")
    for c in ("variant", "model_version", "persona", "session_id"):
        out[c] = out[c].map(lambda v: None if v is None or (isinstance(v, float) and np.isnan(v)) else str(v))
    return out.sort_values(["timestamp", "trace_id"], kind="stable").reset_index(drop=True)


def _utc(col: pd.Series) -> pd.Series:
    if pd.api.types.is_numeric_dtype(col):  # MLflow keeps trace times as epoch milliseconds
        return pd.to_datetime(col, unit="ms", utc=True)
    return pd.to_datetime(col, utc=True, format="mixed")


def in_window(df: pd.DataFrame, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    """Rows with ``start <= timestamp < end``."""
    return df[(df["timestamp"] >= start) & (df["timestamp"] < end)]


def session_table(scored: pd.DataFrame) -> pd.DataFrame:
    """One row per (session, variant): the session-level metrics the online A/B compares.

    ``satisfaction`` is the mean 1-5 rating and ``thumbs_up`` the share of thumbs up
    (NaN when the session gave none); ``predicted_satisfaction`` the mean of the
    turns' ``reaction`` (satisfaction read from the user's answers; NaN without a
    reaction model); judge and reward scores are the session's mean over turns,
    ``judge_civility`` its least civil reply (the civility judge; a strict A/B guardrail);
    ``session_turns`` counts served turns.
    """
    need = {"session_id", "variant", "model_version", "judge_composite", "composite", "empty", "repetition"}
    missing = sorted(need - set(scored.columns))
    if missing:
        raise MonitoringDataError(f"session_table needs scored turns (monitoring.scoring.score_turns); "
                                  f"missing {missing}")
    if "reaction" not in scored.columns:
        scored = scored.assign(reaction=float("nan"))
    if "judge_civility" not in scored.columns:
        scored = scored.assign(judge_civility=float("nan"))
    g = scored.groupby(["session_id", "variant"], sort=True, dropna=False)
    # judge_civility: the session's least civil reply (one insult marks the session).
    out = g.agg(model_version=("model_version", "last"), satisfaction=("rating", "mean"),
                thumbs_up=("thumbs", "mean"), predicted_satisfaction=("reaction", "mean"),
                judge_composite=("judge_composite", "mean"), judge_civility=("judge_civility", "min"),
                reward_composite=("composite", "mean"), session_turns=("trace_id", "count"),
                empty_rate=("empty", "mean"), repetition=("repetition", "mean"),
                started=("timestamp", "min")).reset_index()
    out["session_turns"] = out["session_turns"].astype(float)
    return out
