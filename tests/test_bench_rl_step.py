"""bench/rl_step_throughput.py end to end on tiny models: both modes, the multi-turn summary and its ratio."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench" / "rl_step_throughput.py"


def test_two_turn_bench_reports_both_modes(tmp_path):
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--turns", "2", "--steps", "2", "--generations", "2",
                           "--prompts", "1", "--length", "4", "--user-tokens", "4", "--policy", "tiny-llama",
                           "--encoder", "tiny-bert", "--lora-top-layers", "1", "--json", str(out)],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(out.read_text())
    assert [r["mode"] for r in results] == ["trl-defaults", "convrl"]
    assert [r["lora_layers"] for r in results] == ["all", "top 1"]  # TRL's defaults keep LoRA everywhere
    for r in results:
        assert r["turns"] == 2 and r["steps_measured"] == 1
        # Two policy turns of at most 4 tokens for each of the 2 rollouts.
        assert 0 < r["mean_completion_len"] <= 8
        assert r["tokens_per_s"] > 0 and r["peak_rss_mb"] > 0
        phases = r["phase_s_per_step"]
        assert set(phases) == {"generate", "user_turns", "rewards", "logps_policy", "logps_reference",
                               "backward_and_rest"}
        assert phases["user_turns"] > 0 and min(phases.values()) >= 0
    ratio = float(re.search(r"throughput ratio convrl / trl-defaults: ([0-9.]+)x", proc.stdout).group(1))
    assert abs(ratio - results[1]["tokens_per_s"] / results[0]["tokens_per_s"]) < 0.01
