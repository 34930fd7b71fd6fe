"""A killed RL run (kill -9) resumes from its last checkpoint and finishes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = r'''
import sys
from convrl import models
from convrl.config import RLConfig
from convrl.data.ingest import ingest
from convrl.data.personas import load_personas
from convrl.data.prompts import build_prompts
from convrl.rewards.encoder import SentenceEncoder
from convrl.rewards.heads import RewardScorer
from convrl.rl.grpo import train_grpo

out = sys.argv[1]
personas = load_personas(["empathetic_coach", "calm_expert"])
turns = ingest(["chatterbot:english"], max_conversations=200).turns
prompts = build_prompts(turns, personas, "train", 24, 4, seed=1)
scorer = RewardScorer(SentenceEncoder(models.resolve_encoder("tiny-bert")), None, None)
funcs, weights = scorer.trl_reward_funcs({p.persona_id: p for p in personas})
rl = RLConfig(max_steps=int(sys.argv[2]), num_generations=2, prompts_per_step=2, max_completion_length=8,
              save_steps=1, precision="fp32")
res = train_grpo(rl, models.resolve_policy("tiny-llama"), prompts, funcs, weights, out)
print("DONE", res.steps, res.resumed_from, flush=True)
'''


@pytest.mark.slow
def test_kill_9_then_resume(tmp_path, tiny_policy_dir, tiny_encoder):
    out = tmp_path / "rl"
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(out), "200"], env=dict(os.environ),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    ckpt_dir = out / "checkpoints"
    while time.time() < deadline:
        done = [p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()] if ckpt_dir.exists() else []
        if len(done) >= 1 and max(int(p.name.split("-")[1]) for p in done) >= 2:
            break
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    assert not (out / "policy").exists()
    killed_at = max(int(p.name.split("-")[1]) for p in ckpt_dir.glob("checkpoint-*")
                    if (p / "trainer_state.json").exists())
    res = subprocess.run([sys.executable, str(script), str(out), str(killed_at + 2)], env=dict(os.environ),
                         capture_output=True, text=True, timeout=600)
    line = next(x for x in res.stdout.splitlines() if x.startswith("DONE"))
    _, steps, resumed = line.split(" ", 2)
    assert int(steps) == killed_at + 2
    assert resumed.endswith(f"checkpoint-{killed_at}")
    assert (out / "policy" / "config.json").exists()
