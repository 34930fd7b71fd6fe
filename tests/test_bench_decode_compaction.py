"""bench/decode_compaction.py decodes rollout-shaped groups with and without dropping stopped rows and compares them."""

from __future__ import annotations

import re

from tests.benches import run_bench


def test_decode_compaction_bench_times_both_modes_and_compares_tokens():
    out = run_bench("decode_compaction", "--policy", "tiny-llama", "--rows", "3", "--new", "6", "--repeats", "1",
                    "--threads", "1")
    m = re.search(r"^without compaction\s+(\d+\.\d+) s\s+with\s+(\d+\.\d+) s", out.stdout, re.M)
    assert m and float(m.group(1)) > 0 and float(m.group(2)) > 0, out.stdout
    # Both modes draw from the same sampler seeds; on the fp32 tiny model every run decodes the same tokens.
    assert re.search(r"^same tokens in both modes: 5/5 runs", out.stdout, re.M), out.stdout
    assert len(re.findall(r"^  prompt \d: turn lengths", out.stdout, re.M)) == 5
