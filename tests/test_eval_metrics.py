"""Use-case metrics, per-persona breakdown and reward-judge gap flags on synthetic score tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.test_eval_fixtures import synthetic_scores

from convrl.eval.judges import JudgePanel
from convrl.eval.metrics import (add_use_case_columns, analyze, bootstrap_mean_ci, distinct_n, per_persona,
                                 reward_judge_gaps, summarize)


@pytest.fixture(scope="module")
def panel():
    return JudgePanel()


def test_distinct_n_known_answers():
    assert distinct_n(["a b a b"], 1) == pytest.approx(2 / 4)
    assert distinct_n(["a b a b"], 2) == pytest.approx(2 / 3)
    assert distinct_n(["a b", "c d"], 2) == 1.0
    assert distinct_n([""], 2) == 0.0


def test_bootstrap_ci_brackets_the_mean():
    x = np.random.default_rng(0).normal(0.5, 0.1, 200)
    lo, hi = bootstrap_mean_ci(x, 500, seed=1)
    assert lo < x.mean() < hi and hi - lo < 0.05


def test_rates_and_satisfaction_mapping():
    df = pd.DataFrame({"judge_engagement": [0.49, 0.5, 0.9, 0.1], "judge_relevance": [1, 1, 0, 0],
                       "judge_personality": [0.6] * 4, "judge_emotion": [0.0] * 4,
                       "judge_composite": [0.0, 1.0, 0.5, 0.25]})
    out = add_use_case_columns(df, threshold=0.5)
    assert out["engagement_rate"].mean() == 50.0
    assert out["relevance_rate"].mean() == 50.0
    assert out["personality_consistency"].mean() == 100.0
    assert out["emotional_appropriateness"].mean() == 0.0
    assert out["satisfaction"].tolist() == [1.0, 5.0, 3.0, 2.0]


def test_summary_and_per_persona(panel, personas):
    scores = synthetic_scores(12, personas=personas, judges=panel)
    s = summarize(scores)
    for m in ("composite", "engagement_rate", "relevance_rate", "personality_consistency",
              "emotional_appropriateness", "satisfaction", "distinct_1", "distinct_2", "repetition", "words",
              "judge_composite", "empty_rate"):
        assert f"candidate/{m}" in s and f"baseline/{m}" in s, m
    # The candidate answers every prompt sensibly, the baseline mostly does not.
    assert s["candidate/satisfaction"] > s["baseline/satisfaction"]
    assert s["candidate/personality_consistency"] > s["baseline/personality_consistency"]
    pp = per_persona(scores)
    assert set(pp.index.get_level_values(0)) == {p.persona_id for p in personas}
    assert (pp["replies"] == 4).all()


def _gap_table(reward_gain: float, judge_gain: float, n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for model, r, j in (("baseline", 0.0, 0.0), ("candidate", reward_gain, judge_gain)):
        for i in range(n):
            row = {"model": model, "prompt_id": f"p{i}"}
            for head in ("quality", "personality", "engagement", "relevance"):
                row[head] = 0.4 + r + rng.normal(0, 0.01)
                row[f"judge_{head}"] = 0.4 + j + rng.normal(0, 0.01)
            rows.append(row)
    return pd.DataFrame(rows)


@pytest.mark.parametrize("reward_gain,judge_gain,flagged,verdict", [
    (0.2, 0.0, True, "reward-judge gap"),        # the head rises, its judge stays put: reward hacking
    (0.2, -0.1, True, "reward-judge gap"),
    (0.2, 0.05, True, "reward-judge gap"),       # the judge confirms less than half of the gain
    (0.2, 0.2, False, "confirmed"),
    (0.0, 0.0, False, "no significant change"),
    (-0.2, -0.2, False, "both regress"),
    (0.0, 0.2, False, "judge improves"),
])
def test_reward_judge_gap_known_answers(reward_gain, judge_gain, flagged, verdict):
    gaps = reward_judge_gaps(_gap_table(reward_gain, judge_gain), n_boot=300)
    assert len(gaps) == 4
    assert gaps["flagged"].tolist() == [flagged] * 4
    assert all(v.startswith(verdict) for v in gaps["verdict"])


def test_hacked_engagement_is_flagged_and_honest_run_is_not(panel, personas):
    hacked = analyze(synthetic_scores(24, personas=personas, judges=panel, hack=True), n_boot=300)
    g = hacked.gaps.set_index("quality")
    assert g.loc["engagement", "flagged"] and g.loc["engagement", "judge_diff"] < 0
    honest = analyze(synthetic_scores(24, personas=personas, judges=panel), n_boot=300)
    assert not honest.gaps["flagged"].any()
    assert honest.headline["reward_judge_gaps"] == 0.0


def test_headline_metrics(panel, personas):
    a = analyze(synthetic_scores(12, personas=personas, judges=panel), n_boot=200,
                selfplay={"candidate/coherence": 0.7, "candidate/contradiction_rate": 0.1})
    for k in ("satisfaction", "engagement_rate", "relevance_rate", "personality_consistency",
              "emotional_appropriateness", "composite_reward", "judge_composite", "composite_delta",
              "satisfaction_delta", "reward_judge_gaps", "selfplay_coherence", "selfplay_contradiction_rate"):
        assert isinstance(a.headline[k], float), k
    assert 1.0 <= a.headline["satisfaction"] <= 5.0
    assert set(a.ci.columns) == {"metric", "model", "mean", "lo", "hi"}
