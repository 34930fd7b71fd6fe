"""Use-case metrics, confidence intervals, per-persona breakdown and reward-judge gaps.

Input is the per-reply score table of ``convrl.eval.evaluate`` (one row per
model x prompt with reward-head and ``judge_*`` columns). Everything here is a
pure function of that table, so the report and the A/B stage read the same
numbers::

    from convrl.eval.metrics import analyze
    a = analyze(scores, threshold=0.5)
    a.summary["candidate/engagement_rate"], a.gaps, a.persona, a.headline, a.conflicts

``a.conflicts`` shows which reward heads pull against each other on the
baseline's replies (what RL starts from): a pair whose rank correlation is
significantly negative is one RL will trade, one against the other.

Use-case metrics (per reply, then averaged; rates are % of replies whose judge
score reaches ``threshold``):

* engagement rate ``judge_engagement >= t``; response relevance ``judge_relevance >= t``;
  personality consistency ``judge_personality >= t`` (a contradiction of a
  persona fact or a character break scores 0); emotional appropriateness
  ``judge_emotion >= t``;
* predicted user satisfaction on 1-5: ``1 + 4 * judge_composite``. A linear,
  uncalibrated map of the held-out judges (weighted like the reward), so a
  reply every judge rates perfect predicts 5 and an empty one 1; recalibrate it
  against rated conversations (e.g. ConvAI2's 1-5 ratings) before reading it as
  a user survey;
* distinct-1/2 (unique n-grams / n-grams over all replies), repetition
  (repeated word trigrams within a reply), length in words, empty-reply rate, share of replies cut at the
  token budget (``cut_off``: no end-of-turn token within ``eval.max_new_tokens``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from convrl.eval.judges import JUDGE_COLUMNS, JUDGE_FOR_HEAD
from convrl.rewards.heads import HEADS

METRICS = ("composite",) + HEADS
RATES = {"engagement_rate": "judge_engagement", "relevance_rate": "judge_relevance",
         "personality_consistency": "judge_personality", "emotional_appropriateness": "judge_emotion"}
LABELS = {"engagement_rate": "Engagement rate (%)", "relevance_rate": "Response relevance (%)",
          "personality_consistency": "Personality consistency (%)",
          "emotional_appropriateness": "Emotional appropriateness (%)",
          "satisfaction": "Predicted user satisfaction (1-5)"}
USE_CASE = tuple(RATES) + ("satisfaction",)
# The use case's expected ranges (the product brief): what "done" looks like, shown beside every headline rate.
TARGETS = {"engagement_rate": (70.0, 85.0), "relevance_rate": (80.0, 90.0), "personality_consistency": (85.0, 95.0),
           "satisfaction": (4.0, 4.5)}


def target_gap(metric: str, value: float) -> float | None:
    """How far ``value`` is outside ``metric``'s expected range: negative below it, positive above, 0 inside.

    None for metrics without a target.
    """
    if metric not in TARGETS or value is None or not np.isfinite(value):
        return None
    lo, hi = TARGETS[metric]
    return float(value - lo) if value < lo else float(value - hi) if value > hi else 0.0


def distinct_n(texts: list[str], n: int) -> float:
    grams, total = set(), 0
    for t in texts:
        w = t.lower().split()
        g = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        grams.update(g)
        total += len(g)
    return len(grams) / total if total else 0.0


def bootstrap_mean_ci(x: np.ndarray, n: int = 2000, seed: int = 0, conf: float = 0.95) -> tuple[float, float]:
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(1)
    return float(np.quantile(means, (1 - conf) / 2)), float(np.quantile(means, 1 - (1 - conf) / 2))


def add_use_case_columns(scores: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Per-reply indicator columns (0/100, so their mean is a percentage) and satisfaction."""
    df = scores.copy()
    for name, col in RATES.items():
        if col in df:
            df[name] = np.where(df[col] >= threshold, 100.0, 0.0)
    if "judge_composite" in df:
        df["satisfaction"] = 1.0 + 4.0 * df["judge_composite"].clip(0, 1)
    return df


def per_reply_metrics(df: pd.DataFrame) -> list[str]:
    """The numeric per-reply columns the summary averages, in display order."""
    cols = list(METRICS) + [c for c in USE_CASE + JUDGE_COLUMNS if c in df]
    cols += [c for c in ("fluency", "repetition", "appropriateness", "words", "cut_off", "contradictions") if c in df]
    return cols


def summarize(scores: pd.DataFrame, threshold: float = 0.5) -> dict[str, float]:
    """Flat ``{model}/{metric}`` means (the keys the pipeline logs to MLflow)."""
    df = add_use_case_columns(scores, threshold)
    out: dict[str, float] = {}
    for model, grp in df.groupby("model", sort=False):
        for m in per_reply_metrics(df):
            out[f"{model}/{m}"] = float(grp[m].mean())
        responses = grp["response"].tolist()
        out[f"{model}/distinct_1"] = distinct_n(responses, 1)
        out[f"{model}/distinct_2"] = distinct_n(responses, 2)
        out[f"{model}/empty_rate"] = float((grp["response"].str.strip() == "").mean())
    return out


def ci_table(scores: pd.DataFrame, metrics: list[str], n_boot: int = 1000, seed: int = 13) -> pd.DataFrame:
    """Long table: metric, model, mean, lo, hi (bootstrap 95% CI of the mean over replies)."""
    rows = []
    for m in metrics:
        for model, grp in scores.groupby("model", sort=False):
            x = grp[m].to_numpy(dtype=float)
            lo, hi = bootstrap_mean_ci(x, n_boot, seed)
            rows.append({"metric": m, "model": model, "mean": float(x.mean()), "lo": lo, "hi": hi})
    return pd.DataFrame(rows)


def per_persona(scores: pd.DataFrame, threshold: float = 0.5) -> pd.DataFrame:
    """Rows (persona, model); columns: replies, composite reward and the use-case metrics."""
    df = add_use_case_columns(scores, threshold)
    cols = ["composite"] + [c for c in ("judge_composite",) + USE_CASE if c in df]
    out = df.groupby(["persona_id", "model"], sort=True)[cols].mean()
    out.insert(0, "replies", df.groupby(["persona_id", "model"], sort=True).size())
    return out


def paired_diffs(scores: pd.DataFrame, col: str, a: str = "candidate", b: str = "baseline") -> np.ndarray:
    wide = scores.pivot_table(index="prompt_id", columns="model", values=col, aggfunc="mean").dropna()
    if a not in wide or b not in wide:
        return np.zeros(0)
    return (wide[a] - wide[b]).to_numpy(dtype=float)


def reward_judge_gaps(scores: pd.DataFrame, n_boot: int = 1000, seed: int = 13, margin: float = 0.0) -> pd.DataFrame:
    """For each reward head and its held-out judge: paired candidate - baseline differences.

    A head is flagged when its gain is significant (95% CI lower bound above
    ``margin``) while its judge confirms less than half of it (judge CI lower
    bound <= 0 or judge gain < half the reward gain): the policy may have
    learned to please the reward model rather than to get better. ``agreement``
    is the Spearman correlation of head and judge over all replies.
    """
    rows = []
    for head, judge in JUDGE_FOR_HEAD.items():
        if judge not in scores:
            continue
        rd, jd = paired_diffs(scores, head), paired_diffs(scores, judge)
        r_lo, r_hi = bootstrap_mean_ci(rd, n_boot, seed)
        j_lo, j_hi = bootstrap_mean_ci(jd, n_boot, seed)
        r_mean = float(rd.mean()) if len(rd) else float("nan")
        j_mean = float(jd.mean()) if len(jd) else float("nan")
        reward_up, judge_up = r_lo > margin, j_lo > 0
        flagged = bool(reward_up and (not judge_up or j_mean < 0.5 * r_mean))
        if flagged:
            verdict = (f"reward-judge gap: {head} rose {r_mean:+.3f} but its judge moved {j_mean:+.3f}; "
                       "read the samples before trusting this head")
        elif reward_up and judge_up:
            verdict = "confirmed: head and judge both improve"
        elif judge_up:
            verdict = "judge improves, head does not"
        elif r_hi < 0 and j_hi < 0:
            verdict = "both regress"
        else:
            verdict = "no significant change"
        with warnings.catch_warnings():  # a constant column (e.g. all-empty replies) has no rank correlation
            warnings.simplefilter("ignore")
            rho = stats.spearmanr(scores[head], scores[judge]).statistic if len(scores) > 2 else float("nan")
        rows.append({"quality": head, "judge": judge, "reward_diff": r_mean, "reward_lo": r_lo, "reward_hi": r_hi,
                     "judge_diff": j_mean, "judge_lo": j_lo, "judge_hi": j_hi,
                     "agreement": float(rho) if rho == rho else float("nan"), "flagged": flagged, "verdict": verdict})
    return pd.DataFrame(rows)


def head_conflicts(scores: pd.DataFrame, model: str = "baseline", conf: float = 0.95) -> pd.DataFrame:
    """Spearman correlation of every pair of reward heads over ``model``'s replies, with a CI.

    A pair is a ``conflict`` when its CI lies below 0: on the replies RL starts
    from, a reply that scores higher on one head tends to score lower on the
    other, and RL on a weighted sum of the two trades one for the other. (On
    the demo's base model personality correlates about -0.5 with relevance:
    README "Does it learn?".) The CI is Fisher's z with Fieller's variance for
    Spearman's rho, ``1.06 / (n - 3)``.
    """
    g = scores[scores["model"] == model] if "model" in scores else scores
    heads = [h for h in HEADS if h in g]
    n, z = len(g), stats.norm.ppf(0.5 + conf / 2)
    rows = []
    for i, a in enumerate(heads):
        for b in heads[i + 1:]:
            with warnings.catch_warnings():  # a constant head (e.g. no persona cards) has no rank correlation
                warnings.simplefilter("ignore")
                rho = float(stats.spearmanr(g[a], g[b]).statistic) if n > 3 else float("nan")
            if rho == rho:
                half = z * np.sqrt(1.06 / (n - 3))
                zr = np.arctanh(np.clip(rho, -0.999999, 0.999999))
                lo, hi = float(np.tanh(zr - half)), float(np.tanh(zr + half))
            else:
                lo = hi = float("nan")
            rows.append({"head_a": a, "head_b": b, "rho": rho, "lo": lo, "hi": hi, "n": n, "conflict": bool(hi < 0)})
    return pd.DataFrame(rows, columns=["head_a", "head_b", "rho", "lo", "hi", "n", "conflict"])


@dataclass
class Analysis:
    scores: pd.DataFrame                      # per reply, with use-case indicator columns
    summary: dict[str, float]                 # {model}/{metric}
    ci: pd.DataFrame                          # metric, model, mean, lo, hi
    gaps: pd.DataFrame                        # one row per reward head
    persona: pd.DataFrame                     # (persona, model) x metrics
    selfplay: dict[str, float] = field(default_factory=dict)  # {model}/{metric}
    headline: dict[str, float] = field(default_factory=dict)
    threshold: float = 0.5
    conflicts: pd.DataFrame = field(default_factory=pd.DataFrame)  # head pairs: rho over the baseline's replies


HEADLINE = {"satisfaction": "satisfaction", "engagement_rate": "engagement_rate",
            "relevance_rate": "relevance_rate", "personality_consistency": "personality_consistency",
            "emotional_appropriateness": "emotional_appropriateness", "composite_reward": "composite",
            "judge_composite": "judge_composite", "distinct_2": "distinct_2"}


def analyze(scores: pd.DataFrame, threshold: float = 0.5, n_boot: int = 1000, seed: int = 13,
            selfplay: dict[str, float] | None = None, gap_margin: float = 0.0) -> Analysis:
    """Everything the report shows, computed once. ``selfplay``: ``{model}/{metric}`` from selfplay.summarize."""
    df = add_use_case_columns(scores, threshold)
    summary = summarize(scores, threshold)
    ci = ci_table(df, per_reply_metrics(df), n_boot, seed)
    gaps = reward_judge_gaps(df, n_boot, seed, gap_margin)
    selfplay = dict(selfplay or {})
    headline = {k: summary[f"candidate/{v}"] for k, v in HEADLINE.items() if f"candidate/{v}" in summary}
    for k in ("composite", "judge_composite", "satisfaction"):
        if f"candidate/{k}" in summary and f"baseline/{k}" in summary:
            headline[f"{k}_delta"] = summary[f"candidate/{k}"] - summary[f"baseline/{k}"]
    if len(gaps):
        headline["reward_judge_gaps"] = float(gaps["flagged"].sum())
    conflicts = head_conflicts(df)
    if len(conflicts):
        headline["reward_conflicts"] = float(conflicts["conflict"].sum())
    for k, v in list(headline.items()):
        gap = target_gap(HEADLINE.get(k, k), v)
        if gap is not None:
            headline[f"{k}_target_gap"] = gap
    for k in ("coherence", "persona_consistency", "contradiction_rate", "self_repetition", "fact_recall"):
        if f"candidate/{k}" in selfplay:
            headline[f"selfplay_{k}"] = selfplay[f"candidate/{k}"]
    return Analysis(df, summary, ci, gaps, per_persona(scores, threshold), selfplay, headline, threshold, conflicts)
