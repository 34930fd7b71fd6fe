"""evaluate_stage end to end on tiny random models: scores, judges, self-play, report, MLflow, then ab_stage."""

from __future__ import annotations

import json
import os

import pandas as pd
import pytest

from convrl import tracking
from convrl.config import DEFAULT_WEIGHTS, load_config
from convrl.data.personas import personas_table
from convrl.rewards.bundle import RewardBundle
from convrl.rewards.emotion import train_emotion_head
from convrl.rl.artifact import PolicyArtifact


@pytest.fixture
def stage_inputs(tmp_path, ingested, personas, tiny_encoder, tiny_policy_dir):
    turns_path, personas_path = tmp_path / "turns.parquet", tmp_path / "personas.parquet"
    ingested.turns.to_parquet(turns_path)
    personas_table(personas).to_parquet(personas_path)
    reward_dir = tmp_path / "rewards"
    texts = ["I am so happy today", "This is terrible and sad", "I am furious", "What time is it"] * 3
    labels = ["happy", "sad", "angry", "neutral"] * 3
    clf, _ = train_emotion_head(tiny_encoder, texts, labels, texts[:4], labels[:4], epochs=3, lr=1e-2, hidden=8, seed=0)
    clf.save(reward_dir / "emotion")
    RewardBundle(encoder="tiny-bert", weights=dict(DEFAULT_WEIGHTS), max_length=64, batch_size=16,
                 fluency_model="tiny-llama").save(reward_dir)
    policy_dir = tmp_path / "policy"
    policy_dir.mkdir()
    os.symlink(tiny_policy_dir, policy_dir / "policy")
    PolicyArtifact(policy_subdir="policy", base_model="tiny-llama").save(policy_dir)
    return str(turns_path), str(personas_path), str(reward_dir), str(policy_dir)


def test_evaluate_stage_then_ab_stage(mlflow_store, tmp_path, stage_inputs, one_thread, monkeypatch):
    from convrl.stages.decision import ab_stage
    from convrl.stages.evaluation import evaluate_stage

    monkeypatch.setenv("CONVRL_HOME", str(tmp_path / "home"))  # an empty evaluation cache (eval.cache)

    cfg = load_config("tiny", ["eval.num_prompts=6", "eval.selfplay.max_new_tokens=4", "eval.n_bootstrap=100",
                               "ab.min_samples=3"])
    parent = tracking.start_pipeline_run(cfg.tracking.experiment, "eval-test", {}, {})
    scores_path, report_dir = str(tmp_path / "scores.parquet"), str(tmp_path / "report")
    out = evaluate_stage(cfg, parent, *stage_inputs, scores_path, report_dir)

    scores = pd.read_parquet(scores_path)
    for col in ("model", "prompt_id", "composite", "quality", "personality", "engagement", "relevance",
                "judge_composite", "judge_quality", "judge_personality", "judge_engagement", "judge_relevance",
                "judge_emotion", "judge_fluency", "contradictions"):
        assert col in scores, col
    assert scores.groupby("model").size().to_dict() == {"baseline": 6, "candidate": 6}

    assert out["baseline"].startswith("base model tiny-llama")
    assert {"satisfaction", "engagement_rate", "judge_composite", "reward_judge_gaps", "reward_conflicts",
            "selfplay_coherence"} <= set(out["headline"])
    assert all(isinstance(v, float) for v in out["headline"].values())
    assert isinstance(out["flagged_gaps"], list)
    assert "candidate/selfplay_coherence" in out and "candidate/engagement_rate" in out

    html = open(os.path.join(report_dir, "report.html")).read()
    assert "Multi-turn self-play" in html and "Reward heads vs held-out judges" in html
    assert os.path.exists(os.path.join(report_dir, "report.md"))

    metrics = tracking.get_run(parent).data.metrics
    assert "candidate_engagement_rate" in metrics and "baseline_selfplay_coherence" in metrics
    stage = [r for r in tracking.stage_runs(parent) if r.data.tags.get(tracking.STAGE_TAG) == "evaluate"][0]
    arts = {a.path for a in tracking.client().list_artifacts(stage.info.run_id, "report")}
    assert "report/report.html" in arts
    # Which reward heads pull against each other on the baseline's replies is a table on the stage run.
    eval_arts = {a.path for a in tracking.client().list_artifacts(stage.info.run_id, "eval")}
    assert {"eval/reward_conflicts.json", "eval/reward_judge_gaps.json"} <= eval_arts
    # Evaluation's phases are timed like the RL stage's: decoding, scoring, self-play.
    for phase in ("generate", "score", "selfplay"):
        assert stage.data.metrics[f"timing/eval_{phase}_s"] > 0, phase

    # The candidate is the tiny base model itself here, so the baseline's decodings were already in the cache.
    candidate_dir = stage_inputs[3] + "/policy"
    assert stage.data.tags["convrl.eval_cache_hits"] != "none"
    # A rerun (a retraining run against an unchanged champion, or a failed step run again) decodes nothing
    # and gives the same scores.
    parent2 = tracking.start_pipeline_run(cfg.tracking.experiment, "eval-test-again", {}, {})
    evaluate_stage(cfg, parent2, *stage_inputs, str(tmp_path / "scores2.parquet"), str(tmp_path / "report2"))
    again = [r for r in tracking.stage_runs(parent2) if r.data.tags.get(tracking.STAGE_TAG) == "evaluate"][0]
    hits = again.data.tags["convrl.eval_cache_hits"].split(", ")
    assert sorted(h.split(":", 1)[0] for h in hits) == ["replies", "replies", "selfplay", "selfplay"], hits
    assert any(h.endswith(candidate_dir) for h in hits)
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "scores2.parquet"), scores)

    # ab_stage reads the same parquet: the judge columns must not disturb it.
    outcome = ab_stage(cfg, parent, scores_path, str(tmp_path / "decision.json"))
    assert outcome in ("promote", "reject", "inconclusive")
    assert "judge_civility" in scores

    # The stage holds the civility judge strictly (ab.strict_guardrails): the baseline's own replies with a higher
    # composite pass every guardrail, and one of them made an insult is rejected though no CI can show one reply.
    same = scores[scores["model"] == "baseline"].copy()
    same = pd.concat([same, same.assign(model="candidate", composite=same["composite"] + 0.2)], ignore_index=True)
    same.to_parquet(tmp_path / "same.parquet")
    assert ab_stage(cfg, parent, str(tmp_path / "same.parquet"), str(tmp_path / "d1.json")) != "reject"
    rude = same.copy()
    rude.loc[rude.index[rude["model"] == "candidate"][0], "judge_civility"] = 0.5
    rude.to_parquet(tmp_path / "rude.parquet")
    assert ab_stage(cfg, parent, str(tmp_path / "rude.parquet"), str(tmp_path / "d2.json")) == "reject"
    assert "Strict guardrail 'judge_civility'" in " ".join(json.load(open(tmp_path / "d2.json"))["reasons"])
