"""Online A/B: champion against challenger on served sessions, with the offline A/B's rules.

A session is served by one variant for its whole life, so the comparison is
unpaired: :func:`convrl.eval.ab.compare_unpaired` applies the same bootstrap CI,
Holm-corrected tests, guardrails and promote / reject / inconclusive rules as the
offline A/B, one row per session. Metrics per session (``frames.session_table``):
``satisfaction`` (mean 1-5 rating), ``thumbs_up`` (share of thumbs up),
``predicted_satisfaction`` (read from the users' answers, with a reaction model),
``judge_composite`` and ``reward_composite`` (means over turns), ``judge_civility``
(the session's least civil reply; held prompt by prompt as ``ab.strict_guardrails`` says),
``session_turns``, ``empty_rate``, ``repetition``. Lower-is-better metrics
(empty rate, repetition) enter negated, so for every metric a guardrail reads
"may not fall by more than the margin"::

    from convrl.monitoring.online_ab import online_decision
    decision = online_decision(sessions, settings, challenger_version="7")
    decision.outcome, decision.summary()
"""

from __future__ import annotations

import pandas as pd

from convrl.eval.ab import ABSettings, Decision, compare_unpaired

HIGHER_IS_BETTER = ("satisfaction", "thumbs_up", "predicted_satisfaction", "judge_composite", "judge_civility",
                    "reward_composite", "session_turns")
LOWER_IS_BETTER = ("empty_rate", "repetition")


def metric_table(sessions: pd.DataFrame) -> pd.DataFrame:
    """The numeric columns the decision compares, lower-is-better ones negated."""
    # predicted_satisfaction is absent (NaN) where no reaction model scored the turns.
    out = sessions.reindex(columns=list(HIGHER_IS_BETTER)).astype(float)
    for m in LOWER_IS_BETTER:
        out[m] = -sessions[m].astype(float)
    return out


def served_version(sessions: pd.DataFrame, variant: str, version: str | None) -> tuple[pd.DataFrame, str]:
    """The sessions of one variant (and version); refuses a variant that mixed versions without a version given."""
    sub = sessions[sessions["variant"] == variant]
    if version is not None:
        sub = sub[sub["model_version"].astype(str) == str(version)]
        return sub, str(version)
    versions = sorted(sub["model_version"].dropna().astype(str).unique())
    if len(versions) > 1:
        raise ValueError(f"the {variant} variant served versions {versions} in this window (its alias moved); "
                         f"pass --{variant}-version to compare one of them")
    return sub, versions[0] if versions else ""


def online_decision(sessions: pd.DataFrame, settings: ABSettings, champion_version: str | None = None,
                    challenger_version: str | None = None) -> tuple[Decision, dict]:
    """The decision and who was compared (versions and session counts)."""
    champ, champ_v = served_version(sessions, "champion", champion_version)
    chall, chall_v = served_version(sessions, "challenger", challenger_version)
    if champ.empty or chall.empty:
        raise ValueError(f"online A/B needs served sessions of both variants: {len(champ)} champion and "
                         f"{len(chall)} challenger session(s) in the window; serve with a challenger traffic "
                         "share (convrl serve) or widen --since")
    decision = compare_unpaired(metric_table(chall), metric_table(champ), settings)
    who = {"champion_version": champ_v, "challenger_version": chall_v, "champion_sessions": len(champ),
           "challenger_sessions": len(chall)}
    return decision, who


def ab_settings(ab_cfg, monitor_cfg) -> ABSettings:
    """The offline A/B's statistics settings with the online primary metric and guardrails."""
    return ABSettings(primary=monitor_cfg.ab_primary, n_bootstrap=ab_cfg.n_bootstrap, confidence=ab_cfg.confidence,
                      min_samples=ab_cfg.min_samples, min_improvement=ab_cfg.min_improvement,
                      guardrail_margin=ab_cfg.guardrail_margin, guardrail_margins=dict(ab_cfg.guardrail_margins),
                      strict_guardrails=list(ab_cfg.strict_guardrails),
                      guardrails=list(monitor_cfg.ab_guardrails),
                      seed=ab_cfg.seed)
