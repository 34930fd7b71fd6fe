"""GPU smoke check: one RL step of the multi-turn path and a small evaluation on a CUDA device, in minutes.

Runs the ``gpu`` preset's policy (by hub id, bf16, vLLM colocated when
installed) through ``train_grpo`` for ``--steps`` steps with the preset's
multi-turn rollout (simulated user, cached decoding), then evaluates the
result against the base model on ``--eval-prompts`` held-out prompts. Prints
generated policy tokens/s, seconds per step by phase, evaluation tokens/s and
peak GPU memory; exits non-zero when something fails::

    .venv/bin/python bench/gpu_smoke.py                      # gpu preset, 1 step, 16 eval prompts
    .venv/bin/python bench/gpu_smoke.py --set models.policy=Qwen/Qwen2.5-1.5B-Instruct --steps 2
    .venv/bin/python bench/gpu_smoke.py --config tiny --allow-cpu   # the same code path on a CPU (tests)

Reward heads are the untrained scorers plus the fluency LM (no reward-model
stage), so the numbers are about speed and memory, not quality.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def smoke(preset: str, overrides: list[str], steps: int, eval_prompts: int, allow_cpu: bool) -> dict:
    import torch
    from transformers import AutoTokenizer

    from convrl import models
    from convrl.config import load_config
    from convrl.data.ingest import ingest
    from convrl.data.personas import load_personas
    from convrl.data.prompts import build_prompts
    from convrl.eval.evaluate import evaluate_models
    from convrl.rewards.encoder import SentenceEncoder
    from convrl.rewards.fluency import FluencyScorer
    from convrl.rewards.heads import RewardScorer
    from convrl.rl.grpo import train_grpo
    from convrl.rl.reward_setup import reward_setup

    cuda = torch.cuda.is_available()
    if not cuda and not allow_cpu:
        raise SystemExit("bench/gpu_smoke.py needs a CUDA device (torch.cuda.is_available() is False); "
                         "pass --allow-cpu to run the same code path on a CPU, or use bench/rl_step_throughput.py")
    cfg = load_config(preset, [f"rl.max_steps={steps}", f"rl.save_steps={10 * steps}", "rl.logging_steps=1",
                               *overrides])
    t0 = time.perf_counter()
    base = models.resolve_policy(cfg.models.policy)
    personas = load_personas(cfg.data.personas)
    turns = ingest(cfg.data.sources).turns
    n = steps * cfg.rl.prompts_per_step
    train = build_prompts(turns, personas, "train", n, cfg.rl.max_prompt_turns, cfg.rl.seed)
    test = build_prompts(turns, personas, "test", eval_prompts, cfg.rl.max_prompt_turns, cfg.eval.seed)
    scorer = RewardScorer(SentenceEncoder(models.resolve_encoder(cfg.models.encoder)), None,
                          FluencyScorer(base) if cfg.rewards.fluency else None)
    by_id = {p.persona_id: p for p in personas}
    setup = reward_setup(cfg.rl, scorer, by_id, base)
    load_s = time.perf_counter() - t0
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    # The trained policy lives only as long as the smoke test needs it (20 MB per run otherwise left in /tmp).
    with tempfile.TemporaryDirectory(prefix="convrl-gpu-smoke-") as out:
        rows = []
        result = train_grpo(cfg.rl, base, train, setup.funcs, setup.weights, out, rollout=setup.rollout, scorer=scorer,
                            turn_rewards=setup.turn_rewards, on_log=lambda row, step: rows.append(row))
        train_peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        logged = [r for r in rows if "reward" in r]
        policy_tokens = sum(r.get("completions/mean_length", 0.0) * cfg.rl.num_generations * cfg.rl.prompts_per_step
                            for r in logged)
        t1 = time.perf_counter()
        scores = evaluate_models({"candidate": result.policy_dir, "baseline": base}, test, scorer, by_id,
                                 cfg.eval.max_new_tokens, cfg.eval.batch_size, cfg.eval.seed)
        eval_s = time.perf_counter() - t1
        tok = AutoTokenizer.from_pretrained(base)
        eval_tokens = sum(len(tok(r, add_special_tokens=False)["input_ids"]) for r in scores["response"])
        return {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "policy": cfg.models.policy,
                "precision": cfg.rl.precision, "vllm": bool(cuda and cfg.rl.speed.vllm and _has("vllm")),
                "turns": cfg.rl.turns, "steps": result.steps, "load_s": load_s, "train_s": result.seconds,
                "seconds_per_step": result.seconds / max(1, result.steps),
                "policy_tokens_per_s": policy_tokens / max(result.seconds, 1e-9),
                "timing": {k: v for k, v in (logged[-1] if logged else {}).items() if k.startswith("timing/")},
                "clipped_ratio": (logged[-1] if logged else {}).get("completions/clipped_ratio"),
                "eval_replies": len(scores), "eval_s": eval_s, "eval_tokens_per_s": eval_tokens / max(eval_s, 1e-9),
                "composite": scores.groupby("model")["composite"].mean().to_dict(),
                "peak_gpu_gib_train": train_peak,
                "peak_gpu_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")}


def _has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="gpu", help="preset name or YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--eval-prompts", type=int, default=16)
    p.add_argument("--allow-cpu", action="store_true", help="run on a CPU when there is no CUDA device")
    p.add_argument("--json", default="")
    a = p.parse_args(argv)
    r = smoke(a.config, a.set, a.steps, a.eval_prompts, a.allow_cpu)
    print(f"{r['policy']} on {r['device']} ({r['precision']}, vLLM={r['vllm']}, {r['turns']} policy turns)")
    print(f"  RL: {r['steps']} step(s) in {r['train_s']:.1f} s, {r['seconds_per_step']:.1f} s/step, "
          f"{r['policy_tokens_per_s']:.1f} generated policy tokens/s, clipped ratio {r['clipped_ratio']}")
    print("  last step by phase: " + ", ".join(f"{k[7:]} {v:.2f} s" for k, v in r["timing"].items()))
    print(f"  eval: {r['eval_replies']} replies in {r['eval_s']:.1f} s ({r['eval_tokens_per_s']:.1f} tokens/s), "
          f"composite {json.dumps({k: round(v, 4) for k, v in r['composite'].items()})}")
    print(f"  peak GPU memory: {r['peak_gpu_gib_train']:.2f} GiB in RL, {r['peak_gpu_gib']:.2f} GiB overall; "
          f"model load {r['load_s']:.1f} s")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(r, fh, indent=2, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
