"""KFP components (no `from __future__ import annotations`: KFP reads real type objects): one thin wrapper per pipeline stage around ``convrl.stages``.

Each body imports convrl inside the function (KFP ships only the function's
source to the container), prepares the step's environment
(``convrl.pipelines.step_env.prepare``), reads its input artifacts, calls one
library function and writes its outputs. All run on the project image with
``install_kfp_package=False`` and no ``packages_to_install``: the image already
holds kfp and convrl. The image here is only the default
(``convrl.config.cluster.DEFAULT_IMAGE``); ``compile_pipeline`` sets the real one
on every task.

Ingest, validate and the reward models are split into a cached compute component
(``ingest``, ``validate``, ``train_reward_models``: config sections, fingerprints and
artifacts in, no MLflow) and an uncached ``record_*`` component that logs its outputs
under the run's parent run (``convrl.stages.cached``); ``fingerprint_data`` computes the
data fingerprint the cached ingest is keyed on.

Test a component without Kubeflow through ``.python_func`` or ``kfp.local``.
"""


from typing import NamedTuple

from kfp import dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from convrl.config.cluster import DEFAULT_IMAGE


def component(fn):
    return dsl.component(fn, base_image=DEFAULT_IMAGE, install_kfp_package=False)


@component
def start_tracking(config_name: str, overrides: str, run_name: str, parent_run_id: str, kfp_run_id: str,
                   data_sources: str = "", personas: str = "", reward_weights: str = "", rl_max_steps: int = 0,
                   rl_algorithm: str = "", ab_min_improvement: str = "", ab_guardrail_margin: str = "") -> NamedTuple(
        "Started", [("config_json", str), ("parent_run_id", str), ("data_config", str), ("validate_config", str),
                    ("rewards_config", str)]):
    """Resolve the config (preset + named UI parameters + overrides) and open the MLflow parent run.

    Also returns the sections each cached step reads (``convrl.stages.cached.stage_config``): a
    cached step takes those, never the whole config or the per-run parent run id.
    """
    from collections import namedtuple

    from convrl.config import load_config
    from convrl.pipelines.parameters import split_overrides, ui_overrides
    from convrl.pipelines.step_env import prepare
    from convrl.stages import begin
    from convrl.stages.cached import stage_config

    prepare()
    named = ui_overrides(data_sources, personas, reward_weights, rl_max_steps, rl_algorithm, ab_min_improvement,
                         ab_guardrail_margin)
    cfg = load_config(config_name, named + split_overrides(overrides))
    run_id = begin(cfg, run_name or f"convrl-{cfg.name}", parent_run_id, kfp_run_id)
    return namedtuple("Started", ["config_json", "parent_run_id", "data_config", "validate_config", "rewards_config"])(
        cfg.to_json(), run_id, stage_config(cfg, "ingest"), stage_config(cfg, "validate"),
        stage_config(cfg, "reward_models"))


@component
def fingerprint_data(data_config: str, rewards_config: str) -> NamedTuple(
        "Fingerprints", [("data", str), ("rewards", str)]):
    """Hash the data behind the sources and the files the reward settings name (uncached: it is the cache key)."""
    import json
    from collections import namedtuple

    from convrl.data.fingerprint import ingest_fingerprint, settings_fingerprint
    from convrl.pipelines.step_env import prepare

    prepare()
    data = ingest_fingerprint(json.loads(data_config))
    rewards = settings_fingerprint(json.loads(rewards_config))
    print(f"data fingerprint {data[:16]}, reward data fingerprint {rewards[:16]}")
    return namedtuple("Fingerprints", ["data", "rewards"])(data, rewards)


@component
def ingest(data_config: str, data_fingerprint: str, turns: Output[Dataset], personas: Output[Dataset],
           quarantine: Output[Dataset], summary: Output[Artifact]):
    """Cached: keyed on the data section and ``data_fingerprint`` (which only changes the key).

    The KFP metrics come from the record step: a cached step's outputs must all be files (kfp.local
    treats an output without one, such as a Metrics artifact, as a cache miss).
    """
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages.data import ingest_compute

    prepare()
    ingest_compute(config_from_json(data_config), turns.path, personas.path, quarantine.path, summary.path)


@component
def record_ingest(config_json: str, parent_run_id: str, turns: Input[Dataset], personas: Input[Dataset],
                  quarantine: Input[Dataset], summary: Input[Artifact], metrics: Output[Metrics]):
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages import kfp_metrics
    from convrl.stages.data import ingest_record

    prepare()
    stats = ingest_record(config_from_json(config_json), parent_run_id, turns.path, personas.path, quarantine.path,
                          summary.path)
    for k, v in kfp_metrics(stats).items():
        metrics.log_metric(k, v)


@component
def validate(validate_config: str, turns: Input[Dataset], personas: Input[Dataset], report: Output[HTML],
             report_md: Output[Markdown], results: Output[Artifact]):
    """Cached: keyed on the validate section and the ingested tables."""
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages.data import validate_compute

    prepare()
    validate_compute(config_from_json(validate_config), turns.path, personas.path, report.path, report_md.path,
                     results.path)


@component
def record_validation(config_json: str, parent_run_id: str, results: Input[Artifact]):
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages.data import validate_record

    prepare()
    validate_record(config_from_json(config_json), parent_run_id, results.path)


@component
def train_reward_models(rewards_config: str, rewards_fingerprint: str, turns: Input[Dataset],
                        personas: Input[Dataset], reward_models: Output[Model]):
    """Cached: keyed on the models + rewards sections, the files they name and the ingested tables."""
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages.rewards import rewards_compute

    prepare()
    rewards_compute(config_from_json(rewards_config), turns.path, reward_models.path, personas_path=personas.path)


@component
def record_reward_models(config_json: str, parent_run_id: str, reward_models: Input[Model],
                         metrics: Output[Metrics]):
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages import kfp_metrics
    from convrl.stages.rewards import rewards_record

    prepare()
    out = rewards_record(config_from_json(config_json), parent_run_id, reward_models.path)
    for k, v in kfp_metrics(out).items():
        metrics.log_metric(k, v)


@component
def rl_finetune(config_json: str, parent_run_id: str, turns: Input[Dataset], personas: Input[Dataset],
                reward_models: Input[Model], policy: Output[Model], metrics: Output[Metrics]):
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages import kfp_metrics
    from convrl.stages.rl import rl_stage

    prepare()
    art = rl_stage(config_from_json(config_json), parent_run_id, turns.path, personas.path,
                   reward_models.path, policy.path)
    policy.metadata["logged_model"] = art.logged_model
    for k, v in kfp_metrics(art.summary).items():
        metrics.log_metric(k, v)


@component
def evaluate(config_json: str, parent_run_id: str, turns: Input[Dataset], personas: Input[Dataset],
             reward_models: Input[Model], policy: Input[Model], scores: Output[Dataset], report: Output[HTML],
             metrics: Output[Metrics]):
    import os
    import shutil
    import tempfile

    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages import kfp_metrics
    from convrl.stages.evaluation import evaluate_stage

    prepare()
    report_dir = tempfile.mkdtemp()
    out = evaluate_stage(config_from_json(config_json), parent_run_id, turns.path, personas.path,
                         reward_models.path, policy.path, scores.path, report_dir)
    shutil.copy(os.path.join(report_dir, "report.html"), report.path)
    for k, v in kfp_metrics(out).items():
        metrics.log_metric(k, v)


@component
def ab_compare(config_json: str, parent_run_id: str, scores: Input[Dataset], decision: Output[Artifact]) -> str:
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages.decision import ab_stage

    prepare()
    return ab_stage(config_from_json(config_json), parent_run_id, scores.path, decision.path)


@component
def register_candidate(config_json: str, parent_run_id: str, policy: Input[Model], decision: Input[Artifact]) -> str:
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages.decision import register_stage

    prepare()
    return register_stage(config_from_json(config_json), parent_run_id, policy.path, decision.path)


@component
def promote(config_json: str, parent_run_id: str, version: str, decision: Input[Artifact]):
    from convrl.config import config_from_json
    from convrl.pipelines.step_env import prepare
    from convrl.stages.decision import promote_stage

    prepare()
    promote_stage(config_from_json(config_json), parent_run_id, version, decision.path)


@component
def finish_tracking(parent_run_id: str, kfp_run_id: str, status: dsl.PipelineTaskFinalStatus):
    """Exit handler: close the MLflow parent run with the pipeline's final state.

    An exit task may not depend on other tasks, so it finds the parent run by
    the KFP run id that start_tracking tagged it with.
    """
    from convrl.pipelines.step_env import prepare
    from convrl.stages import finish

    prepare()
    finish(parent_run_id, kfp_run_id, status.state, status.error_message or "")
