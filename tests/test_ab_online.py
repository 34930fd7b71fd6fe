"""Online A/B: the unpaired path of eval/ab.py, the session-level decision, and promotion through the registry."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convrl import registry, tracking
from convrl.config import load_config
from convrl.eval.ab import ABSettings, compare_unpaired, decision_from_dict, unpaired_stats
from convrl.monitoring.online_ab import ab_settings, online_decision

NAME = "convrl-policy"  # the tiny preset's registry.model_name


def test_unpaired_stats_match_brute_force():
    rng = np.random.default_rng(0)
    c, b = rng.normal(0.6, 0.1, 40).round(2), rng.normal(0.5, 0.1, 30).round(2)
    s = unpaired_stats(np.append(c, np.nan), b, 2000, 0.95, np.random.default_rng(1))
    assert s["n_candidate"] == 40 and s["n_baseline"] == 30 and s["n"] == 30  # the NaN is left out
    assert s["mean_diff"] == pytest.approx(c.mean() - b.mean())
    assert s["ci_low"] < s["mean_diff"] < s["ci_high"]
    diff = c[:, None] - b[None, :]
    assert s["win_rate"] == pytest.approx(np.mean(diff > 1e-9))
    assert s["tie_rate"] == pytest.approx(np.mean(np.abs(diff) <= 1e-9))
    from scipy import stats

    assert s["p_value"] == pytest.approx(stats.mannwhitneyu(c, b).pvalue)
    empty = unpaired_stats(np.array([np.nan]), b, 100, 0.95, np.random.default_rng(1))
    assert empty["n"] == 0 and np.isnan(empty["mean_diff"])


def _groups(shift: float, n: int = 60, seed: int = 0, guard_shift: float = 0.0):
    rng = np.random.default_rng(seed)
    base = pd.DataFrame({"satisfaction": rng.normal(3.5, 0.8, n), "thumbs_up": rng.random(n),
                         "judge_composite": rng.normal(0.5, 0.05, n)})
    cand = pd.DataFrame({"satisfaction": rng.normal(3.5 + shift, 0.8, n), "thumbs_up": rng.random(n),
                         "judge_composite": rng.normal(0.5 + guard_shift, 0.05, n)})
    base.loc[::3, "satisfaction"] = np.nan  # not every session rates
    return cand, base


def test_compare_unpaired_decisions():
    st = ABSettings(primary="satisfaction", n_bootstrap=1000, guardrails=["judge_composite"], guardrail_margin=0.02)
    better = compare_unpaired(*_groups(0.8), st)
    assert better.outcome == "promote" and better.metrics["satisfaction"]["n_baseline"] == 40
    assert "sessions (unpaired)" in better.summary() and better.settings["design"] == "unpaired"
    assert decision_from_dict(better.to_dict()).outcome == "promote"
    assert compare_unpaired(*_groups(0.0, seed=3), st).outcome == "inconclusive"
    assert compare_unpaired(*_groups(-0.8), st).outcome == "reject"
    broken = compare_unpaired(*_groups(0.8, guard_shift=-0.1), st)
    assert broken.outcome == "reject" and broken.metrics["judge_composite"]["guardrail_broken"]
    few = compare_unpaired(*_groups(0.8, n=4), st)
    assert few.outcome == "inconclusive" and "Not enough data" in few.reasons[0]
    with pytest.raises(ValueError, match="missing or non-numeric"):
        compare_unpaired(*_groups(0.5), ABSettings(primary="rating"))


def _sessions(challenger_shift: float, n: int = 30, champion_version="1", challenger_version="2"):
    rng = np.random.default_rng(7)
    rows = []
    for variant, version, mu in (("champion", champion_version, 3.4), ("challenger", challenger_version,
                                                                          3.4 + challenger_shift)):
        for i in range(n):
            rows.append({"session_id": f"{variant}-{i}", "variant": variant, "model_version": version,
                         "satisfaction": float(np.clip(rng.normal(mu, 0.7), 1, 5)),
                         "thumbs_up": float(rng.random() < 0.6), "judge_composite": rng.normal(0.5, 0.03),
                         "reward_composite": rng.normal(0.55, 0.03), "session_turns": float(rng.integers(1, 6)),
                         "empty_rate": 0.0, "repetition": rng.uniform(0, 0.05)})
    return pd.DataFrame(rows)


def test_online_decision_uses_config_and_refuses_mixed_versions():
    cfg = load_config("tiny")
    settings = ab_settings(cfg.ab, cfg.monitor)
    assert settings.primary == "satisfaction" and settings.guardrails == ["thumbs_up", "judge_composite"]
    decision, who = online_decision(_sessions(0.9), settings)
    assert decision.outcome == "promote"
    assert who == {"champion_version": "1", "challenger_version": "2", "champion_sessions": 30,
                   "challenger_sessions": 30}
    mixed = pd.concat([_sessions(0.9), _sessions(0.9, challenger_version="3").assign(
        session_id=lambda d: d["session_id"] + "b")])
    with pytest.raises(ValueError, match="alias moved"):
        online_decision(mixed, settings)
    decision, who = online_decision(mixed, settings, challenger_version="3")
    assert who["challenger_version"] == "3"
    with pytest.raises(ValueError, match="both variants"):
        online_decision(_sessions(0.9).query("variant == 'champion'"), settings)


@pytest.fixture(scope="module")
def two_versions(mlflow_store, tiny_policy_dir):
    from convrl.tracking.pyfunc import HFDirModel

    parent = tracking.start_pipeline_run("ab-online-test", "p", {}, {})
    with tracking.stage_run(parent, "rl_finetune", "ab-online-test") as run:
        uris = [run.log_pyfunc(f"policy{i}", HFDirModel(), {"hf_dir": tiny_policy_dir}) for i in range(2)]
    v1, _ = registry.register_candidate(uris[0], NAME, "run-1", {})
    registry.promote(NAME, v1, "first")
    v2, _ = registry.register_candidate(uris[1], NAME, "run-2", {})
    return v1, v2


def served_turns(v1: str, v2: str, shift: float) -> pd.DataFrame:
    """Served turns (search_turns shape) where the challenger's users rate higher by ``shift``."""
    rng = np.random.default_rng(3)
    rows, now = [], pd.Timestamp.now(tz="UTC")
    for variant, version, mu in (("champion", v1, 3.2), ("challenger", v2, 3.2 + shift)):
        for s in range(24):
            rows.append({"trace_id": f"{variant}-{s}", "session_id": f"{variant}-s{s}",
                         "timestamp": now - pd.Timedelta(hours=s + 1), "variant": variant, "model_version": version,
                         "persona": "empathetic_coach",
                         "messages": [{"role": "user", "content": "I feel a bit down today."}],
                         "reply": "I'm sorry to hear that. What has been weighing on you?",
                         "thumbs": bool(rng.random() < 0.7),
                         "rating": int(np.clip(round(rng.normal(mu, 0.6)), 1, 5))})
    return pd.DataFrame(rows)


def test_online_ab_stage_promotes_through_the_registry(two_versions):
    from convrl.stages.monitoring import online_ab_stage

    v1, v2 = two_versions
    cfg = load_config("tiny", ["monitor.experiment=ab-online-test", "ab.guardrail_margin=0.2"])
    since = pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=2)
    flat = online_ab_stage(cfg, since, promote=True, turns=served_turns(v1, v2, 0.0))
    assert flat["decision"]["outcome"] != "promote" and flat["promoted"] is None
    assert tracking.alias_version(NAME, registry.CHAMPION) == v1

    result = online_ab_stage(cfg, since, promote=True, turns=served_turns(v1, v2, 1.5))
    assert result["decision"]["outcome"] == "promote", result["summary"]
    assert result["promoted"] == {"champion": v2, "previous": v1, "moved": True}
    assert tracking.alias_version(NAME, registry.CHAMPION) == v2
    assert tracking.version_info(NAME, v2)["tags"]["convrl.promoted_by"] == "ab-online"
    run = tracking.get_run(result["run_id"])
    assert run.data.tags["convrl.ab_online.promoted"] == v2
    assert "satisfaction/mean_diff" in run.data.metrics
    registry.rollback(NAME, "test reset")

    tracking.set_alias(NAME, registry.CHALLENGER, v1)  # the alias moved after the sessions were served
    with pytest.raises(registry.RegistryError, match="refusing to promote"):
        online_ab_stage(cfg, since, promote=True, turns=served_turns(v1, v2, 1.5))


def test_cli_reports_missing_traffic_clearly(mlflow_store, capsys):
    from convrl.cli import main

    assert main(["ab", "online", "--config", "tiny", "--since", "2d", "monitor.experiment=nothing-served"]) == 2
    err = capsys.readouterr().err
    assert "no served turns" in err and "convrl serve" in err
    with pytest.raises(SystemExit, match="relative time"):
        main(["ab", "online", "--config", "tiny", "--since", "last tuesday"])


def test_online_ab_can_decide_on_satisfaction_read_from_users_answers():
    from convrl.monitoring.frames import session_table

    cfg = load_config("tiny", ["monitor.ab_primary=predicted_satisfaction"])
    settings = ab_settings(cfg.ab, cfg.monitor)
    rng = np.random.default_rng(3)
    sessions = _sessions(0.0)
    # Nobody rated, but every session answered: the reaction model's reading decides.
    sessions["satisfaction"] = np.nan
    lift = 0.4 * (sessions["variant"] == "challenger")
    sessions["predicted_satisfaction"] = rng.normal(3.2, 0.2, len(sessions)) + lift
    decision, _ = online_decision(sessions, settings)
    assert decision.outcome == "promote" and decision.metrics["predicted_satisfaction"]["n_baseline"] == 30
    # Without a reaction model the column is there, empty, and the default primary still decides.
    turns = pd.DataFrame({"session_id": ["a", "a", "b"], "variant": ["champion"] * 3, "model_version": ["1"] * 3,
                          "judge_composite": 0.5, "composite": 0.5, "empty": 0.0, "repetition": 0.0,
                          "rating": np.nan, "thumbs": np.nan, "trace_id": ["t1", "t2", "t3"],
                          "timestamp": pd.Timestamp("2026-11-20T12:00:00Z")})
    assert session_table(turns)["predicted_satisfaction"].isna().all()
    by_session = session_table(turns.assign(reaction=[4.0, np.nan, 2.0])).set_index("session_id")
    assert by_session.at["a", "predicted_satisfaction"] == 4.0 and by_session.at["b", "predicted_satisfaction"] == 2.0


def test_one_insulting_challenger_session_fails_the_online_ab():
    # The civility judge is a strict guardrail online too: sessions are unpaired, so a challenger worse on more
    # (challenger, champion) session pairs than it is better is rejected, however well it is rated.
    cfg = load_config("tiny")
    settings = ab_settings(cfg.ab, cfg.monitor)
    assert settings.strict_guardrails == ["judge_civility"]
    sessions = _sessions(0.9).assign(judge_civility=1.0)
    assert online_decision(sessions, settings)[0].outcome == "promote"
    first = sessions.index[sessions["variant"] == "challenger"][0]
    sessions.loc[first, "judge_civility"] = 0.5
    decision, _ = online_decision(sessions, settings)
    assert decision.outcome == "reject" and decision.metrics["judge_civility"]["guardrail_broken"]
    assert "Strict guardrail 'judge_civility'" in decision.reasons[0] and "session pairs" in decision.reasons[0]
