"""MLflow side of production monitoring: the monitoring run, GenAI evaluation over traces, alert tags.

``convrl monitor`` scores served turns with the reward heads and the judges
(:mod:`convrl.monitoring`), then records the result here:

* :func:`monitor_run` opens a run in the serving experiment (beside the traces)
  for the tables, plots and metrics of one monitoring pass;
* :func:`evaluate_traces` runs ``mlflow.genai.evaluate`` over the scored traces
  with one custom scorer per score column, and session-level scorers
  (``session_<metric>``) for per-session means. The scorers return the scores already
  computed in one batched pass (scoring trace by trace would run the encoder once
  per reply), so MLflow stores them as assessments on each trace and the
  Evaluations and Traces views show them. Checked offline on the SQLite store
  (MLflow 3.17): evaluate runs without any hosted service when every scorer is a
  custom one. Should it fail (an old server without assessments), the error says
  so and the monitoring run still holds every score as a table;
* :func:`tag_versions` writes ``convrl.monitor.*`` tags on registered versions.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pandas as pd

from convrl import tracking

MONITOR_TAG = "convrl.monitor"
SESSION_KEY = "mlflow.trace.session"


@contextlib.contextmanager
def monitor_run(experiment: str, run_name: str, tags: dict[str, str]) -> Iterator[tracking.StageRun]:
    """A run for one monitoring (or online A/B) pass; FAILED if the body raises."""
    c = tracking.client()
    run = c.create_run(tracking.experiment_id(experiment), run_name=run_name, tags={MONITOR_TAG: "true", **tags})
    handle = tracking.StageRun(run.info.run_id, run.info.run_id)
    try:
        yield handle
    except BaseException:
        c.set_terminated(run.info.run_id, "FAILED")
        raise
    c.set_terminated(run.info.run_id, "FINISHED")


def evaluate_traces(experiment: str, scores: pd.DataFrame, columns: list[str], run_id: str,
                    sessions: pd.DataFrame | None = None) -> dict[str, float]:
    """Attach ``scores[columns]`` (indexed by trace id) to the traces as assessments via ``mlflow.genai.evaluate``.

    ``sessions`` (indexed by session id) adds one session-level scorer per column,
    ``session_<column>``: MLflow calls it once per session (``mlflow.trace.session``)
    and stores the value on the session's first trace not assessed before. Traces a
    previous pass assessed are skipped. Returns the evaluation's aggregate metrics
    (``<name>/mean``).
    """
    tracking.client()  # points mlflow at the configured store
    import mlflow
    from mlflow.entities import Feedback
    from mlflow.genai.scorers import scorer

    if scores.empty:
        return {}
    exp_id = tracking.experiment_id(experiment)
    first_ms = int(pd.Timestamp(scores["timestamp"].min()).timestamp() * 1000) if "timestamp" in scores else 0
    traces = mlflow.search_traces(locations=[exp_id], filter_string=f"trace.timestamp_ms >= {first_ms}")
    traces = traces[traces["trace_id"].isin(scores.index)]
    if traces.empty:
        raise RuntimeError(f"none of the {len(scores)} scored traces were found in experiment {experiment!r}")
    # Scheduled passes overlap (the baseline window spans days): assess each trace once, not once per pass.
    done = traces["assessments"].map(lambda found: any(
        a.get("assessment_name") == columns[0] and (a.get("source") or {}).get("source_type") == "CODE"
        for a in (found if isinstance(found, list) else [])))
    traces = traces[~done]
    if traces.empty:
        return {"already_assessed": float(int(done.sum()))}
    table = scores[columns].astype(float)

    def make(column: str):
        def fn(trace) -> Feedback:
            value = table.at[trace.info.trace_id, column]
            return Feedback(value=None if pd.isna(value) else float(value),
                            rationale="convrl monitor: reward heads" if not column.startswith("judge_")
                            else "convrl monitor: held-out judges")

        return scorer(fn, name=column)

    def make_session(column: str):
        # A `session` parameter is what makes MLflow treat a scorer as session-level.
        def fn(session) -> Feedback:
            sid = session[0].info.trace_metadata.get(SESSION_KEY)
            return Feedback(value=float(sessions.at[sid, column]), rationale="convrl monitor: per-session mean")

        return scorer(fn, name=f"session_{column}")

    scorers = [make(c) for c in columns]
    if sessions is not None and len(sessions):
        scorers += [make_session(c) for c in sessions.columns]
    with mlflow.start_run(run_id=run_id, nested=mlflow.active_run() is not None):
        result = mlflow.genai.evaluate(data=traces, scorers=scorers)
    return {"assessed": float(len(traces)), **{k: float(v) for k, v in (result.metrics or {}).items()}}


def tag_versions(model_name: str, tags_by_version: dict[str, dict[str, str]]) -> list[str]:
    """Set the tags on each version that exists; returns the versions tagged (unknown ones are skipped)."""
    done = []
    for version, tags in tags_by_version.items():
        try:
            tracking.version_info(model_name, version)
        except Exception:  # noqa: BLE001 - a version served from a path, not the registry
            continue
        tracking.set_version_tags(model_name, version, tags)
        done.append(version)
    return done
