"""RL fine-tuning of the chat policy with TRL's GRPOTrainer + LoRA.

Prompts are persona-conditioned conversation prefixes (see
``convrl.data.prompts``); the reward is the weighted multi-objective reward of
``convrl.rewards.heads`` passed to TRL as one callable per head with
``reward_weights``, so TRL logs each head's mean. ``beta > 0`` keeps a KL term
to the frozen reference. Checkpoints land in ``<out>/checkpoints`` every
``save_steps``; a rerun resumes from the last one. The result is a merged
checkpoint (LoRA folded into the base weights) that loads like any HF model::

    result = train_grpo(cfg.rl, base_dir, prompts, scorer, personas_by_id, out_dir)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch


@dataclass
class RLResult:
    policy_dir: str
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    resumed_from: str | None = None
    seconds: float = 0.0


def _last_checkpoint(ckpt_dir: Path) -> str | None:
    if not ckpt_dir.exists():
        return None
    ckpts = sorted((p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                   key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


def grpo_args(rl, out_dir: Path, **overrides):
    from trl import GRPOConfig

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
        max_completion_length=rl.max_completion_length,
        temperature=rl.temperature,
        logging_steps=rl.logging_steps,
        save_strategy="steps",
        save_steps=rl.save_steps,
        save_total_limit=2,
        seed=rl.seed,
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        bf16=torch.cuda.is_available(),
        gradient_checkpointing=False,
        mask_truncated_completions=False,
        remove_unused_columns=False,
        disable_tqdm=False,
        log_completions=False,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return GRPOConfig(**kwargs)


def train_grpo(rl, base_dir: str, prompts: list[dict], reward_funcs: list[Callable], reward_weights: list[float],
               out_dir: str | Path, on_log: Callable[[dict, int], None] | None = None) -> RLResult:
    import time

    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOTrainer

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(rl.seed)
    ds = Dataset.from_list([{"prompt": p["prompt"], "persona_id": p["persona_id"],
                             "user_emotion": p.get("user_emotion", "neutral")} for p in prompts])
    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_config = LoraConfig(r=rl.lora_r, lora_alpha=rl.lora_alpha, lora_dropout=rl.lora_dropout,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"], task_type="CAUSAL_LM")
    history: list[dict] = []

    class Forward(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kw):
            if logs:
                row = {k: float(v) for k, v in logs.items() if isinstance(v, (int, float))}
                row["step"] = state.global_step
                history.append(row)
                if on_log:
                    on_log(row, state.global_step)

    trainer = GRPOTrainer(model=model, reward_funcs=reward_funcs, args=grpo_args(rl, out, reward_weights=reward_weights),
                          train_dataset=ds, processing_class=tok, peft_config=peft_config, callbacks=[Forward()])
    resume = _last_checkpoint(out / "checkpoints")
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    merged = trainer.model.merge_and_unload()
    policy_dir = out / "policy"
    merged.save_pretrained(policy_dir, safe_serialization=True)
    tok.padding_side = "right"
    tok.save_pretrained(policy_dir)
    (policy_dir / "convrl_training.json").write_text(json.dumps(
        {"base_model": os.path.abspath(base_dir) if os.path.exists(base_dir) else base_dir,
         "steps": trainer.state.global_step, "resumed_from": resume}, indent=2))
    return RLResult(str(policy_dir), history, trainer.state.global_step, resume, seconds)
