"""Multi-turn GRPO through TRL's rollout_func, RLOO and DPO on the tiny policy.

The rollout must interleave simulated/logged user turns, mask them out of the
loss (env_mask), score every assistant turn in its own context and aggregate;
every algorithm must train, checkpoint and export a loadable policy.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from convrl.config import Config, ConfigError, RLConfig
from convrl.config.rl import DPOSection, LoraSection, MultiTurnSection
from convrl.data.prompts import build_prompts
from convrl.rewards.heads import HEADS, RewardScorer
from convrl.rl.generation import Generator
from convrl.rl.grpo import train_grpo
from convrl.rl.multiturn import MultiTurnRollout, SimulatedUser, TurnTemplate
from convrl.rl.turn_rewards import aggregate_turns, consistency, conversation_reward_funcs, self_repetition


@pytest.fixture(scope="module")
def scorer(tiny_encoder):
    return RewardScorer(tiny_encoder, None, None)


@pytest.fixture(scope="module")
def prompts(ingested, personas):
    return build_prompts(ingested.turns, personas, "train", 8, 4, seed=1)


@pytest.fixture(scope="module")
def tok(tiny_policy_dir):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(tiny_policy_dir)
    t.padding_side = "left"
    return t


def test_turn_template_glue_renders_the_next_user_turn(tok):
    tpl = TurnTemplate(tok)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    after_eos = tok.decode(tpl.between(eos, "how are you?"))
    truncated = tok.decode(tpl.between(None, "how are you?"))
    assert "how are you?" in after_eos and after_eos.rstrip().endswith("assistant")
    # A turn cut before its end-of-turn token gets one from the glue; one that ended on it does not get two.
    assert truncated.startswith("<|im_end|>") and not after_eos.startswith("<|im_end|>")
    # Glue + next turn is exactly what the chat template renders for the whole conversation.
    msgs = [{"role": "user", "content": "hi"}]
    a1 = tok(tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False),
             add_special_tokens=False)["input_ids"]
    turn = tok("Hello there", add_special_tokens=False)["input_ids"] + [eos]
    full = list(a1) + turn + tpl.between(eos, "how are you?")
    expected = tok.apply_chat_template(msgs + [{"role": "assistant", "content": "Hello there"},
                                               {"role": "user", "content": "how are you?"}],
                                       tokenize=False, add_generation_prompt=True)
    assert tok.decode(full) == expected


def test_prompts_carry_logged_next_user_turns(prompts):
    assert all("next_user_turns" in p for p in prompts)
    assert any(p["next_user_turns"] for p in prompts)


def test_aggregation_and_consistency():
    r = np.array([0.2, 0.4, 1.0])
    assert aggregate_turns(r, "mean") == pytest.approx(0.5333, abs=1e-3)
    assert aggregate_turns(r, "final") == 1.0
    d = aggregate_turns(r, "discounted", 0.5)  # weights 1, .5, .25: early turns weigh more
    assert d == pytest.approx((0.2 + 0.2 + 0.25) / 1.75)
    with pytest.raises(ValueError, match="turn_reward"):
        aggregate_turns(r, "max")
    assert self_repetition(["I love tea", "I love tea", "Coffee is fine too"]) == 0.5
    assert consistency(np.array([0.5, 0.5]), ["hello there", "what about music"]) == 1.0
    assert consistency(np.array([0.1, 0.9]), ["same words here", "same words here"]) == 0.0


def test_conversation_rewards_score_every_turn_in_its_context(scorer, personas):
    by_id = {p.persona_id: p for p in personas}
    ctx = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "I feel sad today"}]
    turns = [[{"context": ctx, "response": "I'm sorry to hear that."},
              {"context": ctx + [{"role": "assistant", "content": "I'm sorry to hear that."},
                                 {"role": "user", "content": "thanks"}], "response": "You're welcome!"}]]
    funcs, weights, conv = conversation_reward_funcs(scorer, by_id, "final")
    assert [f.__name__ for f in funcs] == [*HEADS, "consistency"] and len(weights) == len(funcs)
    pid = [personas[0].persona_id]
    got = {f.__name__: f(prompts=[ctx], completions=["x"], turns=turns, persona_id=pid)[0] for f in funcs}
    # "final" aggregation = the last turn scored alone in its own context.
    last = scorer.score([turns[0][1]["context"]], ["You're welcome!"], [personas[0]])
    for h in HEADS:
        assert got[h] == pytest.approx(float(last.heads[h][0]), abs=1e-5)
    assert 0.0 <= got["consistency"] <= 1.0
    assert "assistant [" in conv.last_table[0]["conversation"]
    with pytest.raises(ValueError, match="turns"):
        funcs[0](prompts=[ctx], completions=["x"], persona_id=pid)


def test_config_validates_multiturn_and_algorithms():
    Config(rl=RLConfig(algorithm="rloo")).validate_values()
    Config(rl=RLConfig(algorithm="dpo")).validate_values()
    Config(rl=RLConfig(turns=3)).validate_values()
    for bad, match in [(RLConfig(algorithm="ppo"), "grpo, rloo or dpo"), (RLConfig(turns=2, algorithm="rloo"),
                       "rollout_func"), (RLConfig(turns=0), "turns"),
                       (RLConfig(multiturn=MultiTurnSection(turn_reward="max")), "rl.multiturn.turn_reward"),
                       (RLConfig(multiturn=MultiTurnSection(user_simulator="human")), "rl.multiturn.user_simulator"),
                       (RLConfig(multiturn=MultiTurnSection(turn_credit=2.0)), "turn_credit"),
                       (RLConfig(lora=LoraSection(r=0)), "rl.lora.r"), (RLConfig(dpo=DPOSection(candidates=1)),
                                                                       "rl.dpo.candidates"),
                       (RLConfig(multi_objective_aggregation="max"), "multi_objective_aggregation")]:
        with pytest.raises(ConfigError, match=match):
            Config(rl=bad).validate_values()


def test_multiturn_grpo_masks_user_turns_and_trains(scorer, prompts, personas, tiny_policy_dir, tok, tmp_path):
    rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=6, save_steps=1,
                  precision="fp32", turns=3)
    funcs, weights, conv = conversation_reward_funcs(scorer, {p.persona_id: p for p in personas})
    rollout = MultiTurnRollout(rl.turns, SimulatedUser(tiny_policy_dir, max_new_tokens=5), tok, "model")
    outputs = []
    real_call = MultiTurnRollout.__call__

    def spy(self, prompts_, trainer):
        out = real_call(self, prompts_, trainer)
        outputs.append(out)
        return out

    MultiTurnRollout.__call__ = spy
    try:
        logged = []
        res = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path, rollout=rollout,
                         on_log=lambda row, step: logged.append(row))
    finally:
        MultiTurnRollout.__call__ = real_call
    assert res.steps == 2 and outputs
    out = outputs[0]
    assert len(out["completion_ids"]) == rl.prompts_per_step * rl.num_generations
    for ids, mask, turns in zip(out["completion_ids"], out["env_mask"], out["turns"]):
        assert len(ids) == len(mask) and len(turns) == rl.turns
        # Policy tokens (1) and user/template tokens (0) alternate: 3 policy turns -> 3 runs of 1s, 2 of 0s.
        runs = [k for k, i in enumerate(mask) if i != (mask[k - 1] if k else None)]
        assert [mask[k] for k in runs] == [1, 0, 1, 0, 1]
        user_text = tok.decode([t for t, m in zip(ids, mask) if m == 0])
        assert "user" in user_text
        # Each turn is scored with the conversation so far: turn k's context ends on the user turn before it.
        assert turns[1]["context"][-1]["role"] == "user"
        assert turns[1]["context"][-2] == {"role": "assistant", "content": turns[0]["response"]}
    assert any("rewards/consistency/mean" in r for r in logged)
    assert conv.last_table and conv.last_table[0]["conversation"].count("assistant [") == rl.turns
    assert Generator(res.policy_dir).generate([prompts[0]["prompt"]], max_new_tokens=3)


def test_logged_user_turns_replay_the_data(scorer, prompts, personas, tok, tiny_policy_dir, tmp_path):
    rollout = MultiTurnRollout(2, None, tok, "logged")
    row = next(p for p in prompts if p["next_user_turns"])
    rollout.register_rows([{"prompt": row["prompt"], "persona_id": row["persona_id"],
                            "next_user_turns": row["next_user_turns"]}])
    got = rollout._user_turns([row["prompt"]], [rollout.row_info[next(iter(rollout.row_info))]], 0)
    assert got == [row["next_user_turns"][0].strip()]
    with pytest.raises(ValueError, match="SimulatedUser"):
        MultiTurnRollout(2, None, tok, "model")


def test_rloo_trains_and_exports(scorer, prompts, personas, tiny_policy_dir, tmp_path):
    funcs, weights = scorer.trl_reward_funcs({p.persona_id: p for p in personas})
    rl = RLConfig(algorithm="rloo", max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=6,
                  save_steps=1, precision="fp32")
    logged = []
    res = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path, on_log=lambda r, s: logged.append(r))
    assert res.steps == 2 and any("reward" in r for r in logged)
    meta = json.loads((Path(res.policy_dir) / "convrl_training.json").read_text())
    assert meta["algorithm"] == "rloo"
    assert Generator(res.policy_dir).generate([prompts[0]["prompt"]], max_new_tokens=3)


def test_dpo_from_reward_ranked_pairs_and_from_ratings(scorer, prompts, personas, tiny_policy_dir, tmp_path):
    import pandas as pd

    from convrl.rl.dpo import rated_pairs, train_dpo

    cfg = Config(rl=RLConfig(algorithm="dpo", max_steps=2, prompts_per_step=2, max_completion_length=6,
                             save_steps=1, precision="fp32", dpo=DPOSection(candidates=3, min_margin=0.0)))
    by_id = {p.persona_id: p for p in personas}
    res = train_dpo(cfg, tiny_policy_dir, prompts[:4], scorer, tmp_path, personas_by_id=by_id)
    assert res.steps == 2 and (tmp_path / "preference_pairs.jsonl").exists()
    pairs = pd.read_json(tmp_path / "preference_pairs.jsonl", lines=True)
    assert len(pairs) == 4 and (pairs["margin"] >= 0).all()
    assert json.loads((Path(res.policy_dir) / "convrl_training.json").read_text())["algorithm"] == "dpo"
    # Human ratings make pairs directly: same prompt, replies a point apart.
    turns = pd.DataFrame([
        {"conversation_id": c, "turn_index": i, "role": r, "text": t, "split": "train",
         "feedback_rating": fr, "feedback_thumb": None, "persona_id": None}
        for c, rows in {"a": [("user", "hi", None), ("assistant", "Hello! How are you?", 5.0)],
                        "b": [("user", "hi", None), ("assistant", "go away", 1.0)]}.items()
        for i, (r, t, fr) in enumerate(rows)])
    pairs = rated_pairs(turns)
    assert pairs and pairs[0]["chosen"][0]["content"] == "Hello! How are you?"


def test_trainer_args_follow_the_config(tmp_path, monkeypatch):
    import torch
    from trl import GRPOConfig, RLOOConfig

    from convrl.rl.grpo import grpo_args

    rl = RLConfig(max_steps=3, num_generations=4, prompts_per_step=2, beta=0.05)
    args = grpo_args(rl, tmp_path)
    assert isinstance(args, GRPOConfig) and args.beta == 0.05 and args.per_device_train_batch_size == 8
    assert args.mask_truncated_completions and not args.use_vllm
    assert isinstance(grpo_args(rl, tmp_path, "rloo"), RLOOConfig)
    # A CUDA node with vLLM installed generates with vLLM, colocated with training.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr("convrl.rl.grpo.vllm_installed", lambda: True)
    kwargs = {}
    monkeypatch.setattr("trl.GRPOConfig", lambda **kw: kwargs.update(kw) or kw)
    rl.precision = "fp32"
    grpo_args(rl, tmp_path)
    assert kwargs["use_vllm"] and kwargs["vllm_mode"] == "colocate" and kwargs["use_cpu"] is False


def test_rollout_weights_sync_once_per_optimizer_step(scorer, prompts, personas, tiny_policy_dir, tok, tmp_path,
                                                      monkeypatch):
    """Multi-turn rollouts generate rl.turns times per step; the merged rollout copy is refreshed once per step."""
    from convrl.rl.rollout_model import RolloutModel

    real = RolloutModel.copy_weights
    synced_at: list[int] = []

    def counting(self, peft_model):
        synced_at.append(len(synced_at))
        return real(self, peft_model)

    monkeypatch.setattr(RolloutModel, "copy_weights", counting)
    rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=4, save_steps=10,
                  precision="fp32", turns=3)
    funcs, weights, _ = conversation_reward_funcs(scorer, {p.persona_id: p for p in personas})
    rollout = MultiTurnRollout(rl.turns, SimulatedUser(tiny_policy_dir, max_new_tokens=3), tok, "model")
    train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path, rollout=rollout)
    assert synced_at == [0, 1]  # not six refreshes (3 turns x 2 steps): one per step, after each update


def test_rollout_copy_holds_the_merged_policy_after_updates(scorer, prompts, personas, tiny_policy_dir, tmp_path,
                                                            monkeypatch):
    """The per-step refresh updates only LoRA-adapted weights; the copy must still equal the merged policy."""
    from convrl.rl.rollout_model import RolloutModel

    real = RolloutModel.copy_weights
    checked: list[tuple[int, float, float]] = []

    def checking(self, peft_model):
        real(self, peft_model)
        peft_model.merge_adapter()
        try:
            merged = {k.replace(".base_layer", ""): v.clone() for k, v in
                      peft_model.get_base_model().state_dict().items() if "lora_" not in k}
        finally:
            peft_model.unmerge_adapter()
        copy = self.model.state_dict()
        worst = max((copy[k].float() - v.float()).abs().max().item() for k, v in merged.items() if k in copy)
        moved = max((m.lora_B["default"].weight.abs().max().item() for m in peft_model.modules()
                     if hasattr(m, "lora_B") and "default" in m.lora_B), default=0.0)
        checked.append((len(checked), worst, moved))

    monkeypatch.setattr(RolloutModel, "copy_weights", checking)
    # Unmasked truncated completions: a random tiny model rarely ends in 4 tokens, and masked rows give no gradient.
    rl = RLConfig(max_steps=3, num_generations=2, prompts_per_step=2, max_completion_length=4, save_steps=10,
                  precision="fp32", learning_rate=0.05, mask_truncated_completions=False)
    funcs, weights = scorer.trl_reward_funcs({p.persona_id: p for p in personas})
    train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path)
    assert [c[0] for c in checked] == [0, 1, 2]
    assert checked[-1][2] > 0  # the adapter has moved, so a stale copy would show
    for step, worst, _ in checked:
        assert worst < 1e-6, (step, worst)


def test_rollouts_can_decode_with_the_chat_ngram_ban(scorer, prompts, personas, tiny_policy_dir, tok, tmp_path):
    """rl.multiturn.no_repeat_ngram_size: no policy token completes an n-gram already in its conversation."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.test_generation import _reply_repeats

    # A policy that mostly speaks eight tokens: unbanned, its turns surely repeat a bigram.
    looper = AutoModelForCausalLM.from_pretrained(tiny_policy_dir)
    with torch.no_grad():
        looper.get_output_embeddings().weight[1000:1008] *= 100
    looper.save_pretrained(tmp_path / "looper")
    tok.save_pretrained(tmp_path / "looper")
    rl = RLConfig(max_steps=1, num_generations=2, prompts_per_step=2, max_completion_length=16, save_steps=1,
                  precision="fp32", turns=2)
    funcs, weights, _ = conversation_reward_funcs(scorer, {p.persona_id: p for p in personas})
    rollout = MultiTurnRollout(rl.turns, SimulatedUser(tiny_policy_dir, max_new_tokens=5), tok, "model",
                               no_repeat_ngram_size=2)
    outputs, real_call = [], MultiTurnRollout.__call__

    def spy(self, prompts_, trainer):
        outputs.append((trainer._tokenize_prompts(prompts_)[0], real_call(self, prompts_, trainer)))
        return outputs[-1][1]

    MultiTurnRollout.__call__ = spy
    try:
        train_grpo(rl, str(tmp_path / "looper"), prompts, funcs, weights, tmp_path / "out", rollout=rollout)
    finally:
        MultiTurnRollout.__call__ = real_call
    prompt_ids, out = outputs[0]
    for p, ids, mask in zip(prompt_ids, out["completion_ids"], out["env_mask"]):
        seq, start = list(p), len(p)
        for k, (t, m) in enumerate(zip(ids, mask)):
            seq.append(t)
            if m == 1:  # a policy token: the bigram it ends must be new
                assert not _reply_repeats(seq, len(seq) - 1, 2), (k, seq[-4:])
    with pytest.raises(ConfigError, match="no_repeat_ngram_size"):
        MultiTurnSection(no_repeat_ngram_size=-1).validate()


def test_scoring_only_policy_tokens_trains_as_scoring_every_token(scorer, prompts, personas, tiny_policy_dir, tok,
                                                                  tmp_path, monkeypatch):
    """rl.speed.policy_tokens_only: the log-prob passes skip the user's turns, and training does not change."""
    import convrl.rl.prefix as prefix
    from convrl.config.rl import SpeedSection

    passed = []
    real = prefix.shared_prefix_logps

    def spy(*a, scored=None, **kw):
        passed.append(scored)
        return real(*a, scored=scored, **kw)

    monkeypatch.setattr(prefix, "shared_prefix_logps", spy)
    funcs, weights, _ = conversation_reward_funcs(scorer, {p.persona_id: p for p in personas})
    logs = {}
    for only in (True, False):
        rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=6, save_steps=10,
                      precision="fp32", turns=2, learning_rate=0.05, speed=SpeedSection(policy_tokens_only=only),
                      mask_truncated_completions=False)  # else the tiny model's cut-off rollouts leave no loss
        rollout = MultiTurnRollout(rl.turns, SimulatedUser(tiny_policy_dir, max_new_tokens=5, seed=0), tok, "model")
        rows = []
        train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path / str(only), rollout=rollout,
                   on_log=lambda row, step: rows.append(row))
        logs[only] = [r for r in rows if "loss" in r]
        if only:
            # Each pass got the rollout's env_mask: some completion tokens are not scored (user turns, glue).
            assert passed and all(s is not None and s.any() and not s.all() for s in passed)
        else:
            assert passed and all(s is None for s in passed[-2:])
        passed.clear()
    assert len(logs[True]) == len(logs[False]) == 2
    for a, b in zip(logs[True], logs[False]):
        for key in ("loss", "kl", "entropy", "reward", "completions/mean_length"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key


def test_greedy_probes_reach_the_guard_paired_with_base_greedy_replies(scorer, prompts, personas, tiny_policy_dir,
                                                                        tmp_path):
    """rl.guard.probe_heads: one greedy first turn per group beside the sampled rollouts, scored and paired with
    the base model's greedy reply to the same prompt; at step 1 (the adapter still zero) the two are the same reply."""
    from convrl.config.rl import GuardSection
    from convrl.rl.guard import RewardGuard
    from convrl.rl.probe import prompt_key
    from convrl.rl.reward_setup import reward_setup

    guard = GuardSection(heads=["personality"], probe_heads=["personality"], step_size=4.0, smoothing=0.0)
    rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=6, save_steps=5,
                  precision="fp32", turns=2, guard=guard)
    rl.validate()
    by_id = {p.persona_id: p for p in personas}
    setup = reward_setup(rl, scorer, by_id, tiny_policy_dir)
    probe = setup.rollout.probe
    assert probe is not None and probe.heads == ["personality"] and probe.no_repeat_ngram_size == 4
    seen, logged, real = [], [], RewardGuard.update

    def spy(self, per_func, groups=None, probes=None):
        seen.append((probes, list(probe.last)))
        return real(self, per_func, groups, probes)

    RewardGuard.update = spy
    try:
        train_grpo(rl, tiny_policy_dir, prompts, setup.funcs, setup.weights, tmp_path, rollout=setup.rollout,
                   scorer=scorer, personas_by_id=by_id, on_log=lambda row, step: logged.append(row))
    finally:
        RewardGuard.update = real
    saved = json.loads((tmp_path / "base_greedy_6.json").read_text())
    assert len(saved["replies"]) == len(prompts) and len(probe.references) == len({prompt_key(p["prompt"])
                                                                                    for p in prompts})
    assert len(seen) == 2
    for probes, last in seen:
        values, refs = probes["personality"]
        assert len(values) == len(refs) == rl.prompts_per_step == len(last)
    values, refs = seen[0][0]["personality"]
    assert values == pytest.approx(refs, abs=1e-5)  # step 1: the policy is the base model, decoded the same way
    replies = dict(zip((prompt_key(p) for p in saved["prompts"]), saved["replies"]))
    assert [r["reply"] for r in seen[0][1]] == [replies[prompt_key(r["prompt"])].strip() for r in seen[0][1]]
    assert len({r["reply"] for _, last in seen for r in last}) > 1
    assert any("guard/personality/probe" in r for r in logged)
    # Where probes cannot be decoded (single-turn, DPO, the per-turn path) the head keeps the sampled warm-up floor.
    from convrl.rl.grpo import guard_kwargs

    single = RLConfig(turns=1, guard=GuardSection(heads=["personality"], probe_heads=["personality"]))
    single.validate()
    assert single.probed_heads() == [] and guard_kwargs(single)["probe_heads"] == []
    assert guard_kwargs(rl)["probe_heads"] == ["personality"]
    rl.speed.carry_kv_cache = False
    assert rl.probed_heads() == []
    with pytest.raises(ConfigError, match="probe_heads"):
        GuardSection(heads=["ending"], probe_heads=["ending"]).validate()


def test_greedy_probes_refuse_a_trainer_without_the_cached_decoder(tok):
    """Without the cached decoder there is nowhere to decode the probes: a clear error, not a guard that never moves."""
    from convrl.rl.probe import GreedyProbe

    class StockTrainer:
        def _tokenize_prompts(self, prompts):
            return [[1, 2, 3]] * len(prompts), None, None

    rollout = MultiTurnRollout(2, None, tok, "logged", probe=GreedyProbe(["personality"], lambda *a: [0.0]))
    with pytest.raises(ValueError, match="rl.guard.probe_heads decodes its greedy probes"):
        rollout([[{"role": "user", "content": "hi"}]], StockTrainer())
    with pytest.raises(ValueError, match="at least one head"):
        GreedyProbe([], lambda *a: [])
