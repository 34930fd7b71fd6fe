"""Cacheable stages: what a cached step's key is made of, and how its outcome reaches MLflow.

KFP caches a task on its inputs (parameter values, upstream artifacts, image, command). A task
that takes the run's MLflow ``parent_run_id`` can never hit the cache, so the expensive,
deterministic stages (ingest, validate, reward models) run as two steps:

* **compute** (cached): its inputs are only what determines its output: the config sections it
  reads, as canonical JSON (``stage_config``), the upstream artifacts, and for ingest the data
  fingerprint (``convrl.data.fingerprint``). It writes its outputs and a JSON summary, no MLflow.
* **record** (never cached): logs that summary and those outputs under this run's parent run, so
  a cache hit still shows every param, metric, report and model in MLflow.

A compute step whose input is bad (a config or data error: the same inputs fail the same way)
does not fail: it writes the error into its summary (``deferred_errors``), and the record step
raises it (``raise_deferred``) inside the stage's MLflow run, which names the failed stage on the
parent run as before. Other errors (out of memory, a network fault) fail the compute step, which
KFP does not cache, so the next run tries again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

from convrl.config import Config, ConfigError
from convrl.data.sources.base import IngestError

# The config sections each cached stage reads (and nothing else: a change elsewhere keeps the cache).
SECTIONS = {"ingest": ("data",), "validate": ("validate",), "reward_models": ("models", "rewards")}
_DEFERRED = {"ConfigError": ConfigError, "IngestError": IngestError}


def stage_config(cfg: Config, stage: str) -> str:
    """The sections ``stage`` reads as canonical JSON; ``convrl.config.config_from_json`` reads it back."""
    return json.dumps({s: dataclasses.asdict(getattr(cfg, s)) for s in SECTIONS[stage]}, sort_keys=True)


def _plain(value):
    # numpy scalars (pandas counts, metrics) as Python numbers, so they read back as numbers
    return value.item() if hasattr(value, "item") else str(value)


def write_summary(path: str | Path, summary: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(summary, indent=1, sort_keys=True, default=_plain))


def read_summary(path: str | Path, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p} is not the summary of a {what} step (the compute step writes it); pass "
                                "the summary output of the same run's compute step")
    return json.loads(p.read_text())


@contextlib.contextmanager
def deferred_errors(summary: dict):
    """Turn an input error (ConfigError, IngestError) into ``summary['error']`` for the record step."""
    try:
        yield
    except tuple(_DEFERRED.values()) as exc:
        summary["error"] = {"type": type(exc).__name__, "message": str(exc)}


def raise_deferred(summary: dict) -> None:
    """Raise the error a compute step deferred (as its own type), if any."""
    err = summary.get("error")
    if err:
        raise _DEFERRED.get(err["type"], RuntimeError)(err["message"])
