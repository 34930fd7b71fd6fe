"""Typed, per-stage configuration for convrl, loaded from YAML presets.

A preset (``src/convrl/configs/<name>.yaml``, or any YAML path) is merged onto
the defaults, then dotted command-line overrides are applied::

    from convrl.config import load_config
    cfg = load_config("demo", ["rl.max_steps=40", "rewards.weights.quality=0.5"])

One module per section (``data``, ``rewards``, ``rl``, ``eval``, ``cluster``), each
with help on every field and its own ``validate()``; ``loader`` merges presets and
overrides and rejects unknown keys with the valid ones, so a typo never trains with a
silently ignored setting. ``cfg.to_dict()`` is what MLflow logs as params and what
pipeline components receive as JSON. ``convrl config --keys`` lists every setting.
"""

from convrl.config.base import ConfigError
from convrl.config.cluster import ClusterConfig, TrainJobConfig
from convrl.config.data import DataConfig, ModelsConfig, ValidateConfig
from convrl.config.eval import ABConfig, EvalConfig
from convrl.config.loader import (Config, RegistryConfig, TrackingConfig, config_from_json, describe, load_config,
                                  parse_overrides, preset_names)
from convrl.config.rewards import DEFAULT_WEIGHTS, WEIGHTED_HEADS, EmotionHeadConfig, RewardsConfig
from convrl.config.rl import RLConfig

__all__ = [
    "ABConfig", "ClusterConfig", "Config", "ConfigError", "DEFAULT_WEIGHTS", "DataConfig", "EmotionHeadConfig",
    "EvalConfig", "ModelsConfig", "RLConfig", "RegistryConfig", "RewardsConfig", "TrackingConfig", "TrainJobConfig",
    "ValidateConfig", "WEIGHTED_HEADS", "config_from_json", "describe", "load_config", "parse_overrides",
    "preset_names",
]
