"""DPO fine-tuning (``rl.algorithm: dpo``): TRL's DPOTrainer on preference pairs, LoRA by default.

Pairs come from human ratings when the data has them (``feedback_rating`` /
thumbs, ``convrl.data.preferences``: two replies to the same prompt, one rated
at least a point better). Without enough rated pairs, they are built the RLAIF
way: the frozen base model samples ``rl.dpo.candidates`` replies to each
persona-conditioned training prompt, the composite reward ranks them, and the
best and worst form a pair when they differ by ``rl.dpo.min_margin``. The
persona system prompt stays in the pair's prompt, so DPO learns persona-
conditioned preferences. Checkpoints, resume and the exported merged policy
work as for GRPO::

    result = train_dpo(cfg, base_dir, prompts, scorer, out_dir, turns=turns_df)
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

MIN_RATED_PAIRS = 16


def rated_pairs(turns: pd.DataFrame | None) -> list[dict]:
    """Pairs from human ratings in the train split (empty when the data has none)."""
    if turns is None or not {"feedback_rating", "feedback_thumb"} & set(turns.columns):
        return []
    from convrl.data.preferences import preference_pairs

    return preference_pairs(turns, context_turns=1, min_margin=1.0, split="train")


def reward_ranked_pairs(prompts: list[dict], scorer, personas_by_id: dict, base_dir: str, candidates: int,
                        max_new_tokens: int, min_margin: float, seed: int = 0, batch_size: int = 16) -> list[dict]:
    """Best-vs-worst of ``candidates`` sampled base-model replies per prompt, ranked by the composite reward."""
    from convrl.rl.generation import Generator

    if candidates < 2:
        raise ValueError("rl.dpo.candidates must be >= 2 to rank replies into pairs")
    gen = Generator(base_dir, dtype="auto")  # bf16 where the CPU/GPU has bf16 units
    convs = [p["prompt"] for p in prompts for _ in range(candidates)]
    replies = gen.generate(convs, max_new_tokens=max_new_tokens, batch_size=batch_size, do_sample=True,
                           temperature=0.9, seed=seed, progress=True, desc="dpo candidates")
    personas = [personas_by_id.get(p["persona_id"]) for p in prompts for _ in range(candidates)]
    composite = scorer.score(convs, replies, personas).composite.reshape(len(prompts), candidates)
    pairs = []
    for i, p in enumerate(prompts):
        row = composite[i]
        best, worst = int(np.argmax(row)), int(np.argmin(row))
        if row[best] - row[worst] >= min_margin:
            pairs.append({"prompt": p["prompt"],
                          "chosen": [{"role": "assistant", "content": replies[i * candidates + best]}],
                          "rejected": [{"role": "assistant", "content": replies[i * candidates + worst]}],
                          "margin": float(row[best] - row[worst])})
    return pairs


def preference_data(cfg, base_dir: str, prompts: list[dict], scorer, personas_by_id: dict,
                    turns: pd.DataFrame | None = None) -> tuple[list[dict], str]:
    """(pairs, source): rated pairs when there are enough, else reward-ranked base-model candidates."""
    pairs = rated_pairs(turns)
    if len(pairs) >= MIN_RATED_PAIRS:
        return pairs, "ratings"
    pairs = reward_ranked_pairs(prompts, scorer, personas_by_id, base_dir, cfg.rl.dpo.candidates,
                                cfg.rl.max_completion_length, cfg.rl.dpo.min_margin, cfg.rl.seed)
    if not pairs:
        raise ValueError(f"DPO found no preference pairs: no rated replies in the data and no prompt whose "
                         f"{cfg.rl.dpo.candidates} candidates differ by rl.dpo.min_margin={cfg.rl.dpo.min_margin}; "
                         "lower rl.dpo.min_margin or raise rl.dpo.candidates")
    return pairs, "reward_ranked"


def train_dpo(cfg, base_dir: str, prompts: list[dict], scorer, out_dir: str | Path, on_log=None,
              turns: pd.DataFrame | None = None, personas_by_id: dict | None = None):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from convrl.rl.grpo import (RLResult, last_checkpoint, export_policy, history_callback, load_policy,
                                resolve_precision)

    rl = cfg.rl
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(rl.seed)
    pairs_file = out / "preference_pairs.jsonl"
    if pairs_file.exists():  # a resumed run trains on the pairs it started with
        pairs = pd.read_json(pairs_file, lines=True).to_dict("records")
        source = "resumed"
    else:
        pairs, source = preference_data(cfg, base_dir, prompts, scorer, personas_by_id or {}, turns)
        pd.DataFrame(pairs).to_json(pairs_file, orient="records", lines=True)
    summary = {"dpo/pairs": float(len(pairs)), "dpo/rated": float(source == "ratings")}
    history: list[dict] = [{"step": 0, **summary}]
    if on_log:
        on_log(summary, 0)
    model, tok, peft_config = load_policy(rl, base_dir)
    args = DPOConfig(output_dir=str(out / "checkpoints"), max_steps=rl.max_steps, learning_rate=rl.learning_rate,
                     beta=rl.dpo.beta, per_device_train_batch_size=max(2, rl.prompts_per_step),
                     gradient_accumulation_steps=1, logging_steps=rl.logging_steps, save_strategy="steps",
                     save_steps=rl.save_steps, save_total_limit=2, seed=rl.seed, report_to="none",
                     use_cpu=not torch.cuda.is_available(), bf16=resolve_precision(rl.precision) == "bf16",
                     gradient_checkpointing=False, disable_tqdm=False, dataloader_num_workers=0,
                     max_length=1024)
    ds = Dataset.from_list([{k: p[k] for k in ("prompt", "chosen", "rejected")} for p in pairs])
    trainer = DPOTrainer(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_config,
                         callbacks=[history_callback(history, on_log)])
    resume = last_checkpoint(out / "checkpoints")
    t0 = time.time()
    trainer.train(resume_from_checkpoint=resume)
    seconds = time.time() - t0
    policy_dir = export_policy(trainer.model, tok, base_dir, out, trainer.state.global_step, resume, "dpo")
    return RLResult(str(policy_dir), history, trainer.state.global_step, resume, seconds)
