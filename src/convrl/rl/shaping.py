"""Reward shaping for RL on chat replies: end within the budget, do not loop, do not offend.

Three terms beside the reward heads, all in [0, 1] and measured on the tokens
and text the policy produced:

* ``ending``: 1 when the reply stopped on an end-of-turn token within its
  token budget, 0 when it was cut off. Replies that run into the cap end
  mid-sentence in every conversation the model has after training. With
  ``full_at`` tokens (``rl.shaping.ending_min_share`` of the budget) a reply
  that ends earlier earns it in proportion to its length: "stop in time"
  without "be brief" (short replies end more often, so a flat 0/1 term alone
  pays for brevity). With ``rl.shaping.ending_soft_tokens`` a reply that ends
  within that many tokens of the cap earns linearly less (DAPO's soft overlong
  punishment, Yu et al. 2025): a group whose replies all end near the cap
  still learns to stop earlier, before its replies are cut.
* ``non_repetition``: 1 minus degenerate repetition, the larger of the share
  of repeated word 3-grams inside the reply (``"I'm so sorry ... I'm so
  sorry ..."``) and its word overlap (Jaccard) with the most similar earlier
  reply of the same conversation, or the share of it copied from the user's
  turn it answers (parroting "you are cruel" back as "You are cruel." handed
  users' insults back in a demo RL seed).
* ``civility``: 1 unless a trained offensive-language classifier finds a
  sentence of the reply offensive, 0 when it hands the user's criticism back
  (``convrl.rewards.civility``): told "I hope that you die", candidates of
  three demo seeds answered "I hope you die."; told "you are cruel", "You're a
  cruel and cruel soul".

``shaping_reward_funcs`` returns them as TRL reward callables for single-turn
GRPO/RLOO (they read ``completion_ids``, which TRL passes); multi-turn rollouts
score them per turn in ``convrl.rl.turn_rewards``::

    funcs, weights = shaping_reward_funcs(eos_ids, ending_weight=0.15, repetition_weight=0.1, civility_weight=0.2)
    EndingRule(budget=64, soft_tokens=16).score(turn_ids, eos_ids)   # 1 up to 48 tokens, 0.5 at 56, 0 at 64
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from convrl.rewards.civility import civility
from convrl.rewards.heads import last_user_text
from convrl.rewards.text_signals import echo

_WORD = re.compile(r"[a-z0-9']+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def ngram_repetition(text: str, n: int = 3) -> float:
    """Share of the reply's word ``n``-grams that already occurred earlier in the reply (0 = none repeated)."""
    w = words(text)
    grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def overlap_with_earlier(text: str, earlier: list[str]) -> float:
    """Highest word-set Jaccard overlap of ``text`` with any earlier reply (0 without earlier replies)."""
    w = set(words(text))
    if not w:
        return 0.0
    return max((len(w & s) / len(w | s) for s in (set(words(e)) for e in earlier) if s), default=0.0)


def repetition(text: str, earlier: list[str] = (), user: str = "") -> float:
    """Degenerate repetition in [0, 1]: within the reply (3-grams), against earlier own replies (word overlap) or
    against the user's turn it answers (copied trigrams, or statements made only of its words: ``echo``)."""
    return max(ngram_repetition(text), overlap_with_earlier(text, list(earlier)), echo(text, user))


def ended(turn_ids: list[int], eos_ids) -> bool:
    """The turn's last token is an end-of-turn token (it stopped by itself, not at the cap)."""
    return bool(turn_ids) and int(turn_ids[-1]) in set(int(e) for e in eos_ids)


def ending_score(turn_ids: list[int], eos_ids, full_at: int = 0, budget: int = 0, soft_tokens: int = 0) -> float:
    """0 when cut off; when it ended, 1, or ``len/full_at`` for a reply shorter than ``full_at`` tokens, and
    linearly less over the last ``soft_tokens`` of its ``budget`` (0 at the cap; DAPO's soft overlong punishment)."""
    if not ended(turn_ids, eos_ids):
        return 0.0
    score = 1.0 if full_at <= 0 else min(1.0, len(turn_ids) / full_at)
    if soft_tokens > 0 and budget > 0:
        score *= min(1.0, max(0.0, (budget - len(turn_ids)) / soft_tokens))
    return score


def turn_clipped_ratios(spans: list[list], completion_ids: list[list[int]], eos_ids) -> list[float]:
    """Per policy turn (1st, 2nd, ...): the share of rollouts whose turn was cut at its budget.

    ``spans`` holds each rollout's ``[start, end)`` token span per policy turn in its completion. TRL's
    ``completions/clipped_ratio`` reads only a completion's last token: the last policy turn's.
    """
    out = []
    for k in range(max((len(s) for s in spans), default=0)):
        rows = [(ids, s[k]) for ids, s in zip(completion_ids, spans) if len(s) > k]
        out.append(sum(not ended(list(ids[a:b]), eos_ids) for ids, (a, b) in rows) / len(rows))
    return out


def ending_full_at(min_share: float, max_completion_length: int) -> int:
    """Tokens from which an ended reply earns the whole 'ending' reward (0 = from its first token)."""
    return int(round(min_share * max_completion_length))


@dataclass(frozen=True)
class EndingRule:
    """How a turn's 'ending' reward is scored (``ending_score``): ``rl.shaping.ending_min_share`` and
    ``ending_soft_tokens`` over a ``rl.max_completion_length`` budget."""
    full_at: int = 0
    budget: int = 0
    soft_tokens: int = 0

    @classmethod
    def from_config(cls, shaping, max_completion_length: int) -> EndingRule:
        return cls(ending_full_at(shaping.ending_min_share, max_completion_length), max_completion_length,
                   shaping.ending_soft_tokens)

    def score(self, turn_ids: list[int], eos_ids) -> float:
        return ending_score(turn_ids, eos_ids, self.full_at, self.budget, self.soft_tokens)


def _replies(completions) -> list[str]:
    return [c[-1]["content"] if isinstance(c, list) else str(c) for c in completions]


def _user_turns(prompts) -> list[str]:
    # A plain-text prompt has no user turn (nothing to copy, no criticism to hand back).
    return [last_user_text(p) if isinstance(p, list) else "" for p in prompts]


def shaping_reward_funcs(eos_ids, ending_weight: float, repetition_weight: float, ending: EndingRule = EndingRule(),
                         civility_weight: float = 0.0):
    """``([ending, non_repetition, civility], weights)`` for single-turn TRL trainers; weight-0 terms left out."""
    eos = [int(e) for e in eos_ids]

    def ending_(prompts, completions, completion_ids=None, **kwargs):
        if completion_ids is None:
            raise ValueError("reward 'ending' needs the completion_ids TRL passes to reward functions")
        return [ending.score(list(ids), eos) for ids in completion_ids]

    def non_repetition(prompts, completions, **kwargs):
        return [1.0 - repetition(t, user=u) for t, u in zip(_replies(completions), _user_turns(prompts))]

    def civility_(prompts, completions, **kwargs):
        return [float(x) for x in civility(_replies(completions), _user_turns(prompts))]

    ending_.__name__, civility_.__name__ = "ending", "civility"
    pairs = [(ending_, ending_weight), (non_repetition, repetition_weight), (civility_, civility_weight)]
    pairs = [(f, w) for f, w in pairs if w > 0]
    return [f for f, _ in pairs], [float(w) for _, w in pairs]


def civility_gated(funcs: list) -> list:
    """Single-turn reward callables whose scores are multiplied by the reply's civility (``rl.shaping.civility_gate``):
    an offensive reply earns nothing from them, however relevant. TRL calls every head on the same batch: the
    classifier runs once for it."""
    last: dict = {}

    def batch_civility(prompts, completions):
        key = (tuple(_replies(completions)), tuple(_user_turns(prompts)))
        if last.get("key") != key:
            last.update(key=key, value=civility(list(key[0]), list(key[1])))
        return last["value"]

    def gate(f):
        def gated(prompts, completions, **kwargs):
            c = batch_civility(prompts, completions)
            return [float(x) * float(g) for x, g in zip(f(prompts, completions, **kwargs), c)]

        gated.__name__ = getattr(f, "__name__", "reward")
        return gated

    return [gate(f) for f in funcs]
