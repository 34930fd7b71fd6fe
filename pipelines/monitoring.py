"""The scheduled monitoring pipeline: ``convrl monitor`` on the cluster, then optionally the online A/B.

Compile it for a cluster with ``convrl compile --pipeline monitoring --config cluster
--image REGISTRY/convrl:TAG --output build/monitoring.yaml`` (``python -m
convrl.pipelines.monitoring`` writes the committed ``pipelines/compiled/monitoring.yaml``
with the ``cluster`` preset's settings and image), then ``convrl upload|submit|schedule
--package build/monitoring.yaml``: it is published as its own pipeline,
``convrl-monitoring``, and scheduled e.g. nightly (``--cron "0 0 6 * * *" --name
nightly-monitor``). The steps run on CPU with the same MLflow secret, image and model
cache as the training pipeline's steps.

Run parameters: ``config_name`` (preset; its ``monitor`` section applies),
``overrides`` (``monitor.window_days=2; monitor.rollback=true``), ``run_online_ab``
(also compare champion and challenger on the sessions ``ab_since`` back, e.g.
``7d``) and ``promote`` (let a promote decision move the ``champion`` alias); from the
command line ``--config``, trailing ``monitor.*=...`` overrides and ``--param run_online_ab=true``.
"""

from pathlib import Path

from kfp import dsl, kubernetes

from convrl.components.monitoring import monitor, online_ab
from convrl.config import ClusterConfig
from convrl.pipelines.conversational_rl import compile_pipeline as compile_training_style
from convrl.pipelines.conversational_rl import on_cluster

PIPELINE_NAME = "convrl-monitoring"
SCHEDULE_NAME = "convrl-monitoring"  # `convrl schedule` of this package without --name
COMPILED = Path(__file__).parent / "compiled" / "monitoring.yaml"
DESCRIPTION = ("Score served conversations (MLflow traces) with the reward heads and held-out judges, compare "
               "windows, alert and optionally roll back; optionally run the online champion/challenger A/B.")


def place(task, cluster: ClusterConfig | None, image: str):
    task.set_caching_options(False)  # each run reads new traces
    if cluster is None:
        return task
    on_cluster(task, "monitor", cluster, image)
    # Scoring loads the encoder (and the base LM with monitor.fluency) like the GPU steps do, on CPU.
    if cluster.model_cache_pvc:
        kubernetes.mount_pvc(task, pvc_name=cluster.model_cache_pvc, mount_path=cluster.model_cache_mount)
        task.set_env_variable("HF_HOME", cluster.model_cache_mount)
    return task


def build_pipeline(cluster: ClusterConfig | None = None, image: str = "", default_config: str = "demo"):
    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def monitoring(config_name: str = default_config, overrides: str = "", run_online_ab: bool = False,
                   ab_since: str = "7d", promote: bool = False):
        place(monitor(config_name=config_name, overrides=overrides).set_display_name("monitor"), cluster, image)
        with dsl.If(run_online_ab == True, name="online-ab-requested"):  # noqa: E712 - a KFP condition
            place(online_ab(config_name=config_name, overrides=overrides, since=ab_since, promote=promote)
                  .set_display_name("online A/B"), cluster, image)

    return monitoring


monitoring = build_pipeline()


def compile_pipeline(cluster: ClusterConfig, image: str, path=COMPILED, config_name: str = "cluster") -> Path:
    """Compile the monitoring pipeline for a cluster (same rules as the training pipeline's compile)."""
    return compile_training_style(cluster, image, path, config_name, build=build_pipeline)


if __name__ == "__main__":
    from convrl.config import load_config

    cl = load_config("cluster").cluster
    print(compile_pipeline(cl, cl.image))
