"""Config section for Kubernetes settings compiled into the pipeline (``cluster.*``).

Only ``convrl compile`` (and the TrainJob launcher) read it: kfp.local ignores it.
Also the one home of the project image's default tag and the pipeline's name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from convrl.config.base import ConfigError

# The tag manifests/docker/Dockerfile builds and .github/workflows/images.yml publishes.
DEFAULT_IMAGE = "ghcr.io/convrl/convrl:0.1.0"
PIPELINE_NAME = "convrl-conversational-rl"
# Pipeline steps, as gpu_stages / cache_stages name them.
STAGES = ("start", "ingest", "validate", "reward_models", "rl_finetune", "evaluate", "ab_compare", "register",
          "promote", "finish")
TRAINER_VERSIONS = ("v2.0", "v2.1", "v2.2", "v2.3")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")


def _help(text: str) -> dict:
    return {"help": text}


@dataclass
class TrainJobConfig:
    """Kubeflow Trainer TrainJob settings for ``rl.launcher=trainjob``."""
    runtime: str = field(default="torch-distributed", metadata=_help("ClusterTrainingRuntime name."))
    num_nodes: int = field(default=1, metadata=_help("Nodes of the TrainJob."))
    gpus_per_node: int = field(default=1, metadata=_help("GPUs per TrainJob node."))
    namespace: str = field(default="", metadata=_help(
        "Namespace the TrainJob is created in; empty: the RL step's own (where the PVC and secrets are, and the "
        "step's pod can own the job, so cancelling the run removes it)."))
    timeout_s: int = field(default=6 * 3600, metadata=_help(
        "Seconds the pipeline step waits for the TrainJob before deleting it and failing."))
    trainer_version: str = field(default="v2.3", metadata=_help(
        "Kubeflow Trainer release on the cluster (v2.0, v2.1, v2.2, v2.3): v2.0 mounts volumes through "
        "podSpecOverrides, v2.1 podTemplateOverrides, v2.2+ runtimePatches. The step checks that the API server "
        "kept the field and names the right value when it did not."))

    def validate(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 0 or self.timeout_s <= 0:
            raise ConfigError("cluster.trainjob.num_nodes must be >= 1, gpus_per_node >= 0 and timeout_s > 0")
        if self.trainer_version not in TRAINER_VERSIONS:
            raise ConfigError(f"cluster.trainjob.trainer_version={self.trainer_version!r}: use one of "
                              f"{', '.join(TRAINER_VERSIONS)} (`kubectl get deploy -n kubeflow-system "
                              "kubeflow-trainer-controller-manager -o jsonpath='{..image}'` shows it)")


def _toleration(item: Any, where: str) -> dict:
    if not isinstance(item, dict) or not set(item) <= _TOLERATION_KEYS:
        raise ConfigError(f"{where} must be a mapping with keys from {sorted(_TOLERATION_KEYS)}, e.g. "
                          "{key: nvidia.com/gpu, operator: Exists, effect: NoSchedule}; got " + repr(item))
    tol = {k: v for k, v in item.items() if v not in (None, "")}
    operator = tol.setdefault("operator", "Equal")
    if operator not in ("Equal", "Exists"):
        raise ConfigError(f"{where}.operator={operator!r}: use Equal or Exists")
    if operator == "Exists" and "value" in tol:
        raise ConfigError(f"{where}: operator Exists takes no value (drop value or use operator: Equal)")
    if operator == "Equal" and "key" not in tol:
        raise ConfigError(f"{where}: operator Equal needs a key")
    if tol.get("effect") is not None and tol["effect"] not in _EFFECTS:
        raise ConfigError(f"{where}.effect={tol['effect']!r}: use one of {', '.join(_EFFECTS)}")
    if "tolerationSeconds" in tol and not isinstance(tol["tolerationSeconds"], int):
        raise ConfigError(f"{where}.tolerationSeconds must be an integer")
    return tol


@dataclass
class ClusterConfig:
    """Kubernetes settings compiled into the pipeline (``convrl compile --config cluster``); kfp.local ignores them."""
    image: str = field(default=DEFAULT_IMAGE, metadata=_help(
        "Project image every step and the TrainJob run (`convrl compile --image` overrides it)."))
    image_pull_secrets: list[str] = field(default_factory=list, metadata=_help(
        "Secrets (docker-registry type, in the run's namespace) to pull a private image with."))
    gpu_stages: list[str] = field(
        default_factory=lambda: ["reward_models", "rl_finetune", "evaluate"],
        metadata=_help(f"Stages that request an accelerator; any of {', '.join(STAGES)}."))
    accelerator_type: str = field(default="nvidia.com/gpu", metadata=_help("Extended resource a GPU step requests."))
    accelerator_limit: int = field(default=1, metadata=_help("Accelerators per GPU step."))
    gpu_cpu_request: str = field(default="4", metadata=_help("CPU request of a GPU step."))
    gpu_memory_request: str = field(default="32G", metadata=_help("Memory request of a GPU step."))
    gpu_memory_limit: str = field(default="64G", metadata=_help("Memory limit of a GPU step."))
    cpu_request: str = field(default="1", metadata=_help("CPU request of every other step."))
    memory_request: str = field(default="4G", metadata=_help("Memory request of every other step."))
    memory_limit: str = field(default="16G", metadata=_help("Memory limit of every other step."))
    node_selector: dict[str, str] = field(default_factory=dict, metadata=_help(
        "Node labels GPU steps must match, e.g. {cloud.google.com/gke-accelerator: nvidia-l4}. Empty by default: "
        "the GPU request alone picks GPU nodes, and GPU Feature Discovery labels are missing on GKE/AKS."))
    tolerations: list[dict[str, Any]] = field(
        default_factory=lambda: [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        metadata=_help("Tolerations of GPU steps as Kubernetes writes them: {key, operator, value, effect}."))
    mlflow_secret: str = field(default="convrl-mlflow-client", metadata=_help(
        "Secret the steps read MLflow settings from (never compiled into the YAML); it must exist."))
    mlflow_secret_keys: list[str] = field(default_factory=lambda: ["MLFLOW_TRACKING_URI"], metadata=_help(
        "Keys of mlflow_secret that become env vars; every one is required (KFP before 2.15 has no optional "
        "secret keys). Add MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD when the server has auth."))
    hf_token_secret: str = field(default="", metadata=_help(
        "Secret with key HF_TOKEN for gated/private hub models and datasets; empty: no token."))
    data_secret: str = field(default="", metadata=_help(
        "Secret with object-store credentials for s3:// / gs:// data sources, given to the steps that read them "
        "(fingerprint data, ingest) only; empty: the runner account's own cloud identity (IRSA / workload "
        "identity) or none."))
    data_secret_keys: list[str] = field(
        default_factory=lambda: ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"], metadata=_help(
            "Keys of data_secret that become env vars (each required); add AWS_ENDPOINT_URL for MinIO, or use "
            "[FSSPEC_GS_TOKEN] (a service-account key) for gs://."))
    hf_hub_offline: bool = field(default=False, metadata=_help(
        "Set HF_HUB_OFFLINE=1 in every step (air-gapped clusters: models from the image or the model cache only)."))
    model_cache_pvc: str = field(default="convrl-model-cache", metadata=_help(
        "ReadWriteMany PVC mounted as HF_HOME in cache_stages, so hub downloads happen once; empty: no PVC "
        "(each step downloads into its own pod; what a kind/minikube dry run needs)."))
    model_cache_mount: str = field(default="/mnt/model-cache", metadata=_help("Where the model-cache PVC is mounted."))
    cache_stages: list[str] = field(
        default_factory=lambda: ["ingest", "reward_models", "rl_finetune", "evaluate", "register"],
        metadata=_help("Stages that load hub models or datasets and so mount the model cache."))
    trainjob: TrainJobConfig = field(default_factory=TrainJobConfig)

    def validate(self) -> None:
        for name in ("gpu_stages", "cache_stages"):
            unknown = sorted(set(getattr(self, name)) - set(STAGES))
            if unknown:
                raise ConfigError(f"cluster.{name} names unknown stages {unknown}; stages: {', '.join(STAGES)}")
        if self.accelerator_limit < 0:
            raise ConfigError("cluster.accelerator_limit must be >= 0")
        if not self.mlflow_secret or "MLFLOW_TRACKING_URI" not in self.mlflow_secret_keys:
            raise ConfigError("cluster.mlflow_secret and MLFLOW_TRACKING_URI in cluster.mlflow_secret_keys are "
                              "required: pipeline steps must log to the MLflow server, never to a throw-away store")
        self.tolerations = [_toleration(t, f"cluster.tolerations[{i}]") for i, t in enumerate(self.tolerations)]
        for key, value in self.node_selector.items():
            if not key or not isinstance(value, str):
                raise ConfigError(f"cluster.node_selector: {key!r}: {value!r} must be label: value strings")
