"""The reward-models component gets the persona table (the learned personality head trains on persona cards)."""

import yaml

from convrl.components import stages as comps
from convrl.pipelines.conversational_rl import COMPILED
from tests.kfp_fakes import _Art, _Metrics


def test_component_passes_personas_path_to_rewards_stage(monkeypatch, tiny_cfg, tmp_path):
    import convrl.stages
    import convrl.stages.rewards as rs

    seen = {}

    def fake_stage(cfg, parent_run_id, turns_path, reward_dir, personas_path=""):
        seen.update(turns=turns_path, reward_dir=reward_dir, personas=personas_path)
        return {"emotion/val_macro_f1": 0.5, "note": "x"}

    monkeypatch.setattr(rs, "rewards_stage", fake_stage)
    monkeypatch.setattr(convrl.stages, "offline_defaults", lambda: None)
    m = _Metrics(tmp_path / "m")
    comps.train_reward_models.python_func(
        config_json=tiny_cfg.to_json(), parent_run_id="p", turns=_Art(tmp_path / "turns.parquet"),
        personas=_Art(tmp_path / "personas.parquet"), reward_models=_Art(tmp_path / "rm"), metrics=m)
    assert seen["personas"] == str(tmp_path / "personas.parquet")
    assert seen["turns"] == str(tmp_path / "turns.parquet")
    assert m.logged == {"emotion_val_macro_f1": 0.5}


def test_compiled_pipeline_wires_ingest_personas_into_reward_models():
    spec = next(yaml.safe_load_all(open(COMPILED)))  # the pipeline spec; the platform spec follows
    tasks = {k: t for c in spec["components"].values() if "dag" in c for k, t in c["dag"]["tasks"].items()}
    task = tasks["train-reward-models"]  # inside the exit handler's DAG
    src = task["inputs"]["artifacts"]["personas"]["taskOutputArtifact"]
    assert src == {"outputArtifactKey": "personas", "producerTask": "ingest"}
    assert "personas" in spec["components"]["comp-train-reward-models"]["inputDefinitions"]["artifacts"]
