"""Guarded rewards: terms RL may not trade away, held at their starting level by Lagrange multipliers.

A weighted sum of rewards lets RL buy a gain in one term with a loss in
another. In the demo's runs that loss was the persona: replies grew shorter,
the ``personality`` reward fell (0.18-0.20 -> 0.13-0.16 over 24-48 steps)
while the composite rose, and the A/B test's personality guardrails then
failed. ``RewardGuard`` turns such a term into a constraint (reward-constrained
policy optimisation, Tessler et al. 2019): its floor, per persona, is the
term's mean over that persona's first ``warmup_steps`` batches (the policy is
still near the base model there), and a multiplier ``lambda >= 0`` is added to
the term's weight, raised by dual ascent while the smoothed deficit (floor -
margin - score, over the batch's rows) is positive and lowered again once the
term is back above::

    guard = RewardGuard(["personality"], names=["quality", "personality"], base_weights=[0.4, 0.25])
    weights = guard.update(batch_rewards, persona_ids)  # [rows, terms] -> the weights its advantages use
    guard.metrics()                              # {"guard/personality/lambda": ..., "/floor", "/deficit"}

Nothing changes until a guarded term falls below its floor; ``lambda`` is capped
at ``max_weight`` (``max_weights`` caps single terms differently). ``floors``
fixes a term's floor instead of the warm-up mean: ``{"ending": 0.8}`` is the
constraint "at least 80% of policy turns end before their budget".
``state``/``load_state`` round-trip it through checkpoints (``convrl.rl.trainer``
saves it beside each one), so a resumed run keeps its multipliers and floors.
Used by ``convrl.rl.trainer`` (``rl.guard``).

``probe_heads`` are measured where users and evaluation meet the policy: on
greedy replies. Sampled at the rollouts' temperature a policy can keep its
persona while its greedy replies lose it (``docs/learning-log.md``: seed 2's
rollouts' personality rose against the base model's while its greedy held-out
replies fell 0.198 -> 0.171). For such a head ``update`` takes ``probes``
(``{head: (greedy values, references)}``, e.g. one greedy reply per rollout
group scored beside the base model's greedy reply to the same prompt) and the
deficit is the paired gap, reference - margin - value, with no warm-up floor.
A step without probes leaves the head's multiplier where it was.
"""

from __future__ import annotations

import numpy as np


class RewardGuard:
    """Lagrange multipliers keeping ``heads`` (reward-function names) at their starting level."""

    def __init__(self, heads, names, base_weights, margin: float = 0.0, warmup_steps: int = 4,
                 step_size: float = 4.0, max_weight: float = 1.0, smoothing: float = 0.5,
                 max_weights: dict[str, float] | None = None, floors: dict[str, float] | None = None,
                 probe_heads=()):
        names = list(names)
        unknown = [h for h in heads if h not in names]
        if unknown:
            raise ValueError(f"rl.guard.heads {unknown} are not rewards of this run; rewards: {', '.join(names)}")
        caps = {h: float((max_weights or {}).get(h, max_weight)) for h in heads}
        stray = sorted((set(max_weights or {}) | set(floors or {})) - set(heads))
        if stray:
            raise ValueError(f"max_weights / floors name {stray}, which are not guarded heads ({list(heads)})")
        stray = sorted(set(probe_heads) - set(heads) or set(probe_heads) & set(floors or {}))
        if stray:
            raise ValueError(f"probe_heads {stray} must be guarded heads ({list(heads)}) without a fixed floor")
        if warmup_steps < 1 or step_size <= 0 or min(caps.values(), default=0) < 0 or margin < 0 \
                or not 0 <= smoothing < 1:
            raise ValueError("RewardGuard needs warmup_steps >= 1, step_size > 0, max_weight >= 0, margin >= 0 "
                             "and smoothing in [0, 1)")
        self.heads = list(dict.fromkeys(heads))
        self.index = {h: names.index(h) for h in self.heads}
        self.base = np.asarray(base_weights, dtype=np.float64)
        self.margin, self.warmup, self.step_size = margin, warmup_steps, step_size
        self.caps, self.smoothing = caps, smoothing
        self.fixed = {h: float(v) for h, v in (floors or {}).items()}
        self.steps = 0
        # Floors per group (persona): a persona card sets how high its personality score can go, and a batch
        # holds only a few prompts, so one floor for all would mistake the persona mix for a drop.
        self.floors: dict[str, dict[str, list[float]]] = {h: {} for h in self.heads}  # group -> [floor, batches]
        self.deficit = {h: 0.0 for h in self.heads}
        self.lam = {h: 0.0 for h in self.heads}
        # The probed heads, each with its last probes' (greedy value, reference).
        self.probe_last = {h: (float("nan"), float("nan")) for h in self.heads if h in set(probe_heads)}

    def weights(self) -> np.ndarray:
        """The base weights with each guarded term's multiplier added."""
        w = self.base.copy()
        for h, k in self.index.items():
            w[k] += self.lam[h]
        return w

    def floor(self, head: str) -> float:
        """The head's floor averaged over the groups seen (a probed head: the last probes' reference), for logs."""
        if head in self.probe_last:
            return self.probe_last[head][1]
        f = [v[0] for v in self.floors[head].values()]
        return float(np.mean(f)) if f else float("nan")

    def update(self, per_func: np.ndarray, groups=None, probes: dict | None = None) -> np.ndarray:
        """Take one batch's rewards [rows, terms] (``groups``: each row's persona) and, for ``probe_heads``,
        ``probes`` ({head: (greedy values, references)}); return the weights to use."""
        per_func = np.asarray(per_func, dtype=np.float64)
        groups = ["" if g is None else str(g) for g in groups] if groups is not None else [""] * len(per_func)
        if len(groups) != len(per_func):
            raise ValueError(f"{len(groups)} groups for {len(per_func)} reward rows")
        self.steps += 1
        for h, k in self.index.items():
            gaps = self._probe_gaps(h, probes) if h in self.probe_last else self._floor_gaps(h, k, per_func, groups)
            if not gaps:
                continue
            # Batches are noisy (prompts change every step): smooth the deficit before reacting to it.
            self.deficit[h] = self.smoothing * self.deficit[h] + (1 - self.smoothing) * float(np.mean(gaps))
            self.lam[h] = float(np.clip(self.lam[h] + self.step_size * self.deficit[h], 0.0, self.caps[h]))
        return self.weights()

    def _floor_gaps(self, h: str, k: int, per_func: np.ndarray, groups: list[str]) -> list[float]:
        gaps = []
        for g in dict.fromkeys(groups):
            vals = per_func[[i for i, x in enumerate(groups) if x == g], k]
            value = float(np.nanmean(vals))
            floor = self.floors[h].setdefault(g, [self.fixed.get(h, 0.0), self.warmup if h in self.fixed else 0])
            if floor[1] < self.warmup:
                # A group's floor is the plain mean of its first warm-up batches: the base model's level.
                floor[1] += 1
                floor[0] += (value - floor[0]) / floor[1]
                continue
            gaps.extend([floor[0] - self.margin - value] * len(vals))
        return gaps

    def _probe_gaps(self, h: str, probes: dict | None) -> list[float]:
        values, refs = (np.asarray(x, dtype=np.float64) for x in (probes or {}).get(h, ([], [])))
        if values.shape != refs.shape:
            raise ValueError(f"probes[{h!r}]: {values.size} greedy values for {refs.size} references")
        ok = np.isfinite(values) & np.isfinite(refs)
        if not ok.any():
            return []
        self.probe_last[h] = (float(values[ok].mean()), float(refs[ok].mean()))
        return list(refs[ok] - self.margin - values[ok])

    def extra_weights(self) -> dict[str, float]:
        """{term: multiplier} for the guarded terms (added to the per-turn rewards of turn-level credit)."""
        return dict(self.lam)

    def metrics(self) -> dict[str, float]:
        out = {}
        for h in self.heads:
            out[f"guard/{h}/lambda"] = self.lam[h]
            out[f"guard/{h}/floor"] = self.floor(h)
            out[f"guard/{h}/deficit"] = self.deficit[h]
            if h in self.probe_last:
                out[f"guard/{h}/probe"] = self.probe_last[h][0]
        return out

    def state(self) -> dict:
        """JSON-able state (multipliers, smoothed deficits, floors per group) for checkpoints."""
        return {"steps": self.steps, "lam": dict(self.lam), "deficit": dict(self.deficit),
                "floors": {h: {g: list(v) for g, v in f.items()} for h, f in self.floors.items()}}

    def load_state(self, state: dict) -> None:
        self.steps = int(state["steps"])
        for h in self.heads:
            self.lam[h] = float(state["lam"].get(h, 0.0))
            self.deficit[h] = float(state["deficit"].get(h, 0.0))
            self.floors[h] = {g: [float(v[0]), int(v[1])] for g, v in state["floors"].get(h, {}).items()}
