"""GRPO on the tiny policy: training runs, checkpoints, resumes, exports a loadable merged policy."""

import json
from pathlib import Path

import pytest
import torch

from convrl.config import RLConfig
from convrl.data.prompts import build_prompts
from convrl.rewards.heads import RewardScorer
from convrl.rl.generation import Generator
from convrl.rl.grpo import last_checkpoint, train_grpo
from convrl.runtime import resolve_precision


@pytest.fixture(scope="module")
def setup(ingested, personas, tiny_encoder):
    scorer = RewardScorer(tiny_encoder, None, None)
    prompts = build_prompts(ingested.turns, personas, "train", 8, 4, seed=1)
    funcs, weights = scorer.trl_reward_funcs({p.persona_id: p for p in personas})
    return prompts, funcs, weights


def test_prompts_are_persona_conditioned(ingested, personas):
    prompts = build_prompts(ingested.turns, personas, "train", 6, 4, seed=1)
    assert len(prompts) == 6
    for p in prompts:
        assert p["prompt"][0]["role"] == "system" and p["prompt"][-1]["role"] == "user"
    assert {p["persona_id"] for p in prompts} == {x.persona_id for x in personas}


def test_grpo_trains_checkpoints_and_resumes(setup, tiny_policy_dir, tmp_path):
    prompts, funcs, weights = setup
    rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=8, save_steps=1,
                  precision="fp32")
    logged = []
    res = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path, on_log=lambda row, step: logged.append(row))
    assert res.steps == 2 and res.resumed_from is None
    assert any("rewards/quality/mean" in r and "kl" in r for r in logged)
    assert any("timing/generate_s" in r for r in logged)
    assert last_checkpoint(tmp_path / "checkpoints").endswith("checkpoint-2")
    # The merged policy differs from the base and loads like any checkpoint.
    gen = Generator(res.policy_dir)
    out = gen.generate([prompts[0]["prompt"]], max_new_tokens=4)
    assert isinstance(out[0], str)
    assert json.loads((Path(res.policy_dir) / "convrl_training.json").read_text())["steps"] == 2
    # A rerun with more steps resumes from the last checkpoint instead of starting over.
    rl.max_steps = 3
    res2 = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path)
    assert res2.resumed_from and res2.resumed_from.endswith("checkpoint-2") and res2.steps == 3


def test_precision_resolution():
    assert resolve_precision("fp32") == "fp32"
    assert resolve_precision("auto") in {"fp32", "bf16"}
    with pytest.raises(ValueError):
        resolve_precision("fp8")


def test_long_conversations_keep_older_turns_as_memory(personas):
    import pandas as pd

    # A 13-turn conversation: the user's name is only in turn 1, the window shows the last 4 turns.
    lines = ["Hi, my name is Alice and I love gardening."] + [f"filler turn {i} about the weather" for i in range(11)]
    lines += ["What should I plant next spring?"]
    turns = pd.DataFrame([{"conversation_id": "c", "turn_index": i, "role": "user" if i % 2 == 0 else "assistant",
                           "text": t, "split": "train"} for i, t in enumerate(lines + ["Tomatoes!"])])
    prompts = build_prompts(turns, personas, "train", 0, 4, seed=1)
    last = next(p for p in prompts if p["prompt"][-1]["content"] == "What should I plant next spring?")
    visible = [m for m in last["prompt"] if m["role"] != "system"]
    assert len(visible) <= 4 and visible[0]["role"] == "user"
    system = last["prompt"][0]["content"]
    assert "Memory of the conversation" in system and "name: Alice" in system and "gardening" in system


def test_lora_top_layers_adapts_only_the_top_layers_and_backward_stops_there(tiny_policy_dir):
    from peft import get_peft_model

    from convrl.config import ConfigError
    from convrl.config.rl import LoraSection
    from convrl.rl.grpo import load_policy

    model, tok, peft = load_policy(RLConfig(precision="fp32", lora=LoraSection(top_layers=1)), tiny_policy_dir)
    assert peft.layers_to_transform == [1]  # the tiny policy has 2 layers
    model = get_peft_model(model, peft)
    adapted = {n.split(".layers.")[1].split(".")[0] for n, _ in model.named_parameters() if "lora_" in n}
    assert adapted == {"1"}
    ran = []
    model.get_base_model().model.layers[0].register_full_backward_hook(lambda *a: ran.append(0))
    model.get_base_model().model.layers[1].register_full_backward_hook(lambda *a: ran.append(1))
    ids = torch.tensor([tok("hello there, how are you")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert ran == [1]  # nothing below the lowest adapted layer needs a gradient
    for n in (0, 2, 5):  # 0 and anything >= the model's depth adapt every layer
        _, _, p = load_policy(RLConfig(precision="fp32", lora=LoraSection(top_layers=n)), tiny_policy_dir)
        assert p.layers_to_transform is None
    with pytest.raises(ConfigError, match="top_layers"):
        LoraSection(top_layers=-1).validate()
