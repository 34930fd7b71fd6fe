"""bench/decode_precision.py runs end to end on the tiny model and reports both precisions and their agreement."""

from __future__ import annotations

import re

from tests.benches import run_bench


def test_decode_precision_bench_times_both_precisions_and_counts_identical_replies():
    out = run_bench("decode_precision", "--model", "tiny-llama", "--prompts", "3", "--tokens", "3", "--rounds", "1")
    assert re.search(r"^fp32: \d+\.\d s$", out.stdout, re.M) and re.search(r"^bf16: \d+\.\d s$", out.stdout, re.M)
    m = re.search(r"speed-up (\d+\.\d+)x; identical replies (\d)/3", out.stdout)
    assert m and float(m.group(1)) > 0
