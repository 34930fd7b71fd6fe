"""Typed, per-stage configuration for convrl, loaded from YAML presets.

A preset (``src/convrl/configs/<name>.yaml``, or any YAML path) is merged onto
the defaults below, then dotted command-line overrides are applied::

    from convrl.config import load_config
    cfg = load_config("demo", ["rl.max_steps=40", "rewards.weights.quality=0.5"])

Unknown keys are rejected with the list of valid ones, so a typo never trains
with a silently ignored setting. ``cfg.to_dict()`` is what MLflow logs as params
and what pipeline components receive as JSON.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml


class ConfigError(ValueError):
    """A config that cannot be used; the message says what to change."""


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
        default=0.05, metadata={"help": "Fail ingest when more than this share of rows is quarantined."})
    seed: int = 13


@dataclass
class ValidateConfig:
    min_conversations_per_split: int = field(
        default=5, metadata={"help": "Each of train/validation/test needs at least this many conversations."})
    max_text_chars: int = field(default=4000, metadata={"help": "Upper bound on turn length after ingest."})


@dataclass
class EmotionHeadConfig:
    epochs: int = field(default=30, metadata={"help": "Epochs of the classification head over cached embeddings."})
    learning_rate: float = 5e-3
    hidden_size: int = field(default=128, metadata={"help": "Hidden units of the MLP head (0 = linear)."})
    max_texts: int = field(default=0, metadata={"help": "Cap on training texts (0 = all)."})
    seed: int = 13
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
        default_factory=lambda: {"quality": 0.4, "personality": 0.25, "engagement": 0.2, "relevance": 0.15},
        metadata={"help": "Weights of the reward heads in the composite reward."},
    )
    emotion: EmotionHeadConfig = field(default_factory=EmotionHeadConfig)
    fluency: bool = field(
        default=True, metadata={"help": "Score fluency with the frozen base policy (log-likelihood)."})
    max_length: int = field(default=128, metadata={"help": "Encoder max tokens per text."})
    batch_size: int = 64
    encoder_precision: str = field(
        default="auto", metadata={"help": "Reward encoder precision: auto (bf16 where the CPU/GPU has bf16 units, "
                                  "~1.7x faster, cosine > 0.9999 with fp32), bf16 or fp32."})
    learned_heads: list[str] = field(
        default_factory=list,
        metadata={"help": "Heads to train in the reward stage instead of their untrained scorers: any of relevance, "
                  "personality, engagement ([] = none, the cheap default)."})
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
    learned_max_pairs: int = field(
        default=20000, metadata={"help": "Cap on training pairs/items per learned head (encoding dominates cost)."})
    learned_epochs: int = field(default=8, metadata={"help": "Epochs of the learned pair heads (early-stopped)."})


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
    trainjob_runtime: str = field(default="torch-distributed", metadata={"help": "ClusterTrainingRuntime name."})
    trainjob_num_nodes: int = 1
    trainjob_gpus_per_node: int = 1
    trainjob_namespace: str = "kubeflow"
    trainjob_timeout_s: int = 6 * 3600
    precision: str = field(
        default="auto", metadata={"help": "auto (bf16 where the CPU/GPU has bf16 units, else fp32), bf16 or fp32: "
                                  "autocast for training and the dtype of the rollout model."})
    logging_steps: int = 1
    seed: int = 13


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

    def __post_init__(self) -> None:
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


@dataclass
class RegistryConfig:
    model_name: str = "convrl-policy"
    reward_model_name: str = "convrl-emotion-head"


@dataclass
class TrackingConfig:
    experiment: str = "convrl"


@dataclass
class ClusterConfig:
    """Kubernetes settings compiled into the pipeline (``convrl compile --config cluster``); kfp.local ignores them."""
    gpu_stages: list[str] = field(
        default_factory=lambda: ["reward_models", "rl_finetune", "evaluate"],
        metadata={"help": "Stages that request an accelerator."})
    accelerator_type: str = "nvidia.com/gpu"
    accelerator_limit: int = 1
    gpu_cpu_request: str = "4"
    gpu_memory_request: str = "32G"
    gpu_memory_limit: str = "64G"
    cpu_request: str = "1"
    memory_request: str = "4G"
    memory_limit: str = "16G"
    node_selector: list[str] = field(
        default_factory=list, metadata={"help": "GPU node labels as key=value, e.g. nvidia.com/gpu.present=true."})
    tolerations: list[str] = field(
        default_factory=lambda: ["nvidia.com/gpu:Exists:NoSchedule"],
        metadata={"help": "GPU tolerations as key:Exists:Effect or key=value:Effect."})
    mlflow_secret: str = field(
        default="convrl-mlflow-client",
        metadata={"help": "Secret whose keys become MLFLOW_TRACKING_URI/USERNAME/PASSWORD (never in the YAML)."})
    model_cache_pvc: str = field(
        default="convrl-model-cache",
        metadata={"help": "PVC for hub downloads (HF_HOME); the image's own models stay in its CONVRL_HOME."})
    model_cache_mount: str = "/mnt/model-cache"


@dataclass
class Config:
    name: str = "default"
    models: ModelsConfig = field(default_factory=ModelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    rl: RLConfig = field(default_factory=RLConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    ab: ABConfig = field(default_factory=ABConfig)
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def fingerprint(self) -> str:
        return hashlib.sha256(self.to_json().encode()).hexdigest()[:12]

    def flat(self) -> dict[str, Any]:
        """Dotted keys -> values, the form MLflow params take."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else k, v)
            else:
                out[prefix] = value

        walk("", self.to_dict())
        return out

    def validate_values(self) -> None:
        w = self.rewards.weights
        unknown = set(w) - {"quality", "personality", "engagement", "relevance"}
        if unknown:
            raise ConfigError(f"rewards.weights has unknown heads {sorted(unknown)}; "
                              "valid heads: quality, personality, engagement, relevance")
        if any(v < 0 for v in w.values()) or sum(w.values()) <= 0:
            raise ConfigError("rewards.weights must be non-negative and sum to more than 0")
        if self.rl.launcher not in ("inline", "trainjob"):
            raise ConfigError(f"rl.launcher={self.rl.launcher!r}: use 'inline' or 'trainjob'")
        if self.rl.algorithm not in ("grpo", "rloo", "dpo"):
            raise ConfigError(f"rl.algorithm={self.rl.algorithm!r} is not supported; use grpo, rloo or dpo")
        if self.rl.turns < 1:
            raise ConfigError("rl.turns must be >= 1 (1 = single-turn)")
        if self.rl.turns > 1 and self.rl.algorithm != "grpo":
            raise ConfigError(f"rl.turns={self.rl.turns} needs rl.algorithm=grpo: multi-turn rollouts go through "
                              f"GRPOTrainer's rollout_func, which TRL's {self.rl.algorithm.upper()} trainer lacks")
        if self.rl.user_simulator not in ("model", "logged"):
            raise ConfigError(f"rl.user_simulator={self.rl.user_simulator!r}: use 'model' or 'logged'")
        if self.rl.turn_reward not in ("mean", "discounted", "final"):
            raise ConfigError(f"rl.turn_reward={self.rl.turn_reward!r}: use mean, discounted or final")
        if not 0 < self.rl.turn_discount <= 1:
            raise ConfigError("rl.turn_discount must lie in (0, 1]")
        if self.rl.beta <= 0:
            raise ConfigError("rl.beta must be > 0: without a KL term the policy drifts freely "
                              "and learns to hack the reward")
        if self.rl.num_generations < 2:
            raise ConfigError("rl.num_generations must be >= 2 (GRPO compares completions within a group)")
        if not 0 < self.data.val_fraction + self.data.test_fraction < 1:
            raise ConfigError("data.val_fraction + data.test_fraction must lie between 0 and 1")
        if not self.data.sources:
            raise ConfigError("data.sources is empty; name at least one source, e.g. 'chatterbot:english'")


def _from_dict(cls: type, data: dict[str, Any], path: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{path or 'config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{path}.{key}" if path else key
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"unknown config key '{full}'{hint}; valid keys under "
                              f"'{path or 'top level'}': {', '.join(sorted(names))}")
        typ = hints[key]
        if dataclasses.is_dataclass(typ):
            kwargs[key] = _from_dict(typ, value, full)
        else:
            kwargs[key] = _coerce(typ, value, full)
    return cls(**kwargs)


def _coerce(typ: Any, value: Any, path: str) -> Any:
    origin = getattr(typ, "__origin__", None)
    if typ is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path} must be true or false, got {value!r}")
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path} must be an integer, got {value!r}")
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{path} must be a number, got {value!r}")
        return float(value)
    if typ is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path} must be a string, got {value!r}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            raise ConfigError(f"{path} must be a list, got {value!r}")
        return list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{path} must be a mapping, got {value!r}")
        return {str(k): float(v) for k, v in value.items()}
    return value


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "weights":
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def preset_names() -> list[str]:
    root = resources.files("convrl") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_preset(name_or_path: str) -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix in {".yaml", ".yml"} and path.exists():
        text = path.read_text()
    else:
        res = resources.files("convrl") / "configs" / f"{name_or_path}.yaml"
        if not res.is_file():
            raise ConfigError(f"no config preset or file '{name_or_path}'; presets: "
                              f"{', '.join(preset_names())}, or pass a path to a YAML file")
        text = res.read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config '{name_or_path}' must be a YAML mapping")
    return data


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like section.key=value, e.g. rl.max_steps=40")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw) if raw != "" else ""
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        node[parts[-1]] = value
    return nested


def load_config(preset: str = "demo", overrides: list[str] | None = None) -> Config:
    data = _read_preset(preset)
    data.setdefault("name", Path(preset).stem)
    over = parse_overrides(overrides or [])
    if "rewards" in over and "weights" in over["rewards"] and "rewards" in data:
        # A weight override changes one head, not the whole mapping.
        merged_w = dict(Config().rewards.weights)
        merged_w.update(data.get("rewards", {}).get("weights", {}) or {})
        merged_w.update(over["rewards"]["weights"])
        over["rewards"]["weights"] = merged_w
    data = _deep_merge(data, over)
    cfg = _from_dict(Config, data, "")
    cfg.validate_values()
    return cfg


def config_from_json(text: str) -> Config:
    cfg = _from_dict(Config, json.loads(text), "")
    cfg.validate_values()
    return cfg


def describe() -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every setting: the CLI's `config --help`."""
    rows: list[tuple[str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = get_type_hints(cls)
        inst = cls()
        for f in dataclasses.fields(cls):
            key = f"{prefix}.{f.name}" if prefix else f.name
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], key)
            else:
                rows.append((key, getattr(inst, f.name), f.metadata.get("help", "")))

    walk(Config, "")
    return rows


def split_overrides(text: str) -> list[str]:
    """Overrides as one string (a KFP UI parameter): separated by ';' or newlines."""
    return [p.strip() for chunk in (text or "").splitlines() for p in chunk.split(";") if p.strip()]


def ui_overrides(data_sources: str = "", personas: str = "", reward_weights: str = "", rl_max_steps: int = 0,
                 rl_algorithm: str = "", ab_min_improvement: str = "", ab_guardrail_margin: str = "") -> list[str]:
    """Dotted overrides from the pipeline's named KFP UI parameters (empty = keep the preset's value).

    ``data_sources`` and ``personas`` are comma-separated; ``reward_weights`` looks like
    ``quality=0.5,personality=0.2`` and changes only the heads it names.
    """
    out: list[str] = []
    if data_sources.strip():
        out.append("data.sources=[" + ", ".join(s.strip() for s in data_sources.split(",") if s.strip()) + "]")
    if personas.strip():
        out.append("data.personas=[" + ", ".join(p.strip() for p in personas.split(",") if p.strip()) + "]")
    for item in (w.strip() for w in reward_weights.split(",") if w.strip()):
        head, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"reward_weights item '{item}' must look like head=weight, e.g. quality=0.5")
        out.append(f"rewards.weights.{head.strip()}={value.strip()}")
    if rl_max_steps:
        out.append(f"rl.max_steps={int(rl_max_steps)}")
    if rl_algorithm.strip():
        out.append(f"rl.algorithm={rl_algorithm.strip()}")
    if ab_min_improvement.strip():
        out.append(f"ab.min_improvement={float(ab_min_improvement)}")
    if ab_guardrail_margin.strip():
        out.append(f"ab.guardrail_margin={float(ab_guardrail_margin)}")
    return out
