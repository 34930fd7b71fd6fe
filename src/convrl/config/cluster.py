"""Config section for Kubernetes settings compiled into the pipeline (``cluster.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from convrl.config.base import ConfigError


@dataclass
class TrainJobConfig:
    """Kubeflow Trainer TrainJob settings for ``rl.launcher=trainjob``."""
    runtime: str = field(default="torch-distributed", metadata={"help": "ClusterTrainingRuntime name."})
    num_nodes: int = field(default=1, metadata={"help": "Nodes of the TrainJob."})
    gpus_per_node: int = field(default=1, metadata={"help": "GPUs per TrainJob node."})
    namespace: str = field(default="kubeflow", metadata={"help": "Namespace the TrainJob is created in."})
    timeout_s: int = field(default=6 * 3600, metadata={
        "help": "Seconds the pipeline step waits for the TrainJob before deleting it and failing."})

    def validate(self) -> None:
        if self.num_nodes < 1 or self.gpus_per_node < 0 or self.timeout_s <= 0:
            raise ConfigError("cluster.trainjob.num_nodes must be >= 1, gpus_per_node >= 0 and timeout_s > 0")


@dataclass
class ClusterConfig:
    """Kubernetes settings compiled into the pipeline (``convrl compile --config cluster``); kfp.local ignores them."""
    gpu_stages: list[str] = field(
        default_factory=lambda: ["reward_models", "rl_finetune", "evaluate"],
        metadata={"help": "Stages that request an accelerator."})
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    gpu_cpu_request: str = "4"
    gpu_memory_request: str = "32G"
    gpu_memory_limit: str = "64G"
    cpu_request: str = "1"
    memory_request: str = "4G"
    memory_limit: str = "16G"
    node_selector: list[str] = field(
        default_factory=list, metadata={"help": "GPU node labels as key=value, e.g. nvidia.com/gpu.present=true."})
    tolerations: list[str] = field(
        default_factory=lambda: ["nvidia.com/gpu:Exists:NoSchedule"],
        metadata={"help": "GPU tolerations as key:Exists:Effect or key=value:Effect."})
    mlflow_secret: str = field(
        default="convrl-mlflow-client",
        metadata={"help": "Secret whose keys become MLFLOW_TRACKING_URI/USERNAME/PASSWORD (never in the YAML)."})
    model_cache_pvc: str = field(
        default="convrl-model-cache",
        metadata={"help": "PVC for hub downloads (HF_HOME); the image's own models stay in its CONVRL_HOME."})
    model_cache_mount: str = "/mnt/model-cache"
    trainjob: TrainJobConfig = field(default_factory=TrainJobConfig)
