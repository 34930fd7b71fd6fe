"""Shared pieces of the source loaders: the conversation record, spec options, quarantine rows.

A loader is ``loader(arg, quarantine, source) -> Iterator[Conversation | Skipped]``:
``arg`` is the part of the spec after ``kind:`` (a path, optionally followed by
``?key=value&...`` loader options), ``quarantine`` a list the loader appends
rows to with :func:`q` (a :class:`~convrl.data.schema.Reason` category, a
detail and a location each), ``source`` the whole spec. Loaders yield
:class:`Conversation` objects, and :class:`Skipped` markers for records they
leave out on purpose (a filter, a blank line, an empty file: not bad data) so
ingest can count them. Reading files safely is :mod:`convrl.data.sources.files`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from convrl.data.personas import Persona
from convrl.data.schema import QUARANTINE_COLUMNS, Reason

RAW_CHARS = 500  # how much of an offending row the quarantine keeps
MAX_LINE_BYTES = 8 << 20  # longer lines are quarantined, not parsed


class IngestError(ValueError):
    """A source cannot be read at all (bad spec, missing path): a config error, not bad data."""


@dataclass
class Conversation:
    conversation_id: str
    turns: list[dict]  # {role, text, emotion?, act?, feedback_rating?, feedback_thumb?, emotion_fine?}
    persona_id: str | None = None
    persona: dict | None = None  # a persona-table row (Persona.to_row()) the source brings along
    split: str | None = None  # the source's own split, used with the spec option split=source
    location: str = ""  # file:line of the record (file:2-4,7 for table rows), for quarantine rows
    # Conversations sharing a split_group land in the same split (the two halves of one preference), so a
    # pair never straddles train and test and is lost to both.
    split_group: str | None = None


@dataclass
class Skipped:
    """A record a loader leaves out on purpose; ingest counts these by reason (and reports ``warning``)."""
    reason: str
    count: int = 1
    warning: str | None = None


class RecordError(ValueError):
    """A record that cannot be used: its quarantine category and what exactly is wrong."""

    def __init__(self, category: Reason, detail: str):
        super().__init__(detail)
        self.category, self.detail = category, detail


_JSON_TYPES = {type(None): "null", bool: "boolean", int: "number", float: "number", str: "string", list: "array",
               dict: "object"}


def json_type(value) -> str:
    """The JSON name of a parsed value's type, for messages people read ("a JSON object", not "dict")."""
    return _JSON_TYPES.get(type(value), type(value).__name__)


@dataclass
class Options:
    """``?key=value`` loader options; unknown keys fail at once so typos do not pass silently."""
    source: str
    values: dict[str, str] = field(default_factory=dict)
    allowed: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = sorted(set(self.values) - set(self.allowed))
        if unknown:
            raise IngestError(f"{self.source}: unknown option(s) {unknown}; this source takes "
                              f"{', '.join(self.allowed) or 'no options'} (plus cap, weight, min_turns, split)")

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.values.get(key, default)

    def integer(self, key: str, default: int) -> int:
        raw = self.values.get(key)
        if raw is None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise IngestError(f"{self.source}: option {key}={raw!r} is not an integer") from None


def split_query(arg: str) -> tuple[str, dict[str, str]]:
    """``'PATH?a=1&b=2'`` -> ``('PATH', {'a': '1', 'b': '2'})``. A ``?`` not followed by pairs stays in the path."""
    path, sep, query = arg.rpartition("?")
    if not sep or not query or not all("=" in kv for kv in query.split("&")):
        return arg, {}
    return path, dict(kv.split("=", 1) for kv in query.split("&"))


def open_source(arg: str, source: str, allowed: tuple[str, ...] = (), must_exist: bool = True) -> tuple[Path, Options]:
    raw_path, params = split_query(arg)
    opts = Options(source, params, allowed)
    path = Path(raw_path).expanduser()
    if must_exist and not path.exists():
        raise IngestError(f"{source}: {path} does not exist")
    return path, opts


def files_in(path: Path, patterns: tuple[str, ...]) -> list[Path]:
    """The path itself, or the matching files of a directory (sorted, so runs are reproducible)."""
    if path.is_file():
        return [path]
    found = sorted({p for pat in patterns for p in path.glob(pat) if p.is_file()})
    return found


def each_file(arg: str, quarantine: list[dict], source: str, allowed: tuple[str, ...], patterns: tuple[str, ...],
              read) -> Iterator:
    """``read(file, options, quarantine, source)`` over the spec's file, or the matching files of its folder."""
    path, opts = open_source(arg, source, allowed)
    files = files_in(path, patterns)
    if not files:
        raise IngestError(f"{source}: no {' or '.join(p.lstrip('*') for p in patterns)} files in {path}")
    for f in files:
        yield from read(f, opts, quarantine, source)


def q(quarantine: list[dict], source: str, location: str, raw, detail: str, category: Reason, *,
      conversation_id: str | None = None, duplicate_of: str | None = None) -> None:
    """Append one quarantine row (see :mod:`convrl.data.schema` for the columns)."""
    if isinstance(raw, bytes):
        raw = raw[:RAW_CHARS].decode("utf-8", errors="replace")
    elif not isinstance(raw, str):
        try:
            raw = json.dumps(raw, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            raw = repr(raw)
    # Lone surrogates (an escaped "\ud83d", bytes kept by surrogateescape) cannot be stored in Parquet.
    raw = raw[:RAW_CHARS].encode("utf-8", "backslashreplace").decode("utf-8")
    row = {"source": source, "location": location, "category": Reason(category).value, "detail": detail,
           "raw": raw, "conversation_id": conversation_id, "duplicate_of": duplicate_of}
    quarantine.append({c: row[c] for c in QUARANTINE_COLUMNS})


_LOC = re.compile(r"^(.*:)(\D*?)(\d+)$")


def span(locations: list[str], limit: int = 12) -> str:
    """Several locations in one string: ``f.csv:2``, ``f.csv:3``, ``f.csv:5`` -> ``f.csv:2-3,5``."""
    parts = [_LOC.match(loc) for loc in locations]
    if len(locations) == 1 or not all(parts) or len({(m.group(1), m.group(2)) for m in parts}) != 1:
        shown = ", ".join(locations[:limit])
        return shown + (f", ... ({len(locations)} in all)" if len(locations) > limit else "")
    nums = sorted({int(m.group(3)) for m in parts})
    runs: list[list[int]] = []
    for n in nums:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    text = [f"{a}" if a == b else f"{a}-{b}" for a, b in runs]
    more = f",... ({len(nums)} in all)" if len(text) > limit else ""
    return parts[0].group(1) + parts[0].group(2) + ",".join(text[:limit]) + more


# ------------------------------------------------------------------ personas and ids

def short_hash(*parts: str, n: int = 10) -> str:
    return hashlib.sha1("\x1f".join(parts).encode()).hexdigest()[:n]


def fact_persona(prefix: str, facts: list[str], label: str) -> Persona | None:
    """A persona card from a data set's persona sentences (PersonaChat style).

    The id hashes the sentences, so the same persona seen in many dialogues is one row.
    """
    facts = [" ".join(str(f).split()) for f in facts if str(f).strip()]
    if not facts:
        return None
    pid = f"{prefix}-{short_hash(*facts)}"
    return Persona(persona_id=pid, name=f"{label} {pid.rsplit('-', 1)[1][:6]}",
                   description=f"a speaker from {label} described by {len(facts)} persona sentences",
                   facts=facts)


def role_of(value, aliases: dict[str, str]) -> str | None:
    if not isinstance(value, str):
        return None
    return aliases.get(value.strip().lower())


ROLE_ALIASES = {
    "user": "user", "human": "user", "customer": "user", "client": "user", "usr": "user", "person": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "chatbot": "assistant", "ai": "assistant",
    "model": "assistant", "agent": "assistant", "chatgpt": "assistant", "bing": "assistant", "claude": "assistant",
    "system": "system", "developer": "system",
}


def parse_role_map(raw: str | None, source: str) -> dict[str, str]:
    """``roles=A:user,B:assistant`` on top of the built-in aliases."""
    out = dict(ROLE_ALIASES)
    if not raw:
        return out
    for pair in raw.split(","):
        name, sep, role = pair.partition(":")
        if not sep or role.strip() not in ("user", "assistant", "system"):
            raise IngestError(f"{source}: roles={raw!r}: write NAME:user|assistant|system pairs, comma-separated")
        out[name.strip().lower()] = role.strip()
    return out
