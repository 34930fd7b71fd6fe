"""rl.guard: Lagrange multipliers that hold guarded reward terms at their starting level."""

import json

import numpy as np
import pytest

from convrl.rl.guard import RewardGuard


def batch(quality, personality, rows=4):
    return np.column_stack([np.full(rows, quality), np.full(rows, personality)])


def test_guard_sets_its_floor_in_warmup_and_leaves_weights_alone_above_it():
    g = RewardGuard(["personality"], ["quality", "personality"], [0.4, 0.25], warmup_steps=2)
    assert list(g.update(batch(0.5, 0.2))) == [0.4, 0.25]
    assert list(g.update(batch(0.5, 0.3))) == [0.4, 0.25]
    assert g.floor("personality") == pytest.approx(0.25)     # mean of the warm-up batches
    for _ in range(5):
        assert list(g.update(batch(0.9, 0.4))) == [0.4, 0.25]  # above the floor: nothing changes
    assert g.lam["personality"] == 0.0


def test_guard_raises_the_weight_while_below_the_floor_caps_it_and_lets_go_after_recovery():
    g = RewardGuard(["personality"], ["quality", "personality"], [0.4, 0.25], warmup_steps=1, step_size=4.0,
                    max_weight=0.5, smoothing=0.0)
    g.update(batch(0.5, 0.20))
    w1 = g.update(batch(0.6, 0.15))                    # 0.05 below: lambda += 4 * 0.05
    assert w1[1] == pytest.approx(0.25 + 0.2) and w1[0] == 0.4
    w2 = g.update(batch(0.6, 0.15))
    assert w2[1] == pytest.approx(0.25 + 0.4)
    for _ in range(5):
        w = g.update(batch(0.6, 0.0))
    assert w[1] == pytest.approx(0.25 + 0.5)           # capped at max_weight
    for _ in range(10):
        w = g.update(batch(0.6, 0.4))                  # recovered: the multiplier goes back to 0
    assert w[1] == pytest.approx(0.25) and g.lam["personality"] == 0.0


def test_guard_caps_single_terms_with_max_weights():
    g = RewardGuard(["quality", "personality"], ["quality", "personality"], [0.4, 0.25], warmup_steps=1,
                    step_size=4.0, max_weight=0.5, max_weights={"personality": 1.0}, smoothing=0.0)
    g.update(batch(0.5, 0.5))
    for _ in range(10):
        w = g.update(batch(0.0, 0.0))                  # both far below their floors
    assert w[0] == pytest.approx(0.4 + 0.5) and w[1] == pytest.approx(0.25 + 1.0)
    with pytest.raises(ValueError, match="not guarded heads"):
        RewardGuard(["quality"], ["quality", "personality"], [0.4, 0.25], max_weights={"personality": 1.0})


def test_guard_margin_smoothing_metrics_and_state_round_trip():
    g = RewardGuard(["personality"], ["quality", "personality"], [0.4, 0.25], warmup_steps=1, margin=0.05,
                    smoothing=0.5)
    g.update(batch(0.5, 0.20))
    g.update(batch(0.5, 0.17))                         # within the margin: deficit -0.02 (smoothed -0.01)
    assert g.lam["personality"] == 0.0
    g.update(batch(0.5, 0.0))                          # deficit 0.15, smoothed 0.5 * -0.01 + 0.5 * 0.15 = 0.07
    m = g.metrics()
    assert m["guard/personality/lambda"] == pytest.approx(4.0 * 0.07)
    assert m["guard/personality/floor"] == pytest.approx(0.2) and m["guard/personality/deficit"] == pytest.approx(0.07)
    fresh = RewardGuard(["personality"], ["quality", "personality"], [0.4, 0.25], warmup_steps=1, margin=0.05,
                        smoothing=0.5)
    fresh.load_state(json.loads(json.dumps(g.state())))
    assert fresh.lam == g.lam and fresh.metrics() == m and fresh.steps == 3
    assert list(fresh.update(batch(0.5, 0.0))) == list(g.update(batch(0.5, 0.0)))  # no new warm-up


def test_guard_keeps_one_floor_per_persona():
    """A persona whose card scores low is not a drop: each group is compared with its own floor."""
    g = RewardGuard(["personality"], ["quality", "personality"], [0.4, 0.25], warmup_steps=1, smoothing=0.0)
    rows = ["coach", "coach", "guide", "guide"]
    g.update(np.column_stack([np.ones(4), [0.3, 0.3, 0.1, 0.1]]), rows)
    assert g.floors["personality"] == {"coach": [pytest.approx(0.3), 1], "guide": [pytest.approx(0.1), 1]}
    # Only the low-scoring persona this time, at its own level: no deficit, although the batch mean fell.
    assert g.update(np.column_stack([np.ones(2), [0.1, 0.1]]), ["guide", "guide"])[1] == pytest.approx(0.25)
    # A new persona warms up its own floor first and moves nothing.
    assert g.update(np.column_stack([np.ones(2), [0.0, 0.0]]), ["calm", "calm"])[1] == pytest.approx(0.25)
    w = g.update(np.column_stack([np.ones(4), [0.2, 0.2, 0.1, 0.1]]), rows)  # coach 0.1 below: mean gap 0.05
    assert w[1] == pytest.approx(0.25 + 4.0 * 0.05)


def test_a_probed_head_follows_its_greedy_probes_not_the_sampled_rows():
    """Sampled rows above any floor, greedy probes below their references: the probed head's weight grows; a step
    without probes holds it; probes back at their references let it go."""
    g = RewardGuard(["quality", "personality"], ["quality", "personality"], [0.4, 0.25], warmup_steps=1,
                    step_size=4.0, smoothing=0.0, probe_heads=["personality"])
    w = g.update(batch(0.5, 0.9), probes={"personality": ([0.10], [0.20])})  # no warm-up for a probed head
    assert w[1] == pytest.approx(0.25 + 0.4) and w[0] == 0.4 and g.floors["personality"] == {}
    assert g.update(batch(0.5, 0.9))[1] == pytest.approx(0.65)  # no probe this step: held
    w = g.update(batch(0.5, 0.0), probes={"personality": ([0.30, 0.10, float("nan")], [0.25, 0.15, 0.3])})
    assert w[1] == pytest.approx(0.65)  # paired gaps -0.05, +0.05 (NaN dropped): mean 0
    m = g.metrics()
    assert m["guard/personality/probe"] == pytest.approx(0.2) and m["guard/personality/floor"] == pytest.approx(0.2)
    for _ in range(5):
        w = g.update(batch(0.5, 0.0), probes={"personality": ([0.4], [0.2])})
    assert w[1] == pytest.approx(0.25)
    with pytest.raises(ValueError, match="greedy values for"):
        g.update(batch(0.5, 0.0), probes={"personality": ([0.4], [0.2, 0.1])})
    with pytest.raises(ValueError, match="without a fixed floor"):
        RewardGuard(["quality"], ["quality", "personality"], [0.4, 0.25], probe_heads=["personality"])
    with pytest.raises(ValueError, match="without a fixed floor"):
        RewardGuard(["quality"], ["quality", "personality"], [0.4, 0.25], floors={"quality": 0.5},
                    probe_heads=["quality"])


def test_guard_and_config_refuse_unknown_terms():
    from convrl.config import ConfigError, load_config

    with pytest.raises(ValueError, match="not rewards of this run"):
        RewardGuard(["persona"], ["quality", "personality"], [0.4, 0.25])
    with pytest.raises(ConfigError, match="guardable reward terms are quality"):
        load_config("tiny", ["rl.guard.heads=[persona]"])
    with pytest.raises(ConfigError, match="smoothing"):
        load_config("tiny", ["rl.guard.heads=[personality]", "rl.guard.smoothing=1.0"])
    with pytest.raises(ConfigError, match="does not guard"):
        load_config("tiny", ["rl.guard.heads=[quality]", "rl.guard.max_weights.personality=1.0"])
    cfg = load_config("tiny", ["rl.guard.heads=[quality,personality]", "rl.guard.max_weights.personality=1.0"])
    assert cfg.rl.guard.trainer_kwargs()["max_weights"] == {"personality": 1.0}
    cfg = load_config("tiny", ["rl.guard.heads=[personality,ending]", "rl.guard.margin=0.01"])
    assert cfg.rl.guard.trainer_kwargs()["heads"] == ["personality", "ending"]
    assert load_config("tiny", ["rl.guard.heads=[]"]).rl.guard.trainer_kwargs() is None


def test_turn_rewards_add_the_guard_multipliers(tiny_encoder):
    from convrl.rewards.heads import RewardScorer
    from convrl.rl.turn_rewards import conversation_reward_funcs

    scorer = RewardScorer(tiny_encoder, None, None)
    ctx = [{"role": "user", "content": "I feel sad today"}]
    turns = [[{"context": ctx, "response": "I'm sorry, that sounds hard.", "span": [0, 3]},
              {"context": ctx + [{"role": "assistant", "content": "I'm sorry."}, {"role": "user", "content": "ok"}],
               "response": "Tell me more?", "span": [5, 8]}]]
    funcs, _, conv = conversation_reward_funcs(scorer, {}, "mean", eos_ids=[2], ending_weight=0.2)
    personality = next(f for f in funcs if f.__name__ == "personality")
    personality(prompts=[ctx], completions=["x"], turns=turns, completion_ids=[[1, 2, 2, 0, 0, 3, 4, 2]])
    plain = conv.turn_rewards()
    per_head = scorer.score([t["context"] for t in turns[0]], [t["response"] for t in turns[0]], [None, None])
    got = conv.turn_rewards({"personality": 0.5, "consistency": 1.0})  # consistency has no per-turn score
    np.testing.assert_allclose(got - plain, 0.5 * per_head.heads["personality"][None, :], rtol=1e-5)


def test_trainer_moves_the_weights_when_a_guarded_reward_falls_and_keeps_them_on_resume(
        ingested, personas, tiny_policy_dir, tmp_path):
    from convrl.config import RLConfig
    from convrl.config.rl import GuardSection
    from convrl.data.prompts import build_prompts
    from convrl.rl.grpo import train_grpo
    from convrl.rl.trainer import ConvRLGRPOTrainer

    calls = []

    def quality(prompts, completions, **kw):
        return [float(len(c) % 3) for c in completions]

    def personality(prompts, completions, **kw):  # 1 on the first batch, 0 after: the term "falls"
        calls.append(len(completions))
        return [1.0 if len(calls) == 1 else 0.0] * len(completions)

    prompts = build_prompts(ingested.turns, personas[:1], "train", 4, 4, seed=1)  # one persona: one floor
    guard = GuardSection(heads=["personality"], warmup_steps=1, step_size=4.0, max_weight=0.6, smoothing=0.0)
    rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=4, save_steps=2,
                  precision="fp32", guard=guard)
    seen, logged = [], []
    real = ConvRLGRPOTrainer._update_guard

    def spy(self, rewards, inputs):
        real(self, rewards, inputs)
        seen.append(self.reward_weights.tolist())

    ConvRLGRPOTrainer._update_guard = spy
    try:
        train_grpo(rl, tiny_policy_dir, prompts, [quality, personality], [0.4, 0.25], tmp_path,
                   on_log=lambda r, s: logged.append(r))
        assert seen == [pytest.approx([0.4, 0.25]), pytest.approx([0.4, 0.85])]  # 0.25 + min(0.6, 4 * 1)
        rows = [r for r in logged if "guard/personality/lambda" in r]
        assert rows[-1]["guard/personality/lambda"] == pytest.approx(0.6) and rows[-1]["guard/personality/floor"] == 1.0
        assert (tmp_path / "checkpoints" / "checkpoint-2" / "reward_guard.json").exists()
        # Resumed from the step-2 checkpoint: the multiplier and floor carry on, no new warm-up.
        rl.max_steps, seen[:] = 3, []
        train_grpo(rl, tiny_policy_dir, prompts, [quality, personality], [0.4, 0.25], tmp_path)
    finally:
        ConvRLGRPOTrainer._update_guard = real
    assert seen == [pytest.approx([0.4, 0.85])]


def test_trl_advantages_use_the_guarded_weights(ingested, personas, tiny_policy_dir, tmp_path):
    """The multipliers must reach the policy gradient: TRL's advantages are computed with the moved weights."""
    from convrl.config import RLConfig
    from convrl.config.rl import GuardSection
    from convrl.data.prompts import build_prompts
    from convrl.rl.advantages import group_advantages
    from convrl.rl.grpo import train_grpo
    from convrl.rl.trainer import ConvRLGRPOTrainer

    calls = []

    def quality(prompts, completions, completion_ids, **kw):
        return [float(sum(ids) % 3) for ids in completion_ids]

    def personality(prompts, completions, completion_ids, **kw):  # 1 on the first batch, then lower, varying
        calls.append(len(completions))
        return [1.0] * len(completions) if len(calls) == 1 else [0.1 * (sum(ids) % 7) for ids in completion_ids]

    prompts = build_prompts(ingested.turns, personas[:1], "train", 4, 4, seed=3)
    guard = GuardSection(heads=["personality"], warmup_steps=1, step_size=4.0, max_weight=2.0, smoothing=0.0)
    rl = RLConfig(max_steps=2, num_generations=4, prompts_per_step=1, max_completion_length=8, save_steps=10,
                  precision="fp32", guard=guard)
    batches = []
    real = ConvRLGRPOTrainer._generate_and_score_completions

    def spy(self, inputs):
        out = real(self, inputs)
        batches.append((self._last_rewards_per_func.float().cpu().numpy(), self.reward_weights.numpy().copy(),
                        out["advantages"].cpu().numpy()))
        return out

    ConvRLGRPOTrainer._generate_and_score_completions = spy
    try:
        train_grpo(rl, tiny_policy_dir, prompts, [quality, personality], [0.4, 0.25], tmp_path)
    finally:
        ConvRLGRPOTrainer._generate_and_score_completions = real
    per_func, weights, adv = batches[-1]
    assert weights[1] > 0.25 + 1e-6                                       # the guard moved personality's weight
    np.testing.assert_allclose(adv, group_advantages(per_func, weights, 4), atol=1e-4)
    plain = group_advantages(per_func, np.array([0.4, 0.25]), 4)
    assert np.abs(adv - plain).max() > 1e-3, "advantages ignore the guard's weights"


def test_guard_fixed_floor_is_a_constraint_from_the_first_batch():
    """floors={ending: 0.8}: "at least 80% of turns end" -- no warm-up, the weight grows while fewer end."""
    g = RewardGuard(["ending"], ["quality", "ending"], [0.4, 0.05], warmup_steps=4, step_size=4.0, max_weight=0.5,
                    smoothing=0.0, floors={"ending": 0.8})
    w = g.update(batch(0.5, 0.5))                      # 30 points short on the first batch already
    assert w[1] == pytest.approx(0.05 + 0.5)            # 4 * 0.3 = 1.2, capped at 0.5
    assert g.floor("ending") == pytest.approx(0.8)
    for _ in range(5):
        w = g.update(batch(0.5, 1.0))                  # every turn ends: the multiplier goes back to 0
    assert w[1] == pytest.approx(0.05)
    fresh = RewardGuard(["ending"], ["quality", "ending"], [0.4, 0.05], floors={"ending": 0.8})
    fresh.load_state(json.loads(json.dumps(g.state())))
    assert fresh.floor("ending") == pytest.approx(0.8)
    from convrl.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="rl.guard.floors names"):
        load_config("tiny", ["rl.guard.heads=[quality]", "rl.guard.floors.ending=0.8"])
    cfg = load_config("tiny", ["rl.guard.heads=[ending]", "rl.guard.floors.ending=0.8"])
    assert cfg.rl.guard.trainer_kwargs()["floors"] == {"ending": 0.8}
