"""``ConvRLGRPOTrainer``: TRL's GRPOTrainer with convrl's speed levers and multi-turn credit, each switchable.

Configured like TRL's own trainers, by a dataclass beside the trainer
(``ConvRLTrainerConfig``), passed as ``convrl_args``; every lever off
(``ConvRLTrainerConfig.stock()``) is TRL's behaviour::

    trainer = ConvRLGRPOTrainer(model=model, args=GRPOConfig(...), reward_funcs=funcs, processing_class=tok,
                                convrl_args=ConvRLTrainerConfig(generation_dtype=torch.bfloat16))

Levers (results are the same computation, tests compare each against the plain one):

* ``fast_rollouts``: rollouts from a merged inference copy of the policy
  (``rl.rollout_model``), inverse-CDF sampling (``rl.generation``), on a CPU
  fused grouped attention over a preallocated KV cache (``rl.decoding``), bf16 linears prepacked for
  oneDNN (``rl.packed_linear``).
* ``share_prompt_prefix``: each distinct prompt is prefilled once per group,
  and the policy/reference log-prob passes run it once per group
  (``rl.prefix``), single- and multi-turn alike (the prompt is the shared part).
* ``carry_kv_cache``: multi-turn rollouts keep each conversation's cache
  across turns (``rl.conversation_decoder``; ``MultiTurnRollout`` asks
  ``conversation_decoder()``).
* ``policy_tokens_only``: the log-prob passes score only the tokens the loss
  reads (a multi-turn rollout's ``env_mask``: not the simulated user's turns),
  through the LM head in blocks (``rl.lm_head``).
* ``reference_logprobs``: the KL reference pass also hands the base model's
  temperature-1 log-probs to the fluency head (``rewards.fluency``).

Learning options: ``turn_credit`` (MT-GRPO-style turn-level advantages for
multi-turn rollouts, from ``turn_rewards``), ``guard`` (``rl.guard``: Lagrange
multipliers on the weights of reward terms RL may not trade away; their state
is saved beside each checkpoint) and per-head advantage logging
(``advantages/<head>/...``: how much each reward head moves the update).

The overridden TRL methods are private; ``OVERRIDES`` records their signatures
as checked against ``TRL_CHECKED_VERSION`` and a test fails when an upgrade
changes them.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint
from trl import GRPOTrainer, RLOOTrainer
from trl.trainer.utils import pad

from convrl.rl.advantages import group_advantages, turn_level_advantages
from convrl.rl.decoding import preallocated_cache
from convrl.rl.generation import sampling_setup
from convrl.rl.guard import RewardGuard
from convrl.rl import prefix
from convrl.rl.rollout_model import RolloutModel
from convrl.rl.shaping import turn_clipped_ratios

TRL_CHECKED_VERSION = "1.16.0"


@dataclass
class ConvRLTrainerConfig:
    """What ``ConvRLGRPOTrainer`` / ``ConvRLRLOOTrainer`` change about TRL's trainer (all on by default)."""

    fast_rollouts: bool = field(default=True, metadata={
        "help": "Generate from a merged inference copy (bf16 where fast) with convrl's CPU decoding; "
                "False = TRL's own generation with the training model."})
    generation_dtype: torch.dtype = field(default=torch.float32, metadata={
        "help": "dtype of the rollout copy (fast_rollouts)."})
    share_prompt_prefix: bool = field(default=True, metadata={
        "help": "Prefill / forward each distinct prompt once per GRPO group (rollouts and log-prob passes)."})
    carry_kv_cache: bool = field(default=True, metadata={
        "help": "Multi-turn rollouts keep each conversation's KV cache across turns (needs fast_rollouts)."})
    policy_tokens_only: bool = field(default=True, metadata={
        "help": "Multi-turn: the log-prob passes compute logits only for the policy's own tokens (the loss and the "
                "KL term read no others; a simulated user's turns are attended to, not scored). Needs "
                "share_prompt_prefix."})
    reference_logprobs: object = field(default=None, metadata={
        "help": "rewards.fluency.ReferenceLogprobs filled by the KL reference pass for the fluency head, or None."})
    turn_credit: float = field(default=0.0, metadata={
        "help": "Multi-turn: weight in [0, 1] of each policy turn's own (group-normalised) reward in the "
                "advantage of its tokens; the rest is the whole-rollout advantage. 0 = TRL's one advantage."})
    turn_rewards: object = field(default=None, metadata={
        "help": "Callable () -> [rows, turns] per-turn rewards of the last scored batch (turn_credit > 0)."})
    guard: dict | None = field(default=None, metadata={
        "help": "RewardGuard settings (heads, margin, warmup_steps, step_size, max_weight, max_weights, "
                "smoothing, floors): reward terms held at a floor by Lagrange multipliers on their weights; "
                "None = off."})
    log_head_advantages: bool = field(default=True, metadata={
        "help": "Log per reward head its group-normalised advantage spread and correlation with the advantage."})

    @classmethod
    def stock(cls) -> "ConvRLTrainerConfig":
        """Every lever off: TRL's computation, for comparisons and as a fallback."""
        return cls(fast_rollouts=False, share_prompt_prefix=False, carry_kv_cache=False, policy_tokens_only=False,
                   log_head_advantages=False)


class GuardCheckpoint(TrainerCallback):
    """Saves the ``RewardGuard`` state beside each checkpoint, so a resumed run keeps multipliers and floors."""

    FILE = "reward_guard.json"

    def __init__(self, guard: RewardGuard):
        self.guard = guard

    def on_save(self, args, state, control, **kwargs):
        ckpt = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
        if ckpt.is_dir():
            (ckpt / self.FILE).write_text(json.dumps(self.guard.state()))

    def load(self, checkpoint: str) -> bool:
        f = Path(checkpoint) / self.FILE
        if not f.exists():
            return False
        self.guard.load_state(json.loads(f.read_text()))
        return True


class ConvRLTrainerMixin:
    """The overrides shared by the GRPO and RLOO trainers below (see the module docstring)."""

    def __init__(self, *args, convrl_args: ConvRLTrainerConfig | None = None, **kwargs):
        self.convrl = convrl_args or ConvRLTrainerConfig()
        if not 0.0 <= self.convrl.turn_credit <= 1.0:
            raise ValueError(f"turn_credit must lie in [0, 1], got {self.convrl.turn_credit}")
        self._rollout_copy: RolloutModel | None = None
        self._timing: dict[str, float] = {}
        self._last_rewards_per_func = None
        self._policy_token_mask = None  # the batch's env_mask (1 = a policy token), see _scored_tokens
        super().__init__(*args, **kwargs)
        self._guard = None
        if self.convrl.guard:
            self._guard = RewardGuard(names=self.reward_func_names, base_weights=self.reward_weights.tolist(),
                                      **self.convrl.guard)
            self.add_callback(GuardCheckpoint(self._guard))

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        ckpt = resume_from_checkpoint
        if ckpt is True:  # Trainer's own "the last one in output_dir"
            ckpt = get_last_checkpoint(self.args.output_dir)
        if self._guard is not None and isinstance(ckpt, str):
            GuardCheckpoint(self._guard).load(ckpt)
        return super().train(resume_from_checkpoint, *args, **kwargs)

    # ---- log-prob passes -------------------------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep,
                                           batch_size=None, compute_entropy=False, compute_aux_loss=False,
                                           **multimodal):
        # The policy (with grad) and reference (KL) passes dominate a CPU step after generation; most of their
        # tokens are the prompt, repeated num_generations times. Multimodal/MoE inputs take TRL's own path.
        if self.convrl.share_prompt_prefix and not compute_aux_loss and all(v is None for v in multimodal.values()):
            groups = prefix.prefix_groups(input_ids, attention_mask, logits_to_keep)
            if len(groups) < input_ids.size(0):
                scored = self._scored_tokens(input_ids.size(0), logits_to_keep, input_ids.device)
                ref = self.convrl.reference_logprobs
                if ref is not None and not compute_entropy and self._is_reference_pass(model):
                    # The KL reference pass also yields the fluency head's log-probs (the frozen reference: the base
                    # model, or with rl.warmstart base + the warm-start adapter; bench/fluency_reference.py).
                    # mask_truncated_completions zeroes a truncated row's completion mask, which would leave its
                    # tokens unattended: they still need true log-probs (their rewards set the group baseline).
                    am = attention_mask
                    truncated = am[:, -logits_to_keep:].sum(1) == 0
                    if truncated.any():
                        am = am.clone()
                        am[truncated, -logits_to_keep:] = 1
                    logps, plain = prefix.shared_prefix_ref_logps(model, input_ids, am, logits_to_keep,
                                                                  self.temperature, self.accelerator.autocast, groups,
                                                                  scored)
                    ref.put(input_ids[:, -logits_to_keep:].tolist(), list(plain.cpu().numpy()))
                    return logps, None, None
                logps, entropies = prefix.shared_prefix_logps(model, input_ids, attention_mask, logits_to_keep,
                                                              compute_entropy, self.accelerator.autocast, groups,
                                                              temperature=self.temperature, scored=scored)
                return logps, entropies, None
        return super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, batch_size=batch_size,
            compute_entropy=compute_entropy, compute_aux_loss=compute_aux_loss, **multimodal)

    def _scored_tokens(self, rows: int, C: int, device) -> torch.Tensor | None:
        """[rows, C] bool: the completion tokens a log-prob pass must score (the policy's), or None for all.

        A multi-turn rollout's completion is mostly a simulated user's turns,
        template glue and padding, which the loss masks out (TRL's tool_mask);
        on a CPU skipping them took a demo-shaped two-turn step from 23.0 to
        18.3 s (README, "The trainer").
        """
        m = self._policy_token_mask
        if not self.convrl.policy_tokens_only or m is None:
            return None
        if not torch.is_tensor(m):  # the rollout's env_mask lists, one per row, as _generate returned them
            if len(m) != rows or max(map(len, m), default=0) > C:
                return None
            m = torch.tensor([list(r) + [0] * (C - len(r)) for r in m])
        return m.to(device=device, dtype=torch.bool) if tuple(m.shape) == (rows, C) else None

    def _is_reference_pass(self, model) -> bool:
        # TRL's reference pass: the separate ref model, or the PEFT model with its adapters disabled, or with its
        # frozen "ref" copy of a pretrained (e.g. warm-started, rl.warmstart) adapter active; no grad.
        if torch.is_grad_enabled() or not prefix.plain_lm_head(model.config):
            return False
        if self.ref_model is not None:
            return model is self.ref_model
        from peft.tuners.tuners_utils import BaseTunerLayer

        layers = [m for m in self.accelerator.unwrap_model(model).modules() if isinstance(m, BaseTunerLayer)]
        return bool(layers) and (all(m.disable_adapters for m in layers)
                                 or all(list(m.active_adapters) == ["ref"] for m in layers))

    # ---- rollouts --------------------------------------------------------------------------------------------
    def _fast_generation_ok(self) -> bool:
        return (self.convrl.fast_rollouts and not self.use_vllm
                and not getattr(self, "use_transformers_continuous_batching", False))

    def rollout_model(self):
        """The merged inference copy of the policy, refreshed once per optimizer step."""
        if self._rollout_copy is None:
            self._rollout_copy = RolloutModel(self.convrl.generation_dtype, self.accelerator.device)
        return self._rollout_copy.sync(self.accelerator.unwrap_model(self.model), self.state.global_step)

    def conversation_decoder(self):
        """A ``CachedDecoder`` on the rollout copy for multi-turn rollouts, or None (lever off: per-turn path)."""
        if not (self.convrl.carry_kv_cache and self._fast_generation_ok()):
            return None
        from convrl.rl.conversation_decoder import CachedDecoder

        return CachedDecoder(self.rollout_model(), self._tokenizer.pad_token_id, self.eos_token_ids)

    def sampling_processors(self):
        """Logits processors that sample like the trainer's generation config (inverse-CDF; greedy -> [])."""
        return sampling_setup(self.generation_config)[1]

    def add_timing(self, name: str, seconds: float) -> None:
        self._timing[name] = self._timing.get(name, 0.0) + seconds

    def _generate_single_turn(self, prompt_ids, images, multimodal_fields, *args, **kwargs):
        # GRPOTrainer passes num_generations (and returns (ids, logprobs)); RLOOTrainer neither.
        t0 = time.perf_counter()
        try:
            if not self._fast_generation_ok() or images is not None and any(images) or multimodal_fields:
                return super()._generate_single_turn(prompt_ids, images, multimodal_fields, *args, **kwargs)
            model = self.rollout_model()
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
                shared = prefix.prefill_shared(model, ids, mask, cache) if self.convrl.share_prompt_prefix else None
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
            self.add_timing("generate_s", time.perf_counter() - t0)

    # ---- rewards and advantages ------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards_per_func = rewards
        if self._guard is not None and self.model.training:
            self._update_guard(rewards, inputs)
        return rewards

    def _update_guard(self, rewards, inputs) -> None:
        """Move the guarded terms' multipliers on this batch; TRL's advantages then use the new weights."""
        groups = [x.get("persona_id") for x in inputs] if self.accelerator.num_processes == 1 else None
        probe = getattr(getattr(self, "rollout_func", None), "probe", None)
        probes = probe.take() if probe is not None else None
        weights = self._guard.update(rewards.detach().float().cpu().numpy(), groups, probes)
        self.reward_weights = torch.as_tensor(weights, dtype=self.reward_weights.dtype)
        for name, value in self._guard.metrics().items():
            self._metrics["train"][name].append(value)

    def _generate_and_score_completions(self, inputs):
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._policy_token_mask = None
        mode = "train" if self.model.training else "eval"
        for name, secs in self._timing.items():
            self._metrics[mode][f"timing/{name}"].append(secs)
        self._timing = {}
        rewards = self._last_rewards_per_func
        if rewards is None:
            return output
        G = self.num_generations if mode == "train" else self.num_generations_eval
        weights = self.reward_weights.detach().cpu().numpy()
        per_func = rewards.detach().float().cpu().numpy()
        aggregation = getattr(self, "multi_objective_aggregation", "sum_then_normalize")
        if self.convrl.log_head_advantages and per_func.shape[0] % G == 0:
            self._log_head_advantages(mode, per_func, weights, G, aggregation)
        if self.convrl.turn_credit > 0 and self.convrl.turn_rewards is not None and "turns" in inputs[0]:
            output["advantages"] = self._turn_credit_advantages(output, inputs, G)
        if inputs and "turns" in inputs[0]:
            spans = [[t["span"] for t in row["turns"]] for row in inputs]
            ratios = turn_clipped_ratios(spans, output["completion_ids"].tolist(), self.eos_token_ids)
            for k, share in enumerate(ratios, 1):
                self._metrics[mode][f"completions/clipped_ratio_turn{k}"].append(share)
        return output

    def _log_head_advantages(self, mode, per_func, weights, G, aggregation) -> None:
        total = group_advantages(per_func, weights, G, aggregation)
        for k, name in enumerate(self.reward_func_names):
            z = group_advantages(per_func[:, k:k + 1], np.ones(1), G, "sum_then_normalize")
            self._metrics[mode][f"advantages/{name}/abs_mean"].append(float(np.abs(z).mean()))
            if total.std() > 0 and z.std() > 0:
                self._metrics[mode][f"advantages/{name}/corr"].append(float(np.corrcoef(total, z)[0, 1]))

    def _turn_credit_advantages(self, output, inputs, G) -> torch.Tensor:
        if self.accelerator.num_processes > 1:
            raise ValueError("turn-level credit (rl.multiturn.turn_credit > 0) runs on one process; "
                             "set it to 0 for multi-process training")
        extra = self._guard.extra_weights() if self._guard is not None else None
        per_turn = np.asarray(self.convrl.turn_rewards(extra) if extra else self.convrl.turn_rewards(),
                              dtype=np.float64)
        seq_adv = output["advantages"]
        spans = [[t["span"] for t in row["turns"]] for row in inputs]
        adv = turn_level_advantages(seq_adv.detach().cpu().numpy(), per_turn, spans, G,
                                    output["completion_ids"].size(1), self.convrl.turn_credit)
        return torch.as_tensor(adv, dtype=seq_adv.dtype, device=seq_adv.device)


class ConvRLGRPOTrainer(ConvRLTrainerMixin, GRPOTrainer):
    """TRL's GRPOTrainer (single- or multi-turn via ``rollout_func``) with convrl's levers."""

    def _generate(self, prompts: list):
        out = super()._generate(prompts)
        self._policy_token_mask = out[2]  # tool_mask: a rollout_func's env_mask, None for single-turn
        return out

    def _compute_loss(self, model, inputs):
        self._policy_token_mask = inputs.get("tool_mask")
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._policy_token_mask = None


class ConvRLRLOOTrainer(ConvRLTrainerMixin, RLOOTrainer):
    """TRL's RLOOTrainer (single-turn) with convrl's levers; turn credit does not apply."""


# Signatures of the TRL methods overridden above, as checked against TRL_CHECKED_VERSION
# (tests/test_rl_trainer.py compares them with the installed TRL).
_LOGPS = ("(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, compute_entropy=False, "
          "compute_aux_loss=False, pixel_values=None, image_grid_thw=None, num_images=None, pixel_attention_mask=None, "
          "spatial_shapes=None, num_tiles=None, image_sizes=None, token_type_ids=None, mm_token_type_ids=None, "
          "image_position_ids=None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]")
_REWARDS = "(self, inputs, prompts, completions, completion_ids_list)"
_SCORE = "(self, inputs: list[dict[str, torch.Tensor | typing.Any]]) -> dict[str, torch.Tensor | typing.Any]"
OVERRIDES: dict[tuple[type, str], str] = {
    (GRPOTrainer, "_get_per_token_logps_and_entropies"): _LOGPS,
    (GRPOTrainer, "_generate_single_turn"):
        "(self, prompt_ids, images, multimodal_fields, num_generations, has_tool_images=False)",
    (GRPOTrainer, "_calculate_rewards"): _REWARDS,
    (GRPOTrainer, "_generate_and_score_completions"): _SCORE,
    (GRPOTrainer, "_generate"): "(self, prompts: list)",
    (GRPOTrainer, "_compute_loss"): "(self, model, inputs)",
    (RLOOTrainer, "_get_per_token_logps_and_entropies"): _LOGPS,
    (RLOOTrainer, "_generate_single_turn"): "(self, prompt_ids, images, multimodal_fields)",
    (RLOOTrainer, "_calculate_rewards"): _REWARDS,
    (RLOOTrainer, "_generate_and_score_completions"): _SCORE,
}
