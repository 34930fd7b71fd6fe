"""Ending / repetition shaping, per-turn rewards, and GRPO with normalize_then_sum + turn-level credit (tiny)."""

from __future__ import annotations

import numpy as np
import pytest

from convrl.rl.shaping import (EndingRule, ended, ngram_repetition, overlap_with_earlier, repetition,
                               shaping_reward_funcs)


def test_repetition_measures_loops_inside_a_reply_and_across_turns():
    loop = "I'm so sorry to hear that. I'm so sorry to hear that. I'm so sorry to hear that."
    assert ngram_repetition(loop) > 0.6
    assert ngram_repetition("That sounds like a lovely plan for the weekend, enjoy it!") == 0.0
    assert overlap_with_earlier("Tell me more about it", ["Tell me more about it"]) == 1.0
    assert overlap_with_earlier("Tell me more", []) == 0.0
    assert repetition("What a fresh idea", ["Something else entirely"]) == 0.0
    assert repetition(loop) == ngram_repetition(loop)
    # Parroting the user's turn is repetition too: a demo seed answered "you are cruel" with "You are cruel."
    assert repetition("You are cruel.", user="you are cruel") == 1.0
    assert repetition("I'm not cruel, I'm here to help.", user="you are cruel") == 0.0
    assert repetition("You are cruel.") == 0.0   # no user turn: nothing to copy


def test_non_repetition_reward_reads_the_users_turn_on_both_paths(tiny_encoder):
    from convrl.rewards.heads import RewardScorer
    from convrl.rl.turn_rewards import conversation_reward_funcs

    (rep,), _ = shaping_reward_funcs([2], 0.0, 0.1)
    prompt = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "you are a coward"}]
    assert rep(prompts=[prompt, prompt], completions=["You're a coward.", "I'd rather be brave with you."]) \
        == [0.0, 1.0]
    funcs, _, _ = conversation_reward_funcs(RewardScorer(tiny_encoder, None, None), {}, "mean", eos_ids=[2],
                                            repetition_weight=0.1)
    multi = next(f for f in funcs if f.__name__ == "non_repetition")
    turns = [[{"context": prompt, "response": "You're a coward.", "span": [0, 2]}],
             [{"context": prompt, "response": "I'd rather be brave with you.", "span": [0, 2]}]]
    assert multi(prompts=[prompt] * 2, completions=["x"] * 2, turns=turns, completion_ids=[[5, 2], [5, 2]]) \
        == [0.0, 1.0]


def test_shaping_reward_funcs_read_completion_ids_and_text():
    funcs, weights = shaping_reward_funcs([2, 7], ending_weight=0.15, repetition_weight=0.1)
    assert [f.__name__ for f in funcs] == ["ending", "non_repetition"] and weights == [0.15, 0.1]
    end, rep = funcs
    assert end(prompts=["p", "p"], completions=["a", "b"], completion_ids=[[5, 6, 7], [5, 6, 6]]) == [1.0, 0.0]
    assert ended([4, 2], [2]) and not ended([], [2])
    got = rep(prompts=["p"] * 2, completions=[[{"role": "assistant", "content": "no no no no no no"}], "fine thanks"])
    assert got[0] < 0.5 and got[1] == 1.0
    with pytest.raises(ValueError, match="completion_ids"):
        end(prompts=["p"], completions=["a"])
    assert shaping_reward_funcs([2], 0.0, 0.0) == ([], [])


def test_ending_min_share_pays_for_ending_not_for_brevity():
    from convrl.config import ConfigError, load_config
    from convrl.rl.shaping import ending_full_at, ending_score

    full_at = ending_full_at(0.6, 10)
    assert full_at == 6 and ending_full_at(0.0, 64) == 0
    assert ending_score([5, 2], [2], full_at) == pytest.approx(2 / 6)   # ended early: in proportion to length
    assert ending_score([5] * 7 + [2], [2], full_at) == 1.0              # ended after full_at tokens
    assert ending_score([5] * 9, [2], full_at) == 0.0                    # cut off: nothing, however long
    assert ending_score([5, 2], [2], 0) == 1.0                           # 0 = every ending earns 1
    (end, _), _ = shaping_reward_funcs([2], 0.15, 0.1, ending=EndingRule(full_at=4))
    assert end(prompts=["p"] * 3, completions=["a"] * 3, completion_ids=[[5, 2], [5, 5, 5, 2], [5, 5, 5, 5]]) \
        == [0.5, 1.0, 0.0]
    assert load_config("tiny", ["rl.shaping.ending_min_share=0.5"]).rl.shaping.ending_min_share == 0.5
    with pytest.raises(ConfigError, match="ending_min_share"):
        load_config("tiny", ["rl.shaping.ending_min_share=1.5"])


def test_soft_ending_pays_less_near_the_cap():
    # DAPO's soft overlong punishment on the ending reward: with a 10-token budget and 4 soft tokens, an ending
    # earns all of it up to 6 tokens, then a quarter less per token, nothing at the cap, nothing when cut off.
    from convrl.config import ConfigError, load_config

    rule = EndingRule(budget=10, soft_tokens=4)
    scores = [rule.score([5] * (n - 1) + [2], [2]) for n in (3, 6, 7, 8, 9, 10)]
    assert scores == pytest.approx([1.0, 1.0, 0.75, 0.5, 0.25, 0.0])
    assert rule.score([5] * 10, [2]) == 0.0                                   # cut off
    assert EndingRule(budget=10).score([5] * 9 + [2], [2]) == 1.0              # off: every ending earns 1
    # With ending_min_share too, a short ending still earns in proportion to its length.
    assert EndingRule(full_at=4, budget=10, soft_tokens=4).score([5, 2], [2]) == pytest.approx(0.5)
    (end,), _ = shaping_reward_funcs([2], 0.15, 0.0, ending=rule)
    assert end(prompts=["p"] * 2, completions=["a"] * 2, completion_ids=[[5] * 7 + [2], [5, 2]]) == [0.5, 1.0]
    cfg = load_config("tiny", ["rl.shaping.ending_soft_tokens=8"])
    assert EndingRule.from_config(cfg.rl.shaping, cfg.rl.max_completion_length).soft_tokens == 8
    with pytest.raises(ConfigError, match="ending_soft_tokens"):
        load_config("tiny", [f"rl.shaping.ending_soft_tokens={cfg.rl.max_completion_length}"])
    with pytest.raises(ConfigError, match="ending_soft_tokens"):
        load_config("tiny", ["rl.shaping.ending_soft_tokens=-1"])


def test_turn_rewards_score_endings_and_repeats_per_turn(tiny_encoder, personas):
    from convrl.rewards.heads import HEADS, RewardScorer
    from convrl.rl.turn_rewards import conversation_reward_funcs

    scorer = RewardScorer(tiny_encoder, None, None)
    ctx = [{"role": "user", "content": "I feel sad today"}]
    turns = [[{"context": ctx, "response": "I'm sorry.", "span": [0, 3]},
              {"context": ctx + [{"role": "assistant", "content": "I'm sorry."}, {"role": "user", "content": "ok"}],
               "response": "I'm sorry.", "span": [5, 8]}]]
    ids = [[10, 11, 2, 0, 0, 12, 13, 14]]  # turn 1 ends on EOS (2), turn 2 is cut at the budget
    funcs, weights, conv = conversation_reward_funcs(scorer, {}, "mean", eos_ids=[2], ending_weight=0.2,
                                                     repetition_weight=0.1)
    names = [f.__name__ for f in funcs]
    assert names == [*HEADS, "ending", "non_repetition", "consistency"] and weights[-3:] == [0.2, 0.1, 0.1]
    got = {f.__name__: f(prompts=[ctx], completions=["x"], turns=turns, completion_ids=ids)[0] for f in funcs}
    assert got["ending"] == 0.5                 # one of two turns ended by itself
    assert got["non_repetition"] == 0.5         # the second turn copies the first
    per_turn = conv.turn_rewards()
    assert per_turn.shape == (1, 2) and per_turn[0, 0] > per_turn[0, 1]  # the looping, cut-off turn earns less
    # With ending_full_at=6 the 3-token turn that ended earns half its ending reward.
    funcs, _, _ = conversation_reward_funcs(scorer, {}, "mean", eos_ids=[2], ending_weight=0.2,
                                            ending=EndingRule(full_at=6))
    end = next(f for f in funcs if f.__name__ == "ending")
    assert end(prompts=[ctx], completions=["x"], turns=turns, completion_ids=ids)[0] == pytest.approx(0.25)
    # A 6-token budget with 4 soft tokens: the 3-token ending earns 3/4 of it, per turn as in the single-turn path.
    funcs, _, _ = conversation_reward_funcs(scorer, {}, "mean", eos_ids=[2], ending_weight=0.2,
                                            ending=EndingRule(budget=6, soft_tokens=4))
    end = next(f for f in funcs if f.__name__ == "ending")
    assert end(prompts=[ctx], completions=["x"], turns=turns, completion_ids=ids)[0] == pytest.approx(0.375)


@pytest.fixture
def multiturn_setup(tiny_encoder, ingested, personas, tiny_policy_dir):
    """(scorer, prompts, tokenizer, reward funcs, weights, conversation scores) for tiny multi-turn GRPO runs."""
    from transformers import AutoTokenizer

    from convrl.data.prompts import build_prompts
    from convrl.rewards.heads import RewardScorer
    from convrl.rl.turn_rewards import conversation_reward_funcs

    scorer = RewardScorer(tiny_encoder, None, None)
    prompts = build_prompts(ingested.turns, personas, "train", 4, 4, seed=1)
    tok = AutoTokenizer.from_pretrained(tiny_policy_dir)
    funcs, weights, conv = conversation_reward_funcs(scorer, {p.persona_id: p for p in personas}, eos_ids=[2],
                                                     ending_weight=0.15, repetition_weight=0.1)
    return scorer, prompts, tok, funcs, weights, conv


def test_grpo_normalize_then_sum_with_turn_credit_trains(multiturn_setup, tiny_policy_dir, tmp_path):
    """The trainer hands (rows, tokens) advantages to TRL's loss and logs per-head advantages."""
    from convrl.config import RLConfig
    from convrl.config.rl import MultiTurnSection
    from convrl.rl.grpo import train_grpo
    from convrl.rl.multiturn import MultiTurnRollout, SimulatedUser
    from convrl.rl.trainer import ConvRLGRPOTrainer

    scorer, prompts, tok, funcs, weights, conv = multiturn_setup
    rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=4, save_steps=10,
                  precision="fp32", turns=2, multi_objective_aggregation="normalize_then_sum",
                  mask_truncated_completions=False, multiturn=MultiTurnSection(turn_credit=0.5))
    seen = []
    real = ConvRLGRPOTrainer._compute_loss

    def spy(self, model, inputs):
        seen.append(tuple(inputs["advantages"].shape))
        return real(self, model, inputs)

    ConvRLGRPOTrainer._compute_loss = spy
    try:
        logged = []
        rollout = MultiTurnRollout(2, SimulatedUser(tiny_policy_dir, max_new_tokens=3), tok, "model")
        res = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path, rollout=rollout, scorer=scorer,
                         turn_rewards=conv.turn_rewards, on_log=lambda r, s: logged.append(r))
    finally:
        ConvRLGRPOTrainer._compute_loss = real
    assert res.steps == 2 and seen and all(len(s) == 2 for s in seen)  # per-token advantages
    rows = [r for r in logged if "reward" in r]
    assert rows and "advantages/quality/abs_mean" in rows[0] and "timing/policy_decode_s" in rows[0]
    assert np.isfinite(rows[0]["advantages/ending/abs_mean"]) and -1.0 <= rows[0].get("advantages/quality/corr", 0) <= 1
    # Each policy turn's clipping is logged; TRL's own figure reads the last turn's.
    assert all(r["completions/clipped_ratio_turn2"] == r["completions/clipped_ratio"] for r in rows)
    assert all(0.0 <= r["completions/clipped_ratio_turn1"] <= 1.0 for r in rows)


def test_turn_clipped_ratios_read_each_policy_turns_last_token():
    from convrl.rl.shaping import turn_clipped_ratios

    ids = [[7, 2, 9, 9, 7, 7], [7, 7, 9, 9, 7, 2], [7, 2]]   # EOS is 2; the user turn sits between the spans
    spans = [[(0, 2), (4, 6)], [(0, 2), (4, 6)], [(0, 2)]]    # the last rollout ended after one turn
    assert turn_clipped_ratios(spans, ids, [2]) == [pytest.approx(1 / 3), 0.5]
    assert turn_clipped_ratios([], [], [2]) == []


def test_reward_setup_hands_the_ending_share_to_both_paths(tiny_encoder, tiny_policy_dir):
    from convrl.config import RLConfig
    from convrl.config.rl import ShapingSection
    from convrl.rewards.heads import RewardScorer
    from convrl.rl.reward_setup import policy_eos_ids, reward_setup

    scorer = RewardScorer(tiny_encoder, None, None)
    shaping = ShapingSection(ending_weight=0.15, ending_min_share=0.5, ending_soft_tokens=2)
    multi = reward_setup(RLConfig(turns=2, max_completion_length=10, shaping=shaping), scorer, {}, tiny_policy_dir)
    assert multi.conversation_scores.ending == EndingRule(full_at=5, budget=10, soft_tokens=2)
    single = reward_setup(RLConfig(turns=1, max_completion_length=10, shaping=shaping), scorer, {}, tiny_policy_dir)
    end = next(f for f in single.funcs if f.__name__ == "ending")
    eos = policy_eos_ids(tiny_policy_dir)[0]
    assert end(prompts=["p"], completions=["a"], completion_ids=[[7, eos], [7] * 8 + [eos]]) \
        == [pytest.approx(2 / 5), pytest.approx(0.5)]


def test_num_iterations_trains_twice_on_each_batch_of_multiturn_rollouts(multiturn_setup, tiny_policy_dir, tmp_path):
    """rl.num_iterations=2: each batch is decoded once, trained on twice against its generation-time log-probs."""
    import torch

    from convrl.config import ConfigError, RLConfig
    from convrl.config.rl import MultiTurnSection
    from convrl.rl.grpo import train_grpo
    from convrl.rl.multiturn import MultiTurnRollout, SimulatedUser
    from convrl.rl.trainer import ConvRLGRPOTrainer

    scorer, prompts, tok, funcs, weights, conv = multiturn_setup
    rl = RLConfig(max_steps=4, num_iterations=2, num_generations=2, prompts_per_step=2, max_completion_length=4,
                  save_steps=10, precision="fp32", turns=2, learning_rate=0.05, mask_truncated_completions=False,
                  multiturn=MultiTurnSection(turn_credit=0.5))
    rollouts, batches = [], []
    real_call, real_loss = MultiTurnRollout.__call__, ConvRLGRPOTrainer._compute_loss

    def count(self, prompts_, trainer):
        rollouts.append(trainer.state.global_step)
        return real_call(self, prompts_, trainer)

    def spy(self, model, inputs):
        batches.append((inputs["old_per_token_logps"].clone(), inputs["advantages"].clone()))
        return real_loss(self, model, inputs)

    MultiTurnRollout.__call__, ConvRLGRPOTrainer._compute_loss = count, spy
    try:
        rollout = MultiTurnRollout(2, SimulatedUser(tiny_policy_dir, max_new_tokens=3), tok, "model")
        res = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path, rollout=rollout, scorer=scorer,
                         turn_rewards=conv.turn_rewards)
    finally:
        MultiTurnRollout.__call__, ConvRLGRPOTrainer._compute_loss = real_call, real_loss
    assert res.steps == 4 and rollouts == [0, 2]  # two batches decoded for four optimizer steps
    assert len(batches) == 4
    for first, second in (batches[:2], batches[2:]):
        # The second pass over a batch sees the same old log-probs and (turn-credit) advantages as the first.
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert not torch.equal(batches[0][0], batches[2][0])
    with pytest.raises(ConfigError, match="num_iterations"):
        RLConfig(num_iterations=0).validate()


def test_civility_shaping_on_both_paths(tiny_encoder, tiny_policy_dir):
    from convrl.config import RLConfig
    from convrl.config.rl import ShapingSection
    from convrl.rewards.heads import RewardScorer
    from convrl.rl.reward_setup import reward_setup

    prompt = [{"role": "user", "content": "I hope that you die"}]
    scorer = RewardScorer(tiny_encoder, None, None)
    shaping = ShapingSection(ending_weight=0.0, repetition_weight=0.0, civility_weight=0.2)
    single = reward_setup(RLConfig(turns=1, shaping=shaping), scorer, {}, tiny_policy_dir)
    assert "civility" in [f.__name__ for f in single.funcs] and single.weights[-1] == 0.2
    civ = next(f for f in single.funcs if f.__name__ == "civility")
    got = civ(prompts=[prompt] * 2, completions=[[{"role": "assistant", "content": "I hope you die."}],
                                                 "I'm sorry you feel that way. What happened?"])
    assert got[0] < 0.5 and got[1] == 1.0
    multi = reward_setup(RLConfig(turns=2, shaping=shaping), scorer, {}, tiny_policy_dir)
    assert multi.conversation_scores.shaping_weights == {"civility": 0.2}
    civ = next(f for f in multi.funcs if f.__name__ == "civility")
    cruel = [{"role": "user", "content": "you are cruel"}]
    turns = [[{"context": prompt, "response": "Sorry, that was unkind.", "span": [0, 2]},
              {"context": cruel, "response": "You're a cruel soul.", "span": [2, 4]}],
             [{"context": prompt, "response": "I'm sorry you feel that way.", "span": [0, 2]},
              {"context": prompt, "response": "Want to talk about it?", "span": [2, 4]}]]
    got = civ(prompts=[prompt] * 2, completions=["x"] * 2, turns=turns, completion_ids=[[5, 2, 5, 2]] * 2)
    assert got == [0.5, 1.0]   # the mean over turns: the second hands the user's "cruel" back (0)
    assert "civility" in multi.conversation_scores.last_table[0]
    assert shaping_reward_funcs([2], 0.0, 0.0, civility_weight=0.0) == ([], [])


def test_civility_gate_takes_every_head_from_an_offensive_turn_on_both_paths(tiny_encoder, tiny_policy_dir):
    from convrl.config import RLConfig
    from convrl.config.rl import ShapingSection
    from convrl.rewards.heads import HEADS, RewardScorer
    from convrl.rl.reward_setup import reward_setup

    wish = [{"role": "user", "content": "I hope that you die"}]
    replies = ["I hope you die.", "I'm sorry you feel that way. What happened?"]
    scorer = RewardScorer(tiny_encoder, None, None)
    on, off = (ShapingSection(ending_weight=0.0, repetition_weight=0.0, civility_weight=0.2, civility_gate=g)
               for g in (True, False))
    single = {g: reward_setup(RLConfig(turns=1, shaping=s), scorer, {}, tiny_policy_dir)
              for g, s in ((1, on), (0, off))}
    for head in HEADS:
        gated, plain = (next(f for f in single[g].funcs if f.__name__ == head) for g in (1, 0))
        a, b = (f(prompts=[wish] * 2, completions=replies, persona_id=[None] * 2) for f in (gated, plain))
        assert a[0] == 0.0 and b[0] > 0.0, head       # the echoed wish earns nothing from the head
        assert a[1] == pytest.approx(b[1]), head      # a civil reply is scored as before
    turns = [[{"context": wish, "response": r, "span": [0, 2]}] for r in replies]
    multi = {g: reward_setup(RLConfig(turns=2, shaping=s), scorer, {}, tiny_policy_dir)
             for g, s in ((1, on), (0, off))}
    for head in HEADS:
        a, b = (next(f for f in multi[g].funcs if f.__name__ == head)(
            prompts=[wish] * 2, completions=["x"] * 2, turns=turns, completion_ids=[[5, 2]] * 2) for g in (1, 0))
        assert a[0] == 0.0 and b[0] > 0.0 and a[1] == pytest.approx(b[1]), head
    # Turn-level credit sees the gated heads too.
    assert multi[1].conversation_scores.turn_rewards()[0, 0] == pytest.approx(0.0)
    assert multi[0].conversation_scores.turn_rewards()[0, 0] > 0.0


def test_the_single_turn_gate_runs_the_civility_classifier_once_per_batch(monkeypatch):
    import convrl.rl.shaping as shaping

    calls = []

    def counting(texts, users):
        calls.append(len(texts))
        return np.ones(len(texts))

    monkeypatch.setattr(shaping, "civility", counting)
    heads = shaping.civility_gated([lambda prompts, completions, **kw: [0.5] * len(completions)] * 4)
    for f in heads:
        assert f(prompts=["p", "q"], completions=["a", "b"]) == [0.5, 0.5]
    assert calls == [2]                                   # four heads, one classifier pass
    heads[0](prompts=["p", "q"], completions=["a", "c"])   # a new batch is scored again
    assert calls == [2, 2]
