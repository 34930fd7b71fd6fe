"""Compare the current window of served traffic with the baseline before it, and raise alerts.

Windows end now: the current one covers the last ``window_days``, the baseline
the ``baseline_days`` before that. Each model version seen in both windows is
compared with itself, and all traffic together (``scope="all"``) catches a newly
promoted version that is worse than the one it replaced.

Sessions are the statistical unit (turns of one session are not independent):
each metric is averaged per session, then the difference of window means gets
a bootstrap CI from :func:`convrl.eval.ab.unpaired_stats`, the statistics of the
offline A/B. An alert needs the whole CI beyond the margin, so noise alone does
not page anyone:

=====================  ============================  ===========================================
kind                   metric(s)                     raised when
=====================  ============================  ===========================================
``quality_drop``       reward composite and heads,   CI upper bound of current - baseline
                       judge composite and judges    < -``quality_margin``
``repetition_rise``    trigram repetition rate       CI lower bound > ``rate_margin``
``empty_rise``         share of empty replies        CI lower bound > ``rate_margin``
``incivility_rise``    share of replies insulting,   CI lower bound > ``incivility_margin`` (0)
                       cursing at or brushing off
                       the user (civility judge)
``reward_judge_gap``   reward minus judge composite  CI lower bound > ``gap_margin``
``satisfaction_drop``  mean rating, thumbs-up rate,  CI upper bound < -``satisfaction_margin``
                       predicted satisfaction from   (rating) / -``thumbs_margin`` (thumbs) /
                       the user's next turn          -``reaction_margin`` (reaction, with a model)
=====================  ============================  ===========================================

::

    from convrl.monitoring.windows import detect_alerts, window_bounds
    alerts, table = detect_alerts(scored, cfg.monitor, now=pd.Timestamp.now(tz="UTC"))
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from convrl.eval.ab import unpaired_stats
from convrl.monitoring.frames import in_window
from convrl.rewards.heads import HEADS


@dataclass(frozen=True)
class Rule:
    kind: str
    metric: str
    direction: int  # -1: a fall is bad, +1: a rise is bad
    margin_key: str  # the MonitorConfig field holding the margin


RULES = (
    *(Rule("quality_drop", m, -1, "quality_margin") for m in ("composite", *HEADS, "judge_composite",
                                                             "judge_quality", "judge_personality",
                                                             "judge_engagement", "judge_relevance")),
    Rule("repetition_rise", "repetition", +1, "rate_margin"),
    Rule("empty_rise", "empty", +1, "rate_margin"),
    Rule("incivility_rise", "uncivil", +1, "incivility_margin"),
    Rule("reward_judge_gap", "gap", +1, "gap_margin"),
    Rule("satisfaction_drop", "rating", -1, "satisfaction_margin"),
    Rule("satisfaction_drop", "thumbs", -1, "thumbs_margin"),
    Rule("satisfaction_drop", "reaction", -1, "reaction_margin"),
)


@dataclass
class Alert:
    kind: str
    metric: str
    scope: str  # a model version, or "all"
    baseline_mean: float
    current_mean: float
    diff: float
    ci_low: float
    ci_high: float
    margin: float
    n_baseline: int
    n_current: int
    window: str

    @property
    def message(self) -> str:
        who = "all served traffic" if self.scope == "all" else f"model version {self.scope}"
        verb = "fell" if self.diff < 0 else "rose"
        return (f"[{self.kind}] {self.metric} {verb} on {who}: {self.baseline_mean:.4f} -> {self.current_mean:.4f} "
                f"({self.diff:+.4f}, CI {self.ci_low:+.4f} to {self.ci_high:+.4f}, margin {self.margin:g}; "
                f"{self.n_baseline} vs {self.n_current} sessions; {self.window})")

    def to_dict(self) -> dict:
        return {**asdict(self), "message": self.message}


def window_bounds(now: pd.Timestamp, window_days: float, baseline_days: float) -> tuple[pd.Timestamp, ...]:
    """(baseline start, current start, now), all UTC."""
    now = pd.Timestamp(now)
    now = now.tz_localize("UTC") if now.tzinfo is None else now.tz_convert("UTC")
    current = now - pd.Timedelta(days=window_days)
    return current - pd.Timedelta(days=baseline_days), current, now


def session_means(scored: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Each metric averaged per session (NaN stays NaN: a session that gave no rating)."""
    return scored.groupby("session_id", sort=True)[metrics].mean()


def compare_windows(baseline: pd.DataFrame, current: pd.DataFrame, monitor, scope: str, window: str,
                    rng: np.random.Generator, n_bootstrap: int = 1000, confidence: float = 0.95
                    ) -> tuple[list[Alert], list[dict]]:
    """Alerts for one scope, and one statistics row per rule's metric (for the monitoring table)."""
    metrics = sorted({r.metric for r in RULES if r.metric in baseline.columns and r.metric in current.columns})
    b, c = session_means(baseline, metrics), session_means(current, metrics)
    alerts, rows = [], []
    for rule in RULES:
        if rule.metric not in metrics:
            continue
        s = unpaired_stats(c[rule.metric].to_numpy(), b[rule.metric].to_numpy(), n_bootstrap, confidence, rng)
        margin = float(getattr(monitor, rule.margin_key))
        enough = s["n_candidate"] >= monitor.min_sessions and s["n_baseline"] >= monitor.min_sessions
        fired = enough and (s["ci_high"] < -margin if rule.direction < 0 else s["ci_low"] > margin)
        rows.append({"scope": scope, "kind": rule.kind, "metric": rule.metric, "baseline_mean": s["mean_baseline"],
                     "current_mean": s["mean_candidate"], "diff": s["mean_diff"], "ci_low": s["ci_low"],
                     "ci_high": s["ci_high"], "margin": margin, "n_baseline": s["n_baseline"],
                     "n_current": s["n_candidate"], "enough_data": enough, "alert": fired})
        if fired:
            alerts.append(Alert(rule.kind, rule.metric, scope, s["mean_baseline"], s["mean_candidate"],
                                s["mean_diff"], s["ci_low"], s["ci_high"], margin, s["n_baseline"],
                                s["n_candidate"], window))
    return alerts, rows


def detect_alerts(scored: pd.DataFrame, monitor, now: pd.Timestamp, n_bootstrap: int = 1000,
                  confidence: float = 0.95) -> tuple[list[Alert], pd.DataFrame]:
    """Every alert over all scopes, and the full comparison table (one row per scope and metric)."""
    b0, c0, end = window_bounds(now, monitor.window_days, monitor.baseline_days)
    window = f"baseline {b0:%Y-%m-%d %H:%M} to {c0:%Y-%m-%d %H:%M}, current to {end:%Y-%m-%d %H:%M} UTC"
    base, cur = in_window(scored, b0, c0), in_window(scored, c0, end)
    rng = np.random.default_rng(monitor.seed)
    versions = sorted(set(base["model_version"].dropna()) & set(cur["model_version"].dropna()), key=str)
    scopes = [("all", base, cur)] + [(v, base[base["model_version"] == v], cur[cur["model_version"] == v])
                                     for v in versions]
    alerts, rows = [], []
    for scope, b, c in scopes:
        a, r = compare_windows(b, c, monitor, scope, window, rng, n_bootstrap, confidence)
        alerts += a
        rows += r
    return alerts, pd.DataFrame(rows)
