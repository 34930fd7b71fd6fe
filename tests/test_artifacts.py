"""Typed stage artifacts: each survives save/load exactly, and a wrong directory says what to pass."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from convrl.config import DEFAULT_WEIGHTS
from convrl.eval.artifacts import DecisionRecord, EvaluationScores
from convrl.rewards.bundle import BUNDLE_FILE, LEGACY_FILE, RewardBundle
from convrl.rl.artifact import PolicyArtifact


def test_reward_bundle_round_trip_and_legacy_file(tmp_path):
    b = RewardBundle(encoder="tiny-bert", weights=dict(DEFAULT_WEIGHTS), max_length=64, learned=["relevance"],
                     emotion_label_kind="gold", fluency_model="tiny-llama")
    assert b.save(tmp_path / "new").name == BUNDLE_FILE
    assert RewardBundle.load(tmp_path / "new") == b
    # Reward dirs written before the typed bundle hold reward_config.json, with fewer keys.
    old = tmp_path / "old"
    old.mkdir()
    (old / LEGACY_FILE).write_text(json.dumps({"encoder": "tiny-bert", "weights": {"quality": 1.0},
                                               "max_length": 32, "batch_size": 8, "fluency_model": None,
                                               "some_future_key": 1}))
    back = RewardBundle.load(old)
    assert back.encoder_precision == "fp32" and back.learned == [] and back.max_length == 32
    with pytest.raises(FileNotFoundError, match="reward_models output"):
        RewardBundle.load(tmp_path / "nothing")


def test_policy_artifact_round_trip(tmp_path):
    art = PolicyArtifact(policy_subdir="policy", base_model="tiny-llama", algorithm="grpo",
                         logged_model="models:/m-123", summary={"rl/steps": 3.0})
    art.save(tmp_path)
    back = PolicyArtifact.load(tmp_path)
    assert back == art and back.weights_dir(tmp_path) == tmp_path / "policy"
    with pytest.raises(FileNotFoundError, match="policy output of the RL stage"):
        PolicyArtifact.load(tmp_path / "elsewhere")


def test_evaluation_scores_keep_their_headline(tmp_path):
    scores = pd.DataFrame({"prompt_id": [0, 0], "model": ["candidate", "baseline"], "composite": [0.6, 0.5]})
    ev = EvaluationScores(scores, {"composite": 0.6, "engagement_rate": 0.25}, "base model tiny-llama")
    path = ev.save(tmp_path / "scores.parquet")
    back = EvaluationScores.load(path)
    pd.testing.assert_frame_equal(back.scores, scores)
    assert back.headline == ev.headline and back.baseline == ev.baseline
    # Still a plain Parquet file for anyone reading it with pandas.
    pd.testing.assert_frame_equal(pd.read_parquet(path), scores)


def test_decision_record_round_trip_and_refuses_non_decisions(tmp_path):
    rec = DecisionRecord("promote", ["gain"], {"composite": {"mean_diff": 0.1}}, 12,
                         {"primary": "composite"}, "PROMOTE.", {"composite": 0.6}, "champion v1")
    rec.save(tmp_path / "d.json")
    back = DecisionRecord.load(tmp_path / "d.json")
    assert back == rec and back.primary() == {"mean_diff": 0.1}
    (tmp_path / "x.json").write_text("[]")
    with pytest.raises(ValueError, match="not an A/B decision"):
        DecisionRecord.load(tmp_path / "x.json")
