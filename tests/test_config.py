import json

import pytest

from convrl.config import ConfigError, Config, describe, load_config, parse_overrides, preset_names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_has_a_header(name):
    from importlib import resources

    cfg = load_config(name)
    assert cfg.name == name
    text = (resources.files("convrl") / "configs" / f"{name}.yaml").read_text()
    assert text.startswith("#"), f"preset {name} needs a header comment saying what it is for"
    json.loads(cfg.to_json())


def test_presets_exist():
    assert {"demo", "tiny", "cluster"} <= set(preset_names())


def test_default_reward_weights_match_the_use_case():
    w = load_config("demo").rewards.weights
    assert w == {"quality": 0.4, "personality": 0.25, "engagement": 0.2, "relevance": 0.15}


def test_dotted_overrides_are_typed():
    cfg = load_config("demo", ["rl.max_steps=40", "rewards.weights.quality=0.5", "data.sources=[a:b, c:d]"])
    assert cfg.rl.max_steps == 40
    assert cfg.rewards.weights["quality"] == 0.5
    assert cfg.rewards.weights["relevance"] == 0.15  # the other heads keep their weights
    assert cfg.data.sources == ["a:b", "c:d"]


def test_unknown_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'max_steps'"):
        load_config("demo", ["rl.max_step=3"])


def test_bad_type_and_bad_values():
    with pytest.raises(ConfigError, match="integer"):
        load_config("demo", ["rl.max_steps=lots"])
    with pytest.raises(ConfigError, match="beta"):
        load_config("demo", ["rl.beta=0"])
    with pytest.raises(ConfigError, match="unknown heads"):
        load_config("demo", ["rewards.weights.charm=1"])


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="tiny"):
        load_config("nope")


def test_yaml_path_and_fingerprint(tmp_path):
    p = tmp_path / "mine.yaml"
    p.write_text("# mine\nrl: {max_steps: 7}\n")
    cfg = load_config(str(p))
    assert cfg.rl.max_steps == 7 and cfg.name == "mine"
    assert cfg.fingerprint() != load_config("demo").fingerprint()


def test_override_parsing_helpers():
    assert parse_overrides(["a.b=1", "a.c=x"]) == {"a": {"b": 1, "c": "x"}}
    with pytest.raises(ConfigError):
        parse_overrides(["novalue"])


def test_describe_covers_every_key():
    keys = {k for k, _, _ in describe()}
    assert "rl.max_steps" in keys and "rewards.emotion.epochs" in keys
    flat = set(Config().flat())
    # A mapping with a non-empty default (rewards.weights, ab.guardrail_margins) flattens into its own keys.
    assert all(k in flat or any(f.startswith(k + ".") for f in flat) for k in keys)


def test_research_extends_demo_and_sets_only_its_reward_data():
    import dataclasses

    research, demo = load_config("research"), load_config("demo")
    assert research.name == "research" and research.tracking.experiment == "convrl-research"
    # RL and evaluation are the demo's, so the research run trains and evaluates what the README measured.
    assert dataclasses.asdict(research.rl) == dataclasses.asdict(demo.rl)
    assert dataclasses.asdict(research.eval) == dataclasses.asdict(demo.eval)
    assert research.rewards.dialogue_data and research.rewards.safety_data and not demo.rewards.dialogue_data
    assert research.rewards.emotion == demo.rewards.emotion  # nested sections merge key by key


def test_a_yaml_file_extends_a_preset_or_a_file_beside_it(tmp_path):
    (tmp_path / "team.yaml").write_text("# team\nextends: demo\nrl: {max_steps: 7}\n")
    (tmp_path / "mine.yaml").write_text("# mine\nextends: team.yaml\nrl: {beta: 0.1}\n")
    cfg = load_config(str(tmp_path / "mine.yaml"))
    assert cfg.name == "mine" and cfg.rl.max_steps == 7 and cfg.rl.beta == 0.1
    assert cfg.rl.max_completion_length == load_config("demo").rl.max_completion_length


def test_extends_cycles_and_bad_values_are_clear_errors(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.yaml"))
    (tmp_path / "c.yaml").write_text("extends: [demo, tiny]\n")
    with pytest.raises(ConfigError, match="extends must name one preset"):
        load_config(str(tmp_path / "c.yaml"))
    (tmp_path / "d.yaml").write_text("extends: nope\n")
    with pytest.raises(ConfigError, match="no config preset or file 'nope'"):
        load_config(str(tmp_path / "d.yaml"))


def _documented_runs():
    """(where, preset, overrides) for every one-line `convrl run --config PRESET k=v ...` in the README, docs/ and
    presets."""
    import re
    import shlex
    from importlib import resources
    from pathlib import Path

    presets = set(preset_names())
    root = Path(__file__).resolve().parents[1]
    texts = {"README.md": (root / "README.md").read_text()}
    texts.update({f"docs/{p.name}": p.read_text() for p in sorted((root / "docs").glob("*.md"))})
    for name in presets:
        texts[f"{name}.yaml"] = (resources.files("convrl") / "configs" / f"{name}.yaml").read_text()
    runs = []
    for where, text in texts.items():
        for m in re.finditer(r"convrl run --config (\S+)([^`#\n]*)", text):
            if m.group(1) not in presets:
                continue  # a user's own YAML file in an example
            args = [a for a in shlex.split(m.group(2).replace("\\", " ")) if "=" in a and not a.startswith("-")]
            runs.append((where, m.group(1), args))
    return runs


def test_every_documented_run_command_validates():
    # The demo preset turned the ending warm-start on, which refuses rl.algorithm=dpo: an example command that
    # the config rejects is a broken doc.
    runs = _documented_runs()
    assert len(runs) >= 10, runs
    for where, preset, args in runs:
        try:
            load_config(preset, args)
        except ConfigError as e:
            pytest.fail(f"{where}: `convrl run --config {preset} {' '.join(args)}` is rejected: {e}")


def test_demo_budgets_agree():
    # Evaluation, chat and serving decode with the budget RL trained the policy for, and the warm-start's
    # targets fit inside it (a target longer than the turn would start RL from replies that are cut).
    from convrl.cli import build_parser

    cfg = load_config("demo")
    budget = cfg.rl.max_completion_length
    assert cfg.eval.max_new_tokens == budget and cfg.serve.max_new_tokens == budget
    assert build_parser().parse_args(["chat"]).max_new_tokens == budget
    assert cfg.rl.warmstart.enabled and cfg.rl.warmstart.max_tokens < budget
