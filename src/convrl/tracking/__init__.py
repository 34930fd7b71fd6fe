"""The one module that talks to MLflow: runs, artifacts, LoggedModels and the registry.

Every other module calls these functions, so the store layout, the nesting of
stage runs under one pipeline run and the registry conventions live here.

* Store: ``$MLFLOW_TRACKING_URI`` if set, else SQLite at
  ``$CONVRL_HOME/mlflow.db`` (an absolute path; MLflow 3 refuses file stores)
  with artifacts under ``$CONVRL_HOME/mlartifacts``.
* One pipeline run = one parent run; each stage opens a nested run under it
  (``stage_run``). A stage that raises marks the parent FAILED and tags it with
  the stage's name, so the MLflow UI says where a run broke.
* Registry: aliases (``champion``, ``challenger``), never the deprecated stages.

Run ``convrl ui`` to browse the same store.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from convrl.home import convrl_home, ensure_home

PARENT_TAG = "convrl.pipeline_run"
STAGE_TAG = "convrl.stage"
FAILED_STAGE_TAG = "convrl.failed_stage"
KFP_RUN_TAG = "convrl.kfp_run_id"


class TrackingUnavailable(RuntimeError):
    """The MLflow store cannot be reached or written; the message says what to do."""


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    return f"sqlite:///{convrl_home() / 'mlflow.db'}"


def _mlflow():
    import mlflow

    uri = tracking_uri()
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
    return mlflow


def client():
    from mlflow import MlflowClient

    _mlflow()
    return MlflowClient(tracking_uri=tracking_uri(), registry_uri=tracking_uri())


def preflight(experiment: str) -> str:
    """Check the store before any training starts; returns the experiment id."""
    uri = tracking_uri()
    if uri.startswith("sqlite:"):
        ensure_home() if str(convrl_home()) in uri else Path(uri.split("///", 1)[-1]).parent.mkdir(
            parents=True, exist_ok=True)
    elif uri.startswith("http"):
        # Fail in seconds, not after MLflow's default minutes of retries.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    try:
        return experiment_id(experiment)
    except Exception as exc:  # noqa: BLE001 - any failure here means the same to the user
        raise TrackingUnavailable(
            f"cannot use the MLflow tracking store at {uri}: {type(exc).__name__}: {str(exc)[:300]}. "
            "Start the server or fix MLFLOW_TRACKING_URI (unset it to use the local SQLite store "
            "under CONVRL_HOME).") from exc


def experiment_id(name: str) -> str:
    mlflow = _mlflow()
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if tracking_uri().startswith("sqlite:"):
        location = (convrl_home() / "mlartifacts" / name).as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except Exception:
        # Another process created it between our lookup and create.
        exp = mlflow.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def start_pipeline_run(experiment: str, run_name: str, params: dict[str, Any], tags: dict[str, str]) -> str:
    """Create the parent run for one pipeline run and log the resolved config as params."""
    c = client()
    run = c.create_run(experiment_id(experiment), run_name=run_name, tags={PARENT_TAG: "true", **tags})
    items = list(params.items())
    from mlflow.entities import Param

    for i in range(0, len(items), 90):
        c.log_batch(run.info.run_id, params=[Param(k, str(v)[:6000]) for k, v in items[i:i + 90]])
    return run.info.run_id


def finish_pipeline_run(run_id: str, ok: bool, failed_stage: str | None = None, message: str = "") -> None:
    c = client()
    if failed_stage:
        c.set_tag(run_id, FAILED_STAGE_TAG, failed_stage)
    if message:
        c.set_tag(run_id, "convrl.message", message[:5000])
    c.set_terminated(run_id, "FINISHED" if ok else "FAILED")


def find_run_by_tag(key: str, value: str) -> str | None:
    if not value:
        return None
    experiments = [e.experiment_id for e in client().search_experiments()]
    if not experiments:
        return None
    runs = client().search_runs(experiments, filter_string=f"tags.`{key}` = '{value}'", max_results=1)
    return runs[0].info.run_id if runs else None


def get_run(run_id: str):
    return client().get_run(run_id)


class StageRun:
    """Handle for the nested run of one stage; thin wrappers keep call sites short."""

    def __init__(self, run_id: str, parent_run_id: str):
        self.run_id = run_id
        self.parent_run_id = parent_run_id

    def log_metrics(self, metrics: dict[str, float], step: int | None = None, parent: bool = False) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        clean = [Metric(k, float(v), ts, step or 0) for k, v in metrics.items() if v == v and v is not None]
        for rid in [self.run_id] + ([self.parent_run_id] if parent else []):
            for i in range(0, len(clean), 500):
                client().log_batch(rid, metrics=clean[i:i + 500])

    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        client().log_batch(self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()])

    def set_tags(self, tags: dict[str, str], parent: bool = False) -> None:
        for rid in [self.run_id] + ([self.parent_run_id] if parent else []):
            for k, v in tags.items():
                client().set_tag(rid, k, str(v)[:5000])

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            client().log_artifacts(self.run_id, str(path), artifact_path)
        else:
            client().log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Any, name: str) -> None:
        client().log_dict(self.run_id, data, name)

    def log_text(self, text: str, name: str) -> None:
        client().log_text(self.run_id, text, name)

    def log_figure(self, fig, name: str) -> None:
        client().log_figure(self.run_id, fig, name)

    def log_table(self, df, name: str) -> None:
        client().log_table(self.run_id, data=df, artifact_file=name)

    def log_dataset(self, df, name: str, context: str, source: str) -> None:
        """Record a dataset as an MLflow run input (shows in the UI's Datasets column)."""
        mlflow = _mlflow()
        ds = mlflow.data.from_pandas(df, source=source, name=name)
        from mlflow.entities import DatasetInput, InputTag

        client().log_inputs(self.run_id, [DatasetInput(ds._to_mlflow_entity(), [InputTag("mlflow.data.context",
                                                                                          context)])])

    def log_pyfunc(self, name: str, python_model: Any, artifacts: dict[str, str],
                   params: dict[str, Any] | None = None, metrics: dict[str, float] | None = None) -> str:
        """Log a LoggedModel (pyfunc wrapping local files); returns its ``models:/m-...`` URI."""
        mlflow = _mlflow()
        with _active(self.run_id):
            info = mlflow.pyfunc.log_model(
                name=name, python_model=python_model, artifacts=artifacts,
                pip_requirements=["convrl", "torch", "transformers", "peft"],
                params=params)
            if metrics:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, model_id=info.model_id)
        return info.model_uri


@contextlib.contextmanager
def _active(run_id: str) -> Iterator[None]:
    mlflow = _mlflow()
    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    with mlflow.start_run(run_id=run_id, nested=active is not None):
        yield


@contextlib.contextmanager
def stage_run(parent_run_id: str, stage: str, experiment: str) -> Iterator[StageRun]:
    """A nested run for one stage; on error the parent is marked FAILED with the stage named."""
    c = client()
    run = c.create_run(experiment_id(experiment), run_name=stage,
                       tags={"mlflow.parentRunId": parent_run_id, STAGE_TAG: stage})
    handle = StageRun(run.info.run_id, parent_run_id)
    try:
        yield handle
    except BaseException as exc:
        c.set_terminated(run.info.run_id, "FAILED")
        with contextlib.suppress(Exception):
            finish_pipeline_run(parent_run_id, ok=False, failed_stage=stage,
                                message=f"{type(exc).__name__}: {exc}")
        raise
    c.set_terminated(run.info.run_id, "FINISHED")


def stage_runs(parent_run_id: str) -> list[Any]:
    run = client().get_run(parent_run_id)
    return client().search_runs([run.info.experiment_id],
                                filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'")


def download(uri: str, dst: str | None = None) -> str:
    mlflow = _mlflow()
    return mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=dst or tempfile.mkdtemp())


# ---------------------------------------------------------------- registry

def register(model_uri: str, name: str, tags: dict[str, str]) -> str:
    mlflow = _mlflow()
    c = client()
    with contextlib.suppress(Exception):
        c.create_registered_model(name)
    mv = mlflow.register_model(model_uri, name, tags=tags)
    return str(mv.version)


def find_version_by_tag(name: str, key: str, value: str) -> str | None:
    c = client()
    try:
        versions = c.search_model_versions(f"name = '{name}'")
    except Exception:
        return None
    for v in versions:
        if v.tags.get(key) == value:
            return str(v.version)
    return None


def alias_version(name: str, alias: str) -> str | None:
    try:
        return str(client().get_model_version_by_alias(name, alias).version)
    except Exception:
        return None


def set_alias(name: str, alias: str, version: str) -> None:
    client().set_registered_model_alias(name, alias, version)


def set_version_tags(name: str, version: str, tags: dict[str, str]) -> None:
    for k, v in tags.items():
        client().set_model_version_tag(name, version, k, str(v))


def version_info(name: str, version: str) -> dict[str, Any]:
    v = client().get_model_version(name, version)
    return {"version": str(v.version), "source": v.source, "run_id": v.run_id, "tags": dict(v.tags),
            "aliases": list(getattr(v, "aliases", []) or [])}


def registered_model(name: str) -> dict[str, Any] | None:
    try:
        rm = client().get_registered_model(name)
    except Exception:
        return None
    return {"name": rm.name, "aliases": dict(rm.aliases or {}), "tags": dict(rm.tags or {})}


def set_model_tag(name: str, key: str, value: str) -> None:
    client().set_registered_model_tag(name, key, value)


def resolve_model_dir(uri: str) -> str:
    """``models:/name@alias`` / ``models:/m-...`` / a run artifact -> a local HF dir."""
    local = download(uri)
    cand = Path(local) / "artifacts" / "hf_dir"
    if cand.exists():
        return str(cand)
    for p in Path(local).rglob("config.json"):
        return str(p.parent)
    raise FileNotFoundError(f"{uri} holds no Hugging Face checkpoint (no config.json)")


def dump_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)


def runs_frame(experiment: str, parent_run_id: str | None = None):
    """Runs of an experiment as a pandas DataFrame (metrics.*, params.*, tags.* columns)."""
    mlflow = _mlflow()
    flt = f"tags.mlflow.parentRunId = '{parent_run_id}'" if parent_run_id else ""
    return mlflow.search_runs(experiment_names=[experiment], filter_string=flt)


def log_model_metrics(model_uri: str, metrics: dict[str, float], run_id: str) -> None:
    """Attach metrics to a LoggedModel (``models:/m-...``), e.g. evaluation headlines on the candidate."""
    mlflow = _mlflow()
    model_id = model_uri.split("models:/", 1)[-1].split("/", 1)[0]
    clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and v == v}
    with _active(run_id):
        mlflow.log_metrics(clean, model_id=model_id)
