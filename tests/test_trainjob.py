"""rl.launcher=trainjob: the TrainJob manifest, submit/wait against a fake API, and the node entry point end to end."""

import json
import os
import re

import pandas as pd
import pytest
from kubernetes.client.exceptions import ApiException

from convrl import stages, tracking
from convrl.config import load_config
from convrl.stages import distributed_train as dt
from convrl.stages import trainjob as tj
from convrl.stages import trainjob_spec as spec
from tests.trainer_crds import RELEASES, crd_problems, crd_schema, prune

WORKDIR = "/mnt/model-cache/convrl-trainjobs/convrl-rl-0123456789ab"


OWNER = {"apiVersion": "v1", "kind": "Pod", "name": "convrl-rl-step-pod", "uid": "0b5c-uid"}


@pytest.fixture
def big_cfg():
    return load_config("cluster", ["rl.launcher=trainjob", "cluster.trainjob.num_nodes=2",
                                   "cluster.trainjob.gpus_per_node=8",
                                   "cluster.node_selector={cloud.google.com/gke-accelerator: nvidia-h100-80gb}",
                                   "cluster.image_pull_secrets=[regcred]", "cluster.hf_token_secret=hf-token"])


def build(cfg, version: str, owner=OWNER):
    cfg.cluster.trainjob.trainer_version = version
    return tj.build_trainjob("convrl-rl-0123456789ab", cfg, WORKDIR, "registry.example/convrl:7", "team-a", owner)


def node_pod(manifest) -> dict:
    """The pod patch, wherever this release's schema carries it."""
    spec = manifest["spec"]
    if "podSpecOverrides" in spec:
        (override,) = spec["podSpecOverrides"]
        assert override["targetJobs"] == [{"name": "node"}]
        return {k: v for k, v in override.items() if k != "targetJobs"}
    if "podTemplateOverrides" in spec:
        (override,) = spec["podTemplateOverrides"]
        assert override["targetJobs"] == [{"name": "node"}]
        return override["spec"]
    (patch,) = spec["runtimePatches"]
    (job,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert job["name"] == "node" and patch["manager"]
    return job["template"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("version", ["v2.1", "v2.2", "v2.3"])
def test_manifest_validates_against_the_upstream_crd(big_cfg, version):
    m = build(big_cfg, version)
    assert crd_problems(m, RELEASES[version]) == []
    for other, tag in RELEASES.items():
        if spec.OVERRIDE_FIELD[other] != spec.OVERRIDE_FIELD[version]:
            # The same job on another release loses its pod overrides: exactly what the step detects.
            assert any(p.startswith("pruned .spec.") for p in crd_problems(m, tag)), (version, tag)


def test_v2_0_has_no_image_pull_secrets(big_cfg):
    with pytest.raises(spec.TrainJobSpecError, match="v2.0 cannot set imagePullSecrets"):
        build(big_cfg, "v2.0")
    big_cfg.cluster.image_pull_secrets = []
    m = build(big_cfg, "v2.0")
    assert crd_problems(m, "v2.0.1") == [] and "podSpecOverrides" in m["spec"]


@pytest.mark.parametrize("version", list(RELEASES))
def test_manifest_fields(big_cfg, version):
    big_cfg.cluster.image_pull_secrets = [] if version == "v2.0" else ["regcred"]
    m = build(big_cfg, version)
    assert m["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and m["kind"] == "TrainJob"
    assert m["metadata"]["namespace"] == "team-a"
    assert m["metadata"]["ownerReferences"] == [{**OWNER, "blockOwnerDeletion": False, "controller": False}]
    assert m["spec"]["runtimeRef"] == {"name": "torch-distributed", "kind": "ClusterTrainingRuntime",
                                       "apiGroup": "trainer.kubeflow.org"}
    t = m["spec"]["trainer"]
    assert t["numNodes"] == 2 and t["image"] == "registry.example/convrl:7"
    assert t["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
    assert t["resourcesPerNode"]["requests"]["nvidia.com/gpu"] == "8"
    assert t["resourcesPerNode"]["requests"]["cpu"] == big_cfg.cluster.gpu_cpu_request
    assert "numProcPerNode" not in t  # the runtime's default: one process per GPU
    assert t["command"][0] == "torchrun" and "convrl.stages.distributed_train" in t["command"]
    assert t["args"] == ["--workdir", WORKDIR]
    # Secrets by reference and required: a missing one stops the pod instead of losing the tracking.
    env = {e["name"]: e for e in t["env"]}
    assert env["MLFLOW_TRACKING_URI"] == {"name": "MLFLOW_TRACKING_URI", "valueFrom": {"secretKeyRef": {
        "name": big_cfg.cluster.mlflow_secret, "key": "MLFLOW_TRACKING_URI"}}}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "HF_TOKEN"}
    assert "MLFLOW_TRACKING_PASSWORD" not in env  # only the keys the documented secret holds
    assert env["HF_HOME"]["value"] == big_cfg.cluster.model_cache_mount and env["HF_HUB_OFFLINE"]["value"] == "0"
    # The shared PVC is mounted where the pipeline step mounts it, so paths mean the same in both.
    pod = node_pod(m)
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["model-cache"]["persistentVolumeClaim"] == {"claimName": big_cfg.cluster.model_cache_pvc}
    (node,) = pod["containers"]
    mounts = {v["name"]: v["mountPath"] for v in node["volumeMounts"]}
    assert node["name"] == "node" and mounts["model-cache"] == big_cfg.cluster.model_cache_mount
    assert mounts["dshm"] == "/dev/shm" and vols["dshm"]["emptyDir"] == {"medium": "Memory"}
    assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert pod.get("imagePullSecrets", []) == [{"name": s} for s in big_cfg.cluster.image_pull_secrets]
    if version in ("v2.2", "v2.3"):
        assert m["spec"]["activeDeadlineSeconds"] == big_cfg.cluster.trainjob.timeout_s
    json.dumps(m)  # what the API server receives


def test_cpu_manifest_runs_one_process_per_node():
    cfg = load_config("cluster-cpu", ["cluster.trainjob.gpus_per_node=0", "cluster.model_cache_pvc=rwx-cache"])
    m = build(cfg, "v2.3", owner=None)
    assert crd_problems(m, "v2.3.0") == [] and "ownerReferences" not in m["metadata"]
    t = m["spec"]["trainer"]
    assert "nvidia.com/gpu" not in t["resourcesPerNode"]["limits"] and t["numProcPerNode"] == 1
    assert "nodeSelector" not in node_pod(m) and "tolerations" not in node_pod(m)
    with pytest.raises(spec.TrainJobSpecError, match="model_cache_pvc"):
        build(load_config("cluster-cpu"), "v2.3")


def test_job_name_is_a_dns_label():
    name = tj.job_name("0123456789ABCDEF0123456789abcdef")
    assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) and len(name) <= 63


# --------------------------------------------------------------------------- submit / wait on a fake API

class FakeApi:
    """The three CustomObjectsApi methods the launcher uses; `states` are the successive condition lists."""

    def __init__(self, states=((),), create_error=None, get_errors=(), on_create=None, crd: str | None = None):
        self.states, self.create_error, self.get_errors = list(states), create_error, list(get_errors)
        self.on_create, self.created, self.deleted, self.gets = on_create, [], [], 0
        self.crd = crd  # a vendored CRD tag: answer like an API server with that CRD installed (pruning)

    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        assert (group, version, plural) == ("trainer.kubeflow.org", "v1alpha1", "trainjobs")
        if self.create_error:
            raise self.create_error
        self.created.append(body)
        if self.on_create:
            self.on_create(body)
        return prune(body, crd_schema(self.crd), []) if self.crd else body

    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.gets += 1
        if self.get_errors:
            raise self.get_errors.pop(0)
        conds = self.states.pop(0) if len(self.states) > 1 else self.states[0]
        return {"metadata": {"name": name}, "status": {"conditions": list(conds)}}

    def delete_namespaced_custom_object(self, group, version, namespace, plural, name):
        self.deleted.append(name)


def cond(type_, message="", reason=""):
    return {"type": type_, "status": "True", "reason": reason, "message": message}


def quiet(_):
    pass


def manifest(tiny_cfg):
    return tj.build_trainjob("convrl-rl-test", tiny_cfg, WORKDIR, "img", "kubeflow")


def test_pruned_overrides_are_caught_and_the_job_deleted(tiny_cfg):
    tiny_cfg.cluster.trainjob.trainer_version = "v2.1"
    api = FakeApi(crd="v2.3.0")  # a cluster on Trainer v2.3 prunes podTemplateOverrides
    with pytest.raises(tj.TrainJobError) as err:
        tj.submit(manifest(tiny_cfg), api, log=quiet)
    msg = str(err.value)
    assert "dropped spec.podTemplateOverrides" in msg and "cluster.trainjob.trainer_version" in msg
    assert "v2.3: runtimePatches" in msg and api.deleted == ["convrl-rl-test"]
    tiny_cfg.cluster.trainjob.trainer_version = "v2.3"
    assert tj.submit(manifest(tiny_cfg), FakeApi(crd="v2.3.0"), log=quiet) == "convrl-rl-test"


def test_sigterm_deletes_the_job_and_restores_the_handler():
    import signal

    api = FakeApi()
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as exit_:
        with tj._delete_on_sigterm("convrl-rl-test", "kubeflow", api, log=quiet):
            os.kill(os.getpid(), signal.SIGTERM)
    assert exit_.value.code == 128 + signal.SIGTERM and api.deleted == ["convrl-rl-test"]
    assert signal.getsignal(signal.SIGTERM) == before


@pytest.mark.parametrize("done", ["Complete", "Succeeded"])
def test_wait_returns_when_the_job_completes(tiny_cfg, done):
    api = FakeApi(states=[(), (cond("Created"),), (cond("Created"), cond(done, "finished"))])
    assert tj.submit(manifest(tiny_cfg), api, log=quiet) == "convrl-rl-test"
    obj = tj.wait("convrl-rl-test", "kubeflow", 60, api, poll_s=0, sleep=quiet, log=quiet)
    assert obj["status"]["conditions"][-1]["type"] == done and api.gets == 3 and not api.deleted


def test_wait_raises_with_the_failure_message(tiny_cfg):
    api = FakeApi(states=[(cond("Failed", "jobset node-1 failed: exit code 137", "JobsFailed"),)])
    with pytest.raises(tj.TrainJobError, match="exit code 137") as err:
        tj.wait("convrl-rl-test", "kubeflow", 60, api, poll_s=0, sleep=quiet, log=quiet)
    assert "kubectl -n kubeflow logs" in str(err.value)


def test_missing_crd_says_how_to_install_trainer(tiny_cfg):
    api = FakeApi(create_error=ApiException(status=404, reason="Not Found"))
    with pytest.raises(tj.TrainJobError) as err:
        tj.submit(manifest(tiny_cfg), api, log=quiet)
    msg = str(err.value)
    assert "Kubeflow Trainer" in msg and "not installed" in msg
    manager = 'kubectl apply --server-side -k "https://github.com/kubeflow/trainer.git/manifests/overlays/manager?ref='
    assert manager + 'v2.3.0"' in msg
    assert "overlays/runtimes" in msg


def test_forbidden_points_at_rbac(tiny_cfg):
    api = FakeApi(create_error=ApiException(status=403, reason="Forbidden"))
    with pytest.raises(tj.TrainJobError, match="rbac.yaml"):
        tj.submit(manifest(tiny_cfg), api, log=quiet)


def test_existing_job_is_attached_not_replaced(tiny_cfg):
    api = FakeApi(create_error=ApiException(status=409, reason="AlreadyExists"))
    assert tj.submit(manifest(tiny_cfg), api, log=quiet) == "convrl-rl-test" and not api.deleted


def test_timeout_deletes_the_job(tiny_cfg):
    now = [0.0]
    api = FakeApi(states=[(cond("Created"),)])

    def sleep(s):
        now[0] += 10

    with pytest.raises(tj.TrainJobTimeout, match="cluster.trainjob.timeout_s"):
        tj.wait("convrl-rl-test", "kubeflow", 25, api, poll_s=10, clock=lambda: now[0], sleep=sleep, log=quiet)
    assert api.deleted == ["convrl-rl-test"]


def test_wait_retries_server_errors_and_notices_a_deleted_job():
    api = FakeApi(states=[(cond("Complete"),)], get_errors=[ApiException(status=503, reason="Unavailable")])
    tj.wait("j", "kubeflow", 60, api, poll_s=0, sleep=quiet, log=quiet)
    api = FakeApi(get_errors=[ApiException(status=404, reason="Not Found")])
    with pytest.raises(tj.TrainJobError, match="disappeared"):
        tj.wait("j", "kubeflow", 60, api, poll_s=0, sleep=quiet, log=quiet)


def test_kubeconfig_fallback(monkeypatch):
    from kubernetes import config

    calls = []

    def no_pod():
        raise config.ConfigException("not in a pod")

    monkeypatch.setattr(config, "load_incluster_config", no_pod)
    monkeypatch.setattr(config, "load_kube_config", lambda: calls.append("kubeconfig"))
    assert tj.custom_objects_api() is not None and calls == ["kubeconfig"]


def test_step_pod_gives_namespace_owner_and_image(monkeypatch):
    class Core:
        def read_namespaced_pod(self, name, ns):
            c = lambda n, i: type("C", (), {"name": n, "image": i})  # noqa: E731
            return type("P", (), {"metadata": type("M", (), {"uid": "uid-1"}),
                                  "spec": type("S", (), {"containers": [c("wait", "argo"), c("main", "mine:3")]})})

    pod = tj.step_pod(Core(), hostname="convrl-rl-step-pod")
    assert (pod.name, pod.uid, pod.image) == ("convrl-rl-step-pod", "uid-1", "mine:3")
    assert pod.owner_reference() == {"apiVersion": "v1", "kind": "Pod", "name": "convrl-rl-step-pod", "uid": "uid-1"}
    monkeypatch.delenv("HOSTNAME", raising=False)
    assert tj.step_pod() is None  # not in a pod: no owner, the image from cluster.image


# --------------------------------------------------------------------------- the node entry point

def test_rank0_logger_logs_live_and_survives_a_dead_server(tiny_cfg, mlflow_store, tmp_path):
    parent = stages.begin(tiny_cfg, "trainjob-logger")
    run = tracking.client().create_run(tracking.experiment_id(tiny_cfg.tracking.experiment),
                                       tags={"mlflow.parentRunId": parent})
    scorer = type("S", (), {"last_batch_table": lambda self: pd.DataFrame([{"response": "hi", "composite": 0.5}])})()
    inputs = dt.TrainingInputs([], [], [], scorer)
    log = dt.Rank0Logger({"stage_run_id": run.info.run_id, "parent_run_id": parent}, inputs, tmp_path / "s", 5)
    log({"reward": 0.5, "kl": 0.01, "step": 1}, 1)
    assert tracking.client().get_metric_history(run.info.run_id, "reward")[0].value == 0.5
    assert (tmp_path / "s" / "step_00001.json").exists()
    log.run_id = "not-a-run"  # a server that rejects writes
    log({"reward": 0.6, "step": 2}, 2)
    assert log.run_id == "" and not (tmp_path / "s" / "step_00002.json").exists()


def test_other_ranks_share_checkpoints_but_not_the_policy(tmp_path):
    shared = tmp_path / "out"
    assert dt._rank_out(shared, 0) == shared
    scratch = dt._rank_out(shared, 3)
    assert scratch != shared and (scratch / "checkpoints").resolve() == (shared / "checkpoints").resolve()
    (scratch / "checkpoints").unlink()
    scratch.rmdir()


@pytest.fixture(scope="module")
def staged(tiny_cfg, ingested, personas, mlflow_store, tmp_path_factory):
    from convrl.data.personas import personas_table
    from convrl.stages.rewards import rewards_stage

    d = tmp_path_factory.mktemp("rl-inputs")
    ingested.turns.to_parquet(d / "turns.parquet", index=False)
    personas_table(personas).to_parquet(d / "personas.parquet", index=False)
    parent = stages.begin(tiny_cfg, "trainjob-e2e")
    rewards_stage(tiny_cfg, parent, str(d / "turns.parquet"), str(d / "rewards"))
    return parent, d


def test_rl_stage_via_trainjob_end_to_end(staged, tmp_path, monkeypatch):
    """rl_stage stages inputs, the "cluster" runs distributed_train.main on them, the policy comes back, is logged."""
    from convrl.stages.rl import rl_stage

    parent, d = staged
    cfg = load_config("tiny", ["rl.launcher=trainjob", "rl.max_steps=1", "rl.precision=fp32",
                               f"cluster.model_cache_mount={tmp_path / 'pvc'}"])

    def run_job(body):
        workdir = body["spec"]["trainer"]["args"][1]
        assert workdir.startswith(str(tmp_path / "pvc")) and os.path.exists(os.path.join(workdir, "config.json"))
        # A node that cannot reach MLflow: metrics come back through result.json.
        uri = os.environ.pop("MLFLOW_TRACKING_URI")
        try:
            assert dt.main(["--workdir", workdir]) == 0
        finally:
            os.environ["MLFLOW_TRACKING_URI"] = uri
        assert (tmp_path / "pvc").exists() and os.path.isdir(os.path.join(workdir, "out", "policy"))

    api = FakeApi(states=[(cond("Complete"),)], on_create=run_job)
    monkeypatch.setattr(tj, "custom_objects_api", lambda: api)
    out = tmp_path / "policy-artifact"
    out.mkdir()
    meta = rl_stage(cfg, parent, str(d / "turns.parquet"), str(d / "personas.parquet"), str(d / "rewards"), str(out))

    assert len(api.created) == 1 and meta.summary["rl/steps"] == 1 and meta.policy_subdir == "policy"
    # Each policy turn's clipping at the end (tiny trains two turns); the last turn's is TRL's clipped ratio.
    assert cfg.rl.turns == 2 and 0.0 <= meta.summary["rl/clipped_ratio_turn1_last_quarter"] <= 1.0
    assert meta.summary["rl/clipped_ratio_turn2_last_quarter"] == meta.summary["rl/clipped_ratio_last_quarter"]
    assert api.deleted == [api.created[0]["metadata"]["name"]]  # a finished job does not stay
    assert (out / "policy" / "config.json").exists() and (out / "policy" / "convrl_training.json").exists()
    assert list((tmp_path / "pvc" / "convrl-trainjobs").iterdir()) == []  # staging removed after success
    run = tracking.get_run(meta.stage_run_id)
    assert run.data.params["rl.launcher"] == "trainjob" and run.data.params["rl.world_size"] == "1"
    assert "rewards/quality/mean" in run.data.metrics and "kl" in run.data.metrics
    artifacts = {a.path for a in tracking.client().list_artifacts(meta.stage_run_id, "samples")}
    assert "samples/step_00001.json" in artifacts
    assert meta.logged_model.startswith("models:/")


@pytest.mark.parametrize("algorithm", ["dpo", "rloo"])
def test_inline_rl_stage_with_each_algorithm(staged, tmp_path, algorithm):
    """rl.algorithm switches the trainer inside the same stage: the policy is exported, logged and registered."""
    from convrl.stages.rl import rl_stage

    parent, d = staged
    cfg = load_config("tiny", [f"rl.algorithm={algorithm}", "rl.turns=1", "rl.max_steps=1", "rl.precision=fp32",
                               "rl.dpo.min_margin=0.0"])
    out = tmp_path / "policy-artifact"
    out.mkdir()
    meta = rl_stage(cfg, parent, str(d / "turns.parquet"), str(d / "personas.parquet"), str(d / "rewards"), str(out))
    assert meta.summary["rl/steps"] == 1 and (out / "policy" / "config.json").exists()
    info = json.loads((out / "policy" / "convrl_training.json").read_text())
    assert info["algorithm"] == algorithm
    run = tracking.get_run(meta.stage_run_id)
    assert run.data.params["rl.algorithm"] == algorithm
    if algorithm == "dpo":
        assert (out / "preference_pairs.jsonl").exists() and "dpo/pairs" in run.data.metrics
    else:
        assert "rewards/quality/mean" in run.data.metrics


def test_inline_rl_stage_logs_the_warm_start(staged, tmp_path, monkeypatch):
    """rl.warmstart runs inside the RL stage before GRPO; its summary reaches MLflow as metrics and warmstart.json."""
    from convrl.rl.generation import Generator
    from convrl.stages.rl import rl_stage

    # A random tiny policy never ends a sentence: hand the warm-start replies that do.
    monkeypatch.setattr(Generator, "generate", lambda self, c, **kw: ["Happy to help. Tell me more about it and"] * len(c))
    parent, d = staged
    cfg = load_config("tiny", ["rl.turns=1", "rl.max_steps=1", "rl.precision=fp32", "rl.warmstart.enabled=true",
                               "rl.warmstart.min_words=3"])
    out = tmp_path / "policy-artifact"
    out.mkdir()
    meta = rl_stage(cfg, parent, str(d / "turns.parquet"), str(d / "personas.parquet"), str(d / "rewards"), str(out))
    assert meta.summary["rl/steps"] == 1 and (out / "warmstart" / "adapter_config.json").exists()
    run = tracking.get_run(meta.stage_run_id)
    n = cfg.rl.max_steps * cfg.rl.prompts_per_step
    assert run.data.metrics["warmstart/examples"] == n and run.data.metrics["warmstart/steps"] >= 1
    assert run.data.params["rl.warmstart.enabled"] == "True"
    logged = tracking.client().download_artifacts(meta.stage_run_id, "warmstart.json", str(tmp_path))
    assert json.loads(open(logged).read())["samples"][0] == "Happy to help."
