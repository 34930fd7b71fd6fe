"""Paired A/B comparison of a candidate policy against the champion, ending in a promotion decision.

Both policies answer the same evaluation prompts and each answer is scored, giving
two per-prompt tables: a key column (``prompt_id``) and one numeric column per
metric (composite, quality, personality, ...). Rows are paired by key, so every
statistic is on per-prompt differences ``candidate - baseline``:

* mean difference with a seeded, vectorised paired-bootstrap percentile CI;
* win / tie / loss rates (tie when ``|diff| <= 1e-9``);
* Wilcoxon signed-rank p-value, Holm-corrected across all metrics.

The decision, in order: too few pairs -> ``inconclusive``; a guardrail metric
(default: every metric but the primary) whose CI upper bound lies below
``-guardrail_margin`` (or that metric's own entry in ``guardrail_margins``, e.g.
0 for the safety judge: any significant drop), or a strict guardrail
(``strict_guardrails``, e.g. the civility judge) on which the candidate is
worse on more prompts than it is better -> ``reject``; primary CI lower bound above
``min_improvement`` with Holm p < ``alpha`` -> ``promote``; primary CI upper
bound below 0 -> ``reject``; anything else -> ``inconclusive``::

    from convrl.eval.ab import ABSettings, compare
    decision = compare(candidate_scores, champion_scores, ABSettings(primary="composite"))
    decision.outcome            # "promote" | "reject" | "inconclusive"
    print(decision.summary())   # one paragraph, for the run log / model card
    json.dumps(decision.to_dict())  # round-trips through decision_from_dict

Served sessions are not paired (each session sees one variant):
:func:`compare_unpaired` takes one row per session and per variant and applies
the same decision rules to the difference of means, with independent bootstrap
resamples of each group, Mann-Whitney p-values (Holm-corrected) and win/tie/loss
as the share of (candidate, baseline) pairs of sessions. A NaN cell is a metric
not observed for that session (no rating given) and is left out of that metric only.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd
from scipy import stats

TIE_TOL = 1e-9
OUTCOMES = ("promote", "reject", "inconclusive")
# Bootstrap weight matrices are built in blocks of at most this many cells so that
# a large evaluation set (tens of thousands of prompts) cannot exhaust memory.
_BOOT_BLOCK_CELLS = 4_000_000


@dataclass
class ABSettings:
    primary: str = "composite"
    n_bootstrap: int = 2000
    confidence: float = 0.95
    min_samples: int = 10
    min_improvement: float = 0.0
    guardrail_margin: float = 0.05
    guardrail_margins: dict[str, float] | None = None  # per metric, overriding guardrail_margin
    guardrails: Sequence[str] | None = None  # None: every metric except the primary
    # Hard lines counted prompt by prompt, not by a CI: worse on more prompts than better rejects (when present).
    strict_guardrails: Sequence[str] | None = None
    seed: int = 13
    alpha: float = 0.05

    def __post_init__(self) -> None:
        if self.n_bootstrap < 1:
            raise ValueError(f"n_bootstrap must be >= 1, got {self.n_bootstrap}")
        if not 0.0 < self.confidence < 1.0:
            raise ValueError(f"confidence must be in (0, 1), got {self.confidence}")
        if not 0.0 < self.alpha < 1.0:
            raise ValueError(f"alpha must be in (0, 1), got {self.alpha}")
        if self.min_samples < 1:
            raise ValueError(f"min_samples must be >= 1, got {self.min_samples}")
        if self.guardrail_margin < 0:
            raise ValueError(f"guardrail_margin must be >= 0, got {self.guardrail_margin}")
        self.guardrail_margins = {str(k): float(v) for k, v in (self.guardrail_margins or {}).items()}
        bad = {k: v for k, v in self.guardrail_margins.items() if not v >= 0}
        if bad:
            raise ValueError(f"guardrail_margins must be >= 0, got {bad}")
        self.strict_guardrails = ([self.strict_guardrails] if isinstance(self.strict_guardrails, str)
                                  else list(self.strict_guardrails or []))
        if isinstance(self.guardrails, str):  # a bare string would be iterated letter by letter
            self.guardrails = [self.guardrails]
        elif self.guardrails is not None:
            self.guardrails = list(self.guardrails)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def margin(self, metric: str) -> float:
        """How far ``metric`` may regress (CI upper bound) before it breaks its guardrail."""
        return self.guardrail_margins.get(metric, self.guardrail_margin)


@dataclass
class Decision:
    outcome: str
    reasons: list[str]
    metrics: dict[str, dict]
    n: int
    settings: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reasons": list(self.reasons),
                "metrics": {k: dict(v) for k, v in self.metrics.items()},
                "n": int(self.n), "settings": dict(self.settings)}

    def summary(self) -> str:
        primary = self.settings.get("primary")
        conf = self.settings.get("confidence", 0.95)
        unit = "sessions (unpaired)" if self.settings.get("design") == "unpaired" else "paired prompts"
        parts = [f"Candidate vs champion on {self.n} {unit}: {self.outcome.upper()}."]
        p = self.metrics.get(primary)
        if p and p.get("n", 0) > 0:
            parts.append(
                f"On the primary metric '{primary}' the candidate averaged {p['mean_candidate']:.4f} "
                f"against {p['mean_baseline']:.4f}, a mean paired difference of {p['mean_diff']:+.4f} "
                f"({conf:.0%} CI {p['ci_low']:+.4f} to {p['ci_high']:+.4f}, Holm-adjusted p = "
                f"{p['p_holm']:.3g}); it won {p['win_rate']:.0%}, tied {p['tie_rate']:.0%} and lost "
                f"{p['loss_rate']:.0%} of {'session pairs' if self.settings.get('design') == 'unpaired' else 'prompts'}.")
        guards = [m for m, s in self.metrics.items() if s.get("role") == "guardrail"]
        broken = [m for m in guards if self.metrics[m].get("guardrail_broken")]
        if guards:
            parts.append(f"Guardrails broken: {', '.join(broken)}." if broken
                         else f"All guardrails held ({', '.join(guards)}).")
        parts.extend(self.reasons)
        return " ".join(parts)


def decision_from_dict(d: dict[str, Any]) -> Decision:
    if d.get("outcome") not in OUTCOMES:
        raise ValueError(f"outcome must be one of {OUTCOMES}, got {d.get('outcome')!r}")
    return Decision(outcome=d["outcome"], reasons=list(d.get("reasons", [])),
                    metrics={k: dict(v) for k, v in d.get("metrics", {}).items()},
                    n=int(d.get("n", 0)), settings=dict(d.get("settings", {})))


def holm(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values, returned in the input order."""
    p = np.asarray(p_values, dtype=float)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    # The running max keeps adjusted p monotone in rank, which is what makes the
    # step-down procedure stop at the first non-rejection.
    adj_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty(m)
    out[order] = adj_sorted
    return out


def bootstrap_mean_ci(diffs: np.ndarray, n_bootstrap: int, confidence: float,
                      rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Percentile CI of the column means of ``diffs`` (n x k), one shared resample per draw.

    Sharing resamples across metrics keeps their intervals mutually consistent
    (the same prompts are up-weighted for every metric in a draw). Multinomial
    counts times the difference matrix gives each draw's means as one matmul.
    """
    means = bootstrap_means(diffs, n_bootstrap, rng)
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(means, [tail, 1.0 - tail], axis=0)
    return lo, hi


def bootstrap_means(values: np.ndarray, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """``(n_bootstrap, k)`` column means of row resamples of ``values`` (n x k, or a vector)."""
    values = np.atleast_2d(np.asarray(values, dtype=float).T).T
    n, k = values.shape
    block = max(1, _BOOT_BLOCK_CELLS // max(n, 1))
    probs = np.full(n, 1.0 / n)
    means = np.empty((n_bootstrap, k))
    for start in range(0, n_bootstrap, block):
        stop = min(start + block, n_bootstrap)
        counts = rng.multinomial(n, probs, size=stop - start)
        means[start:stop] = counts @ values / n
    return means


def _wilcoxon_p(d: np.ndarray) -> float:
    # Float noise below the tie tolerance would otherwise count as signed evidence.
    d = np.where(np.abs(d) <= TIE_TOL, 0.0, d)
    if d.size < 2 or not np.any(d):
        return 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # small-n / normal-approximation warnings
        try:
            p = float(stats.wilcoxon(d, zero_method="zsplit").pvalue)
        except ValueError:
            return 1.0
    return p if math.isfinite(p) else 1.0


def _numeric_metrics(df: pd.DataFrame, key: str) -> list[str]:
    return [c for c in df.columns if c != key and pd.api.types.is_numeric_dtype(df[c])
            and not pd.api.types.is_bool_dtype(df[c])]


def _pair(candidate: pd.DataFrame, baseline: pd.DataFrame, settings: ABSettings,
          key: str) -> tuple[list[str], pd.DataFrame]:
    for name, df in (("candidate", candidate), ("baseline", baseline)):
        if key not in df.columns:
            raise ValueError(f"{name} table has no key column {key!r}")
        dup = df[key][df[key].duplicated()].unique()
        if len(dup):
            raise ValueError(f"{name} table has duplicate {key} values (one row per prompt "
                             f"expected): {list(dup[:5])}")
    cand_m, base_m = _numeric_metrics(candidate, key), _numeric_metrics(baseline, key)
    metrics = cand_m + [m for m in base_m if m not in cand_m]
    required = [settings.primary, *(settings.guardrails or [])]
    metrics = list(dict.fromkeys(required + metrics))
    # A metric scored for one policy only cannot be compared; silently dropping it
    # would also silently drop a default guardrail.
    for m in metrics:
        for name, cols in (("candidate", cand_m), ("baseline", base_m)):
            if m not in cols:
                raise ValueError(f"metric column {m!r} is missing or non-numeric in the {name} table")
    merged = candidate[[key, *metrics]].merge(baseline[[key, *metrics]], on=key, how="inner",
                                               suffixes=("__cand", "__base"))
    if merged.empty:
        raise ValueError(f"candidate and baseline share no {key} values; nothing to pair "
                         f"({len(candidate)} vs {len(baseline)} rows)")
    for m in metrics:
        for side in ("cand", "base"):
            bad = int((~np.isfinite(merged[f"{m}__{side}"].to_numpy(dtype=float, na_value=np.nan))).sum())
            if bad:
                who = "candidate" if side == "cand" else "baseline"
                raise ValueError(f"{bad} non-finite value(s) in {who} metric {m!r}")
    return metrics, merged


def compare(candidate: pd.DataFrame, baseline: pd.DataFrame, settings: ABSettings | None = None,
            key: str = "prompt_id") -> Decision:
    """Pair the two score tables by ``key`` and decide whether the candidate should replace the champion."""
    settings = settings or ABSettings()
    metrics, merged = _pair(candidate, baseline, settings, key)
    n = len(merged)
    cand = merged[[f"{m}__cand" for m in metrics]].to_numpy(dtype=float, na_value=np.nan)
    base = merged[[f"{m}__base" for m in metrics]].to_numpy(dtype=float, na_value=np.nan)
    diffs = cand - base

    rng = np.random.default_rng(settings.seed)
    ci_lo, ci_hi = bootstrap_mean_ci(diffs, settings.n_bootstrap, settings.confidence, rng)
    p_raw = np.array([_wilcoxon_p(diffs[:, j]) for j in range(len(metrics))])
    p_adj = holm(p_raw)

    guards = ([m for m in metrics if m != settings.primary] if settings.guardrails is None
              else list(settings.guardrails))
    stats_by_metric: dict[str, dict] = {}
    for j, m in enumerate(metrics):
        d = diffs[:, j]
        is_guard = m in guards
        stats_by_metric[m] = {
            "role": "primary" if m == settings.primary else ("guardrail" if is_guard else "report"),
            "n": n,
            "mean_candidate": float(cand[:, j].mean()),
            "mean_baseline": float(base[:, j].mean()),
            "mean_diff": float(d.mean()),
            "ci_low": float(ci_lo[j]),
            "ci_high": float(ci_hi[j]),
            "win_rate": float(np.mean(d > TIE_TOL)),
            "tie_rate": float(np.mean(np.abs(d) <= TIE_TOL)),
            "loss_rate": float(np.mean(d < -TIE_TOL)),
            "p_value": float(p_raw[j]),
            "p_holm": float(p_adj[j]),
            # With too few pairs the CI is meaningless, so no guardrail verdict is claimed.
            "guardrail_broken": bool(is_guard and n >= settings.min_samples
                                     and ci_hi[j] < -settings.margin(m)),
        }
        _strict(stats_by_metric[m], m, settings, n)

    outcome, reasons = _decide(stats_by_metric, _with_strict(guards, metrics, settings), n, settings)
    return Decision(outcome=outcome, reasons=reasons, metrics=stats_by_metric, n=n,
                    settings=settings.to_dict())


def _strict(s: dict, metric: str, settings: ABSettings, n: int) -> None:
    """A strict guardrail breaks when the candidate is worse on more prompts (or session pairs) than better."""
    if metric not in settings.strict_guardrails:
        return
    s["strict"] = True
    if n >= settings.min_samples and s["loss_rate"] > s["win_rate"] + TIE_TOL:
        s["guardrail_broken"] = True
        if s.get("role") == "report":
            s["role"] = "guardrail"


def _with_strict(guards: list[str], metrics: list[str], settings: ABSettings) -> list[str]:
    return guards + [m for m in settings.strict_guardrails if m in metrics and m not in guards]


def _ci(s: dict, conf: float) -> str:
    return f"{s['mean_diff']:+.4f} ({conf:.0%} CI {s['ci_low']:+.4f} to {s['ci_high']:+.4f})"


def _broken_reason(g: str, s: dict, n: int, st: ABSettings, unit: str) -> str:
    if s["ci_high"] < -st.margin(g):
        return (f"Guardrail '{g}' regressed: mean difference {_ci(s, st.confidence)}, "
                f"entirely below the allowed margin of -{st.margin(g):g}.")
    # Only a strict guardrail breaks without its CI below the margin. Paired: counts of prompts; unpaired: shares
    # of (candidate, baseline) session pairs.
    loss, win = ((f"{round(s[k] * n)} of {n} {unit}" if unit == "paired prompts" else f"{s[k]:.1%} of session pairs")
                 for k in ("loss_rate", "win_rate"))
    return (f"Strict guardrail '{g}' broken: the candidate is worse on {loss} and better on {win} (mean difference "
            f"{s['mean_diff']:+.4f}); it may not be worse more often than better.")


def _decide(ms: dict[str, dict], guards: list[str], n: int,
            st: ABSettings, unit: str = "paired prompts") -> tuple[str, list[str]]:
    if n < st.min_samples:
        return "inconclusive", [f"Not enough data: only {n} {unit}, need at least {st.min_samples}."]
    broken = [g for g in guards if ms[g]["guardrail_broken"]]
    if broken:
        return "reject", [_broken_reason(g, ms[g], n, st, unit) for g in broken]
    p = ms[st.primary]
    desc = f"'{st.primary}' mean difference {_ci(p, st.confidence)}, Holm-adjusted p = {p['p_holm']:.3g}"
    if p["ci_low"] > st.min_improvement and p["p_holm"] < st.alpha:
        return "promote", [f"Primary metric {desc}: the CI lower bound exceeds the required "
                           f"improvement of {st.min_improvement:g} and p < {st.alpha:g}."]
    if p["ci_high"] < 0:
        return "reject", [f"Primary metric {desc}: the candidate is significantly worse than the champion."]
    if p["ci_low"] > st.min_improvement:
        why = f"the CI clears {st.min_improvement:g} but p is not below alpha = {st.alpha:g}"
    elif p["ci_low"] > 0:
        why = f"the improvement is real but its CI lower bound does not exceed {st.min_improvement:g}"
    else:
        why = "the CI includes zero, so no improvement is established"
    return "inconclusive", [f"Primary metric {desc}: {why}."]


def unpaired_stats(candidate: np.ndarray, baseline: np.ndarray, n_bootstrap: int, confidence: float,
                   rng: np.random.Generator) -> dict:
    """Difference of means of two independent samples (NaNs dropped): bootstrap CI, Mann-Whitney p, win rates."""
    c = np.asarray(candidate, dtype=float)
    b = np.asarray(baseline, dtype=float)
    c, b = c[np.isfinite(c)], b[np.isfinite(b)]
    out = {"n_candidate": int(c.size), "n_baseline": int(b.size), "n": int(min(c.size, b.size))}
    if not c.size or not b.size:
        nan = float("nan")
        return {**out, "mean_candidate": float(c.mean()) if c.size else nan,
                "mean_baseline": float(b.mean()) if b.size else nan, "mean_diff": nan, "ci_low": nan,
                "ci_high": nan, "win_rate": nan, "tie_rate": nan, "loss_rate": nan, "p_value": 1.0}
    draws = bootstrap_means(c, n_bootstrap, rng)[:, 0] - bootstrap_means(b, n_bootstrap, rng)[:, 0]
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(draws, [tail, 1.0 - tail])
    # Win/tie/loss over every (candidate, baseline) pair of units: the common-language effect size.
    bs = np.sort(b)
    below = np.searchsorted(bs, c - TIE_TOL, side="left")
    above = b.size - np.searchsorted(bs, c + TIE_TOL, side="right")
    pairs = float(c.size * b.size)
    p = 1.0
    if c.size >= 2 and b.size >= 2 and np.ptp(np.concatenate([c, b])) > TIE_TOL:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            p = float(stats.mannwhitneyu(c, b, alternative="two-sided").pvalue)
        p = p if math.isfinite(p) else 1.0
    return {**out, "mean_candidate": float(c.mean()), "mean_baseline": float(b.mean()),
            "mean_diff": float(c.mean() - b.mean()), "ci_low": float(lo), "ci_high": float(hi),
            "win_rate": float(below.sum() / pairs), "loss_rate": float(above.sum() / pairs),
            "tie_rate": float(1.0 - (below.sum() + above.sum()) / pairs), "p_value": p}


def compare_unpaired(candidate: pd.DataFrame, baseline: pd.DataFrame,
                     settings: ABSettings | None = None) -> Decision:
    """The A/B decision for independent groups (one row per session; NaN = metric not observed).

    Same rules as :func:`compare`; a metric's verdict uses the sessions that observed it, and the
    decision's ``n`` is the smaller group's count of sessions with the primary metric.
    """
    settings = settings or ABSettings()
    cand_m, base_m = _numeric_metrics(candidate, ""), _numeric_metrics(baseline, "")
    required = [settings.primary, *(settings.guardrails or [])]
    metrics = list(dict.fromkeys(required + cand_m + [m for m in base_m if m not in cand_m]))
    for m in metrics:
        for name, cols in (("candidate", cand_m), ("baseline", base_m)):
            if m not in cols:
                raise ValueError(f"metric column {m!r} is missing or non-numeric in the {name} table")
    rng = np.random.default_rng(settings.seed)
    per = {m: unpaired_stats(candidate[m].to_numpy(dtype=float, na_value=np.nan),
                             baseline[m].to_numpy(dtype=float, na_value=np.nan),
                             settings.n_bootstrap, settings.confidence, rng) for m in metrics}
    p_adj = holm([per[m]["p_value"] for m in metrics])
    guards = ([m for m in metrics if m != settings.primary] if settings.guardrails is None
              else list(settings.guardrails))
    for j, m in enumerate(metrics):
        s = per[m]
        is_guard = m in guards
        s.update(role="primary" if m == settings.primary else ("guardrail" if is_guard else "report"),
                 p_holm=float(p_adj[j]),
                 guardrail_broken=bool(is_guard and s["n"] >= settings.min_samples
                                       and s["ci_high"] < -settings.margin(m)))
        _strict(s, m, settings, s["n"])
    n = per[settings.primary]["n"]
    outcome, reasons = _decide(per, _with_strict(guards, metrics, settings), n, settings,
                               unit="sessions per variant with the primary metric")
    return Decision(outcome=outcome, reasons=reasons, metrics=per, n=n,
                    settings={**settings.to_dict(), "design": "unpaired"})
