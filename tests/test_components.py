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


def test_ingest_and_validate_via_python_func(tiny_cfg, parent, tmp_path):
    t, p, q, m = (_Art(tmp_path / "turns.parquet"), _Art(tmp_path / "personas.parquet"),
                  _Art(tmp_path / "q.parquet"), _Metrics(tmp_path / "m"))
    comps.ingest.python_func(config_json=tiny_cfg.to_json(), parent_run_id=parent, turns=t, personas=p,
                             quarantine=q, metrics=m)
    assert m.logged["conversations"] > 0
    assert len(pd.read_parquet(t.path)) > 0
    rep, md = _Art(tmp_path / "r.html"), _Art(tmp_path / "r.md")
    comps.validate.python_func(config_json=tiny_cfg.to_json(), parent_run_id=parent, turns=t, personas=p,
                               report=rep, report_md=md)
    assert "<html" in open(rep.path).read().lower()


def test_validate_failure_names_the_expectation(tiny_cfg, parent, tmp_path):
    from convrl.data_checks.runner import DataValidationError

    t, p, q, m = (_Art(tmp_path / "turns.parquet"), _Art(tmp_path / "personas.parquet"),
                  _Art(tmp_path / "q.parquet"), _Metrics(tmp_path / "m"))
    comps.ingest.python_func(config_json=tiny_cfg.to_json(), parent_run_id=parent, turns=t, personas=p,
                             quarantine=q, metrics=m)
    df = pd.read_parquet(t.path)
    df.loc[0, "role"] = "robot"
    df.to_parquet(t.path, index=False)
    with pytest.raises(DataValidationError, match="robot"):
        comps.validate.python_func(config_json=tiny_cfg.to_json(), parent_run_id=parent, turns=t, personas=p,
                                   report=_Art(tmp_path / "r.html"), report_md=_Art(tmp_path / "r.md"))
    run = tracking.get_run(parent)
    assert run.info.status == "FAILED" and run.data.tags[tracking.FAILED_STAGE_TAG] == "validate"


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
