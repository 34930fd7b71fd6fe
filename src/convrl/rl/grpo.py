"""RL fine-tuning of the chat policy with TRL's GRPOTrainer + LoRA.

Prompts are persona-conditioned conversation prefixes (see
``convrl.data.prompts``); the reward is the weighted multi-objective reward of
``convrl.rewards.heads`` passed to TRL as one callable per head with
``reward_weights``, so TRL logs each head's mean. ``beta > 0`` keeps a KL term
to the frozen reference. Checkpoints land in ``<out>/checkpoints`` every
``save_steps``; a rerun resumes from the last one. The result is a merged
checkpoint (LoRA folded into the base weights) that loads like any HF model::

    funcs, weights = scorer.trl_reward_funcs(personas_by_id)
    result = train_grpo(cfg.rl, base_dir, prompts, funcs, weights, out_dir, scorer=scorer)
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from convrl.runtime import bf16_supported, resolve_precision  # noqa: F401 - re-exported for callers

import torch

log = logging.getLogger("convrl.rl")


@dataclass
class RLResult:
    policy_dir: str
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    resumed_from: str | None = None
    seconds: float = 0.0
    warmstart: dict | None = None  # rl.warmstart's summary (examples, loss, seconds, sample replies)


def last_checkpoint(ckpt_dir: Path) -> str | None:
    if not ckpt_dir.exists():
        return None
    ckpts = sorted((p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                   key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def grpo_args(rl, out_dir: Path, algorithm: str = "grpo", **overrides):
    """GRPOConfig (or RLOOConfig: same fields here) for ``rl``, checkpoints under ``out_dir/checkpoints``."""
    from trl import GRPOConfig, RLOOConfig

    per_step = rl.prompts_per_step * rl.num_generations
    kwargs = dict(
        output_dir=str(out_dir / "checkpoints"),
        max_steps=rl.max_steps,
        learning_rate=rl.learning_rate,
        beta=rl.beta,
        num_generations=rl.num_generations,
        per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1,
        steps_per_generation=1,
        num_iterations=rl.num_iterations,
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        logging_steps=rl.logging_steps,
        save_strategy="steps",
        save_steps=rl.save_steps,
        save_total_limit=2,
        seed=rl.seed,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=resolve_precision(rl.precision) == "bf16",
        gradient_checkpointing=False,
        mask_truncated_completions=rl.mask_truncated_completions,
        remove_unused_columns=False,
        disable_tqdm=False,
        log_completions=False,
        dataloader_num_workers=0,
    )
    if algorithm == "grpo":
        kwargs["multi_objective_aggregation"] = rl.multi_objective_aggregation  # RLOO has no such option
    if rl.speed.vllm and torch.cuda.is_available() and vllm_installed():
        # On a GPU node with vLLM, TRL generates with it inside the training process (no extra server).
        kwargs.update(use_vllm=True, vllm_mode="colocate")
    kwargs.update(overrides)
    return (RLOOConfig if algorithm == "rloo" else GRPOConfig)(**kwargs)


def dataset_rows(prompts: list[dict]) -> list[dict]:
    """The columns trainers see: the prompt plus what reward functions and the rollout read."""
    return [{"prompt": p["prompt"], "persona_id": p["persona_id"], "user_emotion": p.get("user_emotion", "neutral"),
             "next_user_turns": list(p.get("next_user_turns") or [])} for p in prompts]


def frozen_linears_to_bf16(model) -> int:
    """Store the frozen base model's projection weights in bf16 (LoRA training under bf16 autocast); returns count.

    Under autocast every matmul casts its fp32 weight to bf16 anyway, on every
    call and without caching (autocast caches only weights that require grad),
    so bf16 storage computes exactly the same products while skipping ~135M
    weight casts per pass: the policy forward and the reference forward of a
    GRPO step each get ~25% faster on SmolLM2-135M. Embeddings, norms and a
    tied LM head stay fp32 (the residual stream stays fp32); LoRA adapters are
    created in fp32 by PEFT. ``export_policy`` merges into fresh fp32 weights.
    """
    tied = model.get_input_embeddings().weight
    n = 0
    for mod in model.modules():
        if isinstance(mod, torch.nn.Linear) and mod.weight is not tied:
            mod.to(torch.bfloat16)
            n += 1
    model.convrl_bf16_base = n > 0
    return n


def top_layers(model, n: int) -> list[int] | None:
    """Indices of ``model``'s top ``n`` decoder layers for LoRA's ``layers_to_transform`` (None: every layer).

    Nothing below the lowest adapted layer needs a gradient, so autograd records none of it and the backward
    stops there (``bench/rl_step_throughput.py``: the demo step's backward 2.96 -> 1.80 s with the top 15 of
    SmolLM2-135M's 30 layers).
    """
    total = model.config.num_hidden_layers
    if n <= 0 or n >= total:
        return None
    return list(range(total - n, total))


def load_policy(rl, base_dir: str):
    """(model, tokenizer, peft_config or None) for training: fp32 master weights, LoRA unless rl.lora is false.

    With LoRA under bf16, the frozen base projections are stored in bf16 (``frozen_linears_to_bf16``).
    """
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_config = LoraConfig(r=rl.lora.r, lora_alpha=rl.lora.alpha, lora_dropout=rl.lora.dropout,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                             layers_to_transform=top_layers(model, rl.lora.top_layers),
                             task_type="CAUSAL_LM") if rl.lora.enabled else None
    if rl.lora.enabled and resolve_precision(rl.precision) == "bf16":
        frozen_linears_to_bf16(model)
    return model, tok, peft_config


def history_callback(history: list[dict], on_log):
    """A TrainerCallback that collects every logged row (curves, result.json) and forwards it to ``on_log``."""
    from transformers import TrainerCallback

    class Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                row = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
                row["step"] = state.global_step
                history.append(row)
                if on_log:
                    on_log(row, state.global_step)

    return Forward()


def export_policy(trainer_model, tok, base_dir: str, out: Path, steps: int, resume: str | None,
                  algorithm: str) -> Path:
    """Merged weights (LoRA folded in) + tokenizer + provenance, loadable by ``convrl chat`` and the registry."""
    merged = merged_policy(trainer_model, base_dir)
    policy_dir = out / "policy"
    merged.save_pretrained(policy_dir, safe_serialization=True)
    tok.padding_side = "right"
    tok.save_pretrained(policy_dir)
    (policy_dir / "convrl_training.json").write_text(json.dumps(
        {"base_model": os.path.abspath(base_dir) if os.path.exists(base_dir) else base_dir,
         "algorithm": algorithm, "steps": steps, "resumed_from": resume}, indent=2))
    return policy_dir


def merged_policy(trainer_model, base_dir: str):
    """The trained policy as one plain model: LoRA folded into the base weights, in fp32.

    Base weights stored in bf16 for training (``frozen_linears_to_bf16``) would
    round the small LoRA deltas away if merged in place, so the adapter is
    merged into a fresh fp32 copy of the base checkpoint instead.
    """
    if not hasattr(trainer_model, "merge_and_unload"):
        return trainer_model
    if not getattr(trainer_model.get_base_model(), "convrl_bf16_base", False) or not os.path.exists(base_dir):
        return trainer_model.merge_and_unload()
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    name = trainer_model.active_adapter
    fresh = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32),
                           trainer_model.peft_config[name])
    missing = set_peft_model_state_dict(fresh, get_peft_model_state_dict(trainer_model, adapter_name=name))
    if getattr(missing, "unexpected_keys", None):
        raise RuntimeError(f"adapter weights did not fit the fresh base model: {missing.unexpected_keys[:5]}")
    return fresh.merge_and_unload()


def fluency_from_reference(scorer, base_dir: str, rl, tok):
    """A ``ReferenceLogprobs`` the trainer fills and ``scorer`` reads, when the fluency LM is the policy's base.

    ``None`` (the fluency LM runs as usual) without a fluency LM, with another
    LM, or without a KL reference pass (``beta == 0``).
    """
    from convrl.rewards.fluency import ReferenceLogprobs

    flu = getattr(scorer, "fluency", None)
    if flu is None or rl.beta <= 0 or not os.path.exists(base_dir) or not os.path.exists(flu.model_dir):
        return None
    if os.path.realpath(flu.model_dir) != os.path.realpath(base_dir):
        return None
    return ReferenceLogprobs(tok.all_special_ids)


def trainer_config(rl, base_dir: str, tok, scorer=None, turn_rewards=None):
    """The ``ConvRLTrainerConfig`` for ``rl``: its speed levers, precision and multi-turn credit."""
    from convrl.rl.trainer import ConvRLTrainerConfig

    s = rl.speed
    ref = fluency_from_reference(scorer, base_dir, rl, tok) if scorer is not None and s.reference_fluency else None
    return ConvRLTrainerConfig(
        fast_rollouts=s.fast_rollouts, share_prompt_prefix=s.share_prompt_prefix, carry_kv_cache=s.carry_kv_cache,
        policy_tokens_only=s.policy_tokens_only,
        generation_dtype=torch.bfloat16 if resolve_precision(rl.precision) == "bf16" else torch.float32,
        reference_logprobs=ref, turn_credit=rl.multiturn.turn_credit if rl.turns > 1 else 0.0,
        turn_rewards=turn_rewards, guard=guard_kwargs(rl))


def guard_kwargs(rl) -> dict | None:
    """``RewardGuard`` settings of ``rl`` plus the heads it probes: ``rl.guard.probe_heads`` where the run can decode
    greedy probes (``RLConfig.probed_heads``), else none (those heads keep the sampled warm-up floor)."""
    kwargs = rl.guard.trainer_kwargs()
    if kwargs is not None:
        if rl.guard.probe_heads and not rl.probed_heads():
            log.warning("rl.guard.probe_heads %s: greedy probes need multi-turn GRPO on the cached decoder "
                        "(rl.turns >= 2, rl.speed.carry_kv_cache, rl.speed.fast_rollouts); this run guards them "
                        "on the sampled rollouts instead", rl.guard.probe_heads)
        kwargs["probe_heads"] = rl.probed_heads()
    return kwargs


def train_grpo(rl, base_dir: str, prompts: list[dict], reward_funcs: list[Callable], reward_weights: list[float],
               out_dir: str | Path, on_log: Callable[[dict, int], None] | None = None, rollout=None,
               scorer=None, turn_rewards=None, personas_by_id: dict | None = None) -> RLResult:
    """GRPO (single- or multi-turn: pass a ``MultiTurnRollout``) or RLOO, resuming from the last checkpoint.

    ``scorer`` (the ``RewardScorer`` behind ``reward_funcs``) lets the KL
    reference pass supply its fluency log-probs (``fluency_from_reference``);
    ``turn_rewards`` (``ConversationScores.turn_rewards``) feeds turn-level
    credit when ``rl.multiturn.turn_credit > 0``; ``personas_by_id`` lets the warm-start (``rl.warmstart``) score
    replies in their persona.
    """
    from convrl.rl.trainer import ConvRLGRPOTrainer, ConvRLRLOOTrainer

    import time

    from datasets import Dataset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(rl.seed)
    rows = dataset_rows(prompts)
    ds = Dataset.from_list(rows)
    model, tok, peft_config = load_policy(rl, base_dir)
    warm = None
    if rl.warmstart.enabled:
        from convrl.rl.warmstart import warm_start

        # RL continues the warm-started adapter; TRL copies it as the frozen reference ("ref" adapter).
        model, warm = warm_start(rl, base_dir, model, tok, peft_config, prompts, out, scorer, personas_by_id)
        peft_config = None
    if getattr(rollout, "probe", None) is not None:
        from convrl.rl.warmstart import base_greedy_replies

        # The guard's greedy probes are paired with the base model's greedy replies: the warm-start's (decoded
        # with its budget) when it ran, else decoded here with the rollouts' budget.
        budget = rl.warmstart.max_tokens if rl.warmstart.enabled else rl.max_completion_length
        rollout.probe.set_references(rows, base_greedy_replies(rl, base_dir, prompts, out, budget))
    history: list[dict] = []
    algorithm = rl.algorithm if rl.algorithm in ("grpo", "rloo") else "grpo"
    trainer_cls = ConvRLRLOOTrainer if algorithm == "rloo" else ConvRLGRPOTrainer
    convrl_args = trainer_config(rl, base_dir, tok, scorer, turn_rewards)
    if scorer is not None:
        scorer.reference_logprobs = convrl_args.reference_logprobs
    extra = {}
    if rollout is not None:
        if algorithm != "grpo":
            raise ValueError("multi-turn rollouts need rl.algorithm=grpo")
        rollout.register_rows(rows)
        extra["rollout_func"] = rollout
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is experimental in TRL 1.16: known
    trainer = trainer_cls(model=model, reward_funcs=reward_funcs,
                          args=grpo_args(rl, out, algorithm, reward_weights=reward_weights),
                          train_dataset=ds, processing_class=tok, peft_config=peft_config,
                          callbacks=[history_callback(history, on_log)], convrl_args=convrl_args, **extra)
    resume = last_checkpoint(out / "checkpoints")
    t0 = time.time()
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        if scorer is not None:
            scorer.reference_logprobs = None  # the scorer outlives training (evaluation, sample tables)
    seconds = time.time() - t0
    policy_dir = export_policy(trainer.model, tok, base_dir, out, trainer.state.global_step, resume, algorithm)
    return RLResult(str(policy_dir), history, trainer.state.global_step, resume, seconds, warm)
