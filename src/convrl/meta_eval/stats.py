"""Agreement statistics of the meta-evaluation: Spearman / Pearson with cluster-bootstrap CIs, by level.

``meta_evaluate(items, scores)`` correlates every score column with every
rating the items carry. Items carrying a ``group`` (the dialogue) are resampled
by group (cluster bootstrap), because responses of one dialogue are not
independent. Levels:

* ``dialogue``: a rating constant within every group (ConvAI2's 1-5 dialogue
  score, a session's overall satisfaction) is one point per dialogue, compared
  with the mean of the dialogue's ``DIALOGUE_TOP_K`` best-scored responses, its
  best moments (a whole-conversation judge gives every item of a dialogue the
  same score, so that is its score). Chosen on training-side dialogues only
  (``bench/reward_head_dev.py --per-dialogue 0 --max-items 5000``: every
  assistant turn of 491 ConvAI2 and 536 user-satisfaction dialogues outside the
  held-out split), where it agreed with people better than the plain mean for
  the composite on all three dialogue ratings (ConvAI2 dialogue score +0.17 vs
  +0.05, profile match +0.11 vs +0.07, user-satisfaction overall -0.06 vs
  -0.08), for the personality head on profile match (+0.15 vs -0.02), and in 13
  of 14 head/rating pairs (quality on profile match: +0.11 vs +0.13);
* ``pair``: every group holds exactly two items with different ratings
  (HH-RLHF chosen / rejected): the statistic is pairwise accuracy (the better
  rated item scores higher; ties count half), bootstrapped over pairs;
* ``response``: everything else, one point per response.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

# The dialogue judge reads the same best moments (its rel_top3 / persona_sim_top3 features): one rule.
from convrl.rewards.dialogue import TOP_K as DIALOGUE_TOP_K

# ------------------------------------------------------------------ statistics

def dialogue_scores(score: np.ndarray, inv: np.ndarray, k: int = DIALOGUE_TOP_K) -> np.ndarray:
    """Per group (``inv`` = group index of each item): the mean of its ``k`` highest scores (all, when fewer)."""
    order = np.lexsort((score, inv))  # by group, ascending score within a group
    bounds = np.flatnonzero(np.r_[True, inv[order][1:] != inv[order][:-1], True])
    return np.array([score[order[max(a, b - k):b]].mean() for a, b in zip(bounds[:-1], bounds[1:])])


def weighted_midranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Midranks of ``x`` in the sample that repeats item i ``w[b, i]`` times (one row per resample).

    Equal to ``rankdata`` of the expanded sample, without materialising it.
    """
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    block_of = np.empty(len(x), dtype=np.int64)
    block_of[order] = np.cumsum(np.r_[True, xs[1:] != xs[:-1]]) - 1
    block_w = np.add.reduceat(w[:, order], starts, axis=1)
    before = np.cumsum(block_w, axis=1) - block_w
    mid = before + (block_w + 1) / 2
    return mid[:, block_of]


def weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    wsum = w.sum(1, keepdims=True)
    ma = (w * a).sum(1, keepdims=True) / wsum
    mb = (w * b).sum(1, keepdims=True) / wsum
    da, db = a - ma, b - mb
    cov = (w * da * db).sum(1)
    var = np.sqrt((w * da * da).sum(1) * (w * db * db).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, cov / np.where(var > 0, var, 1), np.nan)


def bootstrap_weights(units: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n_items) counts: how often each item is drawn when whole units are resampled."""
    uniq, inv = np.unique(units, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n_bootstrap)
    return draws[:, inv].astype(np.float64)


def correlate(score: np.ndarray, rating: np.ndarray, weights: np.ndarray, ci: float = 0.95) -> dict:
    """Point Spearman/Pearson and bootstrap percentile CIs (weights from ``bootstrap_weights``)."""
    return _correlate(score, rating, weights, ci)[0]


def _correlate(score, rating, weights, ci: float = 0.95) -> tuple[dict, np.ndarray | None]:
    """``correlate``'s row and the Spearman of every resample (None for a constant column), which contrasts reuse."""
    out: dict = {"n": int(len(score))}
    if len(score) < 3 or np.ptp(score) == 0 or np.ptp(rating) == 0:
        return {**out, "spearman": None, "spearman_ci": [None, None], "pearson": None, "pearson_ci": [None, None],
                "note": "constant" if len(score) >= 3 else "too few items"}, None
    out["spearman"] = float(stats.spearmanr(score, rating).statistic)
    out["pearson"] = float(stats.pearsonr(score, rating).statistic)
    pe = [weighted_pearson(score[None, :], rating[None, :], weights[i:i + 100]) for i in range(0, len(weights), 100)]
    sp = boot_spearman(score, rating, weights)
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    for name, vals in (("spearman", sp), ("pearson", np.concatenate(pe))):
        vals = vals[np.isfinite(vals)]
        out[f"{name}_ci"] = [float(np.percentile(vals, lo)), float(np.percentile(vals, hi))] if len(vals) else [None, None]
    return out, sp


def boot_spearman(score: np.ndarray, rating: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Spearman of each bootstrap resample (one value per row of ``weights``; NaN where a resample is constant)."""
    out = [weighted_pearson(weighted_midranks(score, w), weighted_midranks(rating, w), w)
           for w in (weights[i:i + 100] for i in range(0, len(weights), 100))]  # chunks keep memory flat
    return np.concatenate(out) if out else np.zeros(0)


def paired_difference(point_a: float, point_b: float, boots_a: np.ndarray, boots_b: np.ndarray,
                      ci: float = 0.95) -> dict:
    """``a - b`` of two statistics computed on the same resamples, with its percentile CI and a verdict.

    The same items and the same resamples for both, so the CI is of the difference itself (two overlapping
    CIs of the statistics say nothing about whether one is higher). ``verdict``: ``higher`` / ``lower`` when
    the CI excludes 0, ``tie`` when it spans it.
    """
    d = boots_a - boots_b
    d = d[np.isfinite(d)]
    if not len(d):
        return {"diff": None, "diff_ci": [None, None], "verdict": "n/a"}
    lo, hi = np.percentile(d, [(1 - ci) / 2 * 100, (1 + ci) / 2 * 100])
    verdict = "higher" if lo > 0 else ("lower" if hi < 0 else "tie")
    return {"diff": float(point_a - point_b), "diff_ci": [float(lo), float(hi)], "verdict": verdict}


def pairwise(better: np.ndarray, worse: np.ndarray, weights: np.ndarray, ci: float = 0.95) -> dict:
    """Pairwise accuracy (ties count half) with a bootstrap CI over pairs; in the ``spearman`` slot of a row."""
    return _pairwise(better, worse, weights, ci)[0]


def _pairwise(better, worse, weights, ci: float = 0.95) -> tuple[dict, np.ndarray]:
    """``pairwise``'s row and the accuracy of every resample, which contrasts reuse."""
    wins = np.where(better > worse, 1.0, np.where(better == worse, 0.5, 0.0))
    boots = (weights * wins).sum(1) / weights.sum(1)
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    acc = float(wins.mean())
    return {"n": int(len(wins)), "spearman": acc, "spearman_ci": [float(np.percentile(boots, lo)),
                                                                    float(np.percentile(boots, hi))],
            "pearson": None, "pearson_ci": [None, None], "statistic": "pairwise accuracy (chance 0.5)"}, boots


def meta_evaluate(items: list[dict], scores: dict[str, np.ndarray], n_bootstrap: int = 1000,
                  seed: int = 13, contrasts: list[tuple[str, str]] = ()) -> dict:
    """Correlation rows for every (head, rating) pair; see the module docstring for levels.

    ``contrasts``: (a, b) pairs of score columns whose difference in agreement (``a - b``) is bootstrapped on
    the same resamples (``paired_difference``), per rating where both have a statistic: the result's
    ``contrasts`` rows.
    """
    groups = np.array([it.get("group") or f"item-{i}" for i, it in enumerate(items)])
    names = sorted({k for it in items for k in it["ratings"]})
    rows, summary, diffs = [], {}, []
    for r_i, name in enumerate(names):
        idx = np.array([i for i, it in enumerate(items) if name in it["ratings"]])
        rating = np.array([items[i]["ratings"][name] for i in idx])
        g = groups[idx]
        uniq, inv = np.unique(g, return_inverse=True)
        sizes = np.bincount(inv)
        constant_in_groups = len(uniq) < len(idx) and all(
            np.ptp(rating[inv == k]) == 0 for k in range(len(uniq)))
        paired = bool(len(uniq) >= 3 and np.all(sizes == 2) and all(
            np.ptp(rating[inv == k]) > 0 for k in range(len(uniq))))
        level = "dialogue" if constant_in_groups else ("pair" if paired else "response")
        if level == "dialogue":
            count = np.bincount(inv)
            rating_u = np.bincount(inv, weights=rating) / count
            weights = bootstrap_weights(np.arange(len(uniq)), n_bootstrap, seed + r_i)
        else:
            weights = bootstrap_weights(g, n_bootstrap, seed + r_i)
        summary[name] = {"level": level, "items": int(len(idx)), "groups": int(len(uniq)),
                         "mean": float(rating.mean()), "std": float(rating.std())}
        if level == "pair":
            order = np.argsort(inv, kind="stable")  # each pair's two items side by side
            first, second = order[0::2], order[1::2]
            better = np.where(rating[first] > rating[second], first, second)
            worse = np.where(better == first, second, first)
            pair_w = bootstrap_weights(np.arange(len(uniq)), n_bootstrap, seed + r_i)
        boots, point = {}, {}
        for head, col in scores.items():
            s = col[idx]
            if level == "pair":
                row, b = _pairwise(s[better], s[worse], pair_w)
            else:
                x, y = (dialogue_scores(s, inv), rating_u) if level == "dialogue" else (s, rating)
                row, b = _correlate(x, y, weights)
            if b is not None:
                boots[head], point[head] = b, row["spearman"]
            rows.append({"head": head, "rating": name, "level": level, **row})
        for a, b in contrasts:
            if a in boots and b in boots:
                diffs.append({"a": a, "b": b, "rating": name, "level": level,
                              **paired_difference(point[a], point[b], boots[a], boots[b])})
    return {"n_items": len(items), "n_bootstrap": n_bootstrap, "ratings": summary, "rows": rows, "contrasts": diffs}


def format_table(result: dict) -> str:
    from tabulate import tabulate

    def f(x):
        return "  n/a" if x is None else f"{x:+.3f}"

    parts = []
    for name, info in result["ratings"].items():
        rows = [r for r in result["rows"] if r["rating"] == name]
        table = [[r["head"], r["n"], f(r["spearman"]), f"[{f(r['spearman_ci'][0])}, {f(r['spearman_ci'][1])}]",
                  f(r["pearson"]), f"[{f(r['pearson_ci'][0])}, {f(r['pearson_ci'][1])}]"] for r in rows]
        parts.append(f"rating '{name}' ({info['level']} level: {info['items']} responses in {info['groups']} "
                     f"groups, mean {info['mean']:.2f} sd {info['std']:.2f})"
                     + (": the spearman column holds pairwise accuracy, chance 0.5\n" if info["level"] == "pair" else "\n")
                     + tabulate(table, headers=["head", "n", "spearman", "95% CI", "pearson", "95% CI"]))
    diffs = result.get("contrasts") or []
    if diffs:
        table = [[f"{d['a']} - {d['b']}", d["rating"], f(d["diff"]), f"[{f(d['diff_ci'][0])}, {f(d['diff_ci'][1])}]",
                  d["verdict"]] for d in diffs]
        parts.append("paired differences (the same resamples for both)\n"
                     + tabulate(table, headers=["a - b", "rating", "diff", "95% CI", "verdict"]))
    return "\n\n".join(parts) + f"\n\n{result['n_bootstrap']} bootstrap resamples (by group where items have one)."
