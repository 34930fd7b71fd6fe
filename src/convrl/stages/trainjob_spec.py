"""The Kubeflow Trainer TrainJob manifest of the RL step, for each Trainer release's TrainJob schema.

A pure function of the config: ``build_trainjob(name, cfg, workdir, image, owner)``.
Kubeflow Trainer renamed the field that patches the runtime's pods twice, and the
API server silently prunes a field its CRD does not know (the PVC would then not be
mounted), so ``cluster.trainjob.trainer_version`` picks the shape:

==========  =============================================================================
v2.0        ``spec.podSpecOverrides[]{targetJobs, volumes, containers, nodeSelector, ...}``
v2.1        ``spec.podTemplateOverrides[]{targetJobs, spec: {volumes, containers, ...}}``
v2.2, v2.3  ``spec.runtimePatches[]{manager, trainingRuntimeSpec.template.spec.replicatedJobs[]
            {name, template.spec.template.spec: {volumes, containers, ...}}}``
==========  =============================================================================

``tests/test_trainjob.py`` validates every shape against the upstream CRDs vendored
in ``tests/data/trainer_crds/`` (see its README for the tags and commits).
"""

from __future__ import annotations

from typing import Any

from convrl.config import Config

GROUP, VERSION, PLURAL, KIND = "trainer.kubeflow.org", "v1alpha1", "trainjobs", "TrainJob"
# The replicated job and its container in the torch-distributed runtime are both called "node".
NODE = "node"
OVERRIDE_FIELD = {"v2.0": "podSpecOverrides", "v2.1": "podTemplateOverrides", "v2.2": "runtimePatches",
                  "v2.3": "runtimePatches"}
# runtimePatches are keyed by who owns them (Kueue uses kueue.x-k8s.io/manager).
PATCH_MANAGER = "convrl.dev/rl-launcher"
LABELS = {"app.kubernetes.io/part-of": "convrl", "app.kubernetes.io/component": "rl-finetune"}


class TrainJobSpecError(ValueError):
    """The settings cannot be expressed for this Trainer release; the message says what to change."""


def job_name(stage_run_id: str) -> str:
    """A DNS-1035 name unique per RL stage run (MLflow run ids are hex)."""
    return f"convrl-rl-{stage_run_id[:12].lower()}"


def _secret_env(name: str, secret: str, key: str) -> dict:
    # Required (no `optional`): a missing Secret stops the pod instead of training without tracking.
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


def _trainer(cfg: Config, workdir: str, image: str) -> dict:
    cl = cfg.cluster
    gpus = cl.trainjob.gpus_per_node
    limits: dict[str, str] = {"memory": cl.gpu_memory_limit}
    requests: dict[str, str] = {"cpu": cl.gpu_cpu_request, "memory": cl.gpu_memory_request}
    if gpus:
        limits[cl.accelerator_type] = requests[cl.accelerator_type] = str(gpus)
    env = [_secret_env(k, cl.mlflow_secret, k) for k in cl.mlflow_secret_keys]
    if cl.hf_token_secret:
        env.append(_secret_env("HF_TOKEN", cl.hf_token_secret, "HF_TOKEN"))
    offline = "1" if cl.hf_hub_offline else "0"
    env += [{"name": "HF_HOME", "value": cl.model_cache_mount}, {"name": "HF_HUB_OFFLINE", "value": offline},
            {"name": "TRANSFORMERS_OFFLINE", "value": offline}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    trainer: dict[str, Any] = {
        "image": image,
        # The runtime sets PET_NNODES/PET_NPROC_PER_NODE/PET_NODE_RANK/PET_MASTER_ADDR/PET_MASTER_PORT, which
        # torchrun reads; without numProcPerNode the runtime starts one process per GPU in resourcesPerNode.
        "command": ["torchrun", "--module", "convrl.stages.distributed_train"],
        "args": ["--workdir", workdir],
        "env": env,
        "numNodes": cl.trainjob.num_nodes,
        "resourcesPerNode": {"limits": limits, "requests": requests},
    }
    if not gpus:
        trainer["numProcPerNode"] = 1  # CPU dry runs: one process, not one per CPU
    return trainer


def _pod_patch(cfg: Config) -> dict:
    """What every node pod gets on top of the runtime's template: the PVC, /dev/shm, scheduling, pull secrets."""
    cl = cfg.cluster
    if not cl.model_cache_pvc:
        raise TrainJobSpecError("rl.launcher=trainjob stages inputs on the shared model-cache PVC: set "
                                "cluster.model_cache_pvc to a ReadWriteMany claim (manifests/base/model-cache-pvc.yaml)")
    patch: dict[str, Any] = {
        "volumes": [{"name": "model-cache", "persistentVolumeClaim": {"claimName": cl.model_cache_pvc}},
                    # NCCL exchanges tensors through /dev/shm; the container default of 64 MiB stalls it.
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        "containers": [{"name": NODE, "volumeMounts": [{"name": "model-cache", "mountPath": cl.model_cache_mount},
                                                       {"name": "dshm", "mountPath": "/dev/shm"}]}],
    }
    if cl.trainjob.gpus_per_node:
        if cl.node_selector:
            patch["nodeSelector"] = dict(cl.node_selector)
        if cl.tolerations:
            patch["tolerations"] = [dict(t) for t in cl.tolerations]  # validated k8s mappings (config/cluster.py)
    if cl.image_pull_secrets:
        patch["imagePullSecrets"] = [{"name": s} for s in cl.image_pull_secrets]
    return patch


def _overrides(version: str, patch: dict) -> dict:
    """The spec field(s) that carry ``patch`` in ``version``'s TrainJob schema."""
    if version == "v2.0":
        if "imagePullSecrets" in patch:
            raise TrainJobSpecError("Kubeflow Trainer v2.0 cannot set imagePullSecrets on TrainJob pods: add the "
                                    "secret to the runtime's service account, or upgrade Trainer (v2.1+)")
        return {"podSpecOverrides": [{"targetJobs": [{"name": NODE}], **patch}]}
    if version == "v2.1":
        return {"podTemplateOverrides": [{"targetJobs": [{"name": NODE}], "spec": patch}]}
    job = {"name": NODE, "template": {"spec": {"template": {"spec": patch}}}}
    return {"runtimePatches": [{"manager": PATCH_MANAGER,
                                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}}}]}


def build_trainjob(name: str, cfg: Config, workdir: str, image: str, namespace: str,
                   owner: dict | None = None) -> dict:
    """The TrainJob: ``num_nodes`` x ``gpus_per_node``, the PVC mounted, owned by the step's pod when given.

    ``owner`` is an ownerReference (``{"apiVersion": "v1", "kind": "Pod", "name", "uid"}``):
    when KFP removes the step's pod, Kubernetes garbage-collects the TrainJob with it.
    """
    tj = cfg.cluster.trainjob
    spec: dict[str, Any] = {
        "runtimeRef": {"name": tj.runtime, "kind": "ClusterTrainingRuntime", "apiGroup": GROUP},
        "trainer": _trainer(cfg, workdir, image),
        **_overrides(tj.trainer_version, _pod_patch(cfg)),
    }
    if tj.trainer_version not in ("v2.0", "v2.1"):
        spec["activeDeadlineSeconds"] = int(tj.timeout_s)  # the cluster enforces the deadline too
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(LABELS)}
    if owner:
        metadata["ownerReferences"] = [{**owner, "blockOwnerDeletion": False, "controller": False}]
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


def kept_overrides(sent: dict, stored: dict) -> bool:
    """Did the API server keep the pod overrides? It prunes fields unknown to the installed CRD."""
    field = next(f for f in set(OVERRIDE_FIELD.values()) if f in sent["spec"])
    return bool((stored.get("spec") or {}).get(field))
