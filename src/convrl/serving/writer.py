"""Buffered, retried writing of served turns, feedback and arena choices to MLflow.

Requests never wait on MLflow: each record is PII-redacted, appended to a
write-ahead journal (JSON lines) and queued; one writer thread hands the
records to :mod:`convrl.tracking.traces` in arrival order. When the store is
slow or down the head record is retried with exponential back-off (capped at
``retry_max_s``) and everything behind it stays queued, so feedback is never
written before its turn; the server log says when writing stalls, how many
records are buffered, and when the store is back. A turn is written at most
once: before retrying one, the writer looks for a trace with its turn id. The
journal is cleared whenever the queue drains and replayed at the next start,
so records that could not be written before a shutdown or crash are not lost.

Record kinds: ``turn`` (``traces.log_turn`` kwargs, ``turn_id`` required),
``feedback`` (``turn_id`` plus ``traces.log_feedback`` kwargs) and
``preference`` (``traces.log_preference`` kwargs).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from pathlib import Path

from convrl.tracking import traces

log = logging.getLogger("convrl.serve")


class TraceWriter:
    def __init__(self, experiment: str, journal: str | Path, retry_initial_s: float = 0.5,
                 retry_max_s: float = 30.0, sink=traces):
        self.experiment = experiment
        self.journal = Path(journal)
        self.journal.parent.mkdir(parents=True, exist_ok=True)
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.sink = sink  # the traces module; tests pass a wrapper that fails on purpose
        self.queue: deque[dict] = deque()
        self.cond = threading.Condition()
        self.trace_ids: dict[str, str] = {}  # turn id -> trace id, for feedback
        self.known_turns: set[str] = set()
        self.counts = {"turn": 0, "feedback": 0, "preference": 0}
        self.written = {"turn": 0, "feedback": 0, "preference": 0}
        self.dropped = 0
        self.failures = 0
        self.last_error = ""
        self.outage_since: float | None = None
        self.running = False
        self.thread: threading.Thread | None = None

    # ------------------------------------------------------------ producer side

    def start(self) -> None:
        replay = self._read_journal()
        with self.cond:
            for r in replay:
                r["replayed"] = True  # it may have been written just before the stop: check first
                if r["kind"] == "turn":
                    self.known_turns.add(r["turn_id"])
            self.queue.extend(replay)
        if replay:
            log.warning("trace journal %s holds %d records not yet in MLflow; writing them first",
                        self.journal, len(replay))
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="convrl-trace-writer", daemon=True)
        self.thread.start()

    def submit(self, kind: str, **record) -> None:
        if kind not in self.counts:
            raise ValueError(f"unknown record kind {kind!r}")
        record = _redacted(kind, record)
        record["kind"] = kind
        line = json.dumps(record, default=str)
        with self.cond:
            with self.journal.open("a") as f:
                f.write(line + "\n")
            self.queue.append(record)
            self.counts[kind] += 1
            if kind == "turn":
                self.known_turns.add(record["turn_id"])
            self.cond.notify_all()

    def pending(self) -> int:
        with self.cond:
            return len(self.queue)

    def knows_turn(self, turn_id: str) -> bool:
        with self.cond:
            if turn_id in self.known_turns:
                return True
        return self.sink.existing_turn(self.experiment, turn_id) is not None

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until every queued record is written (True) or the timeout passes (False)."""
        end = time.monotonic() + timeout
        with self.cond:
            while self.queue and time.monotonic() < end:
                self.cond.wait(timeout=min(0.2, max(0.0, end - time.monotonic())))
            return not self.queue

    def close(self, timeout: float = 30.0) -> None:
        done = self.flush(timeout)
        with self.cond:
            self.running = False
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=5)
        if not done:
            log.warning("MLflow did not take %d trace records before shutdown; they stay in %s and are written "
                        "at the next start", self.pending(), self.journal)

    def stats(self) -> dict:
        with self.cond:
            return {"pending": len(self.queue), "submitted": dict(self.counts), "written": dict(self.written),
                    "dropped": self.dropped, "failures": self.failures, "last_error": self.last_error,
                    "store_down_s": round(time.monotonic() - self.outage_since, 1) if self.outage_since else 0.0}

    # ------------------------------------------------------------ writer thread

    def _read_journal(self) -> list[dict]:
        if not self.journal.exists():
            return []
        out = []
        for line in self.journal.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("skipping a torn line in %s (the process stopped mid-write)", self.journal)
        return out

    def _loop(self) -> None:
        delay = self.retry_initial_s
        while True:
            with self.cond:
                while self.running and not self.queue:
                    self.cond.wait()
                if not self.queue:
                    return
                record = self.queue[0]
            try:
                self._write(record, retry=delay > self.retry_initial_s or record.get("replayed", False))
            except traces.TraceWriteError as exc:
                self._stalled(exc, delay)
                with self.cond:
                    self.cond.wait(timeout=delay)  # close() wakes us: what is left stays in the journal
                    if not self.running:
                        return
                delay = min(delay * 2, self.retry_max_s)
                continue
            except ValueError as exc:  # a record MLflow will never take (e.g. feedback on an unknown turn)
                log.error("dropping a %s record that cannot be written: %s", record["kind"], exc)
                with self.cond:
                    self.dropped += 1
            else:
                with self.cond:
                    self.written[record["kind"]] += 1
            delay = self._recovered(delay)
            with self.cond:
                self.queue.popleft()
                if not self.queue:
                    self.journal.write_text("")
                self.cond.notify_all()

    def _write(self, record: dict, retry: bool) -> None:
        kind = record["kind"]
        args = {k: v for k, v in record.items() if k not in ("kind", "replayed")}
        if kind == "turn":
            existing = self.sink.existing_turn(self.experiment, args["turn_id"]) if retry else None
            trace_id = existing or self.sink.log_turn(self.experiment, **args)
            with self.cond:
                self.trace_ids[args["turn_id"]] = trace_id
        elif kind == "feedback":
            turn_id = args.pop("turn_id")
            trace_id = self.trace_ids.get(turn_id) or self.sink.existing_turn(self.experiment, turn_id)
            if trace_id is None:
                raise ValueError(f"no served turn {turn_id} in experiment {self.experiment}")
            self.sink.log_feedback(trace_id, **args)
        else:
            self.sink.log_preference(self.experiment, **args)

    def _stalled(self, exc: Exception, delay: float) -> None:
        with self.cond:
            self.failures += 1
            self.last_error = str(exc)[:300]
            first = self.outage_since is None
            if first:
                self.outage_since = time.monotonic()
            pending = len(self.queue)
        if first or delay >= self.retry_max_s:
            log.warning("MLflow is not taking traces (%s); %d records buffered in memory and in %s, nothing is "
                        "lost; retrying in %.1fs", str(exc)[:200], pending, self.journal, delay)

    def _recovered(self, delay: float) -> float:
        with self.cond:
            since, self.outage_since = self.outage_since, None
            pending = len(self.queue) - 1
        if since is not None:
            log.warning("MLflow is taking traces again after %.1fs; writing %d buffered records",
                        time.monotonic() - since, pending)
        return self.retry_initial_s


def _redacted(kind: str, record: dict) -> dict:
    """Redact PII before the record reaches the journal on disk (the traces module redacts again, a no-op)."""
    r = dict(record)
    if kind == "turn":
        r["messages"] = traces.redact_messages(r["messages"])
        r["reply"] = traces.redact_text(r["reply"])
        r["session_id"] = traces.safe_id(r["session_id"])
    elif kind == "feedback":
        r["comment"] = traces.redact_text(r.get("comment", ""))
        r["source_id"] = traces.safe_id(r.get("source_id", "user"))
    else:
        r["prompt_messages"] = traces.redact_messages(r["prompt_messages"])
        r["reply_a"], r["reply_b"] = traces.redact_text(r["reply_a"]), traces.redact_text(r["reply_b"])
        r["session_id"] = traces.safe_id(r["session_id"])
    return r
