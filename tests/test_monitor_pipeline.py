"""The monitoring pipeline: committed YAML is fresh, its structure and cluster settings, its components run."""

from __future__ import annotations

import json

import pytest
import yaml

from convrl.config import load_config
from convrl.pipelines import monitoring as pipe
from tests.kfp_fakes import _Art, _Metrics

IMAGE = "registry.example.com/team/convrl:1.2.3"


def test_committed_yaml_is_fresh(tmp_path):
    cluster = load_config("cluster").cluster
    fresh = pipe.compile_pipeline(cluster, cluster.image, tmp_path / "m.yaml", "cluster")
    assert pipe.COMPILED.exists(), "run `python -m convrl.pipelines.monitoring` and commit its YAML"
    assert list(yaml.safe_load_all(fresh.read_text())) == list(yaml.safe_load_all(pipe.COMPILED.read_text())), (
        "pipelines/compiled/monitoring.yaml is stale: run `python -m convrl.pipelines.monitoring` and commit it")


def test_structure_and_cluster_settings(tmp_path):
    cluster = load_config("cluster").cluster
    spec, platform = list(yaml.safe_load_all(pipe.compile_pipeline(cluster, IMAGE, tmp_path / "m.yaml").read_text()))
    assert spec["pipelineInfo"]["name"] == "convrl-monitoring"
    assert {"comp-monitor", "comp-online-ab"} <= set(spec["components"])
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"config_name", "overrides", "run_online_ab", "ab_since", "promote"}
    assert params["config_name"]["defaultValue"] == "cluster" and params["promote"]["defaultValue"] is False
    assert "online-ab-requested" in (tmp_path / "m.yaml").read_text()  # the A/B is gated by dsl.If
    execs = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-monitor", "exec-online-ab"):
        ex = execs[name]
        assert {s["secretName"] for s in ex["secretAsEnv"]} == {"convrl-mlflow-client"}
        assert ex["pvcMount"][0]["mountPath"] == cluster.model_cache_mount
        assert "tolerations" not in ex  # CPU steps
        container = spec["deploymentSpec"]["executors"][name]["container"]
        assert container["image"] == IMAGE and "accelerator" not in container.get("resources", {})
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["CONVRL_ON_CLUSTER"] == "1" and env["HF_HOME"] == cluster.model_cache_mount


def test_monitor_component_runs_the_stage(mlflow_store, tmp_path):
    from convrl.components.monitoring import monitor, online_ab

    summary, metrics = _Art(tmp_path / "summary.json"), _Metrics(tmp_path / "metrics")
    out = monitor.python_func(config_name="tiny", overrides="monitor.experiment=component-test", summary=summary,
                              metrics=metrics)
    assert out.alerts == 0 and out.run_id
    assert json.loads((tmp_path / "summary.json").read_text())["turns"] == 0
    assert metrics.logged == {"turns": 0.0, "sessions": 0.0, "alerts": 0.0}
    with pytest.raises(ValueError, match="no served turns"):
        online_ab.python_func(config_name="tiny", overrides="monitor.experiment=component-test", since="7d",
                              promote=False, decision=_Art(tmp_path / "d.json"))
