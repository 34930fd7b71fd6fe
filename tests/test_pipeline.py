"""The compiled pipeline is committed and fresh, and has the stages and gates it promises."""

import yaml

from convrl.pipelines.conversational_rl import COMPILED, compile_pipeline


def test_committed_yaml_is_fresh(tmp_path):
    fresh = compile_pipeline(tmp_path / "p.yaml")
    assert COMPILED.exists(), "run `convrl compile` and commit pipelines/compiled/conversational_rl.yaml"
    assert yaml.safe_load(fresh.read_text()) == yaml.safe_load(COMPILED.read_text()), (
        "pipelines/compiled/conversational_rl.yaml is stale: run `convrl compile` and commit it")


def test_pipeline_structure():
    spec = yaml.safe_load(COMPILED.read_text())
    comps = set(spec["components"])
    for stage in ("ingest", "validate", "train-reward-models", "rl-finetune", "evaluate", "ab-compare",
                  "register-candidate", "promote", "start-tracking", "finish-tracking"):
        assert f"comp-{stage}" in comps, stage
    text = COMPILED.read_text()
    assert "== 'promote'" in text  # promotion is gated by dsl.If on the decision
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"config_name", "overrides", "run_name", "parent_run_id"} <= set(params)
    execs = spec["deploymentSpec"]["executors"]
    for ex in execs.values():
        assert "pip install" not in " ".join(ex["container"].get("command", [])), "components must not pip install"
