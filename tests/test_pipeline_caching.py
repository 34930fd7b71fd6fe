"""Caching (issue 15, item 7): which steps are cached and on what, the data fingerprint, record steps that log a
cache hit to a new parent run, real cache hits under kfp.local, and `submit --no-cache`."""

import json

import pytest
import yaml

from convrl import stages, tracking
from convrl.config import config_from_json, load_config
from convrl.data.fingerprint import (ingest_fingerprint, settings_fingerprint, source_fingerprint,
                                     sources_fingerprint)
from convrl.pipelines import conversational_rl as pipe
from convrl.pipelines.caching import task_caching, without_caching
from convrl.stages.cached import SECTIONS, stage_config

CACHED = {"ingest", "validate", "train-reward-models"}
RECORDS = {"ingest": "record-ingest", "validate": "record-validation", "train-reward-models": "record-reward-models"}
PER_RUN = {"parent_run_id", "run_name", "kfp_run_id", "config_json", "config_name", "overrides"}


def _spec(path=pipe.COMPILED) -> dict:
    return next(yaml.safe_load_all(path.read_text()))


def _tasks(spec: dict) -> dict:
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {name: task for dag in dags for name, task in dag["tasks"].items()}


def test_only_the_deterministic_compute_steps_are_cached_on_their_real_inputs():
    spec = _spec()
    caching = task_caching(spec)
    assert {name for name, on in caching.items() if on} == CACHED
    tasks = _tasks(spec)
    for name in CACHED:
        params = tasks[name]["inputs"].get("parameters", {})
        assert not PER_RUN & set(params), f"{name} takes a per-run input: no cache key could repeat"
        # Parameters: a config section from start-tracking or a fingerprint; artifacts: cached steps' outputs.
        assert {src["taskOutputParameter"]["producerTask"] for src in params.values()} <= {
            "start-tracking", "fingerprint-data"}, name
        assert {src["taskOutputArtifact"]["producerTask"]
                for src in tasks[name]["inputs"].get("artifacts", {}).values()} <= CACHED, name
        # Each has an uncached record step that logs its outputs under this run's parent run.
        record = tasks[RECORDS[name]]
        assert not caching[RECORDS[name]] and "parent_run_id" in record["inputs"]["parameters"]
        assert {src["taskOutputArtifact"]["producerTask"] for src in record["inputs"]["artifacts"].values()} == {name}
    assert tasks["ingest"]["inputs"]["parameters"]["data_fingerprint"]["taskOutputParameter"] == {
        "outputParameterKey": "data", "producerTask": "fingerprint-data"}
    assert tasks["train-reward-models"]["inputs"]["parameters"]["rewards_fingerprint"]["taskOutputParameter"] == {
        "outputParameterKey": "rewards", "producerTask": "fingerprint-data"}
    # A compute step waits for the previous record step, so a failure it records stops the run.
    assert "record-ingest" in tasks["validate"]["dependentTasks"]
    assert "record-validation" in tasks["train-reward-models"]["dependentTasks"]
    for uncached in ("fingerprint-data", "start-tracking", "rl-finetune", "evaluate", "register-candidate", "promote"):
        assert not caching[uncached], uncached


def test_a_step_key_changes_only_with_the_sections_it_reads(tiny_cfg):
    base = {stage: stage_config(tiny_cfg, stage) for stage in SECTIONS}
    elsewhere = load_config("tiny", ["rl.max_steps=7", "eval.num_prompts=3", "tracking.experiment=x",
                                     "registry.model_name=y", "ab.min_improvement=0.2"])
    assert {stage: stage_config(elsewhere, stage) for stage in SECTIONS} == base
    assert stage_config(load_config("tiny", ["data.seed=5"]), "ingest") != base["ingest"]
    assert stage_config(load_config("tiny", ["validate.max_text_chars=99"]), "validate") != base["validate"]
    assert stage_config(load_config("tiny", ["rewards.emotion.epochs=2"]), "reward_models") != base["reward_models"]
    # A step rebuilds exactly its sections from the key's JSON.
    back = config_from_json(base["reward_models"])
    assert back.rewards == tiny_cfg.rewards and back.models == tiny_cfg.models
    assert config_from_json(base["ingest"]).data == tiny_cfg.data


def test_data_fingerprint_follows_the_bytes_behind_a_path(tmp_path, monkeypatch):
    f = tmp_path / "chats.jsonl"
    f.write_text('{"messages": []}\n')
    specs = [f"jsonl:{f}?cap=5", "chatterbot:english"]
    first = sources_fingerprint(specs)
    assert sources_fingerprint(specs) == first
    f.write_text('{"messages": [{"role": "user", "content": "new"}]}\n')
    assert sources_fingerprint(specs) != first  # new data behind the same path: a new key
    folder = tmp_path / "dir"
    folder.mkdir()
    (folder / "a.jsonl").write_text("x")
    before = source_fingerprint(f"dir:{folder}")
    (folder / "b.jsonl").write_text("y")
    assert source_fingerprint(f"dir:{folder}") != before
    assert source_fingerprint(f"jsonl:{tmp_path / 'nope.jsonl'}") == "missing"  # fails the same way each time
    card = tmp_path / "coach.yaml"  # persona cards named by path are ingest data too
    card.write_text("persona_id: coach\n")
    sections = {"data": {"sources": specs, "personas": ["calm_expert", str(card)]}}
    before = ingest_fingerprint(sections)
    card.write_text("persona_id: coach2\n")
    assert ingest_fingerprint(sections) != before
    # Served traces keep arriving, and an unanswerable hub cannot be checked: never a cache hit.
    assert source_fingerprint("mlflow-traces:convrl") != source_fingerprint("mlflow-traces:convrl")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert source_fingerprint("hf:org/name?hf_split=train").startswith("uncached-")


def test_remote_fingerprint_reads_object_versions_without_downloading(tmp_path):
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe("/fp-bucket/chats.jsonl", b"one\n")
    spec = "jsonl:memory://fp-bucket/chats.jsonl"
    first = source_fingerprint(spec)
    assert source_fingerprint(spec) == first and not first.startswith("uncached-")
    fs.pipe("/fp-bucket/chats.jsonl", b"two, longer\n")
    assert source_fingerprint(spec) != first
    assert source_fingerprint("jsonl:memory://fp-bucket/absent.jsonl").startswith("uncached-")


def test_reward_key_covers_the_files_the_reward_section_names(tmp_path, tiny_cfg):
    ratings = tmp_path / "toxichat"
    ratings.mkdir()
    (ratings / "train.jsonl").write_text("a\n")
    cfg = load_config("tiny", [f"rewards.safety_data={ratings}"])
    sections = json.loads(stage_config(cfg, "reward_models"))
    first = settings_fingerprint(sections)
    (ratings / "train.jsonl").write_text("b\n")
    assert settings_fingerprint(sections) != first
    # Names that are not files here (tiny-bert, hub ids) are keyed by the name in the section alone.
    assert settings_fingerprint(json.loads(stage_config(tiny_cfg, "reward_models"))) == settings_fingerprint({})


def test_record_steps_log_a_previous_runs_outputs_to_a_new_parent_run(tiny_cfg, mlflow_store, tmp_path):
    """A cache hit: the compute steps ran once (for another run); recording their outputs under a new parent
    run logs the same metrics, data card, report and emotion-head model there."""
    from convrl.stages.data import ingest_compute, ingest_record, validate_compute, validate_record
    from convrl.stages.rewards import rewards_compute, rewards_record

    out = {k: str(tmp_path / v) for k, v in (("turns", "turns.parquet"), ("personas", "personas.parquet"),
                                             ("quarantine", "q.parquet"), ("summary", "ingest.json"),
                                             ("html", "r.html"), ("md", "r.md"), ("results", "checks.json"),
                                             ("rewards", "rewards"))}
    ingest_compute(tiny_cfg, out["turns"], out["personas"], out["quarantine"], out["summary"])
    validate_compute(tiny_cfg, out["turns"], out["personas"], out["html"], out["md"], out["results"])
    rewards_compute(tiny_cfg, out["turns"], out["rewards"], out["personas"])
    parents = []
    for name in ("first-run", "cache-hit-run"):
        parent = stages.begin(tiny_cfg, name)
        ingest_record(tiny_cfg, parent, out["turns"], out["personas"], out["quarantine"], out["summary"])
        validate_record(tiny_cfg, parent, out["results"])
        logged = rewards_record(tiny_cfg, parent, out["rewards"])
        assert logged["logged_model"].startswith("models:/")
        parents.append(parent)
    runs = [tracking.get_run(p) for p in parents]
    assert runs[0].data.metrics == runs[1].data.metrics
    assert {"conversations", "expectations", "emotion/val_macro_f1"} <= set(runs[1].data.metrics)
    assert runs[0].data.tags["convrl.data_fingerprint"] == runs[1].data.tags["convrl.data_fingerprint"]
    for parent in parents:
        by_stage = {r.data.tags[tracking.STAGE_TAG]: r for r in tracking.stage_runs(parent)}
        assert {"ingest", "validate", "reward_models"} <= set(by_stage)
        files = {a.path for a in tracking.client().list_artifacts(by_stage["ingest"].info.run_id)}
        assert {"data_card.json", "data_card.md", "turn_lengths.png"} <= files
        assert by_stage["reward_models"].data.params["emotion.label_kind"]


@pytest.mark.slow
def test_kfp_local_serves_the_compute_steps_from_the_cache_and_still_records(tiny_cfg, mlflow_store, tmp_path):
    """kfp.local (2.17) implements caching (kfp/local/cache.py: keyed on component, image, command, arguments
    and env). Two runs of the cached steps with different parent runs: the second runs only the record steps."""
    from kfp import dsl, local

    from convrl.components import stages as comps

    @dsl.pipeline
    def cached_stages(config_json: str, parent_run_id: str, data_config: str, validate_config: str,
                      rewards_config: str):
        fp = comps.fingerprint_data(data_config=data_config, rewards_config=rewards_config)
        data = comps.ingest(data_config=data_config, data_fingerprint=fp.outputs["data"])
        rec = comps.record_ingest(config_json=config_json, parent_run_id=parent_run_id, turns=data.outputs["turns"],
                                  personas=data.outputs["personas"], quarantine=data.outputs["quarantine"],
                                  summary=data.outputs["summary"])
        checks = comps.validate(validate_config=validate_config, turns=data.outputs["turns"],
                                personas=data.outputs["personas"]).after(rec)
        rec_checks = comps.record_validation(config_json=config_json, parent_run_id=parent_run_id,
                                             results=checks.outputs["results"])
        rewards = comps.train_reward_models(rewards_config=rewards_config, rewards_fingerprint=fp.outputs["rewards"],
                                            turns=data.outputs["turns"], personas=data.outputs["personas"])
        rec_rewards = comps.record_reward_models(config_json=config_json, parent_run_id=parent_run_id,
                                                 reward_models=rewards.outputs["reward_models"])
        for task in (data, checks, rewards):  # as the real pipeline sets them (compiled IR test above)
            task.set_caching_options(True)
        for task in (fp, rec, rec_checks, rec_rewards):
            task.set_caching_options(False)

    root = tmp_path / "root"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=True)
    parents = []
    try:
        for name in ("kfp-local-first", "kfp-local-second"):
            parent = stages.begin(tiny_cfg, name)
            cached_stages(config_json=tiny_cfg.to_json(), parent_run_id=parent,
                          data_config=stage_config(tiny_cfg, "ingest"),
                          validate_config=stage_config(tiny_cfg, "validate"),
                          rewards_config=stage_config(tiny_cfg, "reward_models"))
            parents.append(parent)
    finally:
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root))  # caching off again
    # kfp.local writes a task's output artifacts under <root>/<pipeline run>/<task>/ when the task runs.
    first, second = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                           key=lambda p: p.stat().st_mtime)
    ran = [{t.name for t in run.iterdir()} for run in (first, second)]
    assert CACHED <= ran[0]
    assert not CACHED & ran[1], f"compute steps ran again: {ran[1]}"  # served from the cache
    # ...and the record steps still logged everything under the second parent run.
    runs = [tracking.get_run(p) for p in parents]
    for parent in parents:
        assert {"ingest", "validate", "reward_models"} <= {r.data.tags[tracking.STAGE_TAG]
                                                          for r in tracking.stage_runs(parent)}
    assert runs[0].data.metrics == runs[1].data.metrics and "emotion/val_macro_f1" in runs[1].data.metrics


def test_without_caching_turns_every_task_off(tmp_path):
    out = without_caching(pipe.COMPILED, tmp_path / "nocache.yaml")
    docs = list(yaml.safe_load_all(out.read_text()))
    assert not any(task_caching(docs[0]).values())
    assert set(task_caching(docs[0])) == set(task_caching(_spec()))
    assert docs[1] == list(yaml.safe_load_all(pipe.COMPILED.read_text()))[1]  # the Kubernetes settings unchanged


def test_fingerprint_component_is_stable_for_unchanged_data(tiny_cfg):
    from convrl.components import stages as comps

    args = {"data_config": stage_config(tiny_cfg, "ingest"), "rewards_config": stage_config(tiny_cfg, "reward_models")}
    first = comps.fingerprint_data.python_func(**args)
    assert first == comps.fingerprint_data.python_func(**args) and len(first.data) == 64
    other = load_config("tiny", ["data.sources=[chatterbot:english, chatterbot:spanish]"])
    assert comps.fingerprint_data.python_func(**{**args, "data_config": stage_config(other, "ingest")}).data != first.data
