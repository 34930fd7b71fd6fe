"""bench/sampled_evaluation.py: finding a run's outputs, and the paired summary (the end-to-end run is in test_e2e)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.benches import load_bench


def test_a_folder_without_a_finished_run_is_refused_with_what_to_pass(tmp_path):
    with pytest.raises(SystemExit, match="no finished pipeline run here"):
        load_bench("sampled_evaluation").pipeline_root(tmp_path)


def test_the_run_folder_is_found_below_the_runs_folder(tmp_path):
    root = tmp_path / "pipeline_root" / "convrl-conversational-rl-2026"
    (root / "rl-finetune" / "policy").mkdir(parents=True)
    (root / "ingest" / "turns").mkdir(parents=True)
    assert load_bench("sampled_evaluation").pipeline_root(tmp_path) == root


def test_the_difference_is_paired_by_prompt_and_averaged_over_draws():
    rows = []
    for draw, bump in ((1, 0.0), (2, 0.2)):
        for i in range(40):
            rows.append({"model": "baseline", "prompt_id": f"p{i}", "draw": draw, "composite": 0.01 * i})
            rows.append({"model": "candidate", "prompt_id": f"p{i}", "draw": draw, "composite": 0.01 * i + bump})
    out = load_bench("sampled_evaluation").summary(pd.DataFrame(rows))
    assert [r["metric"] for r in out] == ["composite"]
    r = out[0]
    # Every prompt gains 0.1 on average over the two draws: the paired CI collapses onto it.
    assert r["diff"] == pytest.approx(0.1) and r["lo"] == pytest.approx(0.1) and r["hi"] == pytest.approx(0.1)
    assert r["candidate"] - r["baseline"] == pytest.approx(0.1)
