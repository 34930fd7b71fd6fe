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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from convrl.runtime import bf16_supported, resolve_precision  # noqa: F401 - re-exported for callers

import torch


@dataclass
class RLResult:
    policy_dir: str
    history: list[dict] = field(default_factory=list)
    steps: int = 0
    resumed_from: str | None = None
    seconds: float = 0.0


def make_trainer_class(algorithm: str = "grpo"):
    """TRL's GRPOTrainer (or RLOOTrainer) with convrl's CPU speed levers; same results, faster steps.

    * Rollouts come from a separate inference copy of the policy. TRL generates
      with the training model: fp32 weights plus unmerged LoRA, i.e. two extra
      matmuls per adapted projection at every decoding step. The copy (bf16
      where the CPU has bf16 units, else fp32) holds the merged weights; once
      per optimizer step its LoRA-adapted projections are refreshed.
    * Each distinct prompt is prefilled once per group (``rl.prefix``), and the
      policy/reference log-prob passes run each prompt once per group too.
    * Tokens are drawn by inverse-CDF sampling (``rl.generation.sampling_setup``).
    * On a CPU, rollouts use GQA-grouped eager attention and a preallocated KV
      cache (``rl.decoding``): no per-step copies of the cache.
    * With ``reference_logprobs`` set, the KL reference pass also hands the
      base model's temperature-1 log-probs to the fluency head, which then
      needs no LM pass of its own.
    """
    import time

    from trl import GRPOTrainer, RLOOTrainer
    from trl.trainer.utils import pad

    from convrl.rl.decoding import gqa_attention, preallocated_cache
    from convrl.rl.generation import sampling_setup
    from convrl.rl.prefix import (plain_lm_head, prefill_shared, prefix_groups, shared_prefix_logps,
                                  shared_prefix_ref_logps)

    base_cls = {"grpo": GRPOTrainer, "rloo": RLOOTrainer}[algorithm]

    class ConvRLTrainer(base_cls):
        generation_dtype: torch.dtype | None = torch.float32
        share_prompt_prefix: bool = True
        # rewards.fluency.ReferenceLogprobs shared with the reward functions, when the fluency LM is the base model.
        reference_logprobs = None
        _gen_model = None
        _gen_step: int | None = None

        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                               batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                               **multimodal):
            # The policy (with grad) and reference (KL) passes dominate a CPU step after generation; most of their
            # tokens are the prompt, repeated num_generations times. Multimodal/MoE inputs take TRL's own path.
            if self.share_prompt_prefix and not compute_aux_loss and all(v is None for v in multimodal.values()):
                groups = prefix_groups(input_ids, attention_mask, logits_to_keep)
                if len(groups) < input_ids.size(0):
                    if self.reference_logprobs is not None and not compute_entropy and self._is_reference_pass(model):
                        # The KL reference pass also yields the fluency head's log-probs (same frozen base model).
                        # mask_truncated_completions zeroes a truncated row's completion mask, which would leave
                        # its tokens unattended: they still need true log-probs (their rewards set the group
                        # baseline), and their KL terms are masked out of the loss whatever we return.
                        am = attention_mask
                        truncated = am[:, -logits_to_keep:].sum(1) == 0
                        if truncated.any():
                            am = am.clone()
                            am[truncated, -logits_to_keep:] = 1
                        logps, plain = shared_prefix_ref_logps(model, input_ids, am, logits_to_keep,
                                                               self.temperature, self.accelerator.autocast, groups)
                        completion = input_ids[:, -logits_to_keep:].tolist()
                        self.reference_logprobs.put(completion, list(plain.cpu().numpy()))
                        return logps, None, None
                    logps, entropies = shared_prefix_logps(model, input_ids, attention_mask, logits_to_keep,
                                                           compute_entropy, self.accelerator.autocast, groups,
                                                           temperature=self.temperature)
                    return logps, entropies, None
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
                compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)

        def _is_reference_pass(self, model) -> bool:
            # TRL's reference pass: the separate ref model, or the PEFT model with its adapters disabled, no grad.
            if torch.is_grad_enabled() or not plain_lm_head(model.config):
                return False
            if self.ref_model is not None:
                return model is self.ref_model
            from peft.tuners.tuners_utils import BaseTunerLayer

            layers = [m for m in self.accelerator.unwrap_model(model).modules() if isinstance(m, BaseTunerLayer)]
            return bool(layers) and all(m.disable_adapters for m in layers)

        def _sync_generation_model(self):
            # Weights change only at optimizer steps; a multi-turn rollout generates rl.turns times per step.
            if self._gen_model is None or self._gen_step != self.state.global_step:
                self._copy_policy_weights()
                self._gen_step = self.state.global_step
            return self._gen_model

        def _copy_policy_weights(self):
            from transformers import AutoModelForCausalLM

            peft_model = self.accelerator.unwrap_model(self.model)
            base = peft_model.get_base_model() if hasattr(peft_model, "get_base_model") else peft_model
            first = self._gen_model is None
            if first:
                # Eager-style attention decodes faster than SDPA at batch <= 16 on a CPU (measured: 3.3 s vs 4.9 s
                # for 8 x 64 tokens on SmolLM2-135M, bf16, one core), and the GQA variant skips repeat_kv's copies
                # (rl.decoding); SDPA/flash win on GPUs.
                attn = gqa_attention() if self.accelerator.device.type == "cpu" else None
                self._gen_model = AutoModelForCausalLM.from_config(base.config, dtype=self.generation_dtype,
                                                                   attn_implementation=attn).eval()
                # The training model runs with use_cache=False; rollouts need the KV cache.
                self._gen_model.config.use_cache = True
                self._gen_model.to(self.accelerator.device)
            layers = self._plain_lora_layers(base)
            if layers is None:
                # Full fine-tuning or other adapter types: merge into the training model, copy, unmerge.
                merge = hasattr(peft_model, "merge_adapter")
                if merge:
                    peft_model.merge_adapter()
                try:
                    self._load_weights(base)
                finally:
                    if merge:
                        peft_model.unmerge_adapter()
                return
            # Plain LoRA: W + B @ A * scale computed out of place. Merging in place would round the frozen base
            # weights (bf16, see frozen_linears_to_bf16) on every merge/unmerge round trip.
            if first or any(p.requires_grad for n, p in base.named_parameters() if "lora_" not in n):
                self._load_weights(base)  # everything else; only the adapted projections change per step
            self._refresh_adapted_weights(layers)

        @torch.no_grad()
        def _load_weights(self, base):
            state = {k.replace(".base_layer", ""): v for k, v in base.state_dict().items() if "lora_" not in k}
            missing, _ = self._gen_model.load_state_dict(state, strict=False)
            if [m for m in missing if "lm_head" not in m]:
                raise RuntimeError(f"generation model is missing weights: {missing[:5]}")
            self._gen_model.tie_weights()

        @staticmethod
        def _plain_lora_layers(base):
            """[(module name, LoRA linear)] when every adapter is plain (unmerged, non-DoRA) LoRA, else None."""
            from peft.tuners.lora import Linear as LoraLinear

            layers = [(n, m) for n, m in base.named_modules() if isinstance(m, LoraLinear)]
            if not layers or any(m.merged or any(m.use_dora.get(a, False) for a in m.active_adapters)
                                 for _, m in layers):
                return None
            return layers

        @torch.no_grad()
        def _refresh_adapted_weights(self, layers) -> None:
            """Set the rollout copy's LoRA-adapted projections to W + B @ A * scale.

            With plain LoRA nothing else trains, so after the first full copy a
            refresh touches ~20% of the weights (0.07 s -> 0.02 s per step on
            SmolLM2-135M, against a full merged copy).
            """
            for name, m in layers:
                w = m.base_layer.weight
                for a in m.active_adapters:
                    if a in m.lora_A:
                        w = w + m.get_delta_weight(a)
                self._gen_model.get_submodule(name).weight.copy_(w)

        def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
            # GRPOTrainer passes num_generations (and returns (ids, logprobs)); RLOOTrainer neither.
            t0 = time.perf_counter()
            try:
                if (self.generation_dtype is None or self.use_vllm
                        or getattr(self, "use_transformers_continuous_batching", False)
                        or images is not None and any(images) or multimodal_fields):
                    return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
                model = self._sync_generation_model()
                device = self.accelerator.device
                tensors = [torch.tensor(ids) for ids in prompt_ids]
                ids = pad(tensors, padding_value=self._tokenizer.pad_token_id, padding_side="left").to(device)
                mask = pad([torch.ones_like(t) for t in tensors], padding_value=0, padding_side="left").to(device)
                with torch.inference_mode():
                    # One prefill per distinct prompt; the group's rows start from copies of its KV cache.
                    config, processors = sampling_setup(self.generation_config)
                    cache = None
                    if device.type == "cpu" and config.max_new_tokens:
                        cache = preallocated_cache(model.config, ids.size(1) + config.max_new_tokens)
                    shared = prefill_shared(model, ids, mask, cache) if self.share_prompt_prefix else None
                    cache = shared if shared is not None else cache
                    out = model.generate(input_ids=ids, attention_mask=mask, generation_config=config,
                                         logits_processor=processors, use_cache=True, cache=cache)
                completion = out[:, ids.size(1):].cpu()
                eos = torch.isin(completion, torch.tensor(self.eos_token_ids))
                first = torch.where(eos.any(1), eos.int().argmax(1), torch.full((eos.size(0),), eos.size(1)))
                keep = torch.arange(eos.size(1)).expand(eos.size(0), -1) <= first.unsqueeze(1)
                ids_out = [c[m].tolist() for c, m in zip(completion, keep)]
                return (ids_out, None) if isinstance(self, GRPOTrainer) else ids_out
            finally:
                self._convrl_gen_s = getattr(self, "_convrl_gen_s", 0.0) + time.perf_counter() - t0

        def log(self, logs, *args, **kwargs):
            if "loss" in logs or "reward" in logs:
                logs["timing/generate_s"] = getattr(self, "_convrl_gen_s", 0.0)
                self._convrl_gen_s = 0.0
            return super().log(logs, *args, **kwargs)

    ConvRLTrainer.__name__ = f"ConvRL{base_cls.__name__}"
    return ConvRLTrainer


def _last_checkpoint(ckpt_dir: Path) -> str | None:
    if not ckpt_dir.exists():
        return None
    ckpts = sorted((p for p in ckpt_dir.glob("checkpoint-*") if (p / "trainer_state.json").exists()),
                   key=lambda p: int(p.name.split("-")[-1]))
    return str(ckpts[-1]) if ckpts else None


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
    if torch.cuda.is_available() and importlib.util.find_spec("vllm") is not None:
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
    peft_config = LoraConfig(r=rl.lora_r, lora_alpha=rl.lora_alpha, lora_dropout=rl.lora_dropout,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                             task_type="CAUSAL_LM") if rl.lora else None
    if rl.lora and resolve_precision(rl.precision) == "bf16":
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


def train_grpo(rl, base_dir: str, prompts: list[dict], reward_funcs: list[Callable], reward_weights: list[float],
               out_dir: str | Path, on_log: Callable[[dict, int], None] | None = None, rollout=None,
               scorer=None) -> RLResult:
    """GRPO (single- or multi-turn: pass a ``MultiTurnRollout``) or RLOO, resuming from the last checkpoint.

    ``scorer`` (the ``RewardScorer`` behind ``reward_funcs``) lets the KL
    reference pass supply its fluency log-probs (``fluency_from_reference``).
    """
    import time

    from datasets import Dataset

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(rl.seed)
    rows = dataset_rows(prompts)
    ds = Dataset.from_list(rows)
    model, tok, peft_config = load_policy(rl, base_dir)
    history: list[dict] = []
    algorithm = rl.algorithm if rl.algorithm in ("grpo", "rloo") else "grpo"
    trainer_cls = make_trainer_class(algorithm)
    trainer_cls.generation_dtype = torch.bfloat16 if resolve_precision(rl.precision) == "bf16" else torch.float32
    trainer_cls.reference_logprobs = fluency_from_reference(scorer, base_dir, rl, tok) if scorer is not None else None
    if scorer is not None:
        scorer.reference_logprobs = trainer_cls.reference_logprobs
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
                          callbacks=[history_callback(history, on_log)], **extra)
    resume = _last_checkpoint(out / "checkpoints")
    t0 = time.time()
    try:
        trainer.train(resume_from_checkpoint=resume)
    finally:
        if scorer is not None:
            scorer.reference_logprobs = None  # the scorer outlives training (evaluation, sample tables)
    seconds = time.time() - t0
    policy_dir = export_policy(trainer.model, tok, base_dir, out, trainer.state.global_step, resume, algorithm)
    return RLResult(str(policy_dir), history, trainer.state.global_step, resume, seconds)
