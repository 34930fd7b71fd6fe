"""Config sections for evaluation (``eval.*``) and the A/B decision (``ab.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from convrl.config.base import ConfigError


@dataclass
class EvalConfig:
    num_prompts: int = field(default=24, metadata={"help": "Held-out prompts (test split) per model."})
    max_new_tokens: int = 48
    batch_size: int = 8
    seed: int = 13
    rate_threshold: float = field(
        default=0.5, metadata={"help": "A reply counts towards engagement/relevance/personality/emotion rates "
                                       "when its held-out judge score reaches this."})
    gap_margin: float = field(
        default=0.0, metadata={"help": "Flag a reward-judge gap only when the head's gain CI lower bound exceeds this."})
    n_bootstrap: int = field(default=1000, metadata={"help": "Bootstrap resamples for the report's 95% CIs."})
    selfplay_conversations: int = field(
        default=2, metadata={"help": "Self-play conversations per model with a simulated user (0 = skip self-play)."})
    selfplay_turns: int = field(default=10, metadata={"help": "Assistant turns per self-play conversation."})
    selfplay_max_new_tokens: int = field(default=32, metadata={"help": "Tokens per self-play message (both sides)."})
    selfplay_context_turns: int = field(
        default=6, metadata={"help": "Messages of history each side sees in self-play (the context window)."})
    selfplay_user_model: str = field(
        default="", metadata={"help": "Simulated user model (name or path); empty = the frozen base policy."})

    def validate(self) -> None:
        if not 0.0 <= self.rate_threshold <= 1.0:
            raise ConfigError(f"eval.rate_threshold must lie in [0, 1] (judge scores do), got {self.rate_threshold}")
        if self.selfplay_conversations < 0 or self.selfplay_turns < 1 or self.selfplay_context_turns < 1:
            raise ConfigError("eval.selfplay_conversations must be >= 0 and eval.selfplay_turns, "
                              "eval.selfplay_context_turns >= 1")


@dataclass
class ABConfig:
    n_bootstrap: int = 2000
    confidence: float = 0.95
    min_samples: int = field(default=10, metadata={"help": "Fewer paired prompts than this is inconclusive."})
    min_improvement: float = field(
        default=0.0, metadata={"help": "Promote only if the CI lower bound of the mean gain exceeds this."})
    guardrail_margin: float = field(
        default=0.05, metadata={"help": "A non-primary metric may not regress by more than this (CI upper bound)."})
    seed: int = 13
