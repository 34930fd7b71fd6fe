"""The convrl pipeline: ingest -> validate -> reward models -> RL -> evaluate -> A/B -> register/promote.

Compile it for a cluster with ``convrl compile --config cluster --image REGISTRY/convrl:TAG``
(``compile_pipeline(cfg.cluster, image, path, config_name)``): the preset's ``cluster``
section sets resources, GPUs, tolerations, secrets and the model cache, and the preset
becomes the default of the ``config_name`` run parameter. ``convrl run`` runs the
laptop pipeline (``conversational_rl``, no Kubernetes settings) through kfp.local.

Run parameters (each empty/0 keeps the preset's value; see ``pipelines/parameters.py``):
``config_name``, ``data_sources``, ``personas``, ``reward_weights``, ``rl_max_steps``,
``rl_algorithm``, ``ab_min_improvement``, ``ab_guardrail_margin``, ``overrides``
(``rl.beta=0.02; eval.num_prompts=64``), ``run_name``.

Caching: ingest, validate and the reward models are cached on their real inputs (the config
sections they read, the data fingerprint, the upstream artifacts; ``convrl.stages.cached``), so a
scheduled retrain on unchanged data reuses them; an uncached record step after each logs the
results to the run's MLflow parent run, cache hit or not. Every other step is uncached.
``convrl submit --no-cache`` recomputes everything for one run.
"""

from pathlib import Path

from kfp import compiler, dsl, kubernetes

from convrl.components.stages import (ab_compare, evaluate, finish_tracking, fingerprint_data, ingest, promote,
                                      record_ingest, record_reward_models, record_validation, register_candidate,
                                      rl_finetune, start_tracking, train_reward_models, validate)
from convrl.config import ClusterConfig
from convrl.config.cluster import PIPELINE_NAME
from convrl.pipelines import step_env

COMPILED = Path(__file__).parent / "compiled" / "conversational_rl.yaml"
SCHEDULE_NAME = "convrl-weekly-retraining"  # `convrl schedule|unschedule` without --name
DESCRIPTION = ("RL fine-tuning of a persona-conditioned chat model with multi-objective rewards, evaluation, "
               "A/B comparison and MLflow registry promotion.")
# Set on every cluster step: step_env.prepare() then refuses to run without an MLflow server.
ON_CLUSTER_ENV = step_env.ON_CLUSTER_ENV
DATA_STAGES = ("fingerprint", "ingest")  # steps that read data sources: they get cluster.data_secret


def on_cluster(task, stage: str, cluster: ClusterConfig, image: str):
    """Image, resources, GPU scheduling, required secrets and (where used) the model cache for one task."""
    task.set_container_image(image)
    task.set_env_variable(ON_CLUSTER_ENV, "1")
    task.set_env_variable("HF_HUB_OFFLINE", "1" if cluster.hf_hub_offline else "0")
    task.set_env_variable("TRANSFORMERS_OFFLINE", "1" if cluster.hf_hub_offline else "0")
    # Required keys (no `optional`): a missing Secret stops the pod before it can log to a throw-away store.
    kubernetes.use_secret_as_env(task, secret_name=cluster.mlflow_secret,
                                 secret_key_to_env={k: k for k in cluster.mlflow_secret_keys})
    if cluster.image_pull_secrets:
        kubernetes.set_image_pull_secrets(task, list(cluster.image_pull_secrets))
    # The fingerprint step reads the same buckets and hub datasets as ingest (object versions, revisions).
    if stage in DATA_STAGES and cluster.data_secret:
        kubernetes.use_secret_as_env(task, secret_name=cluster.data_secret,
                                     secret_key_to_env={k: k for k in cluster.data_secret_keys})
    if cluster.hf_token_secret and (stage in cluster.cache_stages or stage in DATA_STAGES):
        kubernetes.use_secret_as_env(task, secret_name=cluster.hf_token_secret,
                                     secret_key_to_env={"HF_TOKEN": "HF_TOKEN"})
    if stage in cluster.cache_stages:
        if cluster.model_cache_pvc:
            kubernetes.mount_pvc(task, pvc_name=cluster.model_cache_pvc, mount_path=cluster.model_cache_mount)
            task.set_env_variable("HF_HOME", cluster.model_cache_mount)
    if stage in cluster.gpu_stages:
        if cluster.accelerator_limit:
            task.set_accelerator_type(cluster.accelerator_type).set_accelerator_limit(cluster.accelerator_limit)
        task.set_cpu_request(cluster.gpu_cpu_request).set_memory_request(cluster.gpu_memory_request)
        task.set_memory_limit(cluster.gpu_memory_limit)
        for key, value in cluster.node_selector.items():
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in cluster.tolerations:  # validated mappings (config/cluster.py)
            kubernetes.add_toleration(task, key=tol.get("key"), operator=tol["operator"], value=tol.get("value"),
                                      effect=tol.get("effect"), toleration_seconds=tol.get("tolerationSeconds"))
    else:
        task.set_cpu_request(cluster.cpu_request).set_memory_request(cluster.memory_request)
        task.set_memory_limit(cluster.memory_limit)
    return task


def build_pipeline(cluster: ClusterConfig | None = None, image: str = "", default_config: str = "demo"):
    """The pipeline function; with ``cluster``, every task gets its Kubernetes settings and ``image``."""

    def place(task, stage: str, cached: bool = False):
        # Only the compute steps of CACHED_STAGES are cached: every other step logs to this run's MLflow
        # parent run (or takes its id), and those side effects must happen on every run.
        task.set_caching_options(cached)
        return on_cluster(task, stage, cluster, image) if cluster is not None else task

    @dsl.pipeline(name=PIPELINE_NAME, description=DESCRIPTION)
    def conversational_rl(config_name: str = default_config, data_sources: str = "", personas: str = "",
                          reward_weights: str = "", rl_max_steps: int = 0, rl_algorithm: str = "",
                          ab_min_improvement: str = "", ab_guardrail_margin: str = "", overrides: str = "",
                          run_name: str = "", parent_run_id: str = ""):
        done = place(finish_tracking(parent_run_id=parent_run_id, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER)
                     .set_display_name("finish tracking"), "finish")
        with dsl.ExitHandler(done, name="convrl"):
            start = place(start_tracking(
                config_name=config_name, overrides=overrides, run_name=run_name, parent_run_id=parent_run_id,
                data_sources=data_sources, personas=personas, reward_weights=reward_weights,
                rl_max_steps=rl_max_steps, rl_algorithm=rl_algorithm, ab_min_improvement=ab_min_improvement,
                ab_guardrail_margin=ab_guardrail_margin, kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER,
            ).set_display_name("start tracking"), "start")
            cfg = start.outputs["config_json"]
            parent = start.outputs["parent_run_id"]
            fp = place(fingerprint_data(data_config=start.outputs["data_config"],
                                        rewards_config=start.outputs["rewards_config"])
                       .set_display_name("fingerprint data"), "fingerprint")
            # Cached compute steps take config sections, fingerprints and artifacts; each record step logs
            # their outputs under this run's parent run, and the next compute step waits for it (.after,
            # which is no part of a cache key) so a failure it records stops the run.
            data = place(ingest(data_config=start.outputs["data_config"], data_fingerprint=fp.outputs["data"])
                         .set_display_name("ingest"), "ingest", cached=True)
            turns, personas_ds = data.outputs["turns"], data.outputs["personas"]
            ingested = place(record_ingest(config_json=cfg, parent_run_id=parent, turns=turns, personas=personas_ds,
                                           quarantine=data.outputs["quarantine"], summary=data.outputs["summary"])
                             .set_display_name("record ingest"), "record")
            checks = place(validate(validate_config=start.outputs["validate_config"], turns=turns,
                                    personas=personas_ds).after(ingested)
                           .set_display_name("validate"), "validate", cached=True)
            validated = place(record_validation(config_json=cfg, parent_run_id=parent,
                                                results=checks.outputs["results"])
                              .set_display_name("record validation"), "record")
            rewards = place(train_reward_models(rewards_config=start.outputs["rewards_config"],
                                                rewards_fingerprint=fp.outputs["rewards"], turns=turns,
                                                personas=personas_ds).after(validated)
                            .set_display_name("reward models"), "reward_models", cached=True)
            reward_models = rewards.outputs["reward_models"]
            recorded = place(record_reward_models(config_json=cfg, parent_run_id=parent, reward_models=reward_models)
                             .set_display_name("record reward models"), "record")
            # RL is not cached: sampling on GPUs is not bit-reproducible, and a retrain is meant to train.
            rl = place(rl_finetune(config_json=cfg, parent_run_id=parent, turns=turns, personas=personas_ds,
                                   reward_models=reward_models).after(recorded).set_display_name("RL fine-tune"),
                       "rl_finetune")
            ev = place(evaluate(config_json=cfg, parent_run_id=parent, turns=turns, personas=personas_ds,
                                reward_models=reward_models, policy=rl.outputs["policy"])
                       .set_display_name("evaluate"), "evaluate")
            ab = place(ab_compare(config_json=cfg, parent_run_id=parent, scores=ev.outputs["scores"])
                       .set_display_name("A/B compare"), "ab_compare")
            reg = place(register_candidate(config_json=cfg, parent_run_id=parent, policy=rl.outputs["policy"],
                                           decision=ab.outputs["decision"]).set_display_name("register"), "register")
            with dsl.If(ab.outputs["Output"] == "promote", name="decision-is-promote"):
                place(promote(config_json=cfg, parent_run_id=parent, version=reg.output,
                              decision=ab.outputs["decision"]).set_display_name("promote"), "promote")

    return conversational_rl


# The laptop pipeline: kfp.local runs it in this environment and ignores Kubernetes settings.
conversational_rl = build_pipeline()


def compile_pipeline(cluster: ClusterConfig, image: str, path=COMPILED, config_name: str = "cluster",
                     build=build_pipeline) -> Path:
    """Compile for a cluster: ``cluster`` settings and ``image`` on every task, ``config_name`` the default preset.

    ``build`` is the pipeline factory (``build(cluster, image, default_config)``); other
    pipelines (e.g. ``pipelines/monitoring.py``) compile through here with their own.
    """
    if not image:
        raise ValueError("compile_pipeline needs the project image, e.g. ghcr.io/<you>/convrl:0.1.0")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(build(cluster, image, config_name), str(path))
    return path


if __name__ == "__main__":
    from convrl.config import load_config

    print(compile_pipeline(load_config("cluster").cluster, load_config("cluster").cluster.image))
