"""A data card for an ingest result: what came in, from where, and what was left out.

Counts per source, split, role, emotion, dialogue act and persona; feedback
coverage; a turn-length histogram drawn in text; PII redactions per type;
duplicates, truncations, skipped records, warnings and the quarantine by
reason category (:class:`convrl.data.schema.Reason`), each with an example.
``build_card`` returns a JSON-able dict (logged to MLflow by the ingest stage),
``render_card`` the text ``convrl data inspect`` prints::

    from convrl.data.card import build_card, render_card
    print(render_card(build_card(ingest(["chatterbot:english"]))))
"""

from __future__ import annotations

import math

import pandas as pd

# Word-count bins, doubling: turn lengths are heavy-tailed, so equal-width bins hide the tail.
LENGTH_BINS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
BAR = 40


def _counts(series: pd.Series, missing: str = "(none)") -> dict[str, int]:
    return {str(k): int(v) for k, v in series.fillna(missing).value_counts().items()}


def length_histogram(turns: pd.DataFrame) -> list[dict]:
    words = turns["text"].str.split().str.len().fillna(0).astype(int)
    edges = list(LENGTH_BINS) + [math.inf]
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        n = int(((words >= lo) & (words < hi)).sum())
        label = f"{lo}" if hi == lo + 1 else (f"{lo}-{hi - 1}" if hi != math.inf else f"{lo}+")
        rows.append({"words": label, "turns": n})
    return rows


def build_card(result) -> dict:
    """``result``: an :class:`convrl.data.ingest.IngestResult`."""
    t, stats = result.turns, result.stats
    convs = t.drop_duplicates("conversation_id")
    words = t["text"].str.split().str.len()
    personas = getattr(result, "personas", None)
    rated = t["feedback_rating"].notna()
    qt = result.quarantine
    card = {
        "totals": {"conversations": int(stats.get("conversations", len(convs))), "turns": len(t),
                   "quarantined": int(stats.get("quarantined", len(result.quarantine))),
                   "duplicates_removed": int(stats.get("duplicates_removed", 0)),
                   "near_duplicates_removed": int(stats.get("near_duplicates_removed", 0)),
                   "skipped_records": int(stats.get("skipped_records", 0)),
                   "truncated_turns": int(stats.get("truncated_turns", 0))},
        "per_source": stats.get("per_source") or {s: {"conversations": int(n)} for s, n in
                                                    convs["source"].value_counts().items()},
        "conversations_per_split": _counts(convs["split"]),
        "turns_per_role": _counts(t["role"]),
        "turns_per_emotion": _counts(t["emotion"]),
        "turns_per_act": _counts(t["act"]),
        "conversations_per_persona": _counts(convs["persona_id"]),
        "personas_from_sources": 0 if personas is None else len(personas),
        "feedback": {"rated_turns": int(rated.sum()),
                     "mean_rating": float(t.loc[rated, "feedback_rating"].mean()) if rated.any() else None,
                     "ratings": {str(k): int(v) for k, v in
                                 t.loc[rated, "feedback_rating"].round().astype(int).value_counts().sort_index().items()},
                     "thumbs_up": int((t["feedback_thumb"] == 1).sum()),
                     "thumbs_down": int((t["feedback_thumb"] == 0).sum())},
        "turn_words": {"mean": float(words.mean()), "p50": float(words.median()), "p95": float(words.quantile(0.95)),
                       "max": int(words.max())} if len(t) else {"mean": 0.0, "p50": 0.0, "p95": 0.0, "max": 0},
        "turn_length_histogram": length_histogram(t),
        "pii_redacted": {k[4:]: int(v) for k, v in stats.items() if k.startswith("pii_")},
        "skipped": dict(stats.get("skipped") or {}),
        "warnings": list(stats.get("warnings") or []),
        "quarantine_categories": _counts(qt["category"]) if len(qt) else {},
        # One example per category (the first one seen) with where it was, so the card says what is wrong.
        "quarantine_examples": {str(c): f"{g['location'].iloc[0]}: {g['detail'].iloc[0]}"
                                for c, g in qt.groupby("category", sort=False)} if len(qt) else {},
    }
    return card


def _table(title: str, counts: dict, limit: int = 12) -> list[str]:
    if not counts:
        return [f"{title}: (none)", ""]
    total = sum(counts.values()) or 1
    width = max(len(str(k)) for k in list(counts)[:limit])
    lines = [f"{title}:"]
    for k, v in list(counts.items())[:limit]:
        lines.append(f"  {str(k):<{width}}  {v:>8,}  {v / total:6.1%}")
    if len(counts) > limit:
        rest = sum(list(counts.values())[limit:])
        lines.append(f"  ... {len(counts) - limit} more ({rest:,} in all)")
    return lines + [""]


def render_card(card: dict) -> str:
    tot = card["totals"]
    lines = ["Data card", "=========", "",
             f"{tot['conversations']:,} conversations, {tot['turns']:,} turns; "
             f"{tot['quarantined']:,} quarantined, {tot['duplicates_removed']:,} exact and "
             f"{tot['near_duplicates_removed']:,} near duplicates removed, {tot['skipped_records']:,} records "
             f"skipped, {tot['truncated_turns']:,} turns truncated.", ""]
    lines.append("Sources:")
    for spec, s in card["per_source"].items():
        extra = ", ".join(f"{k} {v:,}" for k, v in s.items() if k != "conversations" and v)
        lines.append(f"  {spec}\n      {s.get('conversations', 0):,} conversations" + (f" ({extra})" if extra else ""))
    lines.append("")
    lines += _table("Conversations per split", card["conversations_per_split"])
    lines += _table("Turns per role", card["turns_per_role"])
    lines += _table("Turns per emotion", card["turns_per_emotion"])
    lines += _table("Turns per dialogue act", card["turns_per_act"])
    lines += _table(f"Conversations per persona ({card['personas_from_sources']:,} persona cards from the sources)",
                    card["conversations_per_persona"], limit=8)
    fb = card["feedback"]
    mean = f", mean {fb['mean_rating']:.2f}" if fb["mean_rating"] is not None else ""
    lines += [f"Feedback: {fb['rated_turns']:,} rated turns{mean} "
              f"(ratings {fb['ratings'] or '-'}); thumbs up {fb['thumbs_up']:,}, down {fb['thumbs_down']:,}", ""]
    tw = card["turn_words"]
    lines.append(f"Turn length in words (mean {tw['mean']:.1f}, median {tw['p50']:.0f}, p95 {tw['p95']:.0f}, "
                 f"max {tw['max']:,}):")
    peak = max((r["turns"] for r in card["turn_length_histogram"]), default=0) or 1
    for r in card["turn_length_histogram"]:
        bar = "#" * round(BAR * r["turns"] / peak)
        lines.append(f"  {r['words']:>8} | {bar:<{BAR}} {r['turns']:,}")
    lines.append("")
    pii = card["pii_redacted"]
    lines += [("PII redacted: " + ", ".join(f"{k} {v:,}" for k, v in pii.items())) if pii
              else "PII redacted: none found", ""]
    if card["warnings"]:
        lines += ["Warnings:"] + [f"  {w}" for w in card["warnings"]] + [""]
    if card["skipped"]:
        lines += _table("Skipped on purpose", card["skipped"])
    if card["quarantine_categories"]:
        lines += _table("Quarantine by category (duplicates included)", card["quarantine_categories"], limit=20)
        lines += ["Quarantine examples (first of each category):"]
        lines += [f"  {c}: {ex[:160]}" for c, ex in card["quarantine_examples"].items()] + [""]
    return "\n".join(lines).rstrip() + "\n"
