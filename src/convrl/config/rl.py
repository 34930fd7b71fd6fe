"""Config section for RL fine-tuning (``rl.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from convrl.config.base import ConfigError
from convrl.config.rewards import WEIGHTED_HEADS

# Reward terms of an RL run beside the heads (convrl.rl.shaping, convrl.rl.turn_rewards): what rl.guard can hold.
RL_TERMS: tuple[str, ...] = (*WEIGHTED_HEADS, "ending", "non_repetition", "civility", "consistency")


@dataclass
class LoraSection:
    """LoRA adapters of the policy (``rl.lora.*``)."""
    enabled: bool = field(default=True, metadata={"help": "Train LoRA adapters (default); false = full fine-tuning."})
    r: int = field(default=16, metadata={"help": "LoRA rank."})
    alpha: int = field(default=32, metadata={"help": "LoRA alpha (scale = alpha / r)."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the LoRA input."})
    top_layers: int = field(default=0, metadata={
        "help": "Adapters on the top N decoder layers only (0 = every layer). Backward stops at the lowest "
                "adapted layer, so a step's backward shrinks with N."})

    def validate(self) -> None:
        if self.top_layers < 0:
            raise ConfigError(f"rl.lora.top_layers must be >= 0 (0 = every layer), got {self.top_layers}")
        if self.r < 1 or self.alpha <= 0:
            raise ConfigError(f"rl.lora.r must be >= 1 and rl.lora.alpha > 0, got r={self.r}, alpha={self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"rl.lora.dropout must lie in [0, 1), got {self.dropout}")


@dataclass
class DPOSection:
    """DPO settings (``rl.dpo.*``, used with ``rl.algorithm: dpo``)."""
    beta: float = field(default=0.1, metadata={"help": "DPO temperature."})
    candidates: int = field(default=4, metadata={
        "help": "Without rated pairs: base-model replies sampled per prompt; best vs worst by composite reward."})
    min_margin: float = field(default=0.02, metadata={
        "help": "Minimum composite-reward gap between chosen and rejected (reward-ranked pairs)."})

    def validate(self) -> None:
        if self.beta <= 0:
            raise ConfigError(f"rl.dpo.beta must be > 0, got {self.beta}")
        if self.candidates < 2:
            raise ConfigError("rl.dpo.candidates must be >= 2 to rank replies into pairs")
        if self.min_margin < 0:
            raise ConfigError("rl.dpo.min_margin must be >= 0")


@dataclass
class MultiTurnSection:
    """Multi-turn rollouts (``rl.multiturn.*``, used when ``rl.turns > 1``)."""
    user_simulator: str = field(default="model", metadata={
        "help": "Who answers between policy turns: model (the frozen base model role-playing the user, with a "
                "profile from the conversation) or logged (the data's next user turns; the model fills the gaps)."})
    user_max_new_tokens: int = field(default=24, metadata={"help": "Tokens per simulated user turn."})
    turn_reward: str = field(default="mean", metadata={
        "help": "How per-turn rewards aggregate over a rollout: mean, discounted (early turns weigh more) or final."})
    turn_discount: float = field(default=0.9, metadata={"help": "Discount of turn_reward: discounted."})
    consistency_weight: float = field(default=0.1, metadata={
        "help": "Weight of the whole-conversation consistency reward (the head weights stay)."})
    turn_credit: float = field(default=0.0, metadata={
        "help": "Turn-level credit (MT-GRPO): weight in [0, 1] of each policy turn's own group-normalised reward "
                "in its tokens' advantage; the rest is the whole-rollout advantage. 0 = one advantage per rollout."})
    no_repeat_ngram_size: int = field(default=0, metadata={
        "help": "Policy turns in rollouts never repeat an n-gram of this many tokens of their conversation, as "
                "convrl chat and evaluation decode (train as you decode; needs rl.speed.carry_kv_cache; 0 = off)."})

    def validate(self) -> None:
        if self.user_simulator not in ("model", "logged"):
            raise ConfigError(f"rl.multiturn.user_simulator={self.user_simulator!r}: use 'model' or 'logged'")
        if self.turn_reward not in ("mean", "discounted", "final"):
            raise ConfigError(f"rl.multiturn.turn_reward={self.turn_reward!r}: use mean, discounted or final")
        if not 0 < self.turn_discount <= 1:
            raise ConfigError("rl.multiturn.turn_discount must lie in (0, 1]")
        if not 0.0 <= self.turn_credit <= 1.0:
            raise ConfigError(f"rl.multiturn.turn_credit must lie in [0, 1], got {self.turn_credit}")
        if self.no_repeat_ngram_size < 0:
            raise ConfigError(f"rl.multiturn.no_repeat_ngram_size must be >= 0 (0 = off), got {self.no_repeat_ngram_size}")
        if self.user_max_new_tokens < 1 or self.consistency_weight < 0:
            raise ConfigError("rl.multiturn.user_max_new_tokens must be >= 1 and consistency_weight >= 0")


@dataclass
class ShapingSection:
    """Reward shaping beside the heads (``rl.shaping.*``; ``convrl.rl.shaping``)."""
    ending_weight: float = field(default=0.15, metadata={
        "help": "Weight of the 'ending' reward: 1 when a reply stops on its end-of-turn token within "
                "max_completion_length, 0 when cut off (0 = off)."})
    ending_min_share: float = field(default=0.0, metadata={
        "help": "Share of max_completion_length (0-1) below which a reply that ends earns the 'ending' reward "
                "in proportion to its length, so stopping in time is not paid as brevity (0 = every ending earns 1)."})
    ending_soft_tokens: int = field(default=0, metadata={
        "help": "A reply that ends within this many tokens of max_completion_length earns the 'ending' reward "
                "linearly less, 0 at the cap (DAPO's soft overlong punishment): replies move away from the cap "
                "before they are cut (0 = off; below max_completion_length)."})
    repetition_weight: float = field(default=0.1, metadata={
        "help": "Weight of the 'non_repetition' reward: 1 minus repeated 3-grams inside the reply or word overlap "
                "with an earlier own reply (0 = off)."})
    civility_weight: float = field(default=0.2, metadata={
        "help": "Weight of the 'civility' reward: 1 unless a classifier trained on human-labelled offensive "
                "comments finds the reply offensive, 0 when it hands the user's criticism back "
                "(convrl.rewards.civility; 0 = off)."})
    civility_gate: bool = field(default=False, metadata={
        "help": "Multiply every reward head's score of a turn by its civility (the 'civility' reward's value), so an "
                "offensive reply, or one handing the user's insult back, earns nothing for being relevant or "
                "engaging; the 'civility' term alone only subtracts its weight."})

    def validate(self) -> None:
        if self.ending_weight < 0 or self.repetition_weight < 0 or self.civility_weight < 0:
            raise ConfigError("rl.shaping weights must be >= 0")
        if self.ending_soft_tokens < 0:
            raise ConfigError(f"rl.shaping.ending_soft_tokens must be >= 0 (0 = off), got {self.ending_soft_tokens}")
        if not 0.0 <= self.ending_min_share <= 1.0:
            raise ConfigError(f"rl.shaping.ending_min_share must be in [0, 1] (a share of rl.max_completion_length), "
                              f"got {self.ending_min_share}")


@dataclass
class GuardSection:
    """Reward terms RL may not trade away (``rl.guard.*``; ``convrl.rl.guard``): Lagrange multipliers on their weights."""
    heads: list[str] = field(default_factory=list, metadata={
        "help": "Reward terms held at their starting level (e.g. [personality]): while one sits below its floor "
                "(per persona, its mean over the warm-up batches) minus margin, its weight grows; [] = off."})
    margin: float = field(default=0.0, metadata={"help": "Drop below the floor allowed before the weight grows."})
    warmup_steps: int = field(default=4, metadata={"help": "Rollout batches per persona whose mean sets its floor."})
    step_size: float = field(default=4.0, metadata={
        "help": "Dual-ascent step: weight added per step per unit of the term below its floor."})
    max_weight: float = field(default=1.0, metadata={"help": "Cap on the weight added to a guarded term."})
    max_weights: dict[str, float] = field(default_factory=dict, metadata={
        "help": "Per-term caps overriding max_weight, e.g. {personality: 1.0} (the term must be in heads)."})
    smoothing: float = field(default=0.5, metadata={
        "help": "Exponential smoothing of each batch's deficit in [0, 1) (batches of a few prompts are noisy)."})
    floors: dict[str, float] = field(default_factory=dict, metadata={
        "help": "Fixed floors instead of the warm-up mean, e.g. {ending: 0.8}: at least 80% of policy turns end "
                "before their budget (the term must be in heads)."})
    probe_heads: list[str] = field(default_factory=list, metadata={
        "help": "Guarded reward heads measured on greedy probes instead of the sampled rollouts: each step one "
                "more reply per rollout group, decoded as evaluation decodes (greedy, the chat n-gram ban; first "
                "turn), is paired with the base model's greedy reply to that prompt (convrl.rl.probe). "
                "Multi-turn GRPO on the cached decoder only (elsewhere these heads keep the warm-up floor); "
                "[] = off."})

    def validate(self) -> None:
        unknown = [h for h in self.heads if h not in RL_TERMS]
        if unknown:
            raise ConfigError(f"rl.guard.heads {unknown}: guardable reward terms are {', '.join(RL_TERMS)}")
        bad = [h for h in self.probe_heads if h not in self.heads or h not in WEIGHTED_HEADS or h in self.floors]
        if bad:
            raise ConfigError(f"rl.guard.probe_heads {bad}: a probed head must be a reward head "
                              f"({', '.join(WEIGHTED_HEADS)}) in rl.guard.heads without a fixed floor")
        if self.warmup_steps < 1 or self.step_size <= 0 or self.max_weight < 0 or self.margin < 0:
            raise ConfigError("rl.guard needs warmup_steps >= 1, step_size > 0, max_weight >= 0 and margin >= 0")
        if not 0.0 <= self.smoothing < 1.0:
            raise ConfigError(f"rl.guard.smoothing must lie in [0, 1), got {self.smoothing}")
        for key, given in (("max_weights", self.max_weights), ("floors", self.floors)):
            stray = [h for h in given if h not in self.heads]
            if stray:
                raise ConfigError(f"rl.guard.{key} names {stray}, which rl.guard.heads does not guard; "
                                  f"add them to rl.guard.heads ({self.heads}) or drop them from rl.guard.{key}")
        if any(v < 0 for v in self.max_weights.values()):
            raise ConfigError(f"rl.guard.max_weights must be >= 0, got {self.max_weights}")

    def trainer_kwargs(self) -> dict | None:
        """``RewardGuard`` settings for the trainer, or None when nothing is guarded."""
        if not self.heads:
            return None
        return {"heads": list(self.heads), "margin": self.margin, "warmup_steps": self.warmup_steps,
                "step_size": self.step_size, "max_weight": self.max_weight, "smoothing": self.smoothing,
                "max_weights": dict(self.max_weights), "floors": dict(self.floors)}


@dataclass
class SpeedSection:
    """convrl's speed levers on TRL's trainer (``rl.speed.*``; ``convrl.rl.trainer.ConvRLTrainerConfig``)."""
    fast_rollouts: bool = field(default=True, metadata={
        "help": "Rollouts from a merged bf16/fp32 inference copy with convrl's CPU decoding; false = TRL's "
                "generation with the training model."})
    share_prompt_prefix: bool = field(default=True, metadata={
        "help": "Prefill and forward each distinct prompt once per GRPO group (rollouts, log-prob passes)."})
    carry_kv_cache: bool = field(default=True, metadata={
        "help": "Multi-turn rollouts keep each conversation's KV cache across turns (needs fast_rollouts)."})
    policy_tokens_only: bool = field(default=True, metadata={
        "help": "Multi-turn: the log-prob passes compute logits only for the policy's own tokens, not the "
                "simulated user's (which the loss never reads)."})
    reference_fluency: bool = field(default=True, metadata={
        "help": "The KL reference pass hands its log-probs to the fluency head (no separate fluency LM pass)."})
    vllm: bool = field(default=True, metadata={
        "help": "On a CUDA device with vLLM installed, generate with vLLM colocated in the training process."})


@dataclass
class WarmStartSection:
    """Ending warm-start before RL (``rl.warmstart.*``; ``convrl.rl.warmstart``): a short SFT of the LoRA
    adapter on the base model's own replies to the RL prompts, each cut at its last sentence end."""
    enabled: bool = field(default=False, metadata={
        "help": "SFT the adapter on self-generated replies cut at a sentence end before GRPO/RLOO, so RL starts "
                "from a policy that ends its turns (the reference becomes that policy)."})
    max_tokens: int = field(default=48, metadata={
        "help": "Token budget of the base model's replies; each is cut at its last sentence end inside it."})
    min_words: int = field(default=4, metadata={"help": "Replies shorter than this once cut are left out."})
    epochs: float = field(default=1.0, metadata={"help": "Epochs over the warm-start examples."})
    learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate of the warm-start SFT."})
    batch_size: int = field(default=8, metadata={"help": "Examples per SFT step."})
    candidates: int = field(default=1, metadata={
        "help": "Replies per prompt: the greedy one plus candidates-1 sampled at rl.temperature; above 1 the one "
                "with the best composite reward among those that end a sentence is kept (best-of-n, as in "
                "rejection-sampling fine-tuning)."})

    def validate(self) -> None:
        if self.max_tokens < 8 or self.min_words < 1 or self.batch_size < 1 or self.candidates < 1:
            raise ConfigError("rl.warmstart: max_tokens must be >= 8, min_words, batch_size and candidates >= 1")
        if self.epochs <= 0 or self.learning_rate <= 0:
            raise ConfigError("rl.warmstart: epochs and learning_rate must be > 0")


@dataclass
class RLConfig:
    algorithm: str = field(default="grpo", metadata={
        "help": "grpo (TRL GRPOTrainer, single- or multi-turn), rloo (TRL RLOOTrainer, single-turn) or dpo "
                "(TRL DPOTrainer on preference pairs: rated replies in the data, else base-model candidates "
                "ranked by the composite reward)."})
    turns: int = field(default=1, metadata={
        "help": "Policy turns per rollout (grpo). 1 = single-turn; K > 1 = K policy turns with simulated user "
                "turns in between, through TRL's rollout_func; user tokens are masked out of the loss."})
    mask_truncated_completions: bool = field(default=True, metadata={
        "help": "Drop completions cut at max_completion_length from the loss (they have no ending to judge)."})
    lora: LoraSection = field(default_factory=LoraSection, metadata={"help": "LoRA adapters (rl.lora.*)."})
    dpo: DPOSection = field(default_factory=DPOSection, metadata={"help": "DPO settings (rl.dpo.*)."})
    multiturn: MultiTurnSection = field(default_factory=MultiTurnSection, metadata={
        "help": "Multi-turn rollouts (rl.multiturn.*)."})
    shaping: ShapingSection = field(default_factory=ShapingSection, metadata={
        "help": "Ending / repetition rewards beside the heads (rl.shaping.*)."})
    guard: GuardSection = field(default_factory=GuardSection, metadata={
        "help": "Reward terms held at their starting level by Lagrange multipliers (rl.guard.*)."})
    speed: SpeedSection = field(default_factory=SpeedSection, metadata={"help": "Speed levers (rl.speed.*)."})
    warmstart: WarmStartSection = field(default_factory=WarmStartSection, metadata={
        "help": "Ending warm-start SFT before RL (rl.warmstart.*)."})
    multi_objective_aggregation: str = field(default="sum_then_normalize", metadata={
        "help": "How GRPO combines the rewards: sum_then_normalize (weighted sum, then normalised per group) or "
                "normalize_then_sum (each reward normalised per group first, then weighted; GDPO)."})
    max_steps: int = field(default=20, metadata={"help": "Optimizer steps of RL."})
    num_iterations: int = field(default=1, metadata={
        "help": "Optimizer steps per batch of rollouts (GRPO's mu; grpo and rloo). 2 = each batch is decoded "
                "once and trained on twice (PPO-style clipped ratio), so max_steps steps decode max_steps/2 batches."})
    num_generations: int = field(default=4, metadata={"help": "Completions per prompt (GRPO group size)."})
    prompts_per_step: int = field(default=2, metadata={"help": "Distinct prompts per optimisation step."})
    max_completion_length: int = field(default=48, metadata={
        "help": "Token budget of one policy reply (per turn in multi-turn rollouts)."})
    max_prompt_turns: int = field(default=4, metadata={
        "help": "Context turns kept verbatim in each prompt (the context manager's window); older turns are "
                "compressed into a memory line of topics and user preferences in the system prompt."})
    prompt_token_budget: int = field(default=512, metadata={"help": "Token budget of a prompt's context."})
    learning_rate: float = field(default=2e-4, metadata={"help": "AdamW learning rate (LoRA parameters)."})
    beta: float = field(default=0.04, metadata={"help": "KL coefficient to the reference policy (> 0)."})
    temperature: float = field(default=0.9, metadata={"help": "Sampling temperature of the rollouts."})
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every N steps."})
    launcher: str = field(
        default="inline", metadata={"help": "inline (train inside the pipeline step) or trainjob (a Kubeflow "
                                    "Trainer TrainJob, for multi-GPU / multi-node RL on a cluster)."})
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 where the CPU/GPU has bf16 units, else fp32), bf16 or fp32: "
                                  "autocast for training and the dtype of the rollout model."})
    logging_steps: int = field(default=1, metadata={"help": "Log metrics every N steps."})
    seed: int = field(default=13, metadata={"help": "Seed of RL (prompt order, sampling, LoRA init)."})

    def probed_heads(self) -> list[str]:
        """``guard.probe_heads`` where greedy probes can be decoded (multi-turn GRPO on the cached decoder), else []:
        a single-turn or DPO run of a preset that probes guards those heads on the sampled rollouts instead."""
        ok = self.algorithm == "grpo" and self.turns > 1 and self.speed.carry_kv_cache and self.speed.fast_rollouts
        return list(self.guard.probe_heads) if ok else []

    def validate(self) -> None:
        if self.launcher not in ("inline", "trainjob"):
            raise ConfigError(f"rl.launcher={self.launcher!r}: use 'inline' or 'trainjob'")
        if self.algorithm not in ("grpo", "rloo", "dpo"):
            raise ConfigError(f"rl.algorithm={self.algorithm!r} is not supported; use grpo, rloo or dpo")
        if self.turns < 1:
            raise ConfigError("rl.turns must be >= 1 (1 = single-turn)")
        if self.turns > 1 and self.algorithm != "grpo":
            raise ConfigError(f"rl.turns={self.turns} needs rl.algorithm=grpo: multi-turn rollouts go through "
                              f"GRPOTrainer's rollout_func, which TRL's {self.algorithm.upper()} trainer lacks")
        if self.multi_objective_aggregation not in ("sum_then_normalize", "normalize_then_sum"):
            raise ConfigError(f"rl.multi_objective_aggregation={self.multi_objective_aggregation!r}: use "
                              "sum_then_normalize or normalize_then_sum")
        if self.beta <= 0:
            raise ConfigError("rl.beta must be > 0: without a KL term the policy drifts freely "
                              "and learns to hack the reward")
        if self.num_iterations < 1:
            raise ConfigError(f"rl.num_iterations must be >= 1 (optimizer steps per batch of rollouts), "
                              f"got {self.num_iterations}")
        if self.shaping.ending_soft_tokens >= self.max_completion_length:
            raise ConfigError(f"rl.shaping.ending_soft_tokens={self.shaping.ending_soft_tokens} must be below "
                              f"rl.max_completion_length={self.max_completion_length}: otherwise no ending earns it all")
        if self.num_generations < 2:
            raise ConfigError("rl.num_generations must be >= 2 (GRPO compares completions within a group)")
        if self.warmstart.enabled and (self.algorithm == "dpo" or not self.lora.enabled):
            raise ConfigError("rl.warmstart warm-starts the LoRA adapter of grpo/rloo: set rl.algorithm=grpo or rloo "
                              "with rl.lora.enabled=true, or rl.warmstart.enabled=false")
