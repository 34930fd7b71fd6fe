"""Config section for RL fine-tuning (``rl.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from convrl.config.base import ConfigError


@dataclass
class RLConfig:
    algorithm: str = field(default="grpo", metadata={
        "help": "grpo (TRL GRPOTrainer, single- or multi-turn), rloo (TRL RLOOTrainer, single-turn) or dpo "
                "(TRL DPOTrainer on preference pairs: rated replies in the data, else base-model candidates "
                "ranked by the composite reward)."})
    turns: int = field(default=1, metadata={
        "help": "Policy turns per rollout (grpo). 1 = single-turn; K > 1 = K policy turns with simulated user "
                "turns in between, through TRL's rollout_func; user tokens are masked out of the loss."})
    user_simulator: str = field(default="model", metadata={
        "help": "Who answers between policy turns: model (the frozen base model role-playing the user, with a "
                "profile from the conversation) or logged (the data's next user turns; the model fills the gaps)."})
    user_max_new_tokens: int = field(default=24, metadata={"help": "Tokens per simulated user turn."})
    turn_reward: str = field(default="mean", metadata={
        "help": "How per-turn rewards aggregate over a rollout: mean, discounted (early turns weigh more) or final."})
    turn_discount: float = field(default=0.9, metadata={"help": "Discount of turn_reward: discounted."})
    consistency_weight: float = field(default=0.1, metadata={
        "help": "Weight of the whole-conversation consistency reward (multi-turn only; the head weights stay)."})
    mask_truncated_completions: bool = field(default=True, metadata={
        "help": "Drop completions cut at max_completion_length from the loss (they have no ending to judge)."})
    lora: bool = field(default=True, metadata={"help": "LoRA adapters (default); false = full fine-tuning."})
    dpo_beta: float = field(default=0.1, metadata={"help": "DPO temperature (rl.algorithm: dpo)."})
    dpo_candidates: int = field(default=4, metadata={
        "help": "DPO without rated pairs: base-model replies sampled per prompt; best vs worst by composite reward."})
    dpo_min_margin: float = field(default=0.02, metadata={
        "help": "Minimum composite-reward gap between chosen and rejected (reward-ranked pairs)."})
    max_steps: int = 20
    num_generations: int = field(default=4, metadata={"help": "Completions per prompt (GRPO group size)."})
    prompts_per_step: int = field(default=2, metadata={"help": "Distinct prompts per optimisation step."})
    max_completion_length: int = 48
    max_prompt_turns: int = field(default=4, metadata={
        "help": "Context turns kept verbatim in each prompt (the context manager's window); older turns are "
                "compressed into a memory line of topics and user preferences in the system prompt."})
    prompt_token_budget: int = field(default=512, metadata={"help": "Token budget of a prompt's context."})
    learning_rate: float = 2e-4
    beta: float = field(default=0.04, metadata={"help": "KL coefficient to the reference policy (> 0)."})
    temperature: float = 0.9
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    save_steps: int = field(default=10, metadata={"help": "Checkpoint every N steps."})
    launcher: str = field(
        default="inline", metadata={"help": "inline (train inside the pipeline step) or trainjob (a Kubeflow "
                                    "Trainer TrainJob, for multi-GPU / multi-node RL on a cluster)."})
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 where the CPU/GPU has bf16 units, else fp32), bf16 or fp32: "
                                  "autocast for training and the dtype of the rollout model."})
    logging_steps: int = 1
    seed: int = 13

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
        if self.user_simulator not in ("model", "logged"):
            raise ConfigError(f"rl.user_simulator={self.user_simulator!r}: use 'model' or 'logged'")
        if self.turn_reward not in ("mean", "discounted", "final"):
            raise ConfigError(f"rl.turn_reward={self.turn_reward!r}: use mean, discounted or final")
        if not 0 < self.turn_discount <= 1:
            raise ConfigError("rl.turn_discount must lie in (0, 1]")
        if self.beta <= 0:
            raise ConfigError("rl.beta must be > 0: without a KL term the policy drifts freely "
                              "and learns to hack the reward")
        if self.num_generations < 2:
            raise ConfigError("rl.num_generations must be >= 2 (GRPO compares completions within a group)")
