"""Config sections for models, ingest (``data.*``) and validation (``validate.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from convrl.config.base import ConfigError


@dataclass
class ModelsConfig:
    policy: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "Policy LLM: 'smollm2-135m-instruct' (bundled GGUF, converted once), "
                  "'tiny-llama' (random, for tests) or any HF id / local checkpoint dir."},
    )
    encoder: str = field(
        default="all-minilm-l6-v2",
        metadata={"help": "Sentence encoder for reward heads: 'all-minilm-l6-v2' (bundled), "
                  "'tiny-bert' (random, for tests) or an HF id / dir."},
    )


@dataclass
class DataConfig:
    sources: list[str] = field(
        default_factory=lambda: ["chatterbot:english"],
        metadata={"help": "Source specs, e.g. 'chatterbot:english', 'jsonl:/path/chats.jsonl'."},
    )
    personas: list[str] = field(
        default_factory=lambda: ["empathetic_coach", "cheerful_guide", "calm_expert"],
        metadata={"help": "Persona cards: bundled names or paths to YAML files."},
    )
    max_conversations: int = field(default=0, metadata={"help": "Cap on conversations (0 = all)."})
    val_fraction: float = field(default=0.1, metadata={"help": "Share of conversations in 'validation'."})
    test_fraction: float = field(default=0.2, metadata={"help": "Share of conversations in 'test'."})
    max_turn_chars: int = field(default=2000, metadata={"help": "Longer turns are truncated and flagged."})
    max_turn_tokens: int = field(
        default=0, metadata={"help": "Token budget per turn (whitespace tokens; 0 = only max_turn_chars)."})
    near_duplicate_threshold: float = field(
        default=0.85, metadata={"help": "MinHash Jaccard above which conversations count as duplicates (0 = off)."})
    pii: list[str] = field(
        default_factory=lambda: ["email", "url_secret", "ip", "credit_card", "phone"],
        metadata={"help": "PII kinds to redact ([] = none)."})
    prompt_personas: str = field(
        default="cards", metadata={"help": "Personas for RL/eval prompts: 'cards' (data.personas) or 'all' "
                                   "(also personas brought by sources such as PersonaChat)."})
    quarantine_threshold: float = field(
        default=0.05, metadata={"help": "Fail ingest when more than this share of records is quarantined as bad "
                                "(duplicates are listed in the quarantine table but not counted)."})
    seed: int = field(default=13, metadata={"help": "Seed of the conversation split and of weight= sampling."})

    def validate(self) -> None:
        if not 0 < self.val_fraction + self.test_fraction < 1:
            raise ConfigError("data.val_fraction + data.test_fraction must lie between 0 and 1")
        if not self.sources:
            raise ConfigError("data.sources is empty; name at least one source, e.g. 'chatterbot:english'")
        for name in ("quarantine_threshold", "near_duplicate_threshold"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"data.{name}={getattr(self, name)} must lie in [0, 1] (a share / a Jaccard "
                                  "similarity; near_duplicate_threshold 0 turns near-duplicate removal off)")
        if min(self.max_turn_chars, self.max_turn_tokens, self.max_conversations) < 0:
            raise ConfigError("data.max_turn_chars, data.max_turn_tokens and data.max_conversations must be >= 0 "
                              "(0 = no limit)")


@dataclass
class ValidateConfig:
    min_conversations_per_split: int = field(
        default=5, metadata={"help": "Each of train/validation/test needs at least this many conversations."})
    max_text_chars: int = field(default=4000, metadata={"help": "Upper bound on turn length after ingest."})
