"""Throughput of a full GRPO step: convrl's trainer configuration vs TRL's GRPOConfig defaults, 1 or 2+ turns.

Same model (SmolLM2-135M-Instruct + LoRA), same persona-conditioned prompts,
same completions per step and completion length, same reward (convrl's
composite heads), in one run. Each configuration runs in its own subprocess so
peak memory (max RSS) is measured per configuration. The first step of each is
warm-up and not counted.

    .venv/bin/python bench/rl_step_throughput.py --steps 10 --generations 8 --length 64
    .venv/bin/python bench/rl_step_throughput.py --turns 2 --steps 5 --generations 4 --prompts 2 --length 48

Prints generated policy tokens/s (the policy's own completion tokens / wall
time of the step, reward and update included; simulated-user tokens are not
counted), seconds per step, the ratio, and peak RSS.

``--turns 2`` is the demo's multi-turn path: both modes roll out through
``MultiTurnRollout`` (policy turn, simulated user turn, policy turn). The
baseline is TRL's GRPOTrainer with its defaults, so each policy turn is TRL's
own generation from the start of the conversation, and the user is plain
``generate`` (transformers' default attention, cache and sampling); convrl's
mode is ``ConvRLGRPOTrainer``, whose rollouts keep each conversation's KV
cache across turns and decode the user on its own cache.

convrl's configuration is TRL's GRPOTrainer with ``beta > 0`` (a reference
pass TRL's defaults skip), no gradient checkpointing, and the levers of
``convrl.rl.trainer.ConvRLGRPOTrainer``: rollouts from a merged bf16 copy of the
policy (fused grouped attention over a preallocated KV cache, prepacked bf16 linears, inverse-CDF
sampling), each prompt prefilled/forwarded once per GRPO group
(``convrl.rl.prefix``), frozen base projections stored in bf16, the LM head as
plain autograd ops, and the fluency head fed by the KL reference pass
(``--no-fluency-handover`` turns that off). Sampling randomness differs
between the two runs, so completion lengths differ a little; tokens/s accounts
for that, and more ``--steps`` narrow it. Each configuration also reports its
seconds per step by phase (rollout, rewards, policy and reference log-probs,
backward and the rest).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _inputs(steps: int, turns: int, prompts_per_step: int, policy: str = "smollm2-135m-instruct",
            encoder: str = "all-minilm-l6-v2"):
    """Base model, personas, prompts, scorer and the reward callables the bench trains on (same for both modes)."""
    from convrl import models
    from convrl.data.ingest import ingest
    from convrl.data.personas import load_personas
    from convrl.data.prompts import build_prompts
    from convrl.rewards.encoder import SentenceEncoder
    from convrl.rewards.heads import FluencyScorer, RewardScorer

    base = models.resolve_policy(policy)
    personas = load_personas(["empathetic_coach", "cheerful_guide", "calm_expert"])
    prompts = build_prompts(ingest(["chatterbot:english"]).turns, personas, "train", steps * prompts_per_step, 4,
                            seed=1)
    scorer = RewardScorer(SentenceEncoder(models.resolve_encoder(encoder)), None, FluencyScorer(base))
    by_id = {p.persona_id: p for p in personas}
    if turns > 1:
        from convrl.rl.turn_rewards import conversation_reward_funcs

        funcs, weights, _ = conversation_reward_funcs(scorer, by_id)
    else:
        funcs, weights = scorer.trl_reward_funcs(by_id)
    return base, prompts, scorer, funcs, weights


def run_mode(mode: str, steps: int, generations: int, length: int, extra: dict | None = None,
             a_no_handover: bool = False, turns: int = 1, prompts_per_step: int = 1, user_tokens: int = 24,
             policy: str = "smollm2-135m-instruct", encoder: str = "all-minilm-l6-v2",
             lora_top_layers: int = 0) -> dict:
    import numpy as np
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from convrl.config import RLConfig
    from convrl.rl.grpo import grpo_args, top_layers, trainer_config
    from convrl.rl.trainer import ConvRLGRPOTrainer

    torch.manual_seed(0)
    base, prompts, scorer, funcs, weights = _inputs(steps, turns, prompts_per_step, policy, encoder)
    ds = Dataset.from_list([{"prompt": p["prompt"], "persona_id": p["persona_id"]} for p in prompts])
    tok = AutoTokenizer.from_pretrained(base)
    out = tempfile.mkdtemp()
    per_step = generations * prompts_per_step
    common = dict(output_dir=out, num_generations=generations, per_device_train_batch_size=per_step,
                  max_completion_length=length, max_steps=steps, logging_steps=1, save_strategy="no",
                  report_to="none", use_cpu=True, reward_weights=weights, seed=0, shuffle_dataset=False)
    kwargs: dict = {}
    if mode == "trl-defaults":
        from trl import GRPOConfig, GRPOTrainer

        args = GRPOConfig(**common)
        cls = GRPOTrainer
    else:
        rl = RLConfig(max_steps=steps, num_generations=generations, prompts_per_step=prompts_per_step,
                      max_completion_length=length, save_steps=10_000, turns=turns)
        args = grpo_args(rl, Path(out), **{**{k: v for k, v in common.items() if k != "output_dir"}, **(extra or {})})
        cls = ConvRLGRPOTrainer
        kwargs["convrl_args"] = trainer_config(rl, base, tok, None if a_no_handover else scorer)
        scorer.reference_logprobs = kwargs["convrl_args"].reference_logprobs
    phases: dict[str, float] = {}
    per_step_phases: list[dict[str, float]] = []
    policy_tokens: list[int] = []

    def timed(name: str, fn):
        t0 = time.perf_counter()
        try:
            return fn()
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t0

    if turns > 1:
        from convrl.rl.multiturn import MultiTurnRollout, SimulatedUser

        fast = mode != "trl-defaults"
        # Baseline: plain generate for the user (fp32, default attention/cache/sampling); convrl: its cached decoder.
        user = SimulatedUser(base, max_new_tokens=user_tokens, seed=0, fast=fast, cached=fast)
        rollout = MultiTurnRollout(turns, user, tok, "model")
        real_reply = user.reply
        user.reply = lambda *a, **k: timed("user_turns", lambda: real_reply(*a, **k))

        def counted(prompts_, trainer):
            res = rollout(prompts_, trainer)
            policy_tokens.append(sum(sum(m) for m in res["env_mask"]))
            return res

        kwargs["rollout_func"] = counted
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

    class Timed(cls):
        """Where a step's time goes: rollout, rewards, log-prob passes (with / without grad); the rest is backward."""

        def _generate(self, *a, **k):
            return timed("generate", lambda: super(Timed, self)._generate(*a, **k))

        def _calculate_rewards(self, *a, **k):
            return timed("rewards", lambda: super(Timed, self)._calculate_rewards(*a, **k))

        def _get_per_token_logps_and_entropies(self, *a, **k):
            name = "logps_policy" if torch.is_grad_enabled() else "logps_reference"
            return timed(name, lambda: super(Timed, self)._get_per_token_logps_and_entropies(*a, **k))

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    if mode != "trl-defaults" and args.bf16:
        from convrl.rl.grpo import frozen_linears_to_bf16

        frozen_linears_to_bf16(model)  # as convrl's load_policy does for LoRA under bf16
    # convrl mode only: rl.lora.top_layers (the backward stops at the lowest adapted layer; the policy pass starts
    # from the reference pass's hidden states there, prefix.BottomStash).
    layers = top_layers(model, lora_top_layers) if mode != "trl-defaults" else None
    lora = LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                      task_type="CAUSAL_LM", layers_to_transform=layers)
    stamps: list[tuple[float, dict]] = []

    class Stamp(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            stamps.append((time.perf_counter(), {}))
            phases.clear()

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs and stamps:
                stamps[-1][1].update({k: float(v) for k, v in logs.items() if isinstance(v, (int, float))})

    t_end = []

    class End(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            t_end.append(time.perf_counter())
            per_step_phases.append(dict(phases))

    trainer = Timed(model=model, reward_funcs=funcs, args=args, train_dataset=ds, processing_class=tok,
                    peft_config=lora, callbacks=[Stamp(), End()], **kwargs)
    trainer.train()
    step_times = [(e - s, logs) for (s, logs), e in zip(stamps, t_end)]
    measured = step_times[1:] or step_times
    secs = sum(d for d, _ in measured)
    timed_steps = per_step_phases[1:] or per_step_phases
    names = ("generate", "user_turns", "rewards", "logps_policy", "logps_reference")
    breakdown = {k: sum(p.get(k, 0.0) for p in timed_steps) / len(timed_steps) for k in names}
    if turns > 1:
        breakdown["generate"] -= breakdown["user_turns"]  # generate = policy turns (+ glue) + user turns
        tokens = sum(policy_tokens[1:] or policy_tokens)
    else:
        del breakdown["user_turns"]
        tokens = sum(logs.get("completions/mean_length", 0) * per_step for _, logs in measured)
    breakdown["backward_and_rest"] = secs / len(measured) - sum(breakdown.values())
    handover = {}
    ref = scorer.reference_logprobs
    if ref is not None and turns == 1:
        # How far the handed-over fluency is from running the fluency LM on the decoded text (retokenisation,
        # bf16 autocast vs bf16 weights), on the last batch: the price of not running the LM.
        contexts, responses, personas_, batch = scorer.last_batch
        lm = np.clip((scorer.fluency.mean_logprob(contexts, responses) + 6.0) / 2.5, 0, 1)  # heads.py's gate
        handover = {"fluency_handover_hits": ref.hits, "fluency_handover_misses": ref.misses,
                    "fluency_handover_mean_abs_diff": float(np.abs(lm - batch.details["fluency"]).mean())}
    return {"mode": mode, "turns": turns, "steps_measured": len(measured), "seconds_per_step": secs / len(measured),
            **handover, "tokens_per_s": tokens / secs, "mean_completion_len": tokens / per_step / len(measured),
            "phase_s_per_step": breakdown,
            "bf16": bool(args.bf16), "gradient_checkpointing": bool(args.gradient_checkpointing),
            "beta": args.beta, "lora_layers": "all" if layers is None else f"top {len(layers)}",
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--generations", type=int, default=8)
    p.add_argument("--prompts", type=int, default=1, help="distinct prompts per step")
    p.add_argument("--length", type=int, default=64, help="max tokens per policy turn")
    p.add_argument("--turns", type=int, default=1, help="policy turns per rollout (2+ = multi-turn with a user)")
    p.add_argument("--user-tokens", type=int, default=24, help="max tokens per simulated user turn")
    p.add_argument("--policy", default="smollm2-135m-instruct", help="policy model name or directory")
    p.add_argument("--encoder", default="all-minilm-l6-v2", help="reward encoder name or directory")
    p.add_argument("--mode", default="")
    p.add_argument("--json", default="")
    p.add_argument("--only", default="", help="run one mode in this process (trl-defaults or convrl)")
    p.add_argument("--extra", default="{}", help="JSON GRPOConfig overrides for the convrl mode (experiments)")
    p.add_argument("--lora-top-layers", type=int, default=0,
                   help="convrl mode: LoRA on the top N layers only (rl.lora.top_layers; 0 = every layer)")
    p.add_argument("--no-fluency-handover", action="store_true",
                   help="convrl mode: run the fluency LM instead of reading the KL reference pass (to measure it)")
    a = p.parse_args()
    shape = dict(turns=a.turns, prompts_per_step=a.prompts, user_tokens=a.user_tokens, policy=a.policy,
                 encoder=a.encoder, lora_top_layers=a.lora_top_layers)
    if a.mode or a.only:
        print("RESULT " + json.dumps(run_mode(a.mode or a.only, a.steps, a.generations, a.length,
                                              json.loads(a.extra), a.no_fluency_handover, **shape)), flush=True)
        return
    results = []
    for mode in ("trl-defaults", "convrl"):
        proc = subprocess.run([sys.executable, __file__, "--mode", mode, "--steps", str(a.steps),
                               "--generations", str(a.generations), "--length", str(a.length),
                               "--turns", str(a.turns), "--prompts", str(a.prompts),
                               "--user-tokens", str(a.user_tokens), "--policy", a.policy, "--encoder", a.encoder,
                               "--lora-top-layers", str(a.lora_top_layers),
                               *(["--no-fluency-handover"] if a.no_fluency_handover else [])],
                              capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(line[7:]))
        print(f"{mode}: {line[7:]}", flush=True)  # kept even if the other mode fails (a baseline run is long)
    base, ours = results
    print(f"GRPO step, {a.policy} + LoRA r=16, {a.turns} policy turn(s), {a.prompts} prompt(s) x "
          f"{a.generations} completions x {a.length} tokens a turn"
          + (f", user turns of {a.user_tokens} tokens" if a.turns > 1 else "") + f", {os.cpu_count()} CPU cores")
    for r in results:
        print(f"  {r['mode']:13s} {r['seconds_per_step']:6.2f} s/step  {r['tokens_per_s']:6.1f} policy tok/s  "
              f"(mean policy tokens per rollout {r['mean_completion_len']:.1f}, bf16={r['bf16']}, "
              f"grad_ckpt={r['gradient_checkpointing']}, beta={r['beta']})  peak RSS {r['peak_rss_mb']:.0f} MB")
    for r in results:
        print(f"  {r['mode']:13s} s/step by phase: " + ", ".join(f"{k} {v:.2f}" for k, v in r["phase_s_per_step"].items()))
    print(f"  throughput ratio convrl / trl-defaults: {ours['tokens_per_s'] / base['tokens_per_s']:.2f}x "
          f"(seconds per step: {base['seconds_per_step'] / ours['seconds_per_step']:.2f}x)")
    if "fluency_handover_hits" in ours:
        print(f"  fluency from the KL reference pass: {ours['fluency_handover_hits']} batches "
              f"({ours['fluency_handover_misses']} misses), mean |difference| to the fluency LM on the last batch "
              f"{ours['fluency_handover_mean_abs_diff']:.4f} (fluency in [0, 1])")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
