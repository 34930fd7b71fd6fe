"""Typed, per-stage configuration for convrl, loaded from YAML presets.

A preset (``src/convrl/configs/<name>.yaml``, or any YAML path) is merged onto
the defaults below, then dotted command-line overrides are applied. A preset may
start from another (``extends: demo``) and set only what differs::

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

from convrl.config.base import ConfigError
from convrl.config.cluster import ClusterConfig
from convrl.config.data import DataConfig, ModelsConfig, ValidateConfig
from convrl.config.eval import ABConfig, EvalConfig
from convrl.config.monitoring import MonitorConfig
from convrl.config.rewards import RewardsConfig
from convrl.config.rl import RLConfig
from convrl.config.serving import ServeConfig


@dataclass
class RegistryConfig:
    model_name: str = field(default="convrl-policy", metadata={
        "help": "Registered model of the policy (aliases champion/challenger live on it)."})
    reward_model_name: str = field(default="convrl-emotion-head", metadata={
        "help": "Registered model of the emotion head."})


@dataclass
class TrackingConfig:
    experiment: str = field(default="convrl", metadata={"help": "MLflow experiment every run logs to."})


@dataclass
class Config:
    name: str = field(default="default", metadata={"help": "The preset's name (set from the preset file)."})
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
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)

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
        """Run every section's own ``validate()`` (sections nest; each checks only its own fields)."""
        _validate_sections(self)


def _validate_sections(obj: Any) -> None:
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _validate_sections(value)
    check = getattr(obj, "validate", None)
    if callable(check) and not dataclasses.is_dataclass(check):
        check()


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
            if isinstance(kwargs[key], dict):
                # A mapping setting (e.g. rewards.weights) changes only the keys it names.
                kwargs[key] = {**_field_default(cls, key), **kwargs[key]}
    return cls(**kwargs)


def _field_default(cls: type, name: str) -> Any:
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return {} if f.default is dataclasses.MISSING else f.default


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
        _, value_type = getattr(typ, "__args__", (str, Any))
        return {str(k): _coerce(value_type, v, f"{path}.{k}") for k, v in value.items()}
    return value


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def preset_names() -> list[str]:
    root = resources.files("convrl") / "configs"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _read_preset(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The preset's mapping, merged onto the preset it ``extends`` (if any), so derived presets cannot drift."""
    data = _read_one_preset(name_or_path)
    base = data.pop("extends", None)
    if base is None:
        return data
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config '{name_or_path}': extends must name one preset or YAML file, got {base!r}")
    here = Path(name_or_path)
    if Path(base).suffix in {".yaml", ".yml"} and not Path(base).exists() and here.exists():
        base = str(here.parent / base)  # a file path is read relative to the file that extends it
    if base in _seen or base == name_or_path:
        chain = " -> ".join((*_seen, name_or_path, base))
        raise ConfigError(f"config '{name_or_path}': extends makes a cycle: {chain}")
    return _deep_merge(_read_preset(base, (*_seen, name_or_path)), data)


def _read_one_preset(name_or_path: str) -> dict[str, Any]:
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
    data = _deep_merge(data, parse_overrides(overrides or []))
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
