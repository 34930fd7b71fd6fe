"""Production stages: monitor served traffic, and the online A/B that can drive promotion.

``monitor_stage`` reads the served turns of ``monitor.experiment`` from MLflow
Tracing, scores them with the reward heads and the held-out judges, compares the
current window with the baseline (per model version and for all traffic), and
records one monitoring run beside the traces: the per-day table, the comparison
table, plots, alerts, and the scores as assessments on every trace
(``mlflow.genai.evaluate``). Alerts go to the log, the webhook and tags on the
model version; with ``monitor.rollback`` a rollback alert on the champion's own
traffic moves ``champion`` back through :func:`convrl.registry.rollback`.

``online_ab_stage`` compares the champion's and the challenger's served sessions
with the offline A/B's unpaired statistics and, when asked, promotes the
challenger through :func:`convrl.registry.promote`. Both run from ``convrl
monitor`` / ``convrl ab online`` and from the scheduled monitoring pipeline.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd

from convrl import registry, tracking
from convrl.config import Config
from convrl.monitoring import alerts as alerting
from convrl.monitoring.frames import in_window, normalise_turns, session_table
from convrl.monitoring.online_ab import ab_settings, online_decision
from convrl.monitoring.plots import daily_figure
from convrl.monitoring.scoring import SCORE_COLUMNS, daily_summary, score_turns
from convrl.monitoring.windows import detect_alerts, window_bounds
from convrl.tracking import traces
from convrl.tracking.monitoring import evaluate_traces, monitor_run, tag_versions

log = logging.getLogger("convrl.monitor")
ASSESSED = ("composite", "quality", "personality", "engagement", "relevance", "judge_composite", "gap")


def build_scorer(cfg: Config):
    """The reward heads: the packaged reward models of ``monitor.reward_models``, else untrained heads."""
    from convrl import models
    from convrl.rewards.encoder import SentenceEncoder
    from convrl.rewards.heads import RewardScorer
    from convrl.rewards.bundle import load_scorer

    if cfg.monitor.reward_models:
        if not (Path(cfg.monitor.reward_models) / "reward_config.json").is_file():
            raise FileNotFoundError(f"monitor.reward_models={cfg.monitor.reward_models!r} holds no reward_config.json; "
                                    "point it at the reward_models output of a pipeline run")
        return load_scorer(cfg.monitor.reward_models, with_fluency=cfg.monitor.fluency)
    fluency = None
    if cfg.monitor.fluency:
        from convrl.rewards.heads import FluencyScorer

        fluency = FluencyScorer(models.resolve_policy(cfg.models.policy))
    encoder = SentenceEncoder(models.resolve_encoder(cfg.models.encoder), max_length=cfg.rewards.max_length,
                              batch_size=cfg.rewards.batch_size)
    return RewardScorer(encoder, None, fluency, cfg.rewards.weights, personality_style=cfg.rewards.personality_style)


def reaction_model(cfg: Config):
    """The reaction model the reward stage trained with the dialogue judge (``rewards.dialogue_data``), else None."""
    from convrl.rewards.reaction_encoder import has_reaction, load_reaction

    folder = Path(cfg.monitor.reward_models) / "dialogue" if cfg.monitor.reward_models else None
    if folder is None or not has_reaction(folder):
        return None
    return load_reaction(folder)


def personas_for(names) -> dict:
    from convrl.data.personas import load_persona

    return {n: load_persona(n) for n in sorted({n for n in names if n})}


def scored_turns(cfg: Config, since, until, turns: pd.DataFrame | None = None) -> pd.DataFrame:
    """Served turns in ``[since, until)`` (read from MLflow unless given), scored by heads and judges."""
    from convrl.eval.judges import JudgePanel

    raw = traces.search_turns(cfg.monitor.experiment, since=since, until=until) if turns is None else turns
    frame = normalise_turns(raw)
    if frame.empty:
        return score_turns(frame, None, None, {})
    log.info("scoring %d served turns from %d sessions", len(frame), frame["session_id"].nunique())
    return score_turns(frame, build_scorer(cfg), JudgePanel(weights=cfg.rewards.weights),
                       personas_for(frame["persona"]), progress=True, reaction=reaction_model(cfg))


def monitor_stage(cfg: Config, now: pd.Timestamp | None = None, turns: pd.DataFrame | None = None,
                  out_dir: str | None = None) -> dict:
    """One monitoring pass; returns a summary (counts, alerts, actions taken)."""
    mon = cfg.monitor
    b0, c0, end = window_bounds(now if now is not None else pd.Timestamp.now(tz="UTC"), mon.window_days,
                                mon.baseline_days)
    tracking.preflight(mon.experiment)
    scored = scored_turns(cfg, b0, end, turns)
    summary = {"turns": len(scored), "sessions": int(scored["session_id"].nunique()) if len(scored) else 0,
               "window": {"baseline_start": str(b0), "current_start": str(c0), "end": str(end)}}
    daily = daily_summary(scored)
    alerts, table = detect_alerts(scored, mon, end, n_bootstrap=cfg.ab.n_bootstrap, confidence=cfg.ab.confidence)
    alerting.log_alerts(alerts)
    summary["alerts"] = [a.to_dict() for a in alerts]
    current = in_window(scored, c0, end)
    current_versions = sorted(current["model_version"].dropna().astype(str).unique())
    with monitor_run(mon.experiment, f"monitor-{end:%Y%m%d-%H%M%S}",
                     {"convrl.monitor.window_end": str(end), "convrl.monitor.alerts": str(len(alerts))}) as run:
        summary["run_id"] = run.run_id
        run.log_params({"monitor." + k: v for k, v in vars(mon).items()})
        run.log_metrics({"monitor/turns": len(scored), "monitor/current_turns": len(current),
                         "monitor/alerts": len(alerts),
                         **{f"current/{c}": float(current[c].mean()) for c in (*ASSESSED, "empty", "repetition",
                                                                               "rating", "thumbs")
                            if c in current and current[c].notna().any()}})
        if len(daily):
            run.log_table(daily, "monitoring/daily.json")
            run.log_figure(daily_figure(daily, current_start=c0), "monitoring/daily.png")
        if len(table):
            run.log_table(table, "monitoring/window_comparison.json")
        run.log_dict(summary, "monitoring/summary.json")
        if mon.genai_evaluate and len(scored):
            summary["genai_evaluate"] = _assess(mon.experiment, scored, run)
        if alerts and mon.webhook:
            summary["webhook"] = alerting.post_webhook(mon.webhook, alerts, source=mon.experiment)[1]
        if alerts:
            summary["tagged_versions"] = tag_versions(
                cfg.registry.model_name, alerting.version_tags(alerts, current_versions, end))
        summary["rollback"] = _maybe_rollback(cfg, alerts)
        run.set_tags({"convrl.monitor.rollback": json.dumps(summary["rollback"], default=str)[:4000]})
    if out_dir:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        daily.to_csv(out / "daily.csv", index=False)
        (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _assess(experiment: str, scored: pd.DataFrame, run) -> str:
    """Scores as MLflow assessments on each trace; a failure is recorded, not fatal (the tables hold them)."""
    cols = [c for c in ASSESSED if c in SCORE_COLUMNS]
    per_session = scored.groupby("session_id")[["composite", "judge_composite", "empty", "repetition"]].mean()
    try:
        metrics = evaluate_traces(experiment, scored.set_index("trace_id"), cols, run.run_id, per_session)
    except Exception as exc:  # noqa: BLE001 - monitoring must still alert when the evaluation view fails
        log.error("mlflow.genai.evaluate failed (%s: %s); scores stay in the monitoring run's tables",
                  type(exc).__name__, exc)
        run.set_tags({"convrl.monitor.genai_evaluate_error": f"{type(exc).__name__}: {exc}"[:4000]})
        return f"failed: {type(exc).__name__}: {exc}"
    if "already_assessed" in metrics:
        return f"all {len(scored)} traces were assessed by an earlier pass"
    n = int(metrics.pop("assessed"))
    return f"assessed {n} traces ({', '.join(f'{k}={v:.3f}' for k, v in sorted(metrics.items()))})"


def _maybe_rollback(cfg: Config, alerts) -> dict:
    mon = cfg.monitor
    champion = tracking.alias_version(cfg.registry.model_name, registry.CHAMPION)
    reason = alerting.rollback_reason(alerts, champion, list(mon.rollback_alerts))
    if reason is None:
        return {"done": False, "why": "no rollback alert on the champion's own traffic"}
    if not mon.rollback:
        log.warning("champion v%s raised a rollback alert; monitor.rollback is off, so it stays (%s)", champion, reason)
        return {"done": False, "why": "monitor.rollback is off", "reason": reason}
    try:
        moved = registry.rollback(cfg.registry.model_name, reason[:4000], actor="monitor")
    except registry.RegistryError as exc:
        log.error("rollback refused: %s", exc)
        return {"done": False, "why": str(exc), "reason": reason}
    log.warning("rolled champion back: v%s -> v%s", moved["previous"], moved["champion"])
    return {"done": True, **moved, "reason": reason}


def online_ab_stage(cfg: Config, since, until=None, promote: bool = False, champion_version: str | None = None,
                    challenger_version: str | None = None, turns: pd.DataFrame | None = None) -> dict:
    """Decide champion vs challenger on served sessions; with ``promote`` a promote decision moves the alias."""
    tracking.preflight(cfg.monitor.experiment)
    scored = scored_turns(cfg, since, until, turns)
    if scored.empty:
        raise ValueError(f"no served turns in experiment {cfg.monitor.experiment!r} since {since}; "
                         "serve traffic with `convrl serve` first or widen --since")
    if "source" in scored.columns:  # arena sessions see both variants side by side: not an A/B unit
        scored = scored[scored["source"] != "arena"]
    sessions = session_table(scored)
    decision, who = online_decision(sessions, ab_settings(cfg.ab, cfg.monitor), champion_version, challenger_version)
    result = {"decision": decision.to_dict(), "summary": decision.summary(), **who, "promoted": None}
    with monitor_run(cfg.monitor.experiment, f"ab-online-{pd.Timestamp.now(tz='UTC'):%Y%m%d-%H%M%S}",
                     {"convrl.ab_online.outcome": decision.outcome}) as run:
        result["run_id"] = run.run_id
        run.log_table(sessions.assign(started=sessions["started"].astype(str)), "ab_online/sessions.json")
        run.log_dict(result, "ab_online/decision.json")
        run.log_text(decision.summary(), "ab_online/summary.txt")
        run.log_metrics({f"{m}/{k}": s[k] for m, s in decision.metrics.items()
                         for k in ("mean_candidate", "mean_baseline", "mean_diff", "ci_low", "ci_high")
                         if s.get(k) == s.get(k)})
        if promote and decision.outcome == "promote":
            current = tracking.alias_version(cfg.registry.model_name, registry.CHALLENGER)
            if current != who["challenger_version"]:
                raise registry.RegistryError(
                    f"the sessions were served by challenger v{who['challenger_version']} but the challenger alias "
                    f"now points at v{current}; refusing to promote a version the data did not test")
            result["promoted"] = registry.promote(cfg.registry.model_name, who["challenger_version"],
                                                  f"online A/B: {decision.summary()}"[:4000], actor="ab-online")
            run.set_tags({"convrl.ab_online.promoted": who["challenger_version"]})
    return result
