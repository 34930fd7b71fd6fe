"""Pipeline stages as plain functions: read inputs, call the library, write outputs, log to MLflow.

Each KFP component in ``components/`` is a thin wrapper around one function
here, so every stage can be run and tested without Kubeflow::

    from convrl.config import load_config
    from convrl.stages import data
    parent = begin(cfg, "my-run")
    data.ingest_stage(cfg, parent, "out/turns.parquet", "out/personas.parquet", "out/quarantine.parquet")
"""

from __future__ import annotations

from convrl import tracking
from convrl.config import Config
from convrl.runtime import offline_defaults
from convrl.tracking import trace_source  # noqa: F401 - plugs the MLflow reader into the mlflow-traces: source


def begin(cfg: Config, run_name: str, parent_run_id: str = "", kfp_run_id: str = "") -> str:
    """Return the pipeline's parent MLflow run id, creating the run unless one is given."""
    offline_defaults()
    tracking.preflight(cfg.tracking.experiment)
    if parent_run_id:
        if kfp_run_id:
            tracking.client().set_tag(parent_run_id, tracking.KFP_RUN_TAG, kfp_run_id)
        return parent_run_id
    return tracking.start_pipeline_run(cfg.tracking.experiment, run_name, cfg.flat(),
                                       {"convrl.config": cfg.name, "convrl.config_hash": cfg.fingerprint(),
                                        tracking.KFP_RUN_TAG: kfp_run_id})


def finish(parent_run_id: str, kfp_run_id: str, state: str, error: str = "") -> None:
    """Close the parent run from the pipeline's exit handler (state: SUCCEEDED/FAILED/...)."""
    offline_defaults()
    parent_run_id = parent_run_id or tracking.find_run_by_tag(tracking.KFP_RUN_TAG, kfp_run_id) or ""
    if not parent_run_id:
        return  # start_tracking never ran (e.g. a config error): there is no MLflow run to close
    run = tracking.get_run(parent_run_id)
    if run.info.status in ("FAILED", "KILLED"):
        return  # a stage already marked it failed and named itself
    ok = state.upper() in ("SUCCEEDED", "SUCCESS", "FINISHED")
    tracking.finish_pipeline_run(parent_run_id, ok=ok, message=error,
                                 failed_stage=None if ok else "pipeline")


def kfp_metrics(values: dict) -> dict[str, float]:
    """The KFP ``Metrics`` view of a stage's result: finite numbers only, ``/`` -> ``_`` (KFP's UI splits on ``/``).

    One rule for every component, so the KFP UI and MLflow show the same set.
    """
    import math

    return {k.replace("/", "_"): float(v) for k, v in values.items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
