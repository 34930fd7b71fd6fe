"""The compiled pipeline is committed and fresh, and has the stages and gates it promises."""

import yaml

from convrl.pipelines.conversational_rl import COMPILED, compile_pipeline


def test_committed_yaml_is_fresh(tmp_path):
    fresh = compile_pipeline(tmp_path / "p.yaml")
    assert COMPILED.exists(), "run `convrl compile` and commit pipelines/compiled/conversational_rl.yaml"
    assert list(yaml.safe_load_all(fresh.read_text())) == list(yaml.safe_load_all(COMPILED.read_text())), (
        "pipelines/compiled/conversational_rl.yaml is stale: run `convrl compile` and commit it")


def test_pipeline_structure():
    spec, platform = list(yaml.safe_load_all(COMPILED.read_text()))
    comps = set(spec["components"])
    for stage in ("ingest", "validate", "train-reward-models", "rl-finetune", "evaluate", "ab-compare",
                  "register-candidate", "promote", "start-tracking", "finish-tracking"):
        assert f"comp-{stage}" in comps, stage
    text = COMPILED.read_text()
    assert "== 'promote'" in text  # promotion is gated by dsl.If on the decision
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"config_name", "overrides", "run_name", "parent_run_id", "data_sources", "personas", "reward_weights",
            "rl_max_steps", "rl_algorithm", "ab_min_improvement", "ab_guardrail_margin"} <= set(params)
    execs = spec["deploymentSpec"]["executors"]
    for ex in execs.values():
        assert "pip install" not in " ".join(ex["container"].get("command", [])), "components must not pip install"


def test_cluster_settings_and_no_secrets_in_yaml():
    import re

    spec, platform = list(yaml.safe_load_all(COMPILED.read_text()))
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    rl = next(v for k, v in execs.items() if "rl-finetune" in k)
    assert rl["secretAsEnv"][0]["secretName"] == "convrl-mlflow-client"
    assert any(t.get("key") == "nvidia.com/gpu" for t in rl.get("tolerations", []))
    res = spec["deploymentSpec"]["executors"]["exec-rl-finetune"]["container"]["resources"]
    assert res["accelerator"]["resourceCount"] == "1"
    text = COMPILED.read_text()
    # Credentials come from the Secret at run time; nothing that looks like one is compiled in.
    for pattern in (r"://[^/\s:]+:[^@\s]+@", r"(?i)(password|secret_access_key|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}",
                    r"AKIA[0-9A-Z]{16}"):
        assert not re.search(pattern, text), pattern
