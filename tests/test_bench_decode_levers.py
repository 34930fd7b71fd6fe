"""bench/decode_levers.py runs every decoding configuration on the tiny model and compares their tokens."""

from __future__ import annotations

import re

from tests.benches import run_bench


def test_decode_levers_bench_times_each_configuration_and_checks_tokens():
    out = run_bench("decode_levers", "--policy", "tiny-llama", "--rows", "3", "--prompt", "6", "--new", "5",
                    "--repeats", "1", "--threads", "1")
    for name in ("transformers-sdpa", "transformers-eager", "fused-attention", "fused\\+packed",
                 "fused\\+packed\\+step"):
        m = re.search(rf"^{name}\s+(\d+\.\d+)\s+(\d+\.\d+)\s+(\d+\.\d+)x\s+(\d)/3 rows$", out.stdout, re.M)
        assert m and float(m.group(2)) > 0, (name, out.stdout)
    # The tiny model's logits are far apart: every configuration decodes the reference tokens.
    assert re.search(r"^fused\+packed .* 3/3 rows$", out.stdout, re.M)
    assert re.search(r"^fused\+packed\+step .* 3/3 rows$", out.stdout, re.M)
