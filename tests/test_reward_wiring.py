"""The reward-models component gets the persona table (the learned personality head trains on persona cards)."""

import yaml

from convrl.components import stages as comps
from convrl.pipelines.conversational_rl import COMPILED
from tests.kfp_fakes import _Art, _Metrics


def test_component_passes_personas_path_to_rewards_stage(monkeypatch, tiny_cfg, tmp_path):
    import convrl.stages
    import convrl.stages.rewards as rs
    from convrl.stages.cached import stage_config

    seen = {}

    def fake_compute(cfg, turns_path, reward_dir, personas_path=""):
        seen.update(turns=turns_path, reward_dir=reward_dir, personas=personas_path, rewards=cfg.rewards)
        return {"metrics": {"emotion/val_macro_f1": 0.5}, "label_kind": "x"}

    monkeypatch.setattr(rs, "rewards_compute", fake_compute)
    monkeypatch.setattr(convrl.stages, "offline_defaults", lambda: None)
    comps.train_reward_models.python_func(
        rewards_config=stage_config(tiny_cfg, "reward_models"), rewards_fingerprint="f",
        turns=_Art(tmp_path / "turns.parquet"), personas=_Art(tmp_path / "personas.parquet"),
        reward_models=_Art(tmp_path / "rm"))
    assert seen["personas"] == str(tmp_path / "personas.parquet")
    assert seen["turns"] == str(tmp_path / "turns.parquet")
    assert seen["rewards"] == tiny_cfg.rewards  # the section the cache key holds reaches the stage intact


def test_record_component_shows_the_stage_metrics_in_kfp(monkeypatch, tiny_cfg, tmp_path):
    import convrl.stages
    import convrl.stages.rewards as rs

    monkeypatch.setattr(rs, "rewards_record", lambda cfg, parent, reward_dir: {
        "emotion/val_macro_f1": 0.5, "label_kind": "gold", "logged_model": "models:/m-1"})
    monkeypatch.setattr(convrl.stages, "offline_defaults", lambda: None)
    m = _Metrics(tmp_path / "m")
    comps.record_reward_models.python_func(config_json=tiny_cfg.to_json(), parent_run_id="p",
                                           reward_models=_Art(tmp_path / "rm"), metrics=m)
    assert m.logged == {"emotion_val_macro_f1": 0.5}


def test_compiled_pipeline_wires_ingest_personas_into_reward_models():
    spec = next(yaml.safe_load_all(open(COMPILED)))  # the pipeline spec; the platform spec follows
    tasks = {k: t for c in spec["components"].values() if "dag" in c for k, t in c["dag"]["tasks"].items()}
    task = tasks["train-reward-models"]  # inside the exit handler's DAG
    src = task["inputs"]["artifacts"]["personas"]["taskOutputArtifact"]
    assert src == {"outputArtifactKey": "personas", "producerTask": "ingest"}
    assert "personas" in spec["components"]["comp-train-reward-models"]["inputDefinitions"]["artifacts"]
