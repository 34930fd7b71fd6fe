"""bench/learning_evidence.py's summary of a seed: from a real A/B decision to the README's table row."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from convrl.eval.ab import ABSettings, compare
from tests.benches import load_bench

SETTINGS = ABSettings(primary="composite", n_bootstrap=1000, confidence=0.95, min_samples=10,
                      min_improvement=0.0, guardrail_margin=0.05, guardrails=None, seed=13, alpha=0.05)
METRICS = {"seed": 13, "minutes": 14.25, "rl/clipped_ratio_last_quarter": 0.125,
           "baseline_selfplay_self_repetition": 0.5, "candidate_selfplay_self_repetition": 0.0,
           "baseline_selfplay_fact_recall": 0.0, "candidate_selfplay_fact_recall": 1 / 6,
           "baseline_cut_off": 0.75, "candidate_cut_off": 0.125,
           "baseline_contradictions": 0.0416, "candidate_contradictions": 0.1146}


def _decision(shift: dict, tmp_path):
    """A/B of synthetic per-prompt scores, saved as the pipeline saves it (a JSON file somewhere in the run)."""
    rng = np.random.default_rng(0)
    n = 120
    base = {m: rng.uniform(0.3, 0.7, n) for m in ("composite", "judge_composite", "judge_personality")}
    cand = {m: v + shift.get(m, 0.0) + rng.normal(0.0, 0.02, n) for m, v in base.items()}
    ids = {"prompt_id": [f"p{i}" for i in range(n)]}
    d = compare(pd.DataFrame({**ids, **cand}), pd.DataFrame({**ids, **base}), SETTINGS)
    run = tmp_path / "runs" / "evidence-t-seed13" / "pipeline_root" / "x" / "ab-compare"
    run.mkdir(parents=True)
    (run / "decision").write_text(json.dumps(d.to_dict()))
    (run / "other.json").write_text(json.dumps({"not": "a decision"}))
    return tmp_path / "runs" / "evidence-t-seed13"


def test_a_seed_that_gained_on_the_judges_and_lost_nothing_holds(tmp_path):
    ev = load_bench("learning_evidence")
    decision = ev._find_decision(_decision({"composite": 0.05, "judge_composite": 0.04}, tmp_path))
    row = ev.summarize_seed({"seed": 13, "minutes": 14.25, "decision": decision, "metrics": METRICS})
    assert row["decision"] == "promote" and row["significantly_worse"] == []
    assert row["judge_composite"][1] > 0 and ev.held(row)
    line = ev.table([row]).splitlines()[2]
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[0] == "13" and cells[3] == "promote" and cells[4] == "none"
    assert cells[5:] == ["0.12", "75% -> 12%", "4% -> 11%", "50% -> 0%", "0% -> 17%", "14.2"]
    assert cells[2].startswith("+0.04")


def test_the_clipped_cell_names_earlier_policy_turns(tmp_path):
    ev = load_bench("learning_evidence")
    decision = ev._find_decision(_decision({"composite": 0.05, "judge_composite": 0.04}, tmp_path))
    metrics = {**METRICS, "rl/clipped_ratio_turn1_last_quarter": 0.0625, "rl/clipped_ratio_turn2_last_quarter": 0.125}
    row = ev.summarize_seed({"seed": 13, "minutes": 14.25, "decision": decision, "metrics": metrics})
    cells = [c.strip() for c in ev.table([row]).splitlines()[2].strip("|").split("|")]
    assert cells[5] == "0.12 (turn 1: 0.06)"   # the last turn's share (TRL's), then each earlier turn's


def test_a_guardrail_significantly_worse_fails_the_seed_even_with_a_judge_gain(tmp_path):
    ev = load_bench("learning_evidence")
    decision = ev._find_decision(_decision({"composite": 0.05, "judge_composite": 0.04,
                                            "judge_personality": -0.08}, tmp_path))
    row = ev.summarize_seed({"seed": 13, "minutes": 14.25, "decision": decision, "metrics": METRICS})
    assert row["significantly_worse"] == ["judge_personality"]
    assert not ev.held(row)
    assert "| judge_personality |" in ev.table([row])


def test_no_judge_gain_fails_the_seed(tmp_path):
    ev = load_bench("learning_evidence")
    decision = ev._find_decision(_decision({"composite": 0.05}, tmp_path))
    row = ev.summarize_seed({"seed": 1, "minutes": 3.0, "decision": decision, "metrics": {}})
    assert row["judge_composite"][1] <= 0 and not ev.held(row)
    assert "n/a" in ev.table([row])  # RL and self-play figures absent: said, not invented


def test_the_table_names_the_cpu_and_its_bf16_units():
    ev = load_bench("learning_evidence")
    epyc = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx512f avx512_bf16 sse\n"
    xeon = "model name\t: Intel(R) Xeon(R) Processor\nflags\t: avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert ev.cpu_description(epyc) == "AMD EPYC, AVX512-BF16"
    assert ev.cpu_description(xeon) == "Intel(R) Xeon(R) Processor, AVX512-BF16/AMX"
    assert ev.cpu_description("model name : Old CPU\nflags : sse2 avx2\n") == "Old CPU, no bf16 units"
    amx = "cpu family\t: 6\nmodel\t\t: 207\nmodel name\t: Intel(R) Xeon(R) Processor\nstepping\t: 2\nflags\t: amx_bf16\n"
    assert ev.cpu_description(amx) == "Intel(R) Xeon(R) Processor (cpu family 6, model 207, stepping 2), AMX"
    assert ev.cpu_description()  # this machine, whatever it is


def test_a_broken_strict_guardrail_fails_the_seed(tmp_path):
    # One new insult (the civility judge) fails the seed though no CI excludes 0 and the judges gained.
    rng = np.random.default_rng(0)
    n = 96
    base = rng.uniform(0.3, 0.7, n)
    civ = np.ones(n)
    civ[0] = 0.5
    ids = {"prompt_id": [f"p{i}" for i in range(n)]}
    cand = pd.DataFrame({**ids, "composite": base + 0.05, "judge_composite": base + 0.04, "judge_civility": civ})
    d = compare(cand, pd.DataFrame({**ids, "composite": base, "judge_composite": base, "judge_civility": np.ones(n)}),
                ABSettings(seed=13, strict_guardrails=["judge_civility"]))
    run = tmp_path / "runs" / "evidence-t-seed13" / "pipeline_root" / "x" / "ab-compare"
    run.mkdir(parents=True)
    (run / "decision").write_text(json.dumps(d.to_dict()))
    ev = load_bench("learning_evidence")
    row = ev.summarize_seed({"seed": 13, "minutes": 14.25, "decision": ev._find_decision(run.parents[2]),
                             "metrics": METRICS})
    assert row["decision"] == "reject" and row["significantly_worse"] == ["judge_civility (strict)"]
    assert row["judge_composite"][1] > 0 and not ev.held(row)
