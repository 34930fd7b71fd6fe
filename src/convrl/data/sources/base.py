"""Shared pieces of the source loaders: the conversation record, spec options, safe file reading.

A loader is ``loader(arg, quarantine, source) -> Iterator[Conversation | Skipped]``:
``arg`` is the part of the spec after ``kind:`` (a path, optionally followed by
``?key=value&...`` loader options), ``quarantine`` a list the loader appends
``{source, location, raw, reason}`` rows to, ``source`` the whole spec. Loaders
yield :class:`Conversation` objects, and :class:`Skipped` markers for records
they leave out on purpose (a filter, not bad data) so ingest can count them.

The file helpers never let one bad line, record or file stop a run: they read
bytes, decode per line, cap line length without holding an enormous line in
memory, and recognise binary content (Parquet, zip, gzip) behind a text
extension so the whole file is quarantined with one clear reason.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from convrl.data.personas import Persona

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
    location: str = ""  # file:line where the conversation starts, for quarantine rows


@dataclass
class Skipped:
    """A record a loader leaves out on purpose; ingest counts these by reason."""
    reason: str
    count: int = 1


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


def q(quarantine: list[dict], source: str, location: str, raw, reason: str) -> None:
    if isinstance(raw, bytes):
        raw = raw[:RAW_CHARS].decode("utf-8", errors="replace")
    elif not isinstance(raw, str):
        try:
            raw = json.dumps(raw, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            raw = repr(raw)
    quarantine.append({"source": source, "location": location, "raw": raw[:RAW_CHARS], "reason": reason})


# ------------------------------------------------------------------ reading files

_MAGIC = {b"PAR1": "Parquet", b"PK\x03\x04": "zip", b"\x1f\x8b": "gzip", b"BZh": "bzip2",
          b"\x89PNG": "PNG image", b"%PDF": "PDF", b"\xfd7zXZ": "xz", b"SQLite format 3": "SQLite"}


def sniff_binary(path: Path) -> str | None:
    """Name of a binary format the file holds (by magic bytes or NULs), or None for text."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return None  # UTF-16 text: decoded (and refused) per line, with its own reason
    if b"\x00" in head:
        return "binary"
    return None


def refuse_binary(path: Path, quarantine: list[dict], source: str, expected: str) -> bool:
    """Quarantine the whole file (one row) when it is binary although text was expected."""
    kind = sniff_binary(path)
    if kind is None:
        return False
    hint = {"Parquet": " (use parquet:PATH)", "zip": " (dailydialog:PATH reads ConvLab zips)"}.get(kind, "")
    q(quarantine, source, path.name, f"<{kind} content, {path.stat().st_size} bytes>",
      f"file content is {kind}, not {expected} as its extension {path.suffix or '(none)'} says{hint}")
    return True


def iter_lines(path: Path, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes, int]]:
    """``(line_number, raw_bytes, total_length)``; a line over ``max_bytes`` comes back cut,
    with its full length, and the rest of it is skipped without being held in memory."""
    with path.open("rb") as fh:
        n = 0
        while True:
            line = fh.readline(max_bytes + 1)
            if not line:
                return
            n += 1
            total = len(line)
            if total > max_bytes and not line.endswith(b"\n"):
                while True:
                    chunk = fh.readline(1 << 20)
                    total += len(chunk)
                    if not chunk or chunk.endswith(b"\n"):
                        break
            yield n, line, total


def decode(raw: bytes, encoding: str = "utf-8") -> str | None:
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def read_json_document(path: Path, quarantine: list[dict], source: str, encoding: str = "utf-8"):
    """A whole JSON document, or None after quarantining the file with the reason."""
    if refuse_binary(path, quarantine, source, "JSON"):
        return None
    raw = path.read_bytes()
    text = decode(raw, "utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding)
    if text is None:
        q(quarantine, source, path.name, raw, f"file is not {encoding} text (pass ?encoding=... if it is another encoding)")
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        q(quarantine, source, f"{path.name}:{exc.lineno}", text[max(0, exc.pos - 100): exc.pos + 100],
          f"malformed JSON file: {exc.msg} at line {exc.lineno} column {exc.colno}")
        return None


def json_list(path: Path, quarantine: list[dict], source: str, encoding: str = "utf-8") -> list | None:
    doc = read_json_document(path, quarantine, source, encoding)
    if doc is None:
        return None
    if isinstance(doc, dict):  # {"data": [...]} and friends
        lists = [v for v in doc.values() if isinstance(v, list)]
        doc = lists[0] if len(lists) == 1 else doc
    if not isinstance(doc, list):
        q(quarantine, source, path.name, str(doc)[:RAW_CHARS], "expected a JSON list of dialogues")
        return None
    return doc


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
