"""Ingest: source specs -> canonical turn table, persona table and quarantine.

Sources are named by URI-like specs (``chatterbot:english``,
``jsonl:/data/chats.jsonl``). Each loader yields conversations; rows that
cannot be used go to the quarantine with a reason instead of disappearing.
Text is Unicode-normalised, whitespace-cleaned, PII-redacted and truncated to
a budget (flagged, not dropped); exact duplicate conversations are removed;
the split is deterministic by conversation and stratified by source::

    from convrl.data.ingest import ingest
    result = ingest(["chatterbot:english"], personas, seed=13)
    result.turns, result.quarantine, result.stats
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Iterator

import pandas as pd
import yaml

from convrl.data.schema import ROLES, conform_turns, empty_quarantine


class IngestError(ValueError):
    pass


@dataclass
class Conversation:
    conversation_id: str
    turns: list[dict]  # {role, text, emotion?, act?, feedback_rating?, feedback_thumb?}
    persona_id: str | None = None


@dataclass
class IngestResult:
    turns: pd.DataFrame
    quarantine: pd.DataFrame
    stats: dict = field(default_factory=dict)


# ------------------------------------------------------------------ cleaning

_WS = re.compile(r"[ \t\u00a0]+")
_PII = {
    "email": re.compile(r"\b[\w.+-]+@[\w-]+\.[\w.-]+\b"),
    "url_secret": re.compile(r"(?i)\b(https?://[^\s]*?[?&](?:token|key|api_key|apikey|secret|password|pwd|sig)=)[^\s&]+"),
    "ip": re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    "credit_card": re.compile(r"\b(?:\d[ -]?){13,19}\b"),
    "phone": re.compile(r"(?<![\w])(?<!\d[ .-])(?:\+?\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3,4}[ .-]?\d{3,4}(?![\w])(?![ .-]\d)"),
}


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


def redact_pii(text: str, counts: dict[str, int] | None = None) -> str:
    """Replace e-mails, URL secrets, IPs, Luhn-valid card numbers and phone numbers."""
    counts = counts if counts is not None else {}

    def sub(kind: str, repl):
        nonlocal text

        def f(m: re.Match) -> str:
            r = repl(m)
            if r != m.group(0):
                counts[kind] = counts.get(kind, 0) + 1
            return r

        text = _PII[kind].sub(f, text)

    sub("email", lambda m: "[EMAIL]")
    sub("url_secret", lambda m: m.group(1) + "[SECRET]")
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
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch)[0] != "C")
    lines = [_WS.sub(" ", line).strip() for line in text.split("\n")]
    return "\n".join(line for line in lines if line).strip()


# ------------------------------------------------------------------ sources

def _chatterbot(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    lang = arg or "english"
    root = resources.files("chatterbot_corpus") / "data" / lang
    if not root.is_dir():
        raise IngestError(f"chatterbot corpus language '{lang}' not found; try 'chatterbot:english'")
    for res in sorted(root.iterdir(), key=lambda r: r.name):
        if not res.name.endswith((".yml", ".yaml")):
            continue
        try:
            doc = yaml.safe_load(res.read_text(encoding="utf-8"))
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            quarantine.append({"source": source, "location": res.name, "raw": "", "reason": f"unreadable YAML: {exc}"})
            continue
        topic = res.name.rsplit(".", 1)[0]
        for i, conv in enumerate((doc or {}).get("conversations") or []):
            loc = f"{res.name}:conversation {i}"
            if not isinstance(conv, list) or not conv:
                quarantine.append({"source": source, "location": loc, "raw": str(conv)[:500],
                                   "reason": "conversation is not a non-empty list of statements"})
                continue
            turns = []
            for j, stmt in enumerate(conv):
                if not isinstance(stmt, str):
                    stmt = str(stmt) if isinstance(stmt, (int, float)) else None
                if stmt is None:
                    quarantine.append({"source": source, "location": f"{loc} turn {j}", "raw": str(conv[j])[:500],
                                       "reason": "statement is not text"})
                    turns = []
                    break
                turns.append({"role": "user" if j % 2 == 0 else "assistant", "text": stmt})
            if turns:
                yield Conversation(f"chatterbot-{topic}-{i}", turns)


def _jsonl(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    """OpenAI chat format: one ``{"messages": [...], "persona"?: str}`` object per line."""
    path = Path(arg)
    if not path.exists():
        raise IngestError(f"{source}: file {path} does not exist")
    with path.open("rb") as fh:
        for n, raw in enumerate(fh, 1):
            loc = f"{path.name}:{n}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                quarantine.append({"source": source, "location": loc, "raw": raw[:500].decode("latin-1"),
                                   "reason": "not UTF-8 text"})
                continue
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                quarantine.append({"source": source, "location": loc, "raw": line[:500],
                                   "reason": f"malformed JSON: {exc.msg}"})
                continue
            msgs = obj.get("messages") if isinstance(obj, dict) else None
            if not isinstance(msgs, list) or not msgs:
                quarantine.append({"source": source, "location": loc, "raw": line[:500],
                                   "reason": "missing or empty 'messages' list"})
                continue
            turns, bad = [], None
            for m in msgs:
                if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                    bad = "a message lacks string 'content'"
                    break
                if m.get("role") not in ROLES:
                    bad = f"unknown role {m.get('role')!r} (allowed: {', '.join(ROLES)})"
                    break
                fb = m.get("feedback") or {}
                turns.append({"role": m["role"], "text": m["content"],
                              "feedback_rating": fb.get("rating"),
                              "feedback_thumb": {"up": 1.0, "down": 0.0}.get(fb.get("thumb"))})
            if bad:
                quarantine.append({"source": source, "location": loc, "raw": line[:500], "reason": bad})
                continue
            cid = obj.get("id") or f"{path.stem}-{n}"
            yield Conversation(f"jsonl-{cid}", turns, persona_id=obj.get("persona"))


LOADERS = {"chatterbot": _chatterbot, "jsonl": _jsonl}


def parse_spec(spec: str) -> tuple[str, str]:
    kind, _, arg = spec.partition(":")
    if kind not in LOADERS:
        raise IngestError(f"unknown source kind '{kind}' in '{spec}'; known: {', '.join(sorted(LOADERS))}")
    return kind, arg


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


# ------------------------------------------------------------------ main entry

def ingest(sources: list[str], seed: int = 13, val_fraction: float = 0.1, test_fraction: float = 0.2,
           max_conversations: int = 0, max_turn_chars: int = 2000,
           quarantine_threshold: float = 0.05) -> IngestResult:
    quarantine: list[dict] = []
    rows: list[dict] = []
    pii_counts: dict[str, int] = {}
    seen: set[str] = set()
    n_dupes = n_truncated = n_convs = 0
    for spec in sources:
        kind, arg = parse_spec(spec)
        for conv in LOADERS[kind](arg, quarantine, spec):
            turns = []
            for t in conv.turns:
                text = clean_text(t["text"])
                if not text:
                    continue
                text = redact_pii(text, pii_counts)
                truncated = len(text) > max_turn_chars
                if truncated:
                    text = text[:max_turn_chars]
                    n_truncated += 1
                turns.append({**t, "text": text, "truncated": truncated})
            if not turns:
                quarantine.append({"source": spec, "location": conv.conversation_id, "raw": "",
                                   "reason": "conversation has no non-empty turns"})
                continue
            key = hashlib.sha1("\x1e".join(f"{t['role']}:{t['text'].lower()}" for t in turns).encode()).hexdigest()
            if key in seen:
                n_dupes += 1
                continue
            seen.add(key)
            n_convs += 1
            for i, t in enumerate(turns):
                rows.append({"conversation_id": conv.conversation_id, "turn_index": i, "role": t["role"],
                             "text": t["text"], "emotion": t.get("emotion"), "act": t.get("act"),
                             "persona_id": conv.persona_id, "feedback_rating": t.get("feedback_rating"),
                             "feedback_thumb": t.get("feedback_thumb"), "source": spec,
                             "truncated": t["truncated"]})
            if max_conversations and n_convs >= max_conversations:
                break
    if not rows:
        raise IngestError(f"no usable conversations in sources {sources}; "
                          f"{len(quarantine)} rows were quarantined (see quarantine table)")
    turns_df = pd.DataFrame(rows)
    turns_df["feedback_rating"] = pd.to_numeric(turns_df["feedback_rating"], errors="coerce")
    turns_df["feedback_thumb"] = pd.to_numeric(turns_df["feedback_thumb"], errors="coerce")
    split_of = assign_splits(turns_df["conversation_id"], turns_df["source"], val_fraction, test_fraction, seed)
    turns_df["split"] = turns_df["conversation_id"].map(split_of)
    turns_df = conform_turns(turns_df)
    q = pd.DataFrame(quarantine) if quarantine else empty_quarantine()
    n_total = n_convs + len(q)
    frac = len(q) / n_total if n_total else 0.0
    stats = {"conversations": n_convs, "turns": len(turns_df), "quarantined": len(q),
             "quarantined_fraction": frac, "duplicates_removed": n_dupes, "truncated_turns": n_truncated,
             **{f"pii_{k}": v for k, v in sorted(pii_counts.items())},
             **{f"split_{k}_conversations": int(v) for k, v in
                turns_df.drop_duplicates("conversation_id")["split"].value_counts().items()}}
    if frac > quarantine_threshold:
        raise IngestError(
            f"{len(q)} of {n_total} conversations/rows ({frac:.1%}) were quarantined, above the "
            f"threshold {quarantine_threshold:.0%}. Inspect the quarantine table (reasons: "
            f"{q['reason'].value_counts().head(3).to_dict()}) or raise data.quarantine_threshold.")
    return IngestResult(turns_df, q, stats)
