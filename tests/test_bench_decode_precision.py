"""bench/decode_precision.py runs end to end on the tiny model and reports both precisions and their agreement."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_decode_precision_bench_times_both_precisions_and_counts_identical_replies():
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "decode_precision.py"), "--model", "tiny-llama",
                          "--prompts", "3", "--tokens", "3", "--rounds", "1"],
                         capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert re.search(r"^fp32: \d+\.\d s$", out.stdout, re.M) and re.search(r"^bf16: \d+\.\d s$", out.stdout, re.M)
    m = re.search(r"speed-up (\d+\.\d+)x; identical replies (\d)/3", out.stdout)
    assert m and float(m.group(1)) > 0
