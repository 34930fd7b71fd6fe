"""Ingest: source specs -> canonical turn table, persona table and quarantine.

Sources are named by URI-like specs, several at once (``chatterbot:english``,
``jsonl:/data/chats.jsonl``, ``dailydialog:data.zip?cap=500``; every kind is
listed in :mod:`convrl.data.sources`). Besides a loader's own options, every
spec takes ``cap=N`` (at most N conversations from it), ``weight=W`` (keep a
deterministic share W in (0, 1] of its conversations), ``min_turns=N`` and
``split=source`` (keep the source's own train/validation/test split where it
has one). Rows that cannot be used go to the quarantine with a reason instead
of disappearing; records a loader leaves out on purpose are counted in
``stats["skipped"]``.

Each turn is Unicode-normalised, whitespace-cleaned, PII-redacted and cut to a
character and, optionally, a token budget (flagged ``truncated``, not dropped).
Exact duplicates (up to case and punctuation) and near-duplicates (MinHash,
:mod:`convrl.data.dedup`) are removed, first seen kept. The split is
deterministic by conversation and stratified by source::

    from convrl.data.ingest import ingest
    result = ingest(["chatterbot:english", "dailydialog:../shared/data/dailydialog/convlab3_unified/data.zip?cap=500"])
    result.turns, result.personas, result.quarantine, result.stats
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Iterable

import pandas as pd

from convrl.data.dedup import NearDuplicateIndex, exact_key
from convrl.data.schema import (PERSONA_COLUMNS, QUARANTINE_COLUMNS, ROLES, conform_turns, empty_personas,
                                empty_quarantine)
from convrl.data.sources import SOURCE_LOADERS
from convrl.data.sources.base import Conversation, IngestError, Skipped, split_query
from convrl.data.sources.labels import ACTS, EMOTIONS

__all__ = ["Conversation", "IngestError", "IngestResult", "LOADERS", "assign_splits", "clean_text", "ingest",
           "parse_spec", "redact_pii", "truncate"]


@dataclass
class IngestResult:
    turns: pd.DataFrame
    quarantine: pd.DataFrame
    stats: dict = field(default_factory=dict)
    personas: pd.DataFrame = field(default_factory=empty_personas)  # persona cards the sources brought


# ------------------------------------------------------------------ cleaning

_WS = re.compile(r"[ \t\u00a0]+")
_PII = {
    "email": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    "url_secret": re.compile(r"(?i)\b(https?://[^\s]*?[?&](?:token|key|api_key|apikey|secret|password|pwd|sig)=)[^\s&]+"),
    "ip": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "credit_card": re.compile(r"\b(?:\d[ -]?){13,19}\b"),
    "phone": re.compile(r"(?<![\w])(?<!\d[ .-])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3,4}[ .-]?\d{3,4}(?![\w])(?![ .-]\d)"),
}
PII_KINDS = tuple(_PII)
_DIGIT = re.compile(r"\d")
# ASCII control characters except tab and newline; the fast path of clean_text for ASCII text.
_ASCII_CONTROL = {i: None for i in (*range(0, 9), *range(11, 32), 127)}


def _luhn_ok(digits: str) -> bool:
    total, parity = 0, len(digits) % 2
    for i, ch in enumerate(digits):
        d = int(ch)
        if i % 2 == parity:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def redact_pii(text: str, counts: dict[str, int] | None = None, kinds: Iterable[str] | None = None) -> str:
    """Replace e-mails, URL secrets, IPs, Luhn-valid card numbers and phone numbers (``kinds``: a subset)."""
    counts = counts if counts is not None else {}
    kinds = PII_KINDS if kinds is None else tuple(kinds)
    # Cheap guards first: most turns hold no '@', no URL and no digit, and skip every pattern.
    has_digit = _DIGIT.search(text) is not None

    def sub(kind: str, repl):
        nonlocal text
        if kind not in kinds:
            return

        def f(m: re.Match) -> str:
            r = repl(m)
            if r != m.group(0):
                counts[kind] = counts.get(kind, 0) + 1
            return r

        text = _PII[kind].sub(f, text)

    if "@" in text:
        sub("email", lambda m: "[EMAIL]")
    if "://" in text:
        sub("url_secret", lambda m: m.group(1) + "[SECRET]")
    if not has_digit:
        return text
    sub("ip", lambda m: "[IP]")

    def card(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return "[CARD]" if 13 <= len(digits) <= 19 and _luhn_ok(digits) else m.group(0)

    sub("credit_card", card)

    def phone(m: re.Match) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return "[PHONE]" if 7 <= len(digits) <= 15 else m.group(0)

    sub("phone", phone)
    return text


def clean_text(text: str) -> str:
    if text.isascii():
        text = text.translate(_ASCII_CONTROL)  # NFKC and the category filter are no-ops on the rest
    else:
        text = unicodedata.normalize("NFKC", text)
        text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    if "\n" not in text:
        return _WS.sub(" ", text).strip()
    lines = [_WS.sub(" ", line).strip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line).strip()


_TOKEN = re.compile(r"\w+|[^\w\s]")


def truncate(text: str, max_chars: int, max_tokens: int = 0) -> tuple[str, bool]:
    """Cut to ``max_chars`` characters and ``max_tokens`` tokens (words and punctuation marks,
    a close, tokenizer-free proxy for subword tokens; 0 = no token budget)."""
    cut = False
    if max_chars and len(text) > max_chars:
        text, cut = text[:max_chars].rstrip(), True
    if max_tokens and len(text) > max_tokens:  # a token has at least one character
        for i, m in enumerate(_TOKEN.finditer(text)):
            if i == max_tokens:
                text, cut = text[: m.start()].rstrip(), True
                break
    return text, cut


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


# ------------------------------------------------------------------ split

def _bucket(key: str, seed: int) -> float:
    h = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    return int(h[:12], 16) / float(16 ** 12)


def assign_splits(conv_ids: pd.Series, sources: pd.Series, val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, str]:
    """Deterministic, per-source (stratified) split by conversation id."""
    out: dict[str, str] = {}
    frame = pd.DataFrame({"cid": conv_ids, "src": sources}).drop_duplicates("cid")
    for _, grp in frame.groupby("src", sort=True):
        ids = sorted(grp["cid"], key=lambda c: _bucket(c, seed))
        n = len(ids)
        n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
        n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
        for i, cid in enumerate(ids):
            out[cid] = "test" if i < n_test else "validation" if i < n_test + n_val else "train"
    return out


# ------------------------------------------------------------------ one conversation

def _invalid(turn: dict) -> str | None:
    """Why a loader's turn breaks the schema (custom loaders included), or None."""
    if turn.get("role") not in ROLES:
        return f"unknown role {turn.get('role')!r}"
    if not isinstance(turn.get("text"), str):
        return "turn text is not a string"
    if turn.get("emotion") is not None and turn["emotion"] not in EMOTIONS:
        return f"emotion {turn['emotion']!r} is not one of {', '.join(EMOTIONS)}"
    if turn.get("act") is not None and turn["act"] not in ACTS:
        return f"act {turn['act']!r} is not one of {', '.join(ACTS)}"
    r, t = turn.get("feedback_rating"), turn.get("feedback_thumb")
    if r is not None and not (isinstance(r, (int, float)) and (r != r or 1 <= r <= 5)):
        return f"feedback_rating {r!r} is not in 1-5"
    if t is not None and not (isinstance(t, (int, float)) and (t != t or t in (0, 1))):
        return f"feedback_thumb {t!r} is not 0/1"
    return None


class _Counter:
    def __init__(self):
        self.pii: dict[str, int] = {}
        self.truncated = self.empty_turns = 0


def _prepare(conv: Conversation, c: _Counter, max_chars: int, max_tokens: int, pii) -> tuple[list[dict], str]:
    turns = []
    for t in conv.turns:
        bad = _invalid(t)
        if bad:
            return [], bad
        text = clean_text(t["text"])
        if not text:
            c.empty_turns += 1
            continue
        if pii is None or pii:
            text = redact_pii(text, c.pii, pii)
        text, cut = truncate(text, max_chars, max_tokens)
        c.truncated += cut
        turns.append({**t, "text": text, "truncated": cut})
    if not turns:
        return [], "conversation has no non-empty turns"
    if not any(t["role"] == "user" for t in turns):
        return [], "conversation has no user turn"
    return turns, ""


# ------------------------------------------------------------------ main entry

def ingest(sources: list[str], seed: int = 13, val_fraction: float = 0.1, test_fraction: float = 0.2,
           max_conversations: int = 0, max_turn_chars: int = 2000, quarantine_threshold: float = 0.05, *,
           max_turn_tokens: int = 0, near_duplicate_threshold: float = 0.85,
           pii: Iterable[str] | None = None) -> IngestResult:
    """Load, clean, deduplicate and split ``sources``; see the module docstring.

    ``near_duplicate_threshold``: Jaccard similarity of word 3-grams at or above
    which a conversation is a near-duplicate (0 turns near-duplicate removal off).
    ``pii``: the PII kinds to redact (default all of ``PII_KINDS``; ``[]`` none).
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
    quarantine: list[dict] = []
    rows: list[dict] = []
    personas: dict[str, dict] = {}
    seen: set[str] = set()
    used_ids: set[str] = set()
    near = NearDuplicateIndex(near_duplicate_threshold) if near_duplicate_threshold else None
    counter = _Counter()
    per_source: dict[str, dict] = {}
    source_split: dict[str, str] = {}
    skipped: dict[str, int] = {}
    n_dupes = n_near = n_convs = 0
    for spec, kind, arg, gen in specs:
        ps = per_source[spec] = {"conversations": 0, "turns": 0, "quarantined": 0, "duplicates": 0,
                                 "near_duplicates": 0, "skipped": 0}
        q_before = len(quarantine)
        stream = LOADERS[kind](arg, quarantine, spec)
        try:
            for conv in stream:
                if isinstance(conv, Skipped):
                    skipped[conv.reason] = skipped.get(conv.reason, 0) + conv.count
                    ps["skipped"] += conv.count
                    continue
                if gen["weight"] < 1 and _bucket(f"w:{conv.conversation_id}", seed) >= gen["weight"]:
                    skipped["not sampled (weight)"] = skipped.get("not sampled (weight)", 0) + 1
                    ps["skipped"] += 1
                    continue
                turns, why = _prepare(conv, counter, max_turn_chars, max_turn_tokens, pii)
                if not turns:
                    quarantine.append({"source": spec, "location": conv.location or conv.conversation_id,
                                       "raw": " | ".join(str(t.get("text"))[:80] for t in conv.turns[:6]),
                                       "reason": why})
                    continue
                if len(turns) < gen["min_turns"]:
                    reason = f"fewer than {gen['min_turns']} turns (min_turns)"
                    skipped[reason] = skipped.get(reason, 0) + 1
                    ps["skipped"] += 1
                    continue
                key = exact_key([(t["role"], t["text"]) for t in turns])
                if key in seen:
                    n_dupes += 1
                    ps["duplicates"] += 1
                    continue
                if near is not None and near.add(conv.conversation_id, [t["text"] for t in turns]) is not None:
                    n_near += 1
                    ps["near_duplicates"] += 1
                    continue
                seen.add(key)
                cid = conv.conversation_id
                if cid in used_ids:  # two files or sources reusing an id: keep both, distinguishable
                    n = 2
                    while f"{cid}~{n}" in used_ids:
                        n += 1
                    cid = f"{cid}~{n}"
                used_ids.add(cid)
                if gen["split"] == "source" and conv.split in ("train", "validation", "test"):
                    source_split[cid] = conv.split
                if conv.persona and conv.persona.get("persona_id"):
                    personas.setdefault(conv.persona["persona_id"], conv.persona)
                n_convs += 1
                ps["conversations"] += 1
                ps["turns"] += len(turns)
                for i, t in enumerate(turns):
                    rows.append({"conversation_id": cid, "turn_index": i, "role": t["role"], "text": t["text"],
                                 "emotion": t.get("emotion"), "act": t.get("act"), "persona_id": conv.persona_id,
                                 "feedback_rating": t.get("feedback_rating"),
                                 "feedback_thumb": t.get("feedback_thumb"), "source": spec,
                                 "truncated": t["truncated"], "emotion_fine": t.get("emotion_fine")})
                if (gen["cap"] and ps["conversations"] >= gen["cap"]) or (
                        max_conversations and n_convs >= max_conversations):
                    break
        finally:
            close = getattr(stream, "close", None)
            if close:
                close()  # stop reading a capped source now, releasing its files
        ps["quarantined"] = len(quarantine) - q_before
        if max_conversations and n_convs >= max_conversations:
            break
    q = pd.DataFrame(quarantine, columns=QUARANTINE_COLUMNS) if quarantine else empty_quarantine()
    if not rows:
        reasons = q["reason"].value_counts().head(3).to_dict() if len(q) else {}
        raise IngestError(f"no usable conversations in sources {sources}; {len(q)} rows were quarantined"
                          + (f" (top reasons: {reasons})" if reasons else "")
                          + (f"; skipped: {skipped}" if skipped else ""))
    turns_df = pd.DataFrame(rows)
    turns_df["feedback_rating"] = pd.to_numeric(turns_df["feedback_rating"], errors="coerce")
    turns_df["feedback_thumb"] = pd.to_numeric(turns_df["feedback_thumb"], errors="coerce")
    split_of = assign_splits(turns_df["conversation_id"], turns_df["source"], val_fraction, test_fraction, seed)
    split_of.update(source_split)
    turns_df["split"] = turns_df["conversation_id"].map(split_of)
    turns_df = conform_turns(turns_df)
    persona_df = pd.DataFrame(list(personas.values()), columns=PERSONA_COLUMNS) if personas else empty_personas()
    n_total = n_convs + len(q)
    frac = len(q) / n_total if n_total else 0.0
    stats = {"conversations": n_convs, "turns": len(turns_df), "quarantined": len(q),
             "quarantined_fraction": frac, "duplicates_removed": n_dupes, "near_duplicates_removed": n_near,
             "truncated_turns": counter.truncated, "empty_turns_dropped": counter.empty_turns,
             "skipped_conversations": sum(skipped.values()), "personas_from_sources": len(persona_df),
             **{f"pii_{k}": v for k, v in sorted(counter.pii.items())},
             **{f"split_{k}_conversations": int(v) for k, v in
                turns_df.drop_duplicates("conversation_id")["split"].value_counts().items()},
             "skipped": skipped, "per_source": per_source}
    result = IngestResult(turns_df, q, stats, persona_df)
    if frac > quarantine_threshold:
        err = IngestError(
            f"{len(q)} of {n_total} conversations/rows ({frac:.1%}) were quarantined, above the "
            f"threshold {quarantine_threshold:.0%}. Inspect the quarantine table (reasons: "
            f"{q['reason'].value_counts().head(3).to_dict()}) or raise data.quarantine_threshold.")
        err.result = result  # so a caller can still save the quarantine table it is told to inspect
        raise err
    return result
