"""Ingest and validate stages: sources -> Parquet tables -> great-expectations report.

Each runs as a cached compute step (``ingest_compute``, ``validate_compute``: no MLflow, keyed on
the config section and the data; see ``convrl.stages.cached``) and an uncached record step
(``ingest_record``, ``validate_record``) that logs to the run's MLflow parent run.
``ingest_stage`` / ``validate_stage`` do both, for use outside a pipeline.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from convrl import tracking
from convrl.config import Config
from convrl.data.ingest import IngestError, ingest
from convrl.data.personas import load_personas, personas_table
from convrl.data.schema import empty_personas, empty_quarantine, empty_turns
from convrl.data.sources.remote import localize_sources
from convrl.stages import cached


def data_fingerprint(turns: pd.DataFrame) -> str:
    import hashlib

    h = pd.util.hash_pandas_object(turns[["conversation_id", "turn_index", "role", "text", "split"]], index=False)
    return hashlib.sha256(h.values.tobytes()).hexdigest()[:16]


def data_card(turns: pd.DataFrame) -> dict:
    convs = turns.drop_duplicates("conversation_id")
    lengths = turns["text"].str.len()
    return {
        "conversations_per_source": convs["source"].value_counts().to_dict(),
        "conversations_per_split": convs["split"].value_counts().to_dict(),
        "turns_per_role": turns["role"].value_counts().to_dict(),
        "turns_per_emotion": turns["emotion"].fillna("(none)").value_counts().to_dict(),
        "turn_chars": {"mean": float(lengths.mean()), "p50": float(lengths.median()),
                       "p95": float(lengths.quantile(0.95)), "max": int(lengths.max())},
    }


def ingest_config(cfg: Config):
    """``ingest`` of ``cfg.data`` as the pipeline runs it (remote sources copied first): same split, same rows."""
    d = cfg.data
    return ingest(localize_sources(cfg).data.sources, seed=d.seed, val_fraction=d.val_fraction,
                  test_fraction=d.test_fraction, max_conversations=d.max_conversations,
                  max_turn_chars=d.max_turn_chars, quarantine_threshold=d.quarantine_threshold,
                  max_turn_tokens=d.max_turn_tokens, near_duplicate_threshold=d.near_duplicate_threshold, pii=d.pii)


def ingest_compute(cfg: Config, turns_path: str, personas_path: str, quarantine_path: str,
                   summary_path: str) -> dict:
    """Ingest without MLflow (the cached pipeline step): the three tables and a summary for ``ingest_record``.

    Remote sources (``s3://``, ``gs://``) are copied to local files first. An input error (a missing
    source, over the quarantine threshold) is kept in the summary with whatever quarantine table
    there is, for the record step to log and raise.
    """
    from convrl.data.card import build_card

    d = cfg.data
    for p in (turns_path, personas_path, quarantine_path):
        Path(p).parent.mkdir(parents=True, exist_ok=True)
    summary: dict = {"sources": list(d.sources)}
    result = None
    with cached.deferred_errors(summary):
        personas = load_personas(d.personas)
        try:
            result = ingest_config(cfg)
        except IngestError as exc:
            # Keep the table the error tells people to inspect; the record step logs it.
            partial = getattr(exc, "result", None)
            (partial.quarantine if partial is not None else empty_quarantine()).to_parquet(quarantine_path,
                                                                                           index=False)
            raise
    if result is None:  # outputs must exist for KFP to upload them
        empty_turns().to_parquet(turns_path, index=False)
        empty_personas().to_parquet(personas_path, index=False)
        if not Path(quarantine_path).exists():
            empty_quarantine().to_parquet(quarantine_path, index=False)
        cached.write_summary(summary_path, summary)
        return summary
    result.turns.to_parquet(turns_path, index=False)
    # Config persona cards first; persona cards the sources bring (PersonaChat, ConvAI2, ...) after them,
    # unless a config card already uses the id.
    ptable = personas_table(personas)
    extra = result.personas[~result.personas["persona_id"].isin(set(ptable["persona_id"]))]
    if len(extra):
        ptable = pd.concat([ptable, extra[ptable.columns]], ignore_index=True)
    ptable.to_parquet(personas_path, index=False)
    result.quarantine.to_parquet(quarantine_path, index=False)
    fp = data_fingerprint(result.turns)
    stats = {**result.stats, "personas": len(ptable), "persona_cards_from_config": len(personas)}
    summary.update(stats=stats, card=data_card(result.turns), full_card=build_card(result), data_fingerprint=fp)
    cached.write_summary(summary_path, summary)
    return {**stats, "data_fingerprint": fp}


def ingest_record(cfg: Config, parent_run_id: str, turns_path: str, personas_path: str, quarantine_path: str,
                  summary_path: str) -> dict:
    """Log an ingest step's outputs under ``parent_run_id`` (every run, cache hit or not); raise its input error."""
    from convrl.data.card import render_card

    summary = cached.read_summary(summary_path, "ingest")
    with tracking.stage_run(parent_run_id, "ingest", cfg.tracking.experiment) as run:
        if summary.get("error"):
            run.log_artifact(quarantine_path, "data")
            cached.raise_deferred(summary)
        stats, fp, full_card = summary["stats"], summary["data_fingerprint"], summary["full_card"]
        turns = pd.read_parquet(turns_path)
        run.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))}, parent=True)
        run.set_tags({"convrl.data_fingerprint": fp}, parent=True)
        run.log_dict({**summary["card"], **full_card, "stats": stats, "data_fingerprint": fp}, "data_card.json")
        run.log_text(render_card(full_card), "data_card.md")
        run.log_dataset(turns, "turns:" + ",".join(summary["sources"]), "training",
                        source=str(Path(turns_path).resolve()))
        for path in (turns_path, personas_path, quarantine_path):
            run.log_artifact(path, "data")
        _log_length_histogram(run, turns)
        return {**stats, "data_fingerprint": fp}


def ingest_stage(cfg: Config, parent_run_id: str, turns_path: str, personas_path: str,
                 quarantine_path: str, summary_path: str = "") -> dict:
    """Ingest and log in one call (outside a pipeline); the summary goes next to the turns unless given."""
    summary_path = summary_path or str(Path(turns_path).with_name("ingest_summary.json"))
    ingest_compute(cfg, turns_path, personas_path, quarantine_path, summary_path)
    return ingest_record(cfg, parent_run_id, turns_path, personas_path, quarantine_path, summary_path)


def _log_length_histogram(run, turns: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for role, grp in turns.groupby("role"):
        ax.hist(grp["text"].str.split().str.len(), bins=40, alpha=0.6, label=role)
    ax.set_xlabel("words per turn")
    ax.set_ylabel("turns")
    ax.set_title("Turn length by role")
    ax.legend()
    fig.tight_layout()
    run.log_figure(fig, "turn_lengths.png")
    plt.close(fig)


def validate_compute(cfg: Config, turns_path: str, personas_path: str, report_html_path: str,
                     report_md_path: str, results_path: str) -> dict:
    """Run the great-expectations suites without MLflow (the cached step): the report, and its results as JSON."""
    from convrl.data_checks.runner import run_checks

    report = run_checks(pd.read_parquet(turns_path), pd.read_parquet(personas_path),
                        min_conversations_per_split=cfg.validate.min_conversations_per_split,
                        max_text_chars=cfg.validate.max_text_chars)
    Path(report_html_path).parent.mkdir(parents=True, exist_ok=True)
    Path(report_html_path).write_text(report.to_html())
    Path(report_md_path).write_text(report.to_markdown())
    cached.write_summary(results_path, report.to_dict())
    return {"expectations": len(report.results), "failed": len(report.failures)}


def validate_record(cfg: Config, parent_run_id: str, results_path: str) -> dict:
    """Log a validation report under ``parent_run_id``; fail the run when an expectation failed."""
    from convrl.data_checks.runner import CheckReport

    report = CheckReport(results=cached.read_summary(results_path, "validate")["results"])
    with tracking.stage_run(parent_run_id, "validate", cfg.tracking.experiment) as run:
        run.log_text(report.to_markdown(), "data_checks/report.md")
        run.log_text(report.to_html(), "data_checks/report.html")
        run.log_dict(report.to_dict(), "data_checks/report.json")
        run.log_metrics({"expectations": len(report.results), "expectations_failed": len(report.failures)},
                        parent=True)
        report.raise_for_failure()
        return {"expectations": len(report.results), "failed": len(report.failures)}


def validate_stage(cfg: Config, parent_run_id: str, turns_path: str, personas_path: str,
                   report_html_path: str, report_md_path: str) -> dict:
    """Validate and log in one call (outside a pipeline)."""
    results_path = str(Path(report_md_path).with_name("data_checks.json"))
    validate_compute(cfg, turns_path, personas_path, report_html_path, report_md_path, results_path)
    return validate_record(cfg, parent_run_id, results_path)


def load_json(path: str) -> dict:
    return json.loads(Path(path).read_text())
