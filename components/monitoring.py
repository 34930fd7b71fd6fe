"""KFP components of the monitoring pipeline (no `from __future__ import annotations`: KFP reads real types).

Thin wrappers around ``convrl.stages.monitoring``, like ``components/stages.py``:
the body imports convrl, prepares the step (``convrl.pipelines.step_env.prepare``:
on a cluster it refuses to run without an MLflow server), calls one stage and
writes its outputs. Test them through ``.python_func`` or ``kfp.local``.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Artifact, Metrics, Output

from convrl.config.cluster import DEFAULT_IMAGE


def component(fn):
    return dsl.component(fn, base_image=DEFAULT_IMAGE, install_kfp_package=False)


@component
def monitor(config_name: str, overrides: str, summary: Output[Artifact], metrics: Output[Metrics]) -> NamedTuple(
        "Monitored", [("alerts", int), ("run_id", str)]):
    """Score the served traces, compare windows, alert (log, webhook, version tag), maybe roll back."""
    import json
    from collections import namedtuple

    from convrl.config import load_config
    from convrl.pipelines.parameters import split_overrides
    from convrl.pipelines.step_env import prepare
    from convrl.stages.monitoring import monitor_stage

    prepare()
    out = monitor_stage(load_config(config_name, split_overrides(overrides)))
    with open(summary.path, "w") as fh:
        json.dump(out, fh, indent=2, default=str)
    metrics.log_metric("turns", float(out["turns"]))
    metrics.log_metric("sessions", float(out["sessions"]))
    metrics.log_metric("alerts", float(len(out["alerts"])))
    return namedtuple("Monitored", ["alerts", "run_id"])(len(out["alerts"]), out["run_id"])


@component
def online_ab(config_name: str, overrides: str, since: str, promote: bool, decision: Output[Artifact]) -> str:
    """Champion vs challenger on served sessions; promotes the challenger when asked and the decision says so."""
    import json

    from convrl.config import load_config
    from convrl.data.sources.mlflow_traces import parse_time
    from convrl.pipelines.parameters import split_overrides
    from convrl.pipelines.step_env import prepare
    from convrl.stages.monitoring import online_ab_stage

    prepare()
    out = online_ab_stage(load_config(config_name, split_overrides(overrides)), since=parse_time(since, "since"),
                          promote=promote)
    with open(decision.path, "w") as fh:
        json.dump(out, fh, indent=2, default=str)
    return out["decision"]["outcome"]
