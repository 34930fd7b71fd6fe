"""``mlflow-traces:EXPERIMENT``: served conversations and arena choices from MLflow Tracing.

``convrl serve`` writes one trace per served turn (grouped into sessions) and
stores users' thumbs and 1-5 ratings as feedback on the trace; the arena page
stores each side-by-side choice as a preference holding both replies. This
source turns them back into the canonical schema, so the next training run
learns from how people talked to the last champion::

    mlflow-traces:convrl-serving                          everything the experiment holds
    mlflow-traces:convrl-serving?since=7d&split=source    the last 7 days (also 24h, 90m, or an ISO date)
    mlflow-traces:convrl-serving?since=2026-11-01&until=2026-11-08&variant=champion&arena=0

Options: ``since`` / ``until`` (ISO date or time, UTC unless it says otherwise, or
a relative ``Nd``/``Nh``/``Nm`` back from now), ``variant`` (champion |
challenger | any variant name the server used), ``arena=0`` (leave arena choices
out), ``feedback=only`` (only sessions with at least one rating or thumb).

Sessions: each session's turns, in time order, become one conversation
(``mlflow-<session id>``): the first turn's user/assistant history, then per
turn the user messages after the last reply in its request and the served reply
with its ``feedback_rating`` / ``feedback_thumb`` (the latest feedback a user
gave). System messages (the server's persona prompt and context memory) are
left out: the session's persona becomes ``persona_id``, and training rebuilds
the persona prompt from it.

Arena traffic (turns traced with source ``arena``) is not read as sessions; the
arena's choices become two one-exchange conversations, ``arena-<id>-chosen`` and
``arena-<id>-rejected``: the last user message, then one reply with
``feedback_thumb`` 1 (chosen) or 0 (rejected). :func:`convrl.data.preferences.preference_pairs`
(what DPO's ``rl.algorithm: dpo`` reads) pairs them back as (prompt, chosen,
rejected). Only the last user message is kept because DPO compares replies to
the same last user message (``context_turns=1``), and a shared long history
would make the two halves near-duplicates that ingest removes. Ties are
skipped and counted. Both halves of a pair share a ``split_group``, so ingest's
own split puts them in the same split (a pair is never lost across train and
test); with the generic ``split=source`` option they carry split ``train`` and
sessions a deterministic split by session id (70/10/20).

The source reads MLflow through :mod:`convrl.tracking.traces` (``MLFLOW_TRACKING_URI``).
The data layer may not import the tracking layer, so the reader is plugged in from
above: importing :mod:`convrl.tracking.trace_source` registers it, and
``convrl.stages`` (every pipeline step) and the ``convrl`` command line do so.
Library code calling ``ingest`` directly imports that module first.
"""

from __future__ import annotations

import hashlib
import math
import re
from typing import Callable, Iterator

import pandas as pd

from convrl.data.schema import Reason
from convrl.data.sources.base import Conversation, IngestError, Options, Skipped, q, split_query

# (experiment, since, until, with_arena) -> (served turns, arena preferences or None); see use_reader.
TraceReader = Callable[[str, "pd.Timestamp | None", "pd.Timestamp | None", bool],
                       "tuple[pd.DataFrame, pd.DataFrame | None]"]
READER: dict[str, TraceReader] = {}


def use_reader(reader: TraceReader) -> None:
    """Plug in what reads the traces (``convrl.tracking.trace_source`` registers the MLflow one)."""
    READER["mlflow"] = reader


_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)([dhm])$")
_UNITS = {"d": "days", "h": "hours", "m": "minutes"}


def parse_time(value: str | None, source: str, now: pd.Timestamp | None = None) -> pd.Timestamp | None:
    """``7d`` / ``24h`` / ``90m`` back from now, or an ISO date/time (UTC if naive)."""
    if value is None or value == "":
        return None
    now = now if now is not None else pd.Timestamp.now(tz="UTC")
    m = _RELATIVE.match(value.strip())
    if m:
        return now - pd.Timedelta(**{_UNITS[m.group(2)]: float(m.group(1))})
    try:
        ts = pd.Timestamp(value)
    except ValueError:
        raise IngestError(f"{source}: {value!r} is neither a relative time (7d, 24h, 90m) nor an ISO date/time "
                          "(2026-11-01, 2026-11-01T08:00:00Z)") from None
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _split(key: str) -> str:
    b = int(hashlib.sha256(f"mlflow-traces:{key}".encode()).hexdigest()[:8], 16) / 16 ** 8
    return "test" if b < 0.2 else "validation" if b < 0.3 else "train"


def _feedback(value) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _text(m: dict) -> str:
    return m["content"] if isinstance(m.get("content"), str) else ""


def session_conversations(turns: pd.DataFrame) -> Iterator[Conversation]:
    """Served turns (``tracking.traces.search_turns`` rows) -> one conversation per session."""
    if turns.empty:
        return
    frame = turns.sort_values(["session_id", "timestamp", "trace_id"], kind="stable")
    for sid, grp in frame.groupby("session_id", sort=False):
        convo, persona = [], None
        for row in grp.itertuples(index=False):
            # System messages are the server's persona prompt and context memory, rebuilt from persona_id at
            # training time; tool messages have no place in the turn table.
            msgs = [m for m in (row.messages or []) if m.get("role") in ("user", "assistant")]
            last_reply = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=-1)
            # The first turn brings whatever history the client started with; later turns add only what
            # followed the previous reply (older turns may be summarised into the prompt's memory by then).
            new = msgs if not convo else msgs[last_reply + 1:]
            convo.extend({"role": m["role"], "text": _text(m)} for m in new)
            convo.append({"role": "assistant", "text": row.reply if isinstance(row.reply, str) else "",
                          "feedback_rating": _feedback(row.rating), "feedback_thumb": _feedback(row.thumbs)})
            persona = row.persona or persona
        if convo:
            yield Conversation(f"mlflow-{sid}", convo, persona_id=persona or None, split=_split(str(sid)),
                               location=f"session {sid}")


def arena_conversations(prefs: pd.DataFrame) -> Iterator[Conversation | Skipped]:
    """Arena choices (``tracking.traces.search_preferences`` rows) -> chosen/rejected one-exchange pairs."""
    for row in prefs.itertuples(index=False):
        chosen, rejected = getattr(row, "chosen", None), getattr(row, "rejected", None)
        if not isinstance(chosen, str) or not isinstance(rejected, str) or not chosen.strip() or not rejected.strip():
            yield Skipped("arena choice without two replies (tie or skipped)")
            continue
        user = next((m.get("content") for m in reversed(list(row.prompt_messages or []))
                     if m.get("role") == "user"), None)
        if not isinstance(user, str) or not user.strip():
            yield Skipped("arena choice without a user message")
            continue
        pid = str(row.trace_id)
        persona = getattr(row, "persona", None) or None
        for side, text, thumb in (("chosen", chosen, 1.0), ("rejected", rejected, 0.0)):
            yield Conversation(f"arena-{pid}-{side}", [{"role": "user", "text": user},
                                                       {"role": "assistant", "text": text, "feedback_thumb": thumb}],
                               persona_id=persona, split="train", location=f"arena {pid}", split_group=pid)


def mlflow_traces(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation | Skipped]:
    experiment, params = split_query(arg)
    opts = Options(source, params, ("since", "until", "variant", "arena", "feedback"))
    if not experiment:
        raise IngestError(f"{source}: name the MLflow experiment that holds the served traces "
                          "(mlflow-traces:EXPERIMENT, e.g. mlflow-traces:convrl-serving)")
    since, until = parse_time(opts.get("since"), source), parse_time(opts.get("until"), source)
    if since is not None and until is not None and since >= until:
        raise IngestError(f"{source}: since ({since}) must be before until ({until})")
    if opts.get("arena", "1") not in ("0", "1") or opts.get("feedback", "any") not in ("any", "only"):
        raise IngestError(f"{source}: arena takes 0 or 1, feedback takes any or only")
    if "mlflow" not in READER:
        raise IngestError(f"{source}: no trace reader is registered; `import convrl.tracking.trace_source` "
                          "before calling ingest (convrl's stages and command line do)")
    try:
        turns, prefs = READER["mlflow"](experiment, since, until, opts.get("arena", "1") == "1")
    except Exception as exc:  # noqa: BLE001 - any store failure means the same to the user
        raise IngestError(f"{source}: cannot read traces of MLflow experiment {experiment!r}: "
                          f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    if "source" in turns.columns:
        # Arena replies are traced as turns too (both sides of one prompt); they arrive as preferences below.
        turns = turns[turns["source"] != "arena"]
    variant = opts.get("variant")
    if variant and len(turns):
        turns = turns[turns["variant"] == variant]
    if opts.get("feedback") == "only" and len(turns):
        rated = turns.groupby("session_id")[["rating", "thumbs"]].transform("count").sum(axis=1) > 0
        turns = turns[rated]
    for conv in session_conversations(turns):
        if not any(t["role"] == "user" for t in conv.turns):
            q(quarantine, source, conv.location, conv.turns[:2], "served session has no user message",
              Reason.INCOMPLETE_CONVERSATION)
            continue
        yield conv
    if prefs is not None and len(prefs):
        yield from arena_conversations(prefs)
