"""bench/chat_decoding.py decodes the demo's held-out prompts both ways on the tiny model and compares the replies."""

from __future__ import annotations

import re

from tests.benches import run_bench


def test_chat_decoding_bench_times_both_ways_and_counts_identical_replies():
    out = run_bench("chat_decoding", "--config", "tiny", "--model", "tiny-llama", "--prompts", "4", "--tokens", "5",
                    "--batch", "2", "--rounds", "1", "--threads", "1")
    for way in ("generate", "cached"):
        assert re.search(rf"^{way}\s+\d+\.\d s   cut at the budget: \d$", out.stdout, re.M), out.stdout
    m = re.search(r"speed-up (\d+\.\d+)x; identical replies (\d)/4", out.stdout)
    # The tiny random model's logits lie far apart, so rounding never flips a token: the same replies both ways.
    assert m and float(m.group(1)) > 0 and m.group(2) == "4", out.stdout
