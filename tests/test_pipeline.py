"""The compiled pipeline is committed and fresh, has the stages and gates it promises, and carries what a cluster needs."""

import inspect
import re

import pytest
import yaml

from convrl.config import ConfigError, load_config
from convrl.config.cluster import DEFAULT_IMAGE
from convrl.pipelines import conversational_rl as pipe
from convrl.pipelines.parameters import split_overrides, ui_overrides

IMAGE = "registry.example.com/team/convrl:1.2.3"


def compiled(tmp_path, preset: str, overrides=(), image: str = IMAGE):
    cluster = load_config(preset, list(overrides)).cluster
    spec, platform = list(yaml.safe_load_all(pipe.compile_pipeline(cluster, image, tmp_path / f"{preset}.yaml",
                                                                   preset).read_text()))
    return spec, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_committed_yaml_is_fresh(tmp_path):
    cluster = load_config("cluster").cluster
    fresh = pipe.compile_pipeline(cluster, cluster.image, tmp_path / "p.yaml", "cluster")
    assert pipe.COMPILED.exists(), "run `convrl compile` and commit pipelines/compiled/conversational_rl.yaml"
    assert list(yaml.safe_load_all(fresh.read_text())) == list(yaml.safe_load_all(pipe.COMPILED.read_text())), (
        "pipelines/compiled/conversational_rl.yaml is stale: run `convrl compile` and commit it")


def test_pipeline_structure():
    spec, platform = list(yaml.safe_load_all(pipe.COMPILED.read_text()))
    comps = set(spec["components"])
    for stage in ("ingest", "validate", "train-reward-models", "rl-finetune", "evaluate", "ab-compare",
                  "register-candidate", "promote", "start-tracking", "finish-tracking"):
        assert f"comp-{stage}" in comps, stage
    assert "== 'promote'" in pipe.COMPILED.read_text()  # promotion is gated by dsl.If on the decision
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert {"config_name", "overrides", "run_name", "parent_run_id", "data_sources", "personas", "reward_weights",
            "rl_max_steps", "rl_algorithm", "ab_min_improvement", "ab_guardrail_margin"} <= set(params)
    for ex in spec["deploymentSpec"]["executors"].values():
        assert "pip install" not in " ".join(ex["container"].get("command", [])), "components must not pip install"


def test_image_and_default_preset_come_from_the_arguments(tmp_path):
    spec, _ = compiled(tmp_path, "cluster-cpu")
    assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} == {IMAGE}
    # A run started from the KFP UI gets the preset the package was compiled with, not the laptop demo.
    assert spec["root"]["inputDefinitions"]["parameters"]["config_name"]["defaultValue"] == "cluster-cpu"
    # Compiling with other settings swaps no global: the laptop pipeline keeps its demo default and no image.
    assert inspect.signature(pipe.conversational_rl.pipeline_func).parameters["config_name"].default == "demo"
    with pytest.raises(ValueError, match="image"):
        pipe.compile_pipeline(load_config("cluster").cluster, "", tmp_path / "x.yaml")


def test_tracking_secret_is_required_and_nothing_secret_is_compiled(tmp_path):
    spec, execs = compiled(tmp_path, "cluster")
    assert set(execs) == set(spec["deploymentSpec"]["executors"])  # every step, the exit handler too
    for name, ex in execs.items():
        (mlflow,) = [s for s in ex["secretAsEnv"] if s["secretName"] == "convrl-mlflow-client"]
        # KFP < 2.15 ignores `optional` and requires every key, so map only keys the documented secret holds.
        assert mlflow["keyToEnv"] == [{"envVar": "MLFLOW_TRACKING_URI", "secretKey": "MLFLOW_TRACKING_URI"}], name
        assert not mlflow.get("optional"), name
        env = {e["name"]: e["value"] for e in spec["deploymentSpec"]["executors"][name]["container"]["env"]}
        assert env["CONVRL_ON_CLUSTER"] == "1" and env["HF_HUB_OFFLINE"] == "0", name
    text = pipe.COMPILED.read_text()
    for pattern in (r"://[^/\s:]+:[^@\s]+@", r"(?i)(password|secret_access_key|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+]{8,}",
                    r"AKIA[0-9A-Z]{16}"):
        assert not re.search(pattern, text), pattern


def test_gpu_steps_and_the_model_cache_only_where_used(tmp_path):
    spec, execs = compiled(tmp_path, "cluster")
    res = spec["deploymentSpec"]["executors"]["exec-rl-finetune"]["container"]["resources"]
    assert res["accelerator"]["resourceCount"] == "1" and res["accelerator"]["resourceType"] == "nvidia.com/gpu"
    rl = execs["exec-rl-finetune"]
    assert rl["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert "nodeSelector" not in rl  # GKE/AKS GPU nodes carry no GPU Feature Discovery labels
    assert rl["pvcMount"][0]["mountPath"] == "/mnt/model-cache"
    for light in ("exec-ab-compare", "exec-start-tracking", "exec-finish-tracking", "exec-validate", "exec-promote"):
        assert "pvcMount" not in execs[light] and "tolerations" not in execs[light], light
        assert "accelerator" not in spec["deploymentSpec"]["executors"][light]["container"].get("resources", {})


def test_cluster_cpu_preset_needs_no_gpu_and_no_rwx_storage(tmp_path):
    spec, execs = compiled(tmp_path, "cluster-cpu")
    for name, ex in spec["deploymentSpec"]["executors"].items():
        assert "accelerator" not in ex["container"].get("resources", {}), name
        assert not {"pvcMount", "tolerations", "nodeSelector"} & set(execs[name]), name
        env = {e["name"]: e["value"] for e in ex["container"]["env"]}
        assert env["HF_HUB_OFFLINE"] == "1" and "HF_HOME" not in env, name


def test_mappings_pull_secrets_and_hub_token(tmp_path):
    _, execs = compiled(tmp_path, "cluster", [
        "cluster.node_selector={cloud.google.com/gke-accelerator: nvidia-l4}",
        "cluster.tolerations=[{key: dedicated, operator: Equal, value: ml, effect: NoExecute, tolerationSeconds: 60}]",
        "cluster.image_pull_secrets=[regcred]", "cluster.hf_token_secret=hf-token", "cluster.data_secret=s3-data",
        "cluster.mlflow_secret_keys=[MLFLOW_TRACKING_URI, MLFLOW_TRACKING_USERNAME, MLFLOW_TRACKING_PASSWORD]"])
    rl = execs["exec-rl-finetune"]
    assert rl["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert rl["tolerations"] == [{"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute",
                                  "tolerationSeconds": "60"}]
    assert [s["secretName"] for s in rl["imagePullSecret"]] == ["regcred"]
    assert {s["secretName"] for s in rl["secretAsEnv"]} == {"convrl-mlflow-client", "hf-token"}
    assert len(next(s for s in rl["secretAsEnv"] if s["secretName"] == "convrl-mlflow-client")["keyToEnv"]) == 3
    assert "hf-token" not in {s["secretName"] for s in execs["exec-ab-compare"]["secretAsEnv"]}
    # The data secret goes to the steps that read the sources: ingest, and the fingerprint of their versions.
    readers = {"exec-ingest", "exec-fingerprint-data"}
    for name in readers:
        (data,) = [s for s in execs[name]["secretAsEnv"] if s["secretName"] == "s3-data"]
        assert [k["envVar"] for k in data["keyToEnv"]] == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
        assert "hf-token" in {s["secretName"] for s in execs[name]["secretAsEnv"]}  # hub dataset revisions
    assert "pvcMount" not in execs["exec-fingerprint-data"]
    assert all(s["secretName"] != "s3-data" for name, ex in execs.items() if name not in readers
               for s in ex["secretAsEnv"])


@pytest.mark.parametrize("override, message", [
    ("cluster.tolerations=['nvidia.com/gpu:Exists:NoSchedule']", "must be a mapping"),
    ("cluster.tolerations=[{key: a, operator: Exists, value: b}]", "Exists takes no value"),
    ("cluster.tolerations=[{key: a, effect: Sometimes}]", "NoSchedule"),
    ("cluster.gpu_stages=[rl]", "unknown stages"),
    ("cluster.mlflow_secret_keys=[MLFLOW_TRACKING_USERNAME]", "MLFLOW_TRACKING_URI"),
])
def test_bad_cluster_settings_say_what_to_write(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("cluster", [override])


def test_ui_parameters_map_to_overrides():
    assert split_overrides("rl.max_steps=3; eval.num_prompts=4\nrl.beta=0.1") == [
        "rl.max_steps=3", "eval.num_prompts=4", "rl.beta=0.1"]
    ov = ui_overrides(data_sources="chatterbot:english, jsonl:/d/a.jsonl", personas="calm_expert",
                      reward_weights="quality=0.5, personality=0.2", rl_max_steps=7, rl_algorithm="grpo",
                      ab_min_improvement="0.01")
    assert ov == ['data.sources=["chatterbot:english", "jsonl:/d/a.jsonl"]', "data.personas=[calm_expert]",
                  "rewards.weights.quality=0.5", "rewards.weights.personality=0.2", "rl.max_steps=7",
                  "rl.algorithm=grpo", "ab.min_improvement=0.01"]
    assert ui_overrides() == []
    with pytest.raises(ConfigError, match="head=weight"):
        ui_overrides(reward_weights="quality")
    with pytest.raises(ConfigError, match="must be a number"):
        ui_overrides(ab_guardrail_margin="five percent")
    cfg = load_config("cluster", ov[1:])
    assert cfg.rewards.weights["quality"] == 0.5 and cfg.rl.max_steps == 7


def test_default_image_has_one_home():
    from convrl.components import stages

    assert stages.start_tracking.component_spec.implementation.container.image == DEFAULT_IMAGE
    assert load_config("cluster").cluster.image == DEFAULT_IMAGE


def test_remote_sources_are_copied_once_and_refreshed_when_changed(tmp_path):
    import fsspec

    from convrl.data.sources.remote import localize_sources

    fs = fsspec.filesystem("memory")
    fs.pipe("/team-data/chats.jsonl", b'{"messages": []}\n')
    cfg = load_config("cluster", ["data.sources=[chatterbot:english, 'jsonl:memory://team-data/chats.jsonl?cap=5', "
                                  "'hf:org/name?hf_split=train']"])
    local_cfg = localize_sources(cfg, cache=tmp_path)
    copy = tmp_path / "memory" / "team-data" / "chats.jsonl"
    assert local_cfg.data.sources == ["chatterbot:english", f"jsonl:{copy}?cap=5", "hf:org/name?hf_split=train"]
    assert copy.read_bytes() == b'{"messages": []}\n' and cfg.data.sources[1].startswith("jsonl:memory://")
    copy.write_bytes(b"stale but unchanged upstream")
    localize_sources(cfg, cache=tmp_path)
    assert copy.read_bytes() == b"stale but unchanged upstream"  # same object version: no second download
    fs.pipe("/team-data/chats.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    localize_sources(cfg, cache=tmp_path)
    assert b"hi" in copy.read_bytes()  # the object changed: refreshed
    assert localize_sources(load_config("cluster"), cache=tmp_path) == load_config("cluster")
    with pytest.raises(ConfigError, match="does not exist"):
        localize_sources(load_config("cluster", ["data.sources=['jsonl:memory://team-data/nope.jsonl']"]),
                         cache=tmp_path)


def test_compiled_specs_parse_as_the_kfp_backend_reads_them():
    """The API server unmarshals the pipeline spec strictly (protojson); the driver reads each executor's
    Kubernetes config into KubernetesExecutorConfig. Both must parse with the published protos."""
    from google.protobuf import json_format
    from kfp.kubernetes import kubernetes_executor_config_pb2
    from kfp.pipeline_spec import pipeline_spec_pb2

    spec, platform = list(yaml.safe_load_all(pipe.COMPILED.read_text()))
    json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec(), ignore_unknown_fields=False)
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec(), ignore_unknown_fields=False)
    for name, executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].items():
        cfg = json_format.ParseDict(executor, kubernetes_executor_config_pb2.KubernetesExecutorConfig(),
                                    ignore_unknown_fields=False)
        assert cfg.secret_as_env[0].secret_name_parameter.runtime_value.constant.string_value or \
            cfg.secret_as_env[0].secret_name, name


def test_gs_sources_go_through_gcsfs_and_the_same_copy_path(tmp_path):
    """gs:// is served by gcsfs (installed with convrl, as s3fs is). Without network, a memory filesystem
    stands in for GCS under the gs protocol, with GCS's object metadata (generation, md5Hash), to run the
    same localize / fingerprint code the ingest step runs on a cluster."""
    import fsspec
    from fsspec.config import set_conf_env
    from fsspec.implementations.memory import MemoryFileSystem

    assert fsspec.get_filesystem_class("gs").__module__.startswith("gcsfs")
    # docs/cluster.md: a service-account key in FSSPEC_GS_TOKEN (a Secret key) becomes gcsfs's token.
    conf: dict = {}
    set_conf_env(conf, {"FSSPEC_GS_TOKEN": '{"type": "service_account", "client_email": "x@y.iam"}'})
    assert conf["gs"]["token"]["type"] == "service_account"

    class FakeGCS(MemoryFileSystem):
        protocol = ("gs", "gcs")
        store, pseudo_dirs = {}, [""]
        generation = {}

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(path.removeprefix("gs://").removeprefix("gcs://"))

        def pipe_file(self, path, value, **kwargs):
            super().pipe_file(path, value, **kwargs)
            self.generation[self._strip_protocol(path)] = self.generation.get(self._strip_protocol(path), 0) + 1

        def info(self, path, **kwargs):
            info = super().info(path, **kwargs)
            if info["type"] == "file":  # GCS's version fields; no mtime
                info.pop("created", None)
                info.update(generation=str(self.generation[self._strip_protocol(path)]), md5Hash="x")
            return info

    gcs = fsspec.get_filesystem_class("gs")
    fsspec.register_implementation("gs", FakeGCS, clobber=True)
    try:
        _localize_and_fingerprint_gs(FakeGCS(), tmp_path)
    finally:
        fsspec.register_implementation("gs", gcs, clobber=True)


def _localize_and_fingerprint_gs(fs, tmp_path):
    from convrl.data.fingerprint import source_fingerprint
    from convrl.data.sources.remote import localize_sources

    fs.pipe("gs://corpora/chats/a.jsonl", b'{"messages": []}\n')
    cfg = load_config("cluster", ["data.sources=['jsonl:gs://corpora/chats/a.jsonl?cap=5', 'dir:gs://corpora/chats']"])
    local_cfg = localize_sources(cfg, cache=tmp_path)
    copy = tmp_path / "gs" / "corpora" / "chats" / "a.jsonl"
    assert local_cfg.data.sources == [f"jsonl:{copy}?cap=5", f"dir:{tmp_path / 'gs' / 'corpora' / 'chats'}"]
    assert copy.read_bytes() == b'{"messages": []}\n'
    before = source_fingerprint(cfg.data.sources[0])
    assert before == source_fingerprint(cfg.data.sources[0])
    fs.pipe("gs://corpora/chats/a.jsonl", b'{"messages": []}\n')  # same bytes, a new object generation
    assert source_fingerprint(cfg.data.sources[0]) != before
    fs.pipe("gs://corpora/chats/a.jsonl", b'{"messages": [{"role": "user", "content": "hi"}]}\n')
    localize_sources(cfg, cache=tmp_path)
    assert b"hi" in copy.read_bytes()  # a new generation: copied again
    with pytest.raises(ConfigError, match="does not exist"):
        localize_sources(load_config("cluster", ["data.sources=['jsonl:gs://corpora/none.jsonl']"]), cache=tmp_path)
