"""Ingest and validate stages: sources -> Parquet tables -> great-expectations report."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from convrl import tracking
from convrl.config import Config
from convrl.data.ingest import ingest
from convrl.data.personas import load_personas, personas_table


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


def ingest_stage(cfg: Config, parent_run_id: str, turns_path: str, personas_path: str,
                 quarantine_path: str) -> dict:
    from convrl.data.card import build_card, render_card
    from convrl.data.ingest import IngestError

    with tracking.stage_run(parent_run_id, "ingest", cfg.tracking.experiment) as run:
        d = cfg.data
        personas = load_personas(d.personas)
        for p in (turns_path, personas_path, quarantine_path):
            Path(p).parent.mkdir(parents=True, exist_ok=True)
        try:
            result = ingest(d.sources, seed=d.seed, val_fraction=d.val_fraction, test_fraction=d.test_fraction,
                            max_conversations=d.max_conversations, max_turn_chars=d.max_turn_chars,
                            quarantine_threshold=d.quarantine_threshold,
                            max_turn_tokens=d.max_turn_tokens,
                            near_duplicate_threshold=d.near_duplicate_threshold,
                            pii=d.pii)
        except IngestError as exc:
            # Over the quarantine threshold: keep the table the error tells people to inspect.
            partial = getattr(exc, "result", None)
            if partial is not None:
                partial.quarantine.to_parquet(quarantine_path, index=False)
                run.log_artifact(quarantine_path, "data")
            raise
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
        run.log_metrics({k: v for k, v in stats.items() if isinstance(v, (int, float))}, parent=True)
        run.set_tags({"convrl.data_fingerprint": fp}, parent=True)
        card = data_card(result.turns)
        full_card = build_card(result)
        run.log_dict({**card, **full_card, "stats": stats, "data_fingerprint": fp}, "data_card.json")
        run.log_text(render_card(full_card), "data_card.md")
        run.log_dataset(result.turns, "turns:" + ",".join(d.sources), "training", source=str(Path(turns_path).resolve()))
        run.log_artifact(turns_path, "data")
        run.log_artifact(personas_path, "data")
        run.log_artifact(quarantine_path, "data")
        _log_length_histogram(run, result.turns)
        return {**stats, "data_fingerprint": fp}


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


def validate_stage(cfg: Config, parent_run_id: str, turns_path: str, personas_path: str,
                   report_html_path: str, report_md_path: str) -> dict:
    with tracking.stage_run(parent_run_id, "validate", cfg.tracking.experiment) as run:
        from convrl.data_checks.runner import run_checks

        turns = pd.read_parquet(turns_path)
        personas = pd.read_parquet(personas_path)
        report = run_checks(turns, personas, min_conversations_per_split=cfg.validate.min_conversations_per_split,
                            max_text_chars=cfg.validate.max_text_chars)
        Path(report_html_path).parent.mkdir(parents=True, exist_ok=True)
        Path(report_html_path).write_text(report.to_html())
        Path(report_md_path).write_text(report.to_markdown())
        run.log_text(report.to_markdown(), "data_checks/report.md")
        run.log_text(report.to_html(), "data_checks/report.html")
        run.log_dict(report.to_dict(), "data_checks/report.json")
        failed = [r for r in report.results if not r["success"]]
        run.log_metrics({"expectations": len(report.results), "expectations_failed": len(failed)}, parent=True)
        report.raise_for_failure()
        return {"expectations": len(report.results), "failed": len(failed)}


def load_json(path: str) -> dict:
    return json.loads(Path(path).read_text())
