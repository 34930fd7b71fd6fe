"""The convrl pipeline: ingest -> validate -> reward models -> RL -> evaluate -> A/B -> register/promote.

Compile it (``convrl compile``, or ``python -m convrl.pipelines.conversational_rl``)
to ``pipelines/compiled/conversational_rl.yaml`` for a KFP cluster, or run it
locally with ``convrl run`` (kfp.local). Every parameter can be set in the KFP UI:
``config_name`` picks a preset; ``data_sources`` (comma-separated specs), ``personas``
(comma-separated cards), ``reward_weights`` (``quality=0.5,personality=0.2``),
``rl_max_steps``, ``rl_algorithm``, ``ab_min_improvement`` and ``ab_guardrail_margin``
override it when set; ``overrides`` takes any other dotted settings separated by ``;``
(e.g. ``rl.beta=0.02; eval.num_prompts=64``).
"""


from pathlib import Path

from kfp import compiler, dsl, kubernetes

from convrl.config import ClusterConfig, load_config

from convrl.components.stages import (ab_compare, evaluate, finish_tracking, ingest, promote, register_candidate,
                                      rl_finetune, start_tracking, train_reward_models, validate)

PIPELINE_NAME = "convrl-conversational-rl"
COMPILED = Path(__file__).parent / "compiled" / "conversational_rl.yaml"
# Compile-time cluster settings; `convrl compile --config X` swaps them before compiling.
CLUSTER: ClusterConfig = load_config("cluster").cluster


def on_cluster(task, stage: str, cluster: ClusterConfig):
    """Resources, GPU scheduling, the MLflow secret and the model cache for one task."""
    kubernetes.use_secret_as_env(task, secret_name=cluster.mlflow_secret, optional=True, secret_key_to_env={
        "MLFLOW_TRACKING_URI": "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME": "MLFLOW_TRACKING_USERNAME",
        "MLFLOW_TRACKING_PASSWORD": "MLFLOW_TRACKING_PASSWORD"})
    kubernetes.mount_pvc(task, pvc_name=cluster.model_cache_pvc, mount_path=cluster.model_cache_mount)
    task.set_env_variable("HF_HOME", cluster.model_cache_mount)
    if stage in cluster.gpu_stages:
        task.set_accelerator_type(cluster.accelerator_type).set_accelerator_limit(cluster.accelerator_limit)
        task.set_cpu_request(cluster.gpu_cpu_request).set_memory_request(cluster.gpu_memory_request)
        task.set_memory_limit(cluster.gpu_memory_limit)
        for sel in cluster.node_selector:
            key, _, value = sel.partition("=")
            kubernetes.add_node_selector(task, label_key=key, label_value=value)
        for tol in cluster.tolerations:
            key_value, _, effect = tol.rpartition(":")
            if key_value.endswith(":Exists"):
                kubernetes.add_toleration(task, key=key_value[:-7], operator="Exists", effect=effect)
            else:
                key, _, value = key_value.partition("=")
                kubernetes.add_toleration(task, key=key, operator="Equal", value=value, effect=effect)
    else:
        task.set_cpu_request(cluster.cpu_request).set_memory_request(cluster.memory_request)
        task.set_memory_limit(cluster.memory_limit)
    return task


@dsl.pipeline(name=PIPELINE_NAME,
              description="RL fine-tuning of a persona-conditioned chat model with multi-objective rewards, "
                          "evaluation, A/B comparison and MLflow registry promotion.")
def conversational_rl(config_name: str = "demo", data_sources: str = "", personas: str = "",
                      reward_weights: str = "", rl_max_steps: int = 0, rl_algorithm: str = "",
                      ab_min_improvement: str = "", ab_guardrail_margin: str = "", overrides: str = "",
                      run_name: str = "", parent_run_id: str = ""):
    done = finish_tracking(parent_run_id=parent_run_id,
                           kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER).set_display_name("finish tracking")
    with dsl.ExitHandler(done, name="convrl"):
        start = start_tracking(config_name=config_name, overrides=overrides, run_name=run_name,
                               parent_run_id=parent_run_id, data_sources=data_sources, personas=personas,
                               reward_weights=reward_weights, rl_max_steps=rl_max_steps, rl_algorithm=rl_algorithm,
                               ab_min_improvement=ab_min_improvement, ab_guardrail_margin=ab_guardrail_margin,
                               kfp_run_id=dsl.PIPELINE_JOB_ID_PLACEHOLDER).set_display_name("start tracking")
        start.set_caching_options(False)
        cfg = start.outputs["config_json"]
        parent = start.outputs["parent_run_id"]
        data = ingest(config_json=cfg, parent_run_id=parent).set_display_name("ingest")
        checks = validate(config_json=cfg, parent_run_id=parent, turns=data.outputs["turns"],
                          personas=data.outputs["personas"]).set_display_name("validate")
        rewards = train_reward_models(config_json=cfg, parent_run_id=parent,
                                      turns=data.outputs["turns"], personas=data.outputs["personas"]
                                      ).after(checks).set_display_name("reward models")
        rl = rl_finetune(config_json=cfg, parent_run_id=parent, turns=data.outputs["turns"],
                         personas=data.outputs["personas"],
                         reward_models=rewards.outputs["reward_models"]).set_display_name("RL fine-tune")
        ev = evaluate(config_json=cfg, parent_run_id=parent, turns=data.outputs["turns"],
                      personas=data.outputs["personas"], reward_models=rewards.outputs["reward_models"],
                      policy=rl.outputs["policy"]).set_display_name("evaluate")
        ab = ab_compare(config_json=cfg, parent_run_id=parent, scores=ev.outputs["scores"]).set_display_name("A/B compare")
        reg = register_candidate(config_json=cfg, parent_run_id=parent, policy=rl.outputs["policy"],
                                 decision=ab.outputs["decision"]).set_display_name("register")
        with dsl.If(ab.outputs["Output"] == "promote", name="decision-is-promote"):
            prom = promote(config_json=cfg, parent_run_id=parent, version=reg.output,
                           decision=ab.outputs["decision"]).set_display_name("promote")
        for stage, t in (("ingest", data), ("validate", checks), ("reward_models", rewards), ("rl_finetune", rl),
                         ("evaluate", ev), ("ab_compare", ab), ("register", reg), ("promote", prom),
                         ("start", start)):
            # Tracking side effects (MLflow runs, registry) must happen on every run.
            t.set_caching_options(False)
            on_cluster(t, stage, CLUSTER)
    on_cluster(done, "finish", CLUSTER)


def compile_pipeline(path=COMPILED, config: str = "cluster") -> Path:
    global CLUSTER
    CLUSTER = load_config(config).cluster
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(conversational_rl, str(path))
    return path


if __name__ == "__main__":
    print(compile_pipeline())
