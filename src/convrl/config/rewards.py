"""Config sections for the reward models (``rewards.*``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from convrl.config.base import ConfigError

# The use case's weights: the one home of these numbers (the judges' composite uses them too).
DEFAULT_WEIGHTS: dict[str, float] = {"quality": 0.4, "personality": 0.25, "engagement": 0.2, "relevance": 0.15}
WEIGHTED_HEADS: tuple[str, ...] = tuple(DEFAULT_WEIGHTS)


@dataclass
class EmotionHeadConfig:
    epochs: int = field(default=30, metadata={"help": "Epochs of the classification head over cached embeddings."})
    learning_rate: float = field(default=5e-3, metadata={"help": "Learning rate of the emotion head."})
    hidden_size: int = field(default=128, metadata={"help": "Hidden units of the MLP head (0 = linear)."})
    max_texts: int = field(default=0, metadata={"help": "Cap on training texts (0 = all)."})
    seed: int = field(default=13, metadata={"help": "Seed of reward-head training."})
    finetune_data: str = field(
        default="", metadata={"help": "A GoEmotions folder (28 labels, e.g. ../shared/data/goemotions/original; "
                              "CC BY 4.0): fine-tune the encoder end to end on it and use that classifier for the "
                              "user's emotion (about 7 min per epoch on one CPU core in bf16); empty = the "
                              "frozen-encoder head only."})
    finetune_epochs: float = field(default=2.0, metadata={"help": "Epochs of the emotion fine-tune."})
    finetune_lr: float = field(default=8e-5, metadata={"help": "Encoder learning rate of the emotion fine-tune."})
    finetune_max_train: int = field(default=0, metadata={"help": "Cap on fine-tune training comments (0 = all)."})


@dataclass
class RewardsConfig:
    weights: dict[str, float] = field(
        default_factory=lambda: dict(DEFAULT_WEIGHTS),
        metadata={"help": "Weights of the reward heads in the composite reward; a preset or override that names "
                  "some heads changes only those (set a head to 0 to drop it)."},
    )
    emotion: EmotionHeadConfig = field(default_factory=EmotionHeadConfig)
    personality_style: bool = field(
        default=False, metadata={"help": "The personality head reads how a reply says things too: a third of it is "
                                 "the reply's similarity to example sentences of its persona card's strong traits "
                                 "(warmth, patience, ...; rewards/persona_style.py). Off: in a demo RL run the policy "
                                 "learned stock phrases for it (\"I'm sorry for your loss\" in 9 of 96 held-out "
                                 "replies, the base model 1) and lost the persona anyway (README \"Does it learn?\")."})
    fluency: bool = field(
        default=True, metadata={"help": "Score fluency with the frozen base policy (log-likelihood)."})
    max_length: int = field(default=128, metadata={"help": "Encoder max tokens per text."})
    batch_size: int = field(default=64, metadata={"help": "Texts per encoder batch when scoring."})
    encoder_precision: str = field(
        default="auto", metadata={"help": "Reward encoder precision: auto (bf16 where the CPU/GPU has bf16 units, "
                                  "~1.7x faster, cosine > 0.9999 with fp32), bf16 or fp32."})
    learned_heads: list[str] = field(
        default_factory=list,
        metadata={"help": "Heads to train in the reward stage (frozen encoder, seconds to minutes) instead of their "
                  "untrained scorers: any of relevance, personality, engagement, quality ([] = none, the default)."})
    relevance_data: str = field(
        default="", metadata={"help": "Learned relevance head: DailyDialog ConvLab-3 data.zip (next-utterance "
                              "selection); empty = next-utterance pairs of the ingested train split."})
    personality_data: str = field(
        default="", metadata={"help": "Learned personality head: a PersonaChat folder or KnowEE JSON (a speaker's "
                              "turns vs other personas'); empty = ingested conversations that carry a persona card."})
    engagement_data: list[str] = field(
        default_factory=list,
        metadata={"help": "Learned engagement head: ConvAI2 human-eval and/or user-satisfaction folders; [] = the "
                  "ingested turns' feedback_rating, implicit signals (did the user reply, how much) elsewhere."})
    quality_data: str = field(
        default="", metadata={"help": "Learned quality head: a ToxiChat folder (crowd Plausible / Not Plausible labels "
                              "of chatbot replies, train split); it also trains on ConvAI2 thumbs from "
                              "rewards.engagement_data (training side) and DailyDialog train from "
                              "rewards.relevance_data (true vs random / same-dialogue replies)."})
    learned_max_pairs: int = field(
        default=20000, metadata={"help": "Cap on training pairs/items per learned head (encoding dominates cost)."})
    learned_epochs: int = field(default=8, metadata={"help": "Epochs of the learned pair heads (early-stopped)."})
    cross_heads: list[str] = field(
        default_factory=list,
        metadata={"help": "Heads served by one cross-encoder fine-tuned end to end on human ratings and negatives "
                  "(any of relevance, personality, engagement, quality; [] = none). Trained on "
                  "rewards.engagement_data (rated dialogues), relevance_data (DailyDialog train) and "
                  "personality_data (PersonaChat); overrides learned_heads for the heads it serves."})
    cross_max_examples: int = field(default=12000, metadata={"help": "Cap on cross-encoder training examples."})
    cross_steps: int = field(
        default=400, metadata={"help": "Cross-encoder optimisation steps (batch 16; ~0.4 s a step on 2 free cores)."})
    cross_max_length: int = field(default=96, metadata={"help": "Cross-encoder max tokens per (context, reply)."})
    dialogue_data: list[str] = field(
        default_factory=list,
        metadata={"help": "ConvAI2 human-eval / user-satisfaction folders: train the dialogue-level judge (a whole "
                  "conversation's rating from all its turns and the user's reactions); [] = none."})
    dialogue_max_per_source: int = field(
        default=300, metadata={"help": "Rated dialogues per source for the dialogue judge (embedding dominates "
                               "cost); 0 = every one."})
    reaction_model: str = field(
        default="tfidf", metadata={"help": "The dialogue judge's turn-level reaction model: tfidf (TF-IDF ridge, "
                                   "seconds) or encoder (the sentence encoder fine-tuned on the rated exchanges, about "
                                   "3 minutes an epoch on 2 cores, fitted 3 times for out-of-fold features)."})
    reaction_epochs: float = field(
        default=1.0, metadata={"help": "Epochs of the encoder reaction model (rewards.reaction_model=encoder)."})
    safety_data: str = field(
        default="", metadata={"help": "ToxiChat folder: train the safety judge (judge_safety, an A/B guardrail) on "
                              "its crowd-labelled offensive / safe turns; empty = no safety judge."})
    calibrate: bool = field(
        default=False, metadata={"help": "Fit non-negative composite weights on the human ratings of "
                                 "rewards.engagement_data (training-side dialogues) and use them instead of "
                                 "rewards.weights; both are reported."})

    def validate(self) -> None:
        if self.reaction_model not in ("tfidf", "encoder"):
            raise ConfigError(f"rewards.reaction_model must be tfidf or encoder, got {self.reaction_model!r}")
        if self.reaction_epochs <= 0:
            raise ConfigError(f"rewards.reaction_epochs must be > 0, got {self.reaction_epochs}")
        unknown = set(self.weights) - set(WEIGHTED_HEADS)
        if unknown:
            raise ConfigError(f"rewards.weights has unknown heads {sorted(unknown)}; "
                              f"valid heads: {', '.join(WEIGHTED_HEADS)}")
        if any(v < 0 for v in self.weights.values()) or sum(self.weights.values()) <= 0:
            raise ConfigError("rewards.weights must be non-negative and sum to more than 0")
        bad = set(self.learned_heads) - set(WEIGHTED_HEADS)
        if bad:
            raise ConfigError(f"rewards.learned_heads has unknown heads {sorted(bad)}; valid: "
                              f"{', '.join(WEIGHTED_HEADS)}")
        if "quality" in self.learned_heads and not (self.quality_data or self.relevance_data or self.engagement_data):
            raise ConfigError("rewards.learned_heads has quality but no training data: set rewards.quality_data "
                              "(ToxiChat), relevance_data (DailyDialog) and/or engagement_data (ConvAI2)")
        bad = set(self.cross_heads) - set(WEIGHTED_HEADS)
        if bad:
            raise ConfigError(f"rewards.cross_heads has unknown heads {sorted(bad)}; valid: {', '.join(WEIGHTED_HEADS)}")
        if self.cross_heads and not (self.engagement_data or self.relevance_data or self.personality_data):
            raise ConfigError("rewards.cross_heads needs training data: set rewards.engagement_data, relevance_data "
                              "and/or personality_data")
        if self.calibrate and not self.engagement_data:
            raise ConfigError("rewards.calibrate fits weights on human ratings: set rewards.engagement_data")
        if self.cross_steps < 1 or self.cross_max_length < 16:
            raise ConfigError("rewards.cross_steps must be >= 1 and rewards.cross_max_length >= 16")
