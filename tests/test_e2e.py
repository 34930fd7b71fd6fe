"""The whole pipeline through kfp.local on the tiny config, and its failure path."""

import pytest

from convrl import tracking
from convrl.cli import main
from convrl.home import convrl_home
from tests.benches import load_bench


@pytest.mark.slow
def test_tiny_pipeline_end_to_end(mlflow_store, capsys):
    rc = main(["run", "--config", "tiny", "--run-name", "e2e-tiny"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    runs = tracking.client().search_runs(
        [tracking.experiment_id("convrl-tiny")], filter_string="attributes.run_name = 'e2e-tiny'")
    parent = runs[0]
    assert parent.info.status == "FINISHED"
    stages = {r.data.tags[tracking.STAGE_TAG]: r.info.status for r in tracking.stage_runs(parent.info.run_id)}
    assert {"ingest", "validate", "reward_models", "rl_finetune", "evaluate", "ab_compare", "register"} <= set(stages)
    assert all(s == "FINISHED" for s in stages.values()), stages
    m = parent.data.metrics
    assert "candidate_composite" in m and "baseline_composite" in m and "emotion/val_macro_f1" in m
    assert parent.data.params["rl.max_steps"] == "2"
    assert parent.data.tags["convrl.decision"] in {"promote", "reject", "inconclusive"}
    assert tracking.alias_version("convrl-policy", "challenger") is not None
    assert "A/B decision" in out and "Held-out evaluation" in out
    if parent.data.tags["convrl.decision"] == "promote":
        assert tracking.alias_version("convrl-policy", "champion") is not None
    # bench/learning_evidence.py (the README's learning table) reads exactly these from a run.
    evidence = load_bench("learning_evidence")
    decision = evidence._find_decision(convrl_home() / "runs" / "e2e-tiny")
    assert decision is not None and decision["outcome"] == parent.data.tags["convrl.decision"]
    row = evidence.summarize_seed({"seed": 13, "minutes": 1.0, "decision": decision, "metrics": m})
    assert None not in row["composite"] and None not in row["judge_composite"]
    assert 0.0 <= row["clipped_ratio_last"] <= 1.0
    assert None not in row["selfplay_repeat"] and None not in row["fact_recall"]
    assert "n/a" not in evidence.table([row])
    # bench/sampled_evaluation.py rebuilds the evaluate stage from the run's outputs: greedy, it reproduces the
    # stage's scores; sampled, it gives a paired difference per metric.
    import pandas as pd

    from convrl.config import load_config

    sampled = load_bench("sampled_evaluation")
    run_dir = convrl_home() / "runs" / "e2e-tiny"
    stage = pd.read_parquet(sampled.pipeline_root(run_dir) / "evaluate" / "scores")
    greedy = sampled.evaluate_sampled(run_dir, load_config("tiny"), 0.0, [0])
    for model in ("candidate", "baseline"):
        assert greedy[greedy.model == model].composite.mean() == pytest.approx(
            stage[stage.model == model].composite.mean(), abs=1e-6)
    rows = {r["metric"]: r for r in sampled.summary(sampled.evaluate_sampled(run_dir, load_config("tiny"), 0.7, [1]))}
    assert {"composite", "judge_composite", "personality"} <= set(rows)
    assert all(r["lo"] <= r["diff"] <= r["hi"] for r in rows.values())


@pytest.mark.slow
def test_failed_stage_marks_parent_failed(mlflow_store, tmp_path, capsys):
    missing = tmp_path / "nope.jsonl"
    rc = main(["run", "--config", "tiny", "--run-name", "e2e-fail", f"data.sources=[jsonl:{missing}]"])
    assert rc == 1
    runs = tracking.client().search_runs(
        [tracking.experiment_id("convrl-tiny")], filter_string="attributes.run_name = 'e2e-fail'")
    parent = runs[0]
    assert parent.info.status == "FAILED"
    assert parent.data.tags[tracking.FAILED_STAGE_TAG] == "ingest"
    assert "does not exist" in parent.data.tags["convrl.message"]
