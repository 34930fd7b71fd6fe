"""Greedy probes for the reward guard: how the policy answers where users and evaluation meet it.

Rollouts sample at ``rl.temperature``; ``convrl chat``, ``convrl serve`` and
the evaluate stage decode greedily with the chat n-gram ban. The two can part:
in a demo seed the sampled rollouts kept their persona while the greedy
held-out replies lost it (``docs/learning-log.md``, "Why the guard let seed 2's
persona go"). With ``rl.guard.probe_heads`` each multi-turn rollout batch
decodes one more row per group, greedily and with the chat ban, beside the
sampled rows (``CachedDecoder.generate(greedy=...)``: it shares the group's
prefilled prompt and costs one row of a memory-bound decoding step), for the
first policy turn only; the row is dropped before the simulated user speaks.
Its reply is scored by the probed heads and paired with the base model's
greedy reply to the same prompt (the replies the ending warm-start decodes
anyway), and ``RewardGuard`` raises a head's weight while the probes fall
below their references::

    probe = GreedyProbe(["personality"], score)        # score(head, contexts, replies, persona_ids) -> array
    probe.set_references(prompt_rows, base_greedy_replies)
    MultiTurnRollout(..., probe=probe)                 # records each batch's probes
    guard.update(rewards, personas, probes=probe.take())
"""

from __future__ import annotations

from typing import Callable

import numpy as np

def prompt_key(prompt) -> str:
    """A conversation prompt as a lookup key (role and content of every message)."""
    return "\x1e".join(f"{m['role']}\x1f{m['content']}" for m in prompt) if isinstance(prompt, list) else str(prompt)


class GreedyProbe:
    """Scores greedy probe replies and pairs them with the base model's greedy replies to the same prompts."""

    def __init__(self, heads: list[str], score: Callable, no_repeat_ngram_size: int = 0):
        if not heads:
            raise ValueError("GreedyProbe needs at least one head to score")
        self.heads, self.score = list(heads), score
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.references: dict[str, dict[str, float]] = {}  # prompt key -> {head: the base greedy reply's score}
        self.last: list[dict] = []                          # the last batch's probes (sample logs)
        self._pending: dict[str, tuple[list[float], list[float]]] | None = None

    def processors(self) -> list:
        """The logits processors of evaluation's greedy decoding (the chat n-gram ban), for the probe rows."""
        if self.no_repeat_ngram_size <= 0:
            return []
        from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

        return [NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size)]

    def set_references(self, rows: list[dict], replies: list[str]) -> None:
        """Score the base model's greedy ``replies`` to ``rows`` ({prompt, persona_id}) as each prompt's reference."""
        if len(rows) != len(replies):
            raise ValueError(f"{len(replies)} reference replies for {len(rows)} prompts")
        if not rows:
            return
        contexts, pids = [r["prompt"] for r in rows], [r.get("persona_id") for r in rows]
        scores = {h: np.asarray(self.score(h, contexts, list(replies), pids), dtype=np.float64) for h in self.heads}
        for i, r in enumerate(rows):
            self.references[prompt_key(r["prompt"])] = {h: float(scores[h][i]) for h in self.heads}

    def record(self, prompts: list[list[dict]], persona_ids: list[str | None], replies: list[str]) -> None:
        """Score one batch's probe replies; ``take`` hands them, paired with their references, to the guard."""
        scores = {h: np.asarray(self.score(h, prompts, replies, persona_ids), dtype=np.float64) for h in self.heads}
        refs = [self.references.get(prompt_key(p)) for p in prompts]
        self._pending = {h: ([float(v) for v, r in zip(scores[h], refs) if r is not None],
                             [r[h] for r in refs if r is not None]) for h in self.heads}
        self.last = [{"prompt": p, "persona_id": pid, "reply": text, **{h: float(scores[h][i]) for h in self.heads},
                      **{f"{h}_reference": (r or {}).get(h, float("nan")) for h in self.heads}}
                     for i, (p, pid, text, r) in enumerate(zip(prompts, persona_ids, replies, refs))]

    def take(self) -> dict[str, tuple[list[float], list[float]]] | None:
        """{head: (probe values, references)} of the last recorded batch (prompts with a reference), then clear."""
        out, self._pending = self._pending, None
        return out
