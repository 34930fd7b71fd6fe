"""Rewards of multi-turn rollouts: every assistant turn scored in its own context, then per conversation.

Each assistant turn of a ``MultiTurnRollout`` is scored by every reward head
with the context it was written in, plus the shaping terms of ``rl.shaping``
(``ending``: stopped on its own; ``non_repetition``: no loops inside the reply
or against earlier own replies; ``civility``: nothing offensive). ``conversation_reward_funcs`` aggregates the
per-turn scores (``mean``, ``discounted`` or ``final``) into one TRL reward
callable per term and adds a whole-conversation ``consistency`` term (stable
persona score across turns, no repeating oneself). ``ConversationScores.
turn_rewards()`` hands the weighted per-turn rewards of the last batch to the
trainer for turn-level credit (``rl.advantages``)::

    funcs, weights, scores = conversation_reward_funcs(scorer, personas_by_id, "mean", eos_ids=tok_eos)
"""

from __future__ import annotations

import numpy as np

from convrl.data.personas import Persona
from convrl.rewards.civility import civility
from convrl.rewards.heads import HEADS, last_user_text
from convrl.rl.shaping import EndingRule, repetition, words

def self_repetition(responses: list[str], threshold: float = 0.6) -> float:
    """Share of turns after the first whose word set overlaps an earlier own turn by >= ``threshold`` (Jaccard)."""
    if len(responses) < 2:
        return 0.0
    seen, repeated = [set(words(responses[0]))], 0
    for r in responses[1:]:
        w = set(words(r))
        if w and any(len(w & s) / max(1, len(w | s)) >= threshold for s in seen):
            repeated += 1
        seen.append(w)
    return repeated / (len(responses) - 1)


def aggregate_turns(per_turn: np.ndarray, how: str, discount: float = 0.9) -> float:
    """Per-turn scores -> one conversation score: mean, discounted (normalised, early turns weigh more) or final."""
    if how == "mean":
        return float(np.mean(per_turn))
    if how == "final":
        return float(per_turn[-1])
    if how == "discounted":
        w = discount ** np.arange(len(per_turn))
        return float((w * per_turn).sum() / w.sum())
    raise ValueError(f"rl.multiturn.turn_reward must be mean, discounted or final, got {how!r}")


def consistency(personality: np.ndarray, responses: list[str]) -> float:
    """Whole-conversation consistency in [0, 1]: persona score stable across turns, no repeating oneself."""
    spread = float(personality.max() - personality.min()) if len(personality) else 0.0
    return 0.5 * (1.0 - min(1.0, spread / 0.5)) + 0.5 * (1.0 - self_repetition(responses))


class ConversationScores:
    """Scores every assistant turn of a batch of rollouts in one ``RewardScorer.score`` call; cached per batch."""

    def __init__(self, scorer, personas_by_id: dict[str, Persona], aggregation: str = "mean",
                 discount: float = 0.9, eos_ids=(), shaping_weights: dict[str, float] | None = None,
                 ending: EndingRule = EndingRule(), civility_gate: bool = False):
        aggregate_turns(np.zeros(1), aggregation, discount)  # validate early
        self.civility_gate = civility_gate
        self.ending = ending
        self.scorer, self.personas_by_id = scorer, personas_by_id
        self.aggregation, self.discount = aggregation, discount
        self.eos_ids = [int(e) for e in eos_ids]
        self.shaping_weights = {k: v for k, v in (shaping_weights or {}).items() if v > 0}
        self._key, self._value, self.last_table = None, None, []
        self._turn_terms: dict[str, np.ndarray] = {}

    def terms(self) -> list[str]:
        return [*HEADS, *self.shaping_weights, "consistency"]

    def turn_rewards(self, extra_weights: dict[str, float] | None = None) -> np.ndarray:
        """[rows, turns] weighted reward of each policy turn (heads + shaping) of the last scored batch.

        ``extra_weights`` adds to the terms' weights (``rl.guard``'s multipliers), so turn-level credit
        weighs the turns as the sequence advantage does.
        """
        if not self._turn_terms:
            return np.zeros((0, 0))
        weights = {**{h: self.scorer.weights.get(h, 0.0) for h in HEADS}, **self.shaping_weights}
        for h, w in (extra_weights or {}).items():
            weights[h] = weights.get(h, 0.0) + w
        # consistency is a whole-conversation term: it has no per-turn score, so it adds nothing here
        return sum(w * self._turn_terms[h] for h, w in weights.items() if h in self._turn_terms)

    def __call__(self, turns: list[list[dict]], persona_ids: list[str | None],
                 completion_ids=None) -> dict[str, np.ndarray]:
        key = tuple(tuple(t["response"] for t in row) for row in turns), tuple(persona_ids)
        if key == self._key:
            return self._value
        contexts, responses, personas, owner = [], [], [], []
        for i, (row, pid) in enumerate(zip(turns, persona_ids)):
            for t in row:
                contexts.append(t["context"])
                responses.append(t["response"])
                personas.append(self.personas_by_id.get(pid) if pid else None)
                owner.append(i)
        batch = self.scorer.score(contexts, responses, personas, self._reference_fluency(turns, completion_ids))
        shaping = self._shaping(turns, completion_ids)
        heads = batch.heads
        if self.civility_gate:
            # An offensive turn earns nothing for being relevant or engaging: the heads pay for an insult echoed
            # from the user's turn (relevant, on topic), and a civility term beside them was outweighed.
            heads = {h: v * shaping["civility"] for h, v in heads.items()}
        owner = np.array(owner)
        out = {h: np.zeros(len(turns), dtype=np.float32) for h in self.terms()}
        n_turns = max((len(r) for r in turns), default=0)
        per_turn = {h: np.full((len(turns), n_turns), np.nan) for h in (*HEADS, *self.shaping_weights)}
        table = []
        for i, row in enumerate(turns):
            idx = np.flatnonzero(owner == i)
            for h in HEADS:
                out[h][i] = aggregate_turns(heads[h][idx], self.aggregation, self.discount)
            for h in self.shaping_weights:
                out[h][i] = aggregate_turns(shaping[h][idx], self.aggregation, self.discount)
            out["consistency"][i] = consistency(batch.heads["personality"][idx], [t["response"] for t in row])
            for h in HEADS:
                per_turn[h][i, :len(idx)] = heads[h][idx]
            for h in self.shaping_weights:
                per_turn[h][i, :len(idx)] = shaping[h][idx]
            table.append(self._table_row(row, persona_ids[i], batch.composite[idx], out, i))
        self.last_table, self._turn_terms = table, per_turn
        self._key, self._value = key, out
        return out

    def _table_row(self, row, persona_id, composite, out, i) -> dict:
        convo = "\n".join(f"{m['role']}: {m['content']}" for m in row[0]["context"] if m["role"] != "system")
        for k, (t, c) in enumerate(zip(row, composite)):
            convo += f"\nassistant [{float(c):.3f}]: {t['response']}"
            if k + 1 < len(row):  # the user turn that followed ends the next turn's context
                convo += f"\nuser: {row[k + 1]['context'][-1]['content']}"
        return {"persona": persona_id or "", "conversation": convo,
                **{h: float(out[h][i]) for h in self.terms()}}

    def _shaping(self, turns, completion_ids) -> dict[str, np.ndarray]:
        """Per turn (flattened like the scorer's batch): ended on EOS; 1 - repetition (earlier turns, the user's);
        civility."""
        end, rep = [], []
        for i, row in enumerate(turns):
            for k, t in enumerate(row):
                if completion_ids is not None and "span" in t:
                    s, e = t["span"]
                    end.append(self.ending.score(list(completion_ids[i][s:e]), self.eos_ids))
                else:
                    end.append(float(t.get("ended", False)))
                earlier = [x["response"] for x in row[:k]]
                rep.append(1.0 - repetition(t["response"], earlier, last_user_text(t["context"])))
        out = {"ending": np.array(end), "non_repetition": np.array(rep)}
        if "civility" in self.shaping_weights or self.civility_gate:  # one classifier call for every turn
            out["civility"] = civility([t["response"] for row in turns for t in row],
                                       [last_user_text(t["context"]) for row in turns for t in row])
        return out

    def _reference_fluency(self, turns, completion_ids) -> np.ndarray | None:
        """Each turn's fluency from the RL reference pass (the turn's span of the completion), when handed over."""
        if any("span" not in t for row in turns for t in row):
            return None
        return self.scorer.reference_fluency(completion_ids, [[t["span"] for t in row] for row in turns])


def conversation_reward_funcs(scorer, personas_by_id: dict[str, Persona], aggregation: str = "mean",
                              discount: float = 0.9, consistency_weight: float = 0.1, eos_ids=(),
                              ending_weight: float = 0.0, repetition_weight: float = 0.0, ending: EndingRule = EndingRule(),
                              civility_weight: float = 0.0, civility_gate: bool = False):
    """TRL reward callables for multi-turn rollouts: per head and shaping term (aggregated over turns), consistency.

    Returns ``(funcs, weights, scores)``; ``scores.last_table`` holds the last
    batch's conversations for sample tables. Each callable needs the ``turns``
    column ``MultiTurnRollout`` returns and fails clearly without it.
    """
    scores = ConversationScores(scorer, personas_by_id, aggregation, discount, eos_ids,
                                {"ending": ending_weight, "non_repetition": repetition_weight,
                                 "civility": civility_weight}, ending, civility_gate)
    funcs = []
    for head in scores.terms():
        def f(prompts, completions, head=head, **kwargs):
            if "turns" not in kwargs:
                raise ValueError(f"reward '{head}': multi-turn rewards need the 'turns' column of MultiTurnRollout; "
                                 "with rl.turns: 1 use RewardScorer.trl_reward_funcs")
            pids = kwargs.get("persona_id") or [None] * len(completions)
            return [float(x) for x in scores(kwargs["turns"], pids, kwargs.get("completion_ids"))[head]]

        f.__name__ = head
        funcs.append(f)
    weights = ([scorer.weights.get(h, 0.0) for h in HEADS] + list(scores.shaping_weights.values())
               + [consistency_weight])
    return funcs, weights, scores
