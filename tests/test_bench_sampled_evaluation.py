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


def test_per_persona_rows_count_the_cards_strong_traits_by_the_judges_marker_words():
    from convrl.eval.judge_scorers import shows_trait

    assert shows_trait("I'm so glad you told me.", "warmth") and not shows_trait("Gladly, here it is.", "warmth")
    rows = []
    for i in range(4):
        rows.append({"model": "baseline", "prompt_id": f"p{i}", "persona_id": "empathetic_coach",
                     "response": "I'm glad you're here, I care about this." if i < 2 else "Try again tomorrow.",
                     "personality": 0.3, "judge_personality": 0.7, "words": 8.0})
        rows.append({"model": "candidate", "prompt_id": f"p{i}", "persona_id": "empathetic_coach",
                     "response": "Try again tomorrow.", "personality": 0.35, "judge_personality": 0.5, "words": 3.0})
    bench = load_bench("sampled_evaluation")
    (row,) = bench.persona_rows(pd.DataFrame(rows))
    # The coach's card: empathy 0.9, warmth 0.85, patience 0.8 (humor 0.3 and formality are not strong traits).
    assert row["traits"] == ["empathy", "warmth", "patience"] and row["prompts"] == 4
    assert row["warmth/baseline"] == 0.5 and row["warmth/candidate"] == 0.0
    assert row["personality/candidate"] == pytest.approx(0.35)
    assert row["judge_personality/baseline"] == pytest.approx(0.7)


def test_scores_mode_prints_both_tables_without_decoding(tmp_path, capsys):
    rows = [{"model": m, "prompt_id": f"p{i}", "persona_id": "calm_expert", "response": "Take it step by step.",
             "composite": 0.4 + (0.05 if m == "candidate" else 0.0), "personality": 0.2, "judge_personality": 0.5,
             "judge_composite": 0.6, "words": 5.0} for m in ("candidate", "baseline") for i in range(10)]
    pd.DataFrame(rows).to_parquet(tmp_path / "scores")
    bench = load_bench("sampled_evaluation")
    assert bench.main(["--scores", str(tmp_path / "scores")]) == 0
    out = capsys.readouterr().out
    assert "| composite | 0.400 | 0.450 | +0.0500 [+0.0500, +0.0500] |" in out
    assert "| calm_expert | 10 | 0.200 -> 0.200 | 0.500 -> 0.500 | 5.0 -> 5.0 |" in out
    with pytest.raises(SystemExit):
        bench.main([])  # neither --run nor --scores
