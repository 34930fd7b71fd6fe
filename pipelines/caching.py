"""Caching in a compiled pipeline: which tasks are cached, and the same package with caching off.

The pipeline caches the compute steps of ingest, validate and the reward models (see
``convrl.stages.cached``). To recompute everything for one run, ``convrl submit --no-cache``
starts the run from ``without_caching(package)``: kfp.Client's own ``enable_caching=False``
rewrites only the root DAG's tasks, and this pipeline's steps sit in the exit handler's DAG::

    task_caching(spec)                     # {'ingest': True, 'record-ingest': False, ...}
    without_caching("build/convrl.yaml", "build/convrl-nocache.yaml")
"""

from __future__ import annotations

from pathlib import Path

import yaml


def _dags(spec: dict) -> list[dict]:
    return [spec["root"].get("dag", {})] + [c["dag"] for c in spec.get("components", {}).values() if "dag" in c]


def task_caching(spec: dict) -> dict[str, bool]:
    """Every task of a compiled pipeline spec (nested DAGs included) -> whether KFP may serve it from the cache."""
    return {name: bool(task.get("cachingOptions", {}).get("enableCache", False))
            for dag in _dags(spec) for name, task in dag.get("tasks", {}).items()}


def without_caching(package: str | Path, out: str | Path) -> Path:
    """Write ``package`` to ``out`` with caching off for every task; returns ``out``."""
    docs = list(yaml.safe_load_all(Path(package).read_text()))
    for dag in _dags(docs[0]):
        for task in dag.get("tasks", {}).values():
            task["cachingOptions"] = {"enableCache": False}
    out = Path(out)
    out.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return out
