"""Served conversations in MLflow Tracing: one trace per turn, human feedback, arena preferences.

The only module that touches MLflow Tracing. ``convrl serve`` writes through it
(via its buffered writer), and ``convrl monitor``, the ``mlflow-traces:`` data
source and ``convrl ab online`` read through it, so the trace layout lives here.

API (every text is PII-redacted with ``convrl.data.pii.redact_pii``, as ingest does, BEFORE
anything is written; a session id that carries PII is replaced by a stable
``anon-<sha256>`` pseudonym)::

    from convrl.tracking import traces

    trace_id = traces.log_turn(
        "convrl-serving", session_id="s-1", variant="champion", model_name="convrl-policy",
        model_version="3", persona="empathetic_coach",
        messages=[{"role": "system", "content": "..."}, {"role": "user", "content": "hi"}],
        reply="Hello!", latency_s=0.8, prompt_tokens=41, completion_tokens=5, ttft_s=0.2,
        turn_id="chatcmpl-...",      # optional; idempotency key for retries (see existing_turn)
        timestamp=time.time() - 0.8,  # optional; when the turn started (buffered writes keep it)
        source="api")                 # optional; "api" or "arena"
    traces.log_feedback(trace_id, thumbs=True, rating=5, source_id="user-42", comment="great")
    traces.log_preference(
        "convrl-serving", session_id="arena-1", prompt_messages=[...], reply_a="...", reply_b="...",
        variant_a="challenger", variant_b="champion", choice="a", persona="empathetic_coach",
        model_version_a="4", model_version_b="3")
    traces.existing_turn("convrl-serving", "chatcmpl-...")   # -> trace id or None
    turns = traces.search_turns("convrl-serving", since="2026-12-01", until=None)
    prefs = traces.search_preferences("convrl-serving", since=None)

Layout of a turn trace: one root span ``chat_turn`` (span type CHAT_MODEL) with
inputs ``{"messages": [...]}`` (the prompt the model saw, persona system prompt
and context memory included) and outputs in the OpenAI chat-completion shape
(``choices[0].message.content``, ``usage``), so MLflow's trace view renders it
as a chat; token usage in ``mlflow.chat.tokenUsage``. Trace metadata
``mlflow.trace.session`` groups turns into sessions in the MLflow UI; tags
(searchable) ``convrl.kind=turn``, ``convrl.variant``, ``convrl.model_name``,
``convrl.model_version``, ``convrl.persona``, ``convrl.turn_id``,
``convrl.source``; metadata ``convrl.latency_s``, ``convrl.ttft_s``,
``convrl.prompt_tokens``, ``convrl.completion_tokens``. Feedback is MLflow
feedback (assessments) named ``thumbs`` (bool) and ``rating`` (int 1-5) from a
HUMAN source. An arena choice is a trace of kind ``preference`` (root span
``arena_choice``: inputs the prompt, outputs both replies, the variants and the
choice) plus a ``preference`` feedback holding the choice.

``search_turns`` columns: trace_id, turn_id, session_id, timestamp (UTC),
variant, model_name, model_version, persona, source, messages, reply,
latency_s, ttft_s, prompt_tokens, completion_tokens, thumbs, rating, comment.
``search_preferences`` columns: trace_id, session_id, timestamp, persona,
prompt_messages, reply_a, reply_b, variant_a, variant_b, model_version_a,
model_version_b, choice, chosen, rejected, chosen_variant.

Writes raise :class:`TraceWriteError` when the store did not take the record
(MLflow's exporter only logs a warning), so a caller can buffer and retry.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from convrl.tracking import client, experiment_id, tracking_uri

# MLflow exports traces from a background queue and only logs failures; written synchronously, a write is
# done (or has failed) when span.end() returns: 0.15 s per turn here instead of ~1.2 s for flush-and-check.
# Set before the first span, which is when MLflow builds its exporter.
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_TRACE_LOGGING", "false")
os.environ.setdefault("MLFLOW_USE_BATCH_SPAN_PROCESSOR", "false")

KIND_TAG = "convrl.kind"
SESSION_KEY = "mlflow.trace.session"
TURN_COLUMNS = ["trace_id", "turn_id", "session_id", "timestamp", "variant", "model_name", "model_version",
                "persona", "source", "messages", "reply", "latency_s", "ttft_s", "prompt_tokens",
                "completion_tokens", "thumbs", "rating", "comment"]
PREFERENCE_COLUMNS = ["trace_id", "session_id", "timestamp", "persona", "prompt_messages", "reply_a", "reply_b",
                      "variant_a", "variant_b", "model_version_a", "model_version_b", "choice", "chosen",
                      "rejected", "chosen_variant"]
CHOICES = ("a", "b", "tie")


_provider = {"uri": None}
_provider_lock = threading.Lock()


def _mlflow():
    client()  # points the fluent API at convrl's store
    import mlflow

    # MLflow builds its trace exporter once per process with the tracking URI of that moment; when the URI
    # changes (tests, a CLI switching stores) later traces would go to the old store, so rebuild it.
    with _provider_lock:
        uri = tracking_uri()
        if _provider["uri"] != uri:
            # Also on first use: whatever built the exporter before may have used another store, or async export.
            mlflow.tracing.reset()
            _provider["uri"] = uri
    return mlflow


class TraceWriteError(RuntimeError):
    """The tracking store did not take a trace or feedback; safe to retry later."""


# ---------------------------------------------------------------- redaction

def redact_text(text: str) -> str:
    from convrl.data.pii import redact_pii

    return redact_pii(str(text))


def redact_messages(messages: list[dict]) -> list[dict]:
    return [{"role": str(m.get("role", "")), "content": redact_text(m.get("content", ""))} for m in messages]


def safe_id(value: str) -> str:
    """An id as given, or a stable pseudonym when it carries PII (an e-mail as a session id, say)."""
    value = str(value)
    if redact_text(value) == value:
        return value
    return "anon-" + hashlib.sha256(value.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- writing

def _write_trace(experiment: str, name: str, span_type: str, inputs: dict, outputs: dict, tags: dict[str, str],
                 metadata: dict[str, str], attributes: dict[str, Any], start_s: float, duration_s: float) -> str:
    try:
        mlflow = _mlflow()
        exp_id = experiment_id(experiment)
        span = mlflow.start_span_no_context(name=name, span_type=span_type, inputs=inputs, attributes=attributes,
                                            tags=tags, metadata=metadata, experiment_id=exp_id,
                                            start_time_ns=int(start_s * 1e9))
        trace_id = span.trace_id
        span.end(outputs=outputs, end_time_ns=int((start_s + max(duration_s, 0.0)) * 1e9))
        # The exporter only warns on failure: flush (a no-op when synchronous), then read back.
        mlflow.flush_trace_async_logging()
        written = client().get_trace(trace_id)
    except Exception as exc:  # noqa: BLE001 - any store failure means "retry later" to the caller
        raise TraceWriteError(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    if written is None or not written.data.spans:
        raise TraceWriteError(f"trace {trace_id} did not reach the tracking store")
    return trace_id


def log_turn(experiment: str, *, session_id: str, variant: str, model_name: str, model_version: str,
             persona: str, messages: list[dict], reply: str, latency_s: float, prompt_tokens: int,
             completion_tokens: int, ttft_s: float | None = None, turn_id: str | None = None,
             timestamp: float | None = None, source: str = "api") -> str:
    """Write one served turn as a trace (PII redacted first); returns the trace id."""
    from mlflow.entities import SpanType

    turn_id = turn_id or f"turn-{uuid.uuid4().hex}"
    start = timestamp if timestamp is not None else time.time() - latency_s
    reply = redact_text(reply)
    usage = {"input_tokens": int(prompt_tokens), "output_tokens": int(completion_tokens),
             "total_tokens": int(prompt_tokens) + int(completion_tokens)}
    tags = {KIND_TAG: "turn", "convrl.variant": variant, "convrl.model_name": model_name,
            "convrl.model_version": str(model_version), "convrl.persona": persona, "convrl.turn_id": turn_id,
            "convrl.source": source}
    metadata = {SESSION_KEY: safe_id(session_id), "convrl.latency_s": f"{latency_s:.6f}",
                "convrl.ttft_s": "" if ttft_s is None else f"{ttft_s:.6f}",
                "convrl.prompt_tokens": str(int(prompt_tokens)),
                "convrl.completion_tokens": str(int(completion_tokens))}
    outputs = {"id": turn_id, "object": "chat.completion", "model": f"{model_name}/{model_version}",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": reply}}],
               "usage": {"prompt_tokens": usage["input_tokens"], "completion_tokens": usage["output_tokens"],
                         "total_tokens": usage["total_tokens"]}}
    return _write_trace(experiment, "chat_turn", SpanType.CHAT_MODEL, {"messages": redact_messages(messages)},
                        outputs, tags, metadata, {"mlflow.chat.tokenUsage": usage}, start, latency_s)


def _human(source_id: str):
    from mlflow.entities import AssessmentSource, AssessmentSourceType

    return AssessmentSource(source_type=AssessmentSourceType.HUMAN, source_id=safe_id(source_id or "user"))


def log_feedback(trace_id: str, *, thumbs: bool | None = None, rating: int | None = None, source_id: str = "user",
                 comment: str = "") -> list[str]:
    """Store a user's thumbs and/or 1-5 rating as MLflow feedback on a turn; returns the assessment ids."""
    if thumbs is None and rating is None:
        raise ValueError("feedback needs thumbs (true/false) or a rating (1-5)")
    if thumbs is not None and not isinstance(thumbs, bool):
        raise ValueError(f"thumbs must be true or false, got {thumbs!r}")
    if rating is not None and (isinstance(rating, bool) or not isinstance(rating, int) or not 1 <= rating <= 5):
        raise ValueError(f"rating must be an integer from 1 to 5, got {rating!r}")
    rationale = redact_text(comment) if comment else None
    ids = []
    try:
        mlflow = _mlflow()
        for name, value in (("thumbs", thumbs), ("rating", rating)):
            if value is not None:
                a = mlflow.log_feedback(trace_id=trace_id, name=name, value=value, source=_human(source_id),
                                        rationale=rationale)
                ids.append(a.assessment_id)
    except Exception as exc:  # noqa: BLE001
        raise TraceWriteError(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return ids


def log_preference(experiment: str, *, session_id: str, prompt_messages: list[dict], reply_a: str, reply_b: str,
                   variant_a: str, variant_b: str, choice: str, persona: str, model_version_a: str = "",
                   model_version_b: str = "", timestamp: float | None = None, source_id: str = "user") -> str:
    """Store an arena choice between two replies to the same prompt; returns the trace id."""
    from mlflow.entities import SpanType

    if choice not in CHOICES:
        raise ValueError(f"choice must be one of {', '.join(CHOICES)}, got {choice!r}")
    start = timestamp if timestamp is not None else time.time()
    chosen_variant = {"a": variant_a, "b": variant_b}.get(choice, "tie")
    outputs = {"reply_a": redact_text(reply_a), "reply_b": redact_text(reply_b), "variant_a": variant_a,
               "variant_b": variant_b, "model_version_a": str(model_version_a),
               "model_version_b": str(model_version_b), "choice": choice, "chosen_variant": chosen_variant}
    tags = {KIND_TAG: "preference", "convrl.persona": persona, "convrl.variant_a": variant_a,
            "convrl.variant_b": variant_b, "convrl.choice": choice}
    trace_id = _write_trace(experiment, "arena_choice", SpanType.UNKNOWN,
                            {"messages": redact_messages(prompt_messages)}, outputs, tags,
                            {SESSION_KEY: safe_id(session_id)}, {}, start, 0.0)
    try:
        _mlflow().log_feedback(trace_id=trace_id, name="preference", value=choice, source=_human(source_id),
                            rationale=f"chose {chosen_variant}")
    except Exception as exc:  # noqa: BLE001
        raise TraceWriteError(f"{type(exc).__name__}: {str(exc)[:300]}") from exc
    return trace_id


# ---------------------------------------------------------------- reading

def _ms(when) -> int | None:
    """datetime / ISO string / unix seconds / pandas Timestamp -> epoch milliseconds."""
    if when is None:
        return None
    if isinstance(when, (int, float)):
        return int(when * 1000)
    if isinstance(when, str):
        when = datetime.fromisoformat(when)
    if hasattr(when, "to_pydatetime"):
        when = when.to_pydatetime()
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return int(when.timestamp() * 1000)


def _search(experiment: str, kind: str, since=None, until=None, extra: str = "") -> list:
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(experiment)
    if exp is None:
        return []
    clauses = [f"tags.`{KIND_TAG}` = '{kind}'"]
    if since is not None:
        clauses.append(f"trace.timestamp_ms >= {_ms(since)}")
    if until is not None:
        clauses.append(f"trace.timestamp_ms < {_ms(until)}")
    if extra:
        clauses.append(extra)
    return mlflow.search_traces(locations=[exp.experiment_id], filter_string=" AND ".join(clauses),
                                order_by=["timestamp_ms ASC"], return_type="list", flush=True)


def _latest_feedback(trace) -> dict[str, Any]:
    """Latest value per feedback name (a user may change their thumbs), plus the latest comment."""
    out: dict[str, Any] = {}
    for a in sorted(trace.info.assessments or [], key=lambda a: a.create_time_ms or 0):
        if getattr(a, "valid", True) is False or getattr(a, "feedback", None) is None:
            continue
        out[a.name] = a.feedback.value
        if a.rationale and a.name in ("thumbs", "rating"):
            out["comment"] = a.rationale
    return out


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def _root(trace):
    spans = trace.data.spans
    return next((s for s in spans if s.parent_id is None), spans[0] if spans else None)


def _timestamp(trace):
    import pandas as pd

    return pd.Timestamp(trace.info.request_time, unit="ms", tz="UTC")


def search_turns(experiment: str, since=None, until=None):
    """Served turns in ``[since, until)`` as a DataFrame (one row per turn, oldest first)."""
    import pandas as pd

    rows = []
    for t in _search(experiment, "turn", since, until):
        tags, meta, root = t.info.tags, t.info.trace_metadata, _root(t)
        outputs = (root.outputs if root else None) or {}
        fb = _latest_feedback(t)
        choice = (outputs.get("choices") or [{}])[0]
        rows.append({
            "trace_id": t.info.trace_id, "turn_id": tags.get("convrl.turn_id", ""),
            "session_id": meta.get(SESSION_KEY, ""), "timestamp": _timestamp(t),
            "variant": tags.get("convrl.variant", ""), "model_name": tags.get("convrl.model_name", ""),
            "model_version": tags.get("convrl.model_version", ""), "persona": tags.get("convrl.persona", ""),
            "source": tags.get("convrl.source", ""), "messages": ((root.inputs if root else None) or {}).get(
                "messages", []), "reply": choice.get("message", {}).get("content", ""),
            "latency_s": _float(meta.get("convrl.latency_s")), "ttft_s": _float(meta.get("convrl.ttft_s")),
            "prompt_tokens": int(meta.get("convrl.prompt_tokens") or 0),
            "completion_tokens": int(meta.get("convrl.completion_tokens") or 0),
            "thumbs": fb.get("thumbs"), "rating": fb.get("rating"), "comment": fb.get("comment", "")})
    return pd.DataFrame(rows, columns=TURN_COLUMNS)


def search_preferences(experiment: str, since=None, until=None):
    """Arena choices in ``[since, until)`` as a DataFrame; ``chosen``/``rejected`` are empty for ties."""
    import pandas as pd

    rows = []
    for t in _search(experiment, "preference", since, until):
        root = _root(t)
        out = (root.outputs if root else None) or {}
        choice = out.get("choice", "")
        chosen = {"a": out.get("reply_a", ""), "b": out.get("reply_b", "")}.get(choice, "")
        rejected = {"a": out.get("reply_b", ""), "b": out.get("reply_a", "")}.get(choice, "")
        rows.append({
            "trace_id": t.info.trace_id, "session_id": t.info.trace_metadata.get(SESSION_KEY, ""),
            "timestamp": _timestamp(t), "persona": t.info.tags.get("convrl.persona", ""),
            "prompt_messages": ((root.inputs if root else None) or {}).get("messages", []),
            "reply_a": out.get("reply_a", ""), "reply_b": out.get("reply_b", ""),
            "variant_a": out.get("variant_a", ""), "variant_b": out.get("variant_b", ""),
            "model_version_a": out.get("model_version_a", ""), "model_version_b": out.get("model_version_b", ""),
            "choice": choice, "chosen": chosen, "rejected": rejected,
            "chosen_variant": out.get("chosen_variant", "")})
    return pd.DataFrame(rows, columns=PREFERENCE_COLUMNS)


def existing_turn(experiment: str, turn_id: str) -> str | None:
    """The trace id of an already written turn (the writer's idempotency check before a retry)."""
    found = _search(experiment, "turn", extra=f"tags.`convrl.turn_id` = '{turn_id}'")
    return found[0].info.trace_id if found else None

