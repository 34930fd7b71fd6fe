"""GRPO advantages from several rewards, per sequence and per policy turn (numpy; used by ``rl.trainer``).

``group_advantages`` is TRL 1.16's computation for both
``multi_objective_aggregation`` modes: ``sum_then_normalize`` (weighted sum,
then z-score within each group of ``G`` completions) and ``normalize_then_sum``
(z-score each reward within its group, weighted sum, then standardise over the
batch; GDPO). With five rewards the first maps different reward mixes to the
same advantage; the second keeps each head's ranking in the signal.

``turn_level_advantages`` gives multi-turn rollouts MT-GRPO-style credit: each
policy turn's tokens get ``credit * z(turn reward) + (1 - credit) * sequence
advantage``, where ``z`` normalises turn k's reward within the group, so a
good first reply is not blamed for a bad second one::

    adv = turn_level_advantages(seq_adv, per_turn, spans, G=4, width=120, credit=0.5)   # [rows, width]
"""

from __future__ import annotations

import numpy as np

EPS = 1e-4  # TRL's


def _group_z(x: np.ndarray, G: int) -> np.ndarray:
    """z-score of ``x`` [rows] within consecutive groups of ``G`` rows (NaN-aware; sample std like TRL's nanstd)."""
    g = x.reshape(-1, G)
    mean = np.nanmean(g, axis=1, keepdims=True)
    std = np.nanstd(g, axis=1, ddof=1, keepdims=True) if G > 1 else np.zeros_like(mean)
    return ((g - mean) / (std + EPS)).reshape(-1)


def group_advantages(per_func: np.ndarray, weights: np.ndarray, G: int,
                     aggregation: str = "sum_then_normalize") -> np.ndarray:
    """Advantages [rows] from rewards ``per_func`` [rows, heads] as TRL computes them (``scale_rewards='group'``)."""
    per_func = np.asarray(per_func, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if per_func.ndim != 2 or per_func.shape[1] != len(weights) or per_func.shape[0] % G:
        raise ValueError(f"rewards of shape {per_func.shape} do not fit {len(weights)} weights and groups of {G}")
    if aggregation == "sum_then_normalize":
        return np.nan_to_num(_group_z(np.nansum(per_func * weights, axis=1), G))
    if aggregation == "normalize_then_sum":
        z = np.stack([_group_z(per_func[:, k], G) for k in range(per_func.shape[1])], axis=1)
        total = np.nansum(z * weights, axis=1)
        std = np.nanstd(total, ddof=1) if total.size > 1 else 0.0
        return np.nan_to_num((total - np.nanmean(total)) / (std + EPS))
    raise ValueError(f"aggregation must be sum_then_normalize or normalize_then_sum, got {aggregation!r}")


def turn_level_advantages(seq_adv: np.ndarray, per_turn: np.ndarray, spans: list[list[list[int]]], G: int,
                          width: int, credit: float) -> np.ndarray:
    """Per-token advantages [rows, width]: each turn's span mixes its own turn advantage with the sequence one.

    ``per_turn`` [rows, turns] holds each policy turn's reward; ``spans[i][k]``
    is turn k's ``[start, end)`` in row i's completion. Tokens outside every
    span (user turns, template glue: masked out of the loss anyway) keep the
    sequence advantage.
    """
    seq_adv = np.asarray(seq_adv, dtype=np.float64)
    per_turn = np.asarray(per_turn, dtype=np.float64)
    if per_turn.shape[0] != seq_adv.shape[0] or len(spans) != seq_adv.shape[0]:
        raise ValueError(f"{per_turn.shape[0]} turn-reward rows and {len(spans)} span rows for "
                         f"{seq_adv.shape[0]} advantages")
    out = np.repeat(seq_adv[:, None], width, axis=1)
    turn_z = np.stack([np.nan_to_num(_group_z(per_turn[:, k], G)) for k in range(per_turn.shape[1])], axis=1)
    for i, row in enumerate(spans):
        for k, (start, end) in enumerate(row[:per_turn.shape[1]]):
            out[i, start:min(end, width)] = credit * turn_z[i, k] + (1.0 - credit) * seq_adv[i]
    return out
