"""bench/warmstart_ending.py on the tiny preset: the warm-start runs as in the RL stage and the table compares.

A random tiny policy never ends a sentence, so its replies are replaced by
fixed ones (long for the base model, short for the warm-started one); what is
tested is the bench's plumbing: the warm-start on the RL prompts, the merged
model it measures, the cut-off rule at the RL budget, one row per model and
decoding.
"""

from __future__ import annotations

import sys

from convrl.rl.generation import Generator
from tests.benches import BENCH, load_bench


def test_warmstart_bench_measures_base_and_warm_started_at_the_rl_budget(monkeypatch, capsys, one_thread):
    long, short = " ".join(["word"] * 40) + ".", "Short and done."
    seen = []

    def fake(self, conversations, max_new_tokens=48, **kw):
        seen.append((self.model_dir, max_new_tokens, kw.get("do_sample", False)))
        return [long if "merged" not in self.model_dir else short for _ in conversations]

    monkeypatch.setattr(Generator, "generate", fake)
    monkeypatch.syspath_prepend(str(BENCH))
    monkeypatch.setattr(sys, "argv", ["warmstart_ending.py", "--config", "tiny", "--prompts", "4",
                                      "--set", "rl.max_completion_length=16", "--set", "rl.warmstart.max_tokens=12"])
    assert load_bench("warmstart_ending").main() == 0
    out = capsys.readouterr().out
    assert seen[0][1] == 12 and not seen[0][2]  # the warm-start's replies: its budget, greedy
    assert [s[1:] for s in seen[1:]] == [(17, False), (17, True)] * 2  # the RL budget + 1, greedy and sampled
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("|")]
    assert rows[0][:3] == ["model", "decoding", "cut at 16"]
    cut = {(r[0], r[1].split(",")[0]): float(r[2]) for r in rows[2:]}
    assert cut == {("base", "greedy"): 1.0, ("base", "sampled"): 1.0,
                   ("warm-started", "greedy"): 0.0, ("warm-started", "sampled"): 0.0}
    assert "warm-start: " in out and "SFT steps" in out
