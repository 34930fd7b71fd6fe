"""The reward callables (and multi-turn rollout) an RL run optimises, built from ``rl.*`` settings.

Single-turn: one TRL reward callable per reward head plus the shaping terms
(``rl.shaping``: ending within the budget, no loops, civility). Multi-turn
(``rl.turns > 1``): a ``MultiTurnRollout`` with the simulated user and the
per-turn conversation rewards of ``convrl.rl.turn_rewards``::

    setup = reward_setup(cfg.rl, scorer, personas_by_id, base_dir)
    train_grpo(cfg.rl, base_dir, prompts, setup.funcs, setup.weights, out, rollout=setup.rollout,
               scorer=scorer, turn_rewards=setup.turn_rewards)
"""

from __future__ import annotations

from dataclasses import dataclass

from convrl.rl.shaping import EndingRule, civility_gated, shaping_reward_funcs


@dataclass
class RewardSetup:
    funcs: list
    weights: list[float]
    rollout: object = None              # MultiTurnRollout when rl.turns > 1
    conversation_scores: object = None  # its ConversationScores (sample tables, turn-level credit)

    @property
    def turn_rewards(self):
        return self.conversation_scores.turn_rewards if self.conversation_scores is not None else None


def policy_eos_ids(model_dir: str) -> list[int]:
    """End-of-turn ids of the policy (its generation config's, else the tokenizer's EOS): where TRL stops."""
    from transformers import AutoTokenizer, GenerationConfig

    try:
        eos = GenerationConfig.from_pretrained(model_dir).eos_token_id
    except OSError:
        eos = None
    if eos is None:
        eos = AutoTokenizer.from_pretrained(model_dir).eos_token_id
    return [int(e) for e in (eos if isinstance(eos, list) else [eos])]


def greedy_probe(rl, scorer, personas_by_id: dict):
    """The guard's ``GreedyProbe`` over ``rl.guard.probe_heads`` (scored by ``scorer`` in each row's persona), or
    None when no head is probed."""
    if not rl.probed_heads():
        return None
    from convrl.config.eval import CHAT_NO_REPEAT_NGRAM
    from convrl.rl.probe import GreedyProbe

    def score(head, contexts, replies, persona_ids):
        return scorer.score_head(head, contexts, replies, [personas_by_id.get(p) if p else None for p in persona_ids])

    return GreedyProbe(rl.probed_heads(), score, CHAT_NO_REPEAT_NGRAM)


def reward_setup(rl, scorer, personas_by_id: dict, base_dir: str) -> RewardSetup:
    """Reward callables + weights (and the multi-turn rollout) for ``rl`` over ``scorer``'s heads."""
    eos_ids = policy_eos_ids(base_dir)
    sh = rl.shaping
    ending = EndingRule.from_config(sh, rl.max_completion_length)
    if rl.turns > 1:
        from convrl.rl.multiturn import MultiTurnRollout, SimulatedUser
        from convrl.rl.turn_rewards import conversation_reward_funcs

        mt = rl.multiturn
        funcs, weights, conv = conversation_reward_funcs(scorer, personas_by_id, mt.turn_reward, mt.turn_discount,
                                                         mt.consistency_weight, eos_ids, sh.ending_weight,
                                                         sh.repetition_weight, ending, sh.civility_weight,
                                                         sh.civility_gate)
        user = SimulatedUser(base_dir, max_new_tokens=mt.user_max_new_tokens, seed=rl.seed,
                             cached=rl.speed.carry_kv_cache)
        return RewardSetup(funcs, weights, MultiTurnRollout(rl.turns, user, user.gen.tok, mt.user_simulator,
                                                            mt.no_repeat_ngram_size,
                                                            greedy_probe(rl, scorer, personas_by_id)), conv)
    funcs, weights = scorer.trl_reward_funcs(personas_by_id)
    if sh.civility_gate:
        funcs = civility_gated(funcs)
    extra_funcs, extra_weights = shaping_reward_funcs(eos_ids, sh.ending_weight, sh.repetition_weight, ending,
                                                      sh.civility_weight)
    return RewardSetup(funcs + extra_funcs, weights + extra_weights)
