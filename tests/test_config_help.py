"""Every setting says what it does: ``convrl config --keys`` prints this help, so a field without it is a
setting nobody can discover. Every section validates itself."""

from __future__ import annotations

import dataclasses

import pytest

from convrl.config import Config, ConfigError, describe, load_config


def test_every_config_field_has_help():
    missing = [key for key, _, help_text in describe() if not help_text.strip()]
    assert not missing, f"config fields without metadata={{'help': ...}}: {', '.join(missing)}"


def _sections(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield f"{prefix}{f.name}", value
            yield from _sections(value, f"{prefix}{f.name}.")


def test_sections_nest_and_validate_themselves():
    sections = dict(_sections(Config()))
    assert {"rl", "rewards", "data", "eval", "cluster", "cluster.trainjob"} <= set(sections)
    for name in ("rl", "rewards", "data", "eval", "cluster.trainjob"):
        assert callable(getattr(sections[name], "validate", None)), f"{name} has no validate()"


@pytest.mark.parametrize("override,needle", [
    ("rl.beta=0", "rl.beta"), ("rewards.weights.humour=1", "unknown heads"),
    ("data.val_fraction=0.9", "val_fraction"), ("cluster.trainjob.num_nodes=0", "num_nodes"),
])
def test_section_validation_names_the_setting(override, needle):
    with pytest.raises(ConfigError, match=needle):
        load_config("tiny", [override])


def test_mapping_settings_change_only_the_keys_they_name(tmp_path):
    cfg = load_config("tiny", ["rewards.weights.quality=0.5"])
    assert cfg.rewards.weights == {**Config().rewards.weights, "quality": 0.5}
    preset = tmp_path / "p.yaml"
    preset.write_text("rewards:\n  weights: {engagement: 0.0}\n")
    assert load_config(str(preset)).rewards.weights == {**Config().rewards.weights, "engagement": 0.0}
