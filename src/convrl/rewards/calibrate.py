"""Composite weights fitted on human ratings (``rewards.calibrate``), beside the use case's fixed weights.

The composite is a weighted mean of the heads. ``fit_weights`` finds the
non-negative weights whose composite best predicts human ratings: each head
and each rating is z-scored within its source (scales differ), then
non-negative least squares; the weights are mapped back to the heads' raw
scale and normalised to sum 1, so they plug into ``RewardScorer(weights=...)``
unchanged. Fit on the training side of the rated dialogues only (the
meta-eval's held-out dialogues never calibrate)::

    w = fit_weights({"quality": q, "relevance": r, ...}, ratings, sources)   # {"quality": 0.1, ...}
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls


def _z(x: np.ndarray, sources: np.ndarray) -> np.ndarray:
    out = np.zeros_like(x, dtype=np.float64)
    for s in np.unique(sources):
        m = sources == s
        out[m] = (x[m] - x[m].mean()) / (x[m].std() + 1e-9)
    return out


def fit_weights(heads: dict[str, np.ndarray], ratings: np.ndarray, sources: np.ndarray | None = None,
                min_items: int = 30) -> dict[str, float]:
    """Non-negative weights (sum 1, on the heads' raw scale) maximising the composite's fit to the ratings."""
    names = sorted(heads)
    y = np.asarray(ratings, dtype=np.float64)
    if len(y) < min_items:
        raise ValueError(f"rewards.calibrate: need at least {min_items} rated replies to fit weights, got {len(y)}")
    src = np.asarray(sources) if sources is not None else np.zeros(len(y), dtype=int)
    x = np.stack([_z(np.asarray(heads[h], np.float64), src) for h in names], 1)
    w_z, _ = nnls(x, _z(y, src))
    if not np.any(w_z > 0):
        raise ValueError("rewards.calibrate: no head agrees positively with the ratings; keep the fixed weights")
    # A z-scored head's weight w means w / sd on the raw score (the sd of the pooled raw scores).
    sd = np.array([np.asarray(heads[h], np.float64).std() + 1e-9 for h in names])
    w = w_z / sd
    return {h: float(v / w.sum()) for h, v in zip(names, w)}
