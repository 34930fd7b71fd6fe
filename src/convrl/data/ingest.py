"""Ingest: source specs -> canonical turn table, persona table and quarantine.

Sources are named by URI-like specs, several at once (``chatterbot:english``,
``jsonl:/data/chats.jsonl``, ``dailydialog:data.zip?cap=500``; every kind is
listed in :mod:`convrl.data.sources`). Besides a loader's own options, every
spec takes ``cap=N`` (at most N conversations from it), ``weight=W`` (keep a
deterministic share W in (0, 1] of its conversations), ``min_turns=N`` and
``split=source`` (keep the source's own train/validation/test split where it
has one).

One rule everywhere: the unit of quarantine is the conversation, and nothing
is dropped silently. Every record is either in the turn table or in the
quarantine table with a :class:`~convrl.data.schema.Reason` category, a detail
naming the bad message or row, and its location; records left out on purpose
(blank lines, empty files, ``weight``/``min_turns`` filters) are counted in
``stats["skipped"]``, and empty inputs are reported in ``stats["warnings"]`` (which
``convrl data`` prints and the data card lists).

Each turn is Unicode-normalised, whitespace-cleaned, PII-redacted and cut to a
character and, optionally, a token budget (flagged ``truncated``, not dropped):
:mod:`convrl.data.prepare`. Validity checks run first; then exact duplicates
(up to case and punctuation) and near-duplicates (MinHash,
:mod:`convrl.data.dedup`) go to the quarantine as ``duplicate`` with the id of
the conversation kept (first seen). The split is deterministic by conversation
and stratified by source (:mod:`convrl.data.split`)::

    from convrl.data.ingest import ingest
    result = ingest(["chatterbot:english", "dailydialog:../shared/data/dailydialog/convlab3_unified/data.zip?cap=500"])
    result.turns, result.personas, result.quarantine, result.stats
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd
from tqdm.auto import tqdm

from convrl.data.dedup import NearDuplicateIndex, exact_key, normalise_for_dedup
from convrl.data.pii import PII_KINDS, redact_pii
from convrl.data.prepare import prepare
from convrl.data.schema import (PERSONA_COLUMNS, QUARANTINE_COLUMNS, Reason, conform_turns, empty_personas,
                                empty_quarantine, empty_turns)
from convrl.data.sources import SOURCE_LOADERS
from convrl.data.sources.base import Conversation, IngestError, RecordError, Skipped, q, split_query
from convrl.data.split import assign_splits, bucket
from convrl.data.text import clean_text, truncate

__all__ = ["Conversation", "IngestError", "IngestResult", "LOADERS", "assign_splits", "clean_text", "ingest",
           "parse_spec", "redact_pii", "truncate"]

@dataclass
class IngestResult:
    turns: pd.DataFrame
    quarantine: pd.DataFrame
    stats: dict = field(default_factory=dict)
    personas: pd.DataFrame = field(default_factory=empty_personas)  # persona cards the sources brought


# ------------------------------------------------------------------ specs

LOADERS = dict(SOURCE_LOADERS)
GENERIC_OPTIONS = ("cap", "weight", "min_turns", "split")


def parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind not in LOADERS:
        raise IngestError(f"unknown source kind '{kind}' in '{spec}'; known: {', '.join(sorted(LOADERS))}")
    return kind, arg


def _generic_options(spec: str, arg: str) -> tuple[str, dict]:
    """Take ingest's own options out of the spec; the loader gets the rest."""
    path, params = split_query(arg)
    opts = {k: params.pop(k) for k in GENERIC_OPTIONS if k in params}
    try:
        out = {"cap": int(opts.get("cap", 0)), "weight": float(opts.get("weight", 1.0)),
               "min_turns": int(opts.get("min_turns", 1)), "split": opts.get("split", "hash")}
    except ValueError as exc:
        raise IngestError(f"{spec}: cap and min_turns take integers, weight a number ({exc})") from None
    if not 0 < out["weight"] <= 1:
        raise IngestError(f"{spec}: weight={out['weight']} must lie in (0, 1]: it is the share of the source's "
                          "conversations kept (weights above 1 would duplicate conversations; cap the others)")
    if out["split"] not in ("hash", "source"):
        raise IngestError(f"{spec}: split={out['split']!r}: use split=source (the source's own split) or split=hash")
    rest = "&".join(f"{k}={v}" for k, v in params.items())
    return path + (f"?{rest}" if rest else ""), out


# ------------------------------------------------------------------ the run

def _excerpt(conv: Conversation) -> str:
    return " | ".join(f"{t.get('role')}: {str(t.get('text'))[:80]}" for t in conv.turns[:6])


class _Run:
    """What one ingest call accumulates across its sources."""

    def __init__(self, near_threshold: float, max_chars: int, max_tokens: int, pii):
        self.quarantine: list[dict] = []
        self.rows: list[dict] = []
        self.personas: dict[str, dict] = {}
        self.kept_by_key: dict[str, str] = {}  # exact-duplicate key -> id of the conversation kept
        self.used_ids: set[str] = set()
        self.near = NearDuplicateIndex(near_threshold) if near_threshold else None
        self.near_threshold = near_threshold
        self.limits, self.pii = (max_chars, max_tokens), pii
        self.pii_counts: dict[str, int] = {}
        self.truncated = self.n_dupes = self.n_near = self.n_convs = 0
        self.source_split: dict[str, str] = {}
        self.split_group: dict[str, str] = {}
        self.skipped: dict[str, int] = {}
        self.warnings: list[str] = []

    def skip(self, reason: str, ps: dict, count: int = 1) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + count
        ps["skipped"] += count

    def _unique_id(self, cid: str) -> str:
        if cid not in self.used_ids:  # two files or sources reusing an id: keep both, distinguishable
            return cid
        n = 2
        while f"{cid}~{n}" in self.used_ids:
            n += 1
        return f"{cid}~{n}"

    def take(self, conv: Conversation, spec: str, gen: dict, ps: dict) -> bool:
        """Quarantine, skip or keep one conversation; True when it was kept."""
        loc = conv.location or conv.conversation_id
        pii_counts: dict[str, int] = {}  # counted only if the conversation arrives
        try:
            turns, cut = prepare(conv, *self.limits, self.pii, pii_counts)
        except RecordError as exc:
            q(self.quarantine, spec, loc, _excerpt(conv), exc.detail, exc.category,
              conversation_id=conv.conversation_id)
            return False
        if len(turns) < gen["min_turns"]:
            self.skip(f"fewer than {gen['min_turns']} turns (min_turns)", ps)
            return False
        norm = [normalise_for_dedup(t["text"]) for t in turns]
        key = exact_key([(t["role"], n) for t, n in zip(turns, norm)], normalised=True)
        kept = self.kept_by_key.get(key)
        if kept is not None:
            self.n_dupes += 1
            ps["duplicates"] += 1
            q(self.quarantine, spec, loc, _excerpt(conv), f"exact duplicate of {kept} (same roles and texts up to "
              "case and punctuation)", Reason.DUPLICATE, conversation_id=conv.conversation_id, duplicate_of=kept)
            return False
        cid = self._unique_id(conv.conversation_id)
        if self.near is not None:
            hit = self.near.add_or_match(cid, norm, normalised=True)
            if hit is not None:
                self.n_near += 1
                ps["near_duplicates"] += 1
                q(self.quarantine, spec, loc, _excerpt(conv), f"near-duplicate of {hit[0]} (word 3-gram Jaccard "
                  f"{hit[1]:.2f} >= {self.near_threshold})", Reason.DUPLICATE,
                  conversation_id=conv.conversation_id, duplicate_of=hit[0])
                return False
        self.kept_by_key[key] = cid
        self.used_ids.add(cid)
        self.truncated += cut
        for kind, n in pii_counts.items():
            self.pii_counts[kind] = self.pii_counts.get(kind, 0) + n
        if gen["split"] == "source" and conv.split in ("train", "validation", "test"):
            self.source_split[cid] = conv.split
        if conv.split_group:
            self.split_group[cid] = f"{spec}|{conv.split_group}"
        if conv.persona and conv.persona.get("persona_id"):
            self.personas.setdefault(conv.persona["persona_id"], conv.persona)
        self.n_convs += 1
        ps["conversations"] += 1
        ps["turns"] += len(turns)
        for i, t in enumerate(turns):
            self.rows.append({"conversation_id": cid, "turn_index": i, "role": t["role"], "text": t["text"],
                              "emotion": t.get("emotion"), "act": t.get("act"), "persona_id": conv.persona_id,
                              "feedback_rating": t.get("feedback_rating"), "feedback_thumb": t.get("feedback_thumb"),
                              "source": spec, "truncated": t["truncated"], "emotion_fine": t.get("emotion_fine")})
        return True

    def quarantine_table(self) -> pd.DataFrame:
        if not self.quarantine:
            return empty_quarantine()
        qt = pd.DataFrame([_conform_row(r) for r in self.quarantine], columns=QUARANTINE_COLUMNS)
        if self.pii is None or self.pii:
            # The quarantine is logged as an artifact too: its excerpts get the same redaction as the turns.
            for col in ("raw", "detail"):
                qt[col] = [redact_pii(v, None, self.pii) if isinstance(v, str) else v for v in qt[col]]
        return qt


def _conform_row(row: dict) -> dict:
    """A quarantine row with every column; a loader's row with only a free-text ``reason`` keeps it as detail."""
    if "category" not in row:
        row = {**row, "category": Reason.OTHER.value, "detail": row.get("reason", "")}
    return {c: row.get(c) for c in QUARANTINE_COLUMNS}


def _empty_result(run: _Run, stats: dict) -> IngestResult:
    return IngestResult(empty_turns(), run.quarantine_table(), stats, empty_personas())


# ------------------------------------------------------------------ main entry

def ingest(sources: list[str], seed: int = 13, val_fraction: float = 0.1, test_fraction: float = 0.2,
           max_conversations: int = 0, max_turn_chars: int = 2000, quarantine_threshold: float = 0.05, *,
           max_turn_tokens: int = 0, near_duplicate_threshold: float = 0.85,
           pii: Iterable[str] | None = None, allow_empty: bool = False) -> IngestResult:
    """Load, clean, deduplicate and split ``sources``; see the module docstring.

    ``near_duplicate_threshold``: Jaccard similarity of word 3-grams at or above
    which a conversation is a near-duplicate (0 turns near-duplicate removal off).
    ``pii``: the PII kinds to redact (default all of ``PII_KINDS``; ``[]`` none).
    ``allow_empty``: return an empty result (with a warning) when the sources hold
    nothing at all, instead of raising; sources whose records were all quarantined
    always raise, with the result (and so the quarantine table) on ``error.result``.
    """
    if isinstance(sources, str):
        sources = [sources]
    pii = None if pii is None else tuple(pii)
    unknown_pii = set(pii or ()) - set(PII_KINDS)
    if unknown_pii:
        raise IngestError(f"unknown PII kinds {sorted(unknown_pii)}; known: {', '.join(PII_KINDS)}")
    specs = []
    for spec in sources:
        kind, arg = parse_spec(spec)
        specs.append((spec, kind, *_generic_options(spec, arg)))
    run = _Run(near_duplicate_threshold, max_turn_chars, max_turn_tokens, pii)
    per_source: dict[str, dict] = {}
    for spec, kind, arg, gen in specs:
        ps = per_source[spec] = {"conversations": 0, "turns": 0, "quarantined": 0, "duplicates": 0,
                                 "near_duplicates": 0, "skipped": 0}
        q_before = len(run.quarantine)
        stream = LOADERS[kind](arg, run.quarantine, spec)
        try:
            for conv in tqdm(stream, desc=f"ingest {spec[:40]}", unit=" records", disable=None, leave=False):
                if isinstance(conv, Skipped):
                    run.skip(conv.reason, ps, conv.count)
                    if conv.warning:
                        run.warnings.append(f"{spec}: {conv.warning}")
                    continue
                if gen["weight"] < 1 and bucket(f"w:{conv.conversation_id}", seed) >= gen["weight"]:
                    run.skip("not sampled (weight)", ps)
                    continue
                if run.take(conv, spec, gen, ps) and (
                        (gen["cap"] and ps["conversations"] >= gen["cap"])
                        or (max_conversations and run.n_convs >= max_conversations)):
                    break
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()  # stop reading a capped source now, releasing its files
        ps["quarantined"] = sum(r.get("category") != Reason.DUPLICATE.value for r in run.quarantine[q_before:])
        if max_conversations and run.n_convs >= max_conversations:
            break
    qt = run.quarantine_table()
    categories = {str(k): int(v) for k, v in qt["category"].value_counts().items()}
    n_bad = len(qt) - categories.get(Reason.DUPLICATE.value, 0)
    n_total = run.n_convs + n_bad
    frac = n_bad / n_total if n_total else 0.0
    stats = {"conversations": run.n_convs, "turns": len(run.rows), "quarantined": n_bad,
             "quarantined_fraction": frac, "duplicates_removed": run.n_dupes, "near_duplicates_removed": run.n_near,
             "truncated_turns": run.truncated, "skipped_records": sum(run.skipped.values()),
             "personas_from_sources": len(run.personas),
             **{f"pii_{k}": v for k, v in sorted(run.pii_counts.items())},
             # flat per-category counts too, so the ingest stage logs each as an MLflow metric
             **{f"quarantine_{k}": v for k, v in sorted(categories.items())},
             "quarantine_categories": categories, "skipped": run.skipped, "warnings": run.warnings,
             "per_source": per_source}
    if not run.rows:
        return _nothing_arrived(run, stats, sources, n_bad, categories, allow_empty)
    turns_df = pd.DataFrame(run.rows)
    turns_df["feedback_rating"] = pd.to_numeric(turns_df["feedback_rating"], errors="coerce")
    turns_df["feedback_thumb"] = pd.to_numeric(turns_df["feedback_thumb"], errors="coerce")
    split_of = assign_splits(turns_df["conversation_id"], turns_df["source"], val_fraction, test_fraction, seed,
                             groups=run.split_group)
    split_of.update(run.source_split)
    turns_df["split"] = turns_df["conversation_id"].map(split_of)
    turns_df = conform_turns(turns_df)
    stats.update({f"split_{k}_conversations": int(v) for k, v in
                  turns_df.drop_duplicates("conversation_id")["split"].value_counts().items()})
    persona_df = (pd.DataFrame(list(run.personas.values()), columns=PERSONA_COLUMNS) if run.personas
                  else empty_personas())
    result = IngestResult(turns_df, qt, stats, persona_df)
    if frac > quarantine_threshold:
        err = IngestError(
            f"{n_bad} of {n_total} conversations/records ({frac:.1%}) were quarantined, above the "
            f"threshold {quarantine_threshold:.0%}. Inspect the quarantine table (categories: "
            f"{_top(categories)}) or raise data.quarantine_threshold.")
        err.result = result  # so a caller can still save the quarantine table it is told to inspect
        raise err
    return result


def _top(categories: dict[str, int], n: int = 4) -> str:
    bad = {k: v for k, v in categories.items() if k != Reason.DUPLICATE.value}
    return ", ".join(f"{k} {v}" for k, v in list(bad.items())[:n]) or "none"


def _nothing_arrived(run: _Run, stats: dict, sources: list[str], n_bad: int, categories: dict,
                     allow_empty: bool) -> IngestResult:
    """No conversation arrived: an error carrying the quarantine, or (nothing there at all) a warning."""
    result = _empty_result(run, stats)
    if n_bad == 0 and allow_empty:
        msg = f"no conversations in sources {sources}" + (f"; skipped: {run.skipped}" if run.skipped else "")
        run.warnings.append(msg)
        return result
    if n_bad:
        first = next(r for r in result.quarantine.itertuples() if r.category != Reason.DUPLICATE.value)
        err = IngestError(f"no usable conversations in sources {sources}: all {n_bad} records were quarantined "
                          f"(categories: {_top(categories)}; the first: {first.location}: {first.detail[:200]}); "
                          "see the quarantine table for each one's reason")
    else:
        err = IngestError(f"no conversations in sources {sources}"
                          + (f"; skipped: {run.skipped}" if run.skipped else "")
                          + (f"; {'; '.join(run.warnings)}" if run.warnings else ""))
    err.result = result
    raise err
