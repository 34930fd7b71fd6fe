"""Components run on their own: through ``.python_func`` and through kfp.local."""

import json

import pandas as pd
import pytest

from convrl import stages, tracking
from convrl.components import stages as comps
from tests.kfp_fakes import _Art, _Metrics


@pytest.fixture(scope="module")
def parent(mlflow_store, tiny_cfg):
    return stages.begin(tiny_cfg, "components-test")


def _ingest(tiny_cfg, parent, tmp_path):
    """The cached ingest step, then its record step under ``parent``: (turns, personas, metrics) artifacts."""
    from convrl.stages.cached import stage_config

    t, p, q, s, m = (_Art(tmp_path / "turns.parquet"), _Art(tmp_path / "personas.parquet"),
                     _Art(tmp_path / "q.parquet"), _Art(tmp_path / "summary.json"), _Metrics(tmp_path / "m"))
    comps.ingest.python_func(data_config=stage_config(tiny_cfg, "ingest"), data_fingerprint="f", turns=t,
                             personas=p, quarantine=q, summary=s)
    comps.record_ingest.python_func(config_json=tiny_cfg.to_json(), parent_run_id=parent, turns=t, personas=p,
                                    quarantine=q, summary=s, metrics=m)
    return t, p, m


def _validate(tiny_cfg, parent, tmp_path, t, p):
    from convrl.stages.cached import stage_config

    rep, md, res = _Art(tmp_path / "r.html"), _Art(tmp_path / "r.md"), _Art(tmp_path / "results.json")
    comps.validate.python_func(validate_config=stage_config(tiny_cfg, "validate"), turns=t, personas=p,
                               report=rep, report_md=md, results=res)  # never raises: the record step does
    comps.record_validation.python_func(config_json=tiny_cfg.to_json(), parent_run_id=parent, results=res)
    return rep


def test_ingest_and_validate_via_python_func(tiny_cfg, parent, tmp_path):
    t, p, m = _ingest(tiny_cfg, parent, tmp_path)
    assert m.logged["conversations"] > 0
    assert len(pd.read_parquet(t.path)) > 0
    rep = _validate(tiny_cfg, parent, tmp_path, t, p)
    assert "<html" in open(rep.path).read().lower()
    stages_logged = {r.data.tags[tracking.STAGE_TAG] for r in tracking.stage_runs(parent)}
    assert {"ingest", "validate"} <= stages_logged


def test_validate_failure_names_the_expectation(tiny_cfg, mlflow_store, tmp_path):
    from convrl.data_checks.runner import DataValidationError

    parent = stages.begin(tiny_cfg, "components-validate-fails")
    t, p, _ = _ingest(tiny_cfg, parent, tmp_path)
    df = pd.read_parquet(t.path)
    df.loc[0, "role"] = "robot"
    df.to_parquet(t.path, index=False)
    with pytest.raises(DataValidationError, match="robot"):
        _validate(tiny_cfg, parent, tmp_path, t, p)
    run = tracking.get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags[tracking.FAILED_STAGE_TAG] == "validate"


def test_ingest_input_error_is_recorded_under_the_stage(tiny_cfg, mlflow_store, tmp_path):
    """A missing source does not fail the cached step (it would fail the same way on the same inputs): the
    record step raises it inside the ingest stage run, which names the stage on the parent run."""
    from convrl.config import load_config
    from convrl.data.sources.base import IngestError

    cfg = load_config("tiny", [f"data.sources=[jsonl:{tmp_path / 'nope.jsonl'}]"])
    parent = stages.begin(cfg, "components-ingest-fails")
    with pytest.raises(IngestError, match="does not exist"):
        _ingest(cfg, parent, tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text())["error"]["type"] == "IngestError"
    run = tracking.get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags[tracking.FAILED_STAGE_TAG] == "ingest"
    assert "does not exist" in run.data.tags["convrl.message"]


def test_ab_compare_component_via_kfp_local(tiny_cfg, mlflow_store, tmp_path):
    from kfp import dsl, local

    parent = stages.begin(tiny_cfg, "ab-kfp-local")
    rng = __import__("numpy").random.default_rng(0)
    rows = []
    for model, shift in (("candidate", 0.2), ("baseline", 0.0)):
        for i in range(30):
            base = rng.uniform(0.2, 0.6)
            rows.append({"model": model, "prompt_id": f"p{i}", "composite": base + shift,
                         **{h: base + shift for h in ("quality", "personality", "engagement", "relevance")}})
    # Identical per-prompt base scores: the candidate wins every prompt by 0.2.
    df = pd.DataFrame(rows)
    df.loc[df.model == "baseline", ["composite", "quality", "personality", "engagement", "relevance"]] = (
        df.loc[df.model == "candidate", ["composite", "quality", "personality", "engagement", "relevance"]].values - 0.2)
    path = tmp_path / "scores.parquet"
    df.to_parquet(path, index=False)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "root"))

    @dsl.pipeline
    def ab_only(config_json: str, parent_run_id: str):
        scores = dsl.importer(artifact_uri=str(path), artifact_class=dsl.Dataset)
        comps.ab_compare(config_json=config_json, parent_run_id=parent_run_id, scores=scores.output)

    task = ab_only(config_json=tiny_cfg.to_json(), parent_run_id=parent)
    assert task is not None
    run = tracking.get_run(parent)
    assert run.data.tags["convrl.decision"] == "promote"
