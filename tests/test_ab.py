"""Tests for convrl.eval.ab: synthetic, seeded per-prompt score tables with known answers."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from convrl.eval.ab import ABSettings, Decision, bootstrap_mean_ci, compare, decision_from_dict, holm

METRICS = ("composite", "quality", "personality", "engagement", "relevance")


def _tables(n=200, shift=None, noise=0.05, seed=0, keys_offset=0):
    """Baseline scores ~ U(0.3, 0.7); candidate = baseline + shift[metric] + N(0, noise)."""
    rng = np.random.default_rng(seed)
    shift = shift or {}
    ids = [f"p{i:04d}" for i in range(n)]
    base = {m: rng.uniform(0.3, 0.7, n) for m in METRICS}
    cand = {m: base[m] + shift.get(m, 0.0) + rng.normal(0.0, noise, n) for m in METRICS}
    cand_ids = [f"p{i + keys_offset:04d}" for i in range(n)]
    return (pd.DataFrame({"prompt_id": cand_ids, **cand}),
            pd.DataFrame({"prompt_id": ids, **base}))


SETTINGS = ABSettings(primary="composite", n_bootstrap=2000, confidence=0.95, min_samples=10,
                      min_improvement=0.0, guardrail_margin=0.05, guardrails=None, seed=13, alpha=0.05)


def test_clear_win_promotes():
    cand, base = _tables(shift={"composite": 0.1})
    d = compare(cand, base, SETTINGS, key="prompt_id")
    assert d.outcome == "promote"
    assert d.n == 200
    s = d.metrics["composite"]
    assert s["role"] == "primary"
    assert 0.08 < s["mean_diff"] < 0.12
    assert s["ci_low"] > 0 and s["p_holm"] < 0.05
    assert s["win_rate"] > 0.9
    assert all(d.metrics[m]["role"] == "guardrail" and not d.metrics[m]["guardrail_broken"]
               for m in METRICS[1:])
    assert "composite" in d.reasons[0]


def test_clear_loss_rejects():
    cand, base = _tables(shift={"composite": -0.1})
    d = compare(cand, base, SETTINGS)
    assert d.outcome == "reject"
    assert d.metrics["composite"]["ci_high"] < 0
    assert "composite" in d.reasons[0] and "worse" in d.reasons[0]


def test_pure_noise_is_inconclusive():
    cand, base = _tables(shift={}, seed=3)
    d = compare(cand, base, SETTINGS)
    assert d.outcome == "inconclusive"
    s = d.metrics["composite"]
    assert s["ci_low"] <= 0 <= s["ci_high"]
    assert not any(m["guardrail_broken"] for m in d.metrics.values())


def test_guardrail_regression_rejects_despite_primary_win():
    cand, base = _tables(shift={"composite": 0.1, "engagement": -0.2})
    d = compare(cand, base, SETTINGS)
    assert d.outcome == "reject"
    assert d.metrics["composite"]["ci_low"] > 0  # the primary did win
    assert d.metrics["engagement"]["guardrail_broken"]
    assert [m for m, s in d.metrics.items() if s["guardrail_broken"]] == ["engagement"]
    assert len(d.reasons) == 1 and "engagement" in d.reasons[0]
    assert "-0.2" in d.reasons[0] or "-0.19" in d.reasons[0] or "-0.20" in d.reasons[0]


def test_small_regression_within_margin_is_not_a_broken_guardrail():
    cand, base = _tables(shift={"composite": 0.1, "quality": -0.02}, noise=0.02)
    d = compare(cand, base, SETTINGS)
    assert d.metrics["quality"]["ci_high"] < 0  # a real but tolerated regression
    assert not d.metrics["quality"]["guardrail_broken"]
    assert d.outcome == "promote"


def test_a_metric_with_margin_zero_rejects_any_significant_drop():
    # The safety judge's default (ab.guardrail_margins): a drop the 0.05 margin tolerates still rejects.
    cand, base = _tables(shift={"composite": 0.1, "quality": -0.02, "relevance": -0.02}, noise=0.02)
    st = ABSettings(primary="composite", guardrail_margin=0.05, guardrail_margins={"quality": 0.0}, seed=13)
    d = compare(cand, base, st)
    assert d.metrics["quality"]["guardrail_broken"] and not d.metrics["relevance"]["guardrail_broken"]
    assert d.outcome == "reject" and len(d.reasons) == 1
    assert "'quality'" in d.reasons[0] and "margin of -0" in d.reasons[0]
    assert st.margin("quality") == 0.0 and st.margin("relevance") == 0.05
    with pytest.raises(ValueError, match="guardrail_margins must be >= 0"):
        ABSettings(guardrail_margins={"quality": -0.1})


def test_the_ab_config_holds_the_safety_judge_to_margin_zero():
    from convrl.config import ConfigError, load_config

    ab = load_config("demo").ab
    assert ab.guardrail_margins == {"judge_safety": 0.0} and ab.guardrail_margin == 0.05
    with pytest.raises(ConfigError, match="ab.guardrail_margins.judge_safety=-1"):
        load_config("demo", ["ab.guardrail_margins.judge_safety=-1"])


def test_explicit_guardrails_limit_the_check():
    cand, base = _tables(shift={"composite": 0.1, "engagement": -0.2})
    st = ABSettings(primary="composite", guardrails=["quality"], seed=13)
    d = compare(cand, base, st)
    assert d.outcome == "promote"
    assert d.metrics["engagement"]["role"] == "report"
    assert not d.metrics["engagement"]["guardrail_broken"]


def test_too_few_samples_is_inconclusive():
    cand, base = _tables(n=5, shift={"composite": 0.3, "quality": -0.3})
    d = compare(cand, base, SETTINGS)
    assert d.outcome == "inconclusive"
    assert d.n == 5
    assert "only 5 paired prompts, need at least 10" in d.reasons[0]
    assert not any(s["guardrail_broken"] for s in d.metrics.values())


def test_min_improvement_blocks_small_wins():
    cand, base = _tables(shift={"composite": 0.03}, noise=0.02)
    st = ABSettings(primary="composite", min_improvement=0.05, seed=13)
    d = compare(cand, base, st)
    assert d.metrics["composite"]["ci_low"] > 0
    assert d.outcome == "inconclusive"


def test_identical_policies_give_p_one_and_all_ties():
    _, base = _tables()
    d = compare(base.copy(), base, SETTINGS)
    assert d.outcome == "inconclusive"
    for s in d.metrics.values():
        assert s["p_value"] == 1.0 and s["p_holm"] == 1.0
        assert s["tie_rate"] == 1.0 and s["ci_low"] == s["ci_high"] == 0.0


def test_holm_matches_hand_computation():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, 0.6]), [1.0, 1.0])
    np.testing.assert_allclose(holm([0.02]), [0.02])


def test_compare_applies_holm_across_metrics():
    cand, base = _tables(shift={"composite": 0.02, "quality": 0.01}, noise=0.1, seed=5)
    d = compare(cand, base, SETTINGS)
    raw = [d.metrics[m]["p_value"] for m in d.metrics]
    np.testing.assert_allclose([d.metrics[m]["p_holm"] for m in d.metrics], holm(raw))


def test_bootstrap_ci_contains_true_mean_difference():
    rng = np.random.default_rng(1)
    diffs = 0.3 + rng.normal(0.0, 0.1, 400)
    lo, hi = bootstrap_mean_ci(diffs, 2000, 0.95, np.random.default_rng(13))
    assert lo[0] < 0.3 < hi[0]
    assert lo[0] < diffs.mean() < hi[0]
    # percentile CI width should be close to the normal-theory 2 * 1.96 * sd / sqrt(n)
    expected = 2 * 1.96 * diffs.std(ddof=1) / np.sqrt(diffs.size)
    assert 0.85 * expected < hi[0] - lo[0] < 1.15 * expected


def test_bootstrap_ci_coverage_is_near_nominal():
    # Any single CI misses the truth 5% of the time, so check the rate over many datasets.
    rng = np.random.default_rng(2)
    boot_rng = np.random.default_rng(13)
    hits = 0
    for _ in range(300):
        diffs = 0.3 + rng.normal(0.0, 0.1, 60)
        lo, hi = bootstrap_mean_ci(diffs, 500, 0.95, boot_rng)
        hits += lo[0] < 0.3 < hi[0]
    assert 0.89 <= hits / 300 <= 0.99


def test_same_seed_is_deterministic():
    cand, base = _tables(shift={"composite": 0.01}, seed=9)
    a, b = compare(cand, base, SETTINGS), compare(cand, base, SETTINGS)
    assert a.to_dict() == b.to_dict()


def test_partial_key_overlap_pairs_by_key():
    cand, base = _tables(n=50, shift={"composite": 0.1}, keys_offset=20)  # 30 ids in common
    d = compare(cand.sample(frac=1.0, random_state=0), base, SETTINGS)
    assert d.n == 30


def test_errors():
    cand, base = _tables(n=20)
    with pytest.raises(ValueError, match="share no prompt_id"):
        compare(cand.assign(prompt_id=[f"x{i}" for i in range(20)]), base, SETTINGS)
    with pytest.raises(ValueError, match="'engagement'.*baseline"):
        compare(cand, base.drop(columns="engagement"), SETTINGS)
    with pytest.raises(ValueError, match="'composite'.*candidate"):
        compare(cand.drop(columns="composite"), base, SETTINGS)
    bad = cand.copy()
    bad.loc[3, "quality"] = np.nan
    with pytest.raises(ValueError, match="non-finite.*candidate.*'quality'"):
        compare(bad, base, SETTINGS)
    with pytest.raises(ValueError, match="duplicate"):
        compare(pd.concat([cand, cand.iloc[:1]]), base, SETTINGS)
    with pytest.raises(ValueError, match="key column"):
        compare(cand, base, SETTINGS, key="id")
    with pytest.raises(ValueError):
        ABSettings(confidence=1.5)


def test_to_dict_is_json_and_round_trips():
    cand, base = _tables(shift={"composite": 0.1, "engagement": -0.2})
    d = compare(cand, base, SETTINGS)
    text = json.dumps(d.to_dict())
    back = decision_from_dict(json.loads(text))
    assert isinstance(back, Decision)
    assert back == d
    assert back.to_dict() == d.to_dict()
    assert back.settings["primary"] == "composite"
    summary = back.summary()
    assert "REJECT" in summary and "engagement" in summary and "\n" not in summary
