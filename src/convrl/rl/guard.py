"""Guarded rewards: terms RL may not trade away, held at their starting level by Lagrange multipliers.

A weighted sum of rewards lets RL buy a gain in one term with a loss in
another. In the demo's runs that loss was the persona: replies grew shorter,
the ``personality`` reward fell (0.18-0.20 -> 0.13-0.16 over 24-48 steps)
while the composite rose, and the A/B test's personality guardrails then
failed. ``RewardGuard`` turns such a term into a constraint (reward-constrained
policy optimisation, Tessler et al. 2019): its floor is the term's mean over
the first ``warmup_steps`` batches (the policy is still the base model there),
and a multiplier ``lambda >= 0`` is added to the term's weight, raised by dual
ascent while a smoothed batch mean sits below ``floor - margin`` and lowered
again once it is back above::

    guard = RewardGuard(["personality"], names=["quality", "personality"], base_weights=[0.4, 0.25])
    weights = guard.update(batch_rewards)        # [rows, terms] -> the weights this batch's advantages use
    guard.metrics()                              # {"guard/personality/lambda": ..., "/floor", "/mean"}

Nothing changes until a guarded term falls below its floor; ``lambda`` is capped
at ``max_weight``. ``restore`` picks the state up from a resumed run's log
history, so a resumed run keeps its multipliers. Used by ``convrl.rl.trainer``
(``rl.guard``).
"""

from __future__ import annotations

import numpy as np


class RewardGuard:
    """Lagrange multipliers keeping ``heads`` (reward-function names) at their starting level."""

    def __init__(self, heads, names, base_weights, margin: float = 0.0, warmup_steps: int = 4,
                 step_size: float = 4.0, max_weight: float = 1.0, smoothing: float = 0.5):
        names = list(names)
        unknown = [h for h in heads if h not in names]
        if unknown:
            raise ValueError(f"rl.guard.heads {unknown} are not rewards of this run; rewards: {', '.join(names)}")
        if warmup_steps < 1 or step_size <= 0 or max_weight < 0 or margin < 0 or not 0 <= smoothing < 1:
            raise ValueError("RewardGuard needs warmup_steps >= 1, step_size > 0, max_weight >= 0, margin >= 0 "
                             "and smoothing in [0, 1)")
        self.heads = list(dict.fromkeys(heads))
        self.index = {h: names.index(h) for h in self.heads}
        self.base = np.asarray(base_weights, dtype=np.float64)
        self.margin, self.warmup, self.step_size = margin, warmup_steps, step_size
        self.max_weight, self.smoothing = max_weight, smoothing
        self.steps = 0
        self.floor = {h: 0.0 for h in self.heads}
        self.mean = {h: float("nan") for h in self.heads}
        self.lam = {h: 0.0 for h in self.heads}

    def weights(self) -> np.ndarray:
        """The base weights with each guarded term's multiplier added."""
        w = self.base.copy()
        for h, k in self.index.items():
            w[k] += self.lam[h]
        return w

    def update(self, per_func: np.ndarray) -> np.ndarray:
        """Take one batch's rewards [rows, terms]; return the weights its advantages should use."""
        per_func = np.asarray(per_func, dtype=np.float64)
        self.steps += 1
        for h, k in self.index.items():
            batch = float(np.nanmean(per_func[:, k]))
            if self.steps <= self.warmup:
                # The floor is the plain mean of the warm-up batches: the base model's level of the term.
                self.floor[h] += (batch - self.floor[h]) / self.steps
                self.mean[h] = self.floor[h]
                continue
            # Batches of a few prompts are noisy (persona and prompt change every step): smooth before reacting.
            self.mean[h] = self.smoothing * self.mean[h] + (1 - self.smoothing) * batch
            deficit = (self.floor[h] - self.margin) - self.mean[h]
            self.lam[h] = float(np.clip(self.lam[h] + self.step_size * deficit, 0.0, self.max_weight))
        return self.weights()

    def extra_weights(self) -> dict[str, float]:
        """{term: multiplier} for the guarded terms (added to the per-turn rewards of turn-level credit)."""
        return dict(self.lam)

    def metrics(self) -> dict[str, float]:
        out = {}
        for h in self.heads:
            out[f"guard/{h}/lambda"] = self.lam[h]
            out[f"guard/{h}/floor"] = self.floor[h]
            out[f"guard/{h}/mean"] = self.mean[h]
        return out

    def restore(self, log_history: list[dict], steps: int) -> bool:
        """Resume from the last logged ``guard/*`` values of a checkpoint's log history; False when none."""
        if not self.heads:
            return False
        last = next((e for e in reversed(log_history or []) if f"guard/{self.heads[0]}/lambda" in e), None)
        if last is None:
            return False
        for h in self.heads:
            self.lam[h] = float(last.get(f"guard/{h}/lambda", 0.0))
            self.floor[h] = float(last.get(f"guard/{h}/floor", 0.0))
            self.mean[h] = float(last.get(f"guard/{h}/mean", self.floor[h]))
        self.steps = int(steps)
        return True
