"""bench/selfplay_decoding.py runs end to end on tiny models and reports each model under each decoding."""

from __future__ import annotations

from tests.benches import run_bench


def test_selfplay_decoding_bench_prints_a_row_per_model_and_decoding():
    out = run_bench("selfplay_decoding", "--candidate", "tiny-llama", "--base", "tiny-llama", "--conversations", "1",
                    "--ngram", "0", "2")
    table = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert "self_repetition" in table[0] and "fact_recall" in table[0]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in table[2:]]
    assert [(r[0], r[1]) for r in rows] == [("base", "0"), ("candidate", "0"), ("base", "2"), ("candidate", "2")]
    for r in rows:
        assert 0.0 <= float(r[2]) <= 1.0  # a repeated-turn share
