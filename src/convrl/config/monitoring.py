"""Config section for production monitoring and the online A/B (``monitor.*``).

``convrl monitor`` scores the served turns of ``monitor.experiment`` and compares
the last ``window_days`` with the ``baseline_days`` before them; ``convrl ab online``
compares the champion's and the challenger's served sessions. The A/B statistics
(bootstrap resamples, confidence, guardrail margin, minimum improvement) come from
the ``ab`` section, so offline and online decisions follow the same rules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from convrl.config.base import ConfigError

ALERT_KINDS = ("quality_drop", "repetition_rise", "empty_rise", "reward_judge_gap", "satisfaction_drop",
               "incivility_rise")
SESSION_METRICS = ("satisfaction", "thumbs_up", "predicted_satisfaction", "judge_composite", "judge_civility",
                   "reward_composite", "session_turns", "empty_rate", "repetition")


@dataclass
class MonitorConfig:
    experiment: str = field(
        default="convrl-serving", metadata={"help": "MLflow experiment holding the served traces (`convrl serve`)."})
    window_days: float = field(default=1.0, metadata={"help": "Length of the current window, ending now (days)."})
    baseline_days: float = field(
        default=7.0, metadata={"help": "Length of the baseline window just before the current one (days)."})
    min_sessions: int = field(
        default=10, metadata={"help": "Sessions each window needs (with the metric observed) before that metric "
                                      "can raise an alert; sessions, not turns, are the statistical unit."})
    reward_models: str = field(
        default="", metadata={"help": "Reward-models directory (the reward_models artifact of a pipeline run) to "
                                      "score with; empty = the untrained heads over models.encoder."})
    fluency: bool = field(
        default=False, metadata={"help": "Score fluency with the base LM (slow on CPU); off = a neutral 0.5."})
    quality_margin: float = field(
        default=0.05, metadata={"help": "Alert when a quality score (reward head or judge, 0-1) drops by more than "
                                        "this: the CI upper bound of current - baseline lies below -margin."})
    rate_margin: float = field(
        default=0.05, metadata={"help": "Alert when the repetition or empty-reply rate rises by more than this "
                                        "(CI lower bound of the rise)."})
    gap_margin: float = field(
        default=0.05, metadata={"help": "Alert when the reward-judge gap (reward composite - judge composite) "
                                        "widens by more than this (CI lower bound)."})
    satisfaction_margin: float = field(
        default=0.25, metadata={"help": "Alert when the mean 1-5 rating falls by more than this many points."})
    thumbs_margin: float = field(
        default=0.1, metadata={"help": "Alert when the thumbs-up rate falls by more than this share."})
    incivility_margin: float = field(
        default=0.0, metadata={"help": "Alert when the share of replies that insult, curse at or brush off the user "
                                       "(the civility judge) rises by more than this (CI lower bound; 0 = any "
                                       "significant rise)."})
    reaction_margin: float = field(
        default=0.1, metadata={"help": "Alert when the satisfaction predicted from users' next turns (1-5; needs "
                                       "a reaction model in monitor.reward_models/dialogue) falls by more than this."})
    webhook: str = field(
        default="", metadata={"help": "URL that receives each alert as a JSON POST (Slack/Teams/Alertmanager "
                                      "bridge); empty = log and model-version tag only."})
    rollback: bool = field(
        default=False, metadata={"help": "Roll `champion` back to the previous champion (registry's guarded "
                                         "rollback) when the champion's own traffic raises a rollback alert."})
    rollback_alerts: list = field(
        default_factory=lambda: ["quality_drop", "satisfaction_drop"],
        metadata={"help": f"Alert kinds that may trigger a rollback; kinds: {', '.join(ALERT_KINDS)}."})
    genai_evaluate: bool = field(
        default=True, metadata={"help": "Also run mlflow.genai.evaluate with the scores as custom scorers, so "
                                        "they show as assessments in MLflow's trace and evaluation views."})
    ab_primary: str = field(
        default="satisfaction", metadata={"help": "Primary per-session metric of `convrl ab online`; one of "
                                                  f"{', '.join(SESSION_METRICS)}."})
    ab_guardrails: list = field(
        default_factory=lambda: ["thumbs_up", "judge_composite"],
        metadata={"help": "Per-session metrics that may not regress beyond ab.guardrail_margin."})
    seed: int = field(default=13, metadata={"help": "Seed of the bootstrap resamples."})

    def validate(self) -> None:
        if self.window_days <= 0 or self.baseline_days <= 0:
            raise ConfigError("monitor.window_days and monitor.baseline_days must be positive")
        if self.min_sessions < 2:
            raise ConfigError(f"monitor.min_sessions must be >= 2 (a CI needs two sessions), got {self.min_sessions}")
        for name in ("quality_margin", "rate_margin", "gap_margin", "satisfaction_margin", "thumbs_margin",
                     "reaction_margin", "incivility_margin"):
            if getattr(self, name) < 0:
                raise ConfigError(f"monitor.{name} must be >= 0, got {getattr(self, name)}")
        bad = sorted(set(self.rollback_alerts) - set(ALERT_KINDS))
        if bad:
            raise ConfigError(f"monitor.rollback_alerts has unknown kinds {bad}; kinds: {', '.join(ALERT_KINDS)}")
        for name, metrics in (("ab_primary", [self.ab_primary]), ("ab_guardrails", self.ab_guardrails)):
            bad = sorted(set(metrics) - set(SESSION_METRICS))
            if bad:
                raise ConfigError(f"monitor.{name}: unknown session metric(s) {bad}; use {', '.join(SESSION_METRICS)}")
        if self.webhook and not self.webhook.startswith(("http://", "https://")):
            raise ConfigError(f"monitor.webhook must be an http(s) URL, got {self.webhook!r}")
