"""Table sources: one row per turn in CSV/TSV or Parquet (``datasets`` folders: :mod:`.hf`).

Specs (column names are mapped with options; the defaults are the canonical names)::

    csv:turns.csv                                 columns conversation_id, role, text (+ optional ones)
    csv:f.csv?conversation=cid&role=speaker&text=utt&turn=idx
    csv:situations.csv?conversation=@row&role=@user&text=text    one single-turn conversation per row
    parquet:turns.parquet?role=speaker

Mapping options: ``conversation, turn, role, text, emotion, act, persona, rating,
thumb`` (``@row`` / ``@user`` style constants for conversation and role),
``roles=NAME:user,...`` extra role names, ``sep=tab`` and ``encoding=`` for CSV.
Rows keep file order within a conversation unless ``turn`` names an ordering
column; its values must run 0..n-1 (or 1..n) without gaps or repeats,
integer-valued (``2.0`` is fine, ``1.5`` is ``invalid_type``): renumbering a
gap would hide lost turns (``turn_index_gap``). A bad row (unknown role, bad
rating, undecodable bytes, wrong field count, an empty text) quarantines its
whole conversation, one quarantine row listing all its rows, with the reason
on the bad row: a dialogue with a hole in it would teach the wrong thing. CSV
files are decoded by their byte-order mark when they have one. A
``datasets`` dataset with a ``messages`` or ``conversations`` column is read
as chat records instead (:mod:`convrl.data.sources.hf`).
"""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path
from typing import Iterable, Iterator

from convrl.data.schema import Reason
from convrl.data.sources.base import (MAX_LINE_BYTES, Conversation, IngestError, Options, RecordError, Skipped,
                                      each_file, parse_role_map, q, role_of, span)
from convrl.data.sources.files import ascii_compatible, empty_file, file_encoding, first_char, refuse_binary
from convrl.data.sources.labels import THUMBS, map_emotion, normalise_act

FIELDS = {"conversation": "conversation_id", "turn": "turn_index", "role": "role", "text": "text",
          "emotion": "emotion", "act": "act", "persona": "persona_id", "rating": "feedback_rating",
          "thumb": "feedback_thumb"}
REQUIRED = ("conversation", "role", "text")
TABLE_OPTIONS = tuple(FIELDS) + ("roles", "sep", "encoding", "max_line_bytes")


class RowError:
    """A row the reader could not use: what it saw, why, and its fields when they are known
    (then the row's conversation is quarantined with it, instead of arriving with a hole)."""

    def __init__(self, raw: str, reason: str, category: Reason, row: dict | None = None):
        self.raw, self.reason, self.category, self.row = raw, reason, category, row


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _turn(row: dict, cols: dict[str, str], roles: dict[str, str], const_role: str | None) -> dict:
    """One turn from a row; raises :class:`RecordError` with the row's problem."""
    role = const_role or role_of(row.get(cols["role"]), roles)
    if role is None:
        raw = row.get(cols["role"])
        if _missing(raw):
            raise RecordError(Reason.MISSING_FIELD, f"role (column {cols['role']!r}) is empty")
        raise RecordError(Reason.UNKNOWN_ROLE, f"unknown role {raw!r} (allowed: user, assistant, system, or map "
                                               "with roles=)")
    text = row.get(cols["text"])
    if not isinstance(text, str):
        if text is None or (isinstance(text, float) and math.isnan(text)):
            raise RecordError(Reason.MISSING_FIELD, f"text (column {cols['text']!r}) is missing")
        raise RecordError(Reason.INVALID_TYPE, f"text is a {type(text).__name__}, not a string")
    turn = {"role": role, "text": text}
    raw = row.get(cols.get("rating", ""))
    if cols.get("rating") and not _missing(raw):
        try:
            rating = float(raw)
        except (TypeError, ValueError):
            raise RecordError(Reason.INVALID_TYPE, f"rating {raw!r} is not a number from 1 to 5") from None
        if not 1 <= rating <= 5:
            raise RecordError(Reason.INVALID_VALUE, f"rating {raw!r} is not from 1 to 5")
        turn["feedback_rating"] = rating
    raw = row.get(cols.get("thumb", ""))
    if cols.get("thumb") and not _missing(raw):
        thumb = THUMBS.get(str(raw).strip().lower().removesuffix(".0"))
        if thumb is None:
            raise RecordError(Reason.INVALID_VALUE, f"thumb {raw!r} is not up/down/1/0")
        turn["feedback_thumb"] = thumb
    raw = row.get(cols.get("emotion", ""))
    if cols.get("emotion") and not _missing(raw):
        emo = map_emotion(str(raw))
        if emo is None:
            raise RecordError(Reason.INVALID_VALUE, f"unknown emotion label {raw!r}")
        turn["emotion"] = emo
        if str(raw).strip().lower() != emo:
            turn["emotion_fine"] = str(raw).strip().lower()
    raw = row.get(cols.get("act", ""))
    if cols.get("act") and not _missing(raw):
        if normalise_act(str(raw)) is None:
            raise RecordError(Reason.INVALID_VALUE, f"unknown dialogue act {raw!r}")
        turn["act"] = normalise_act(str(raw))
    return turn


def column_map(opts: Options, header: Iterable[str]) -> tuple[dict[str, str], str | None]:
    """Field -> column for the columns present; the first missing required column, if any."""
    header = set(header)
    cols = {}
    for key, default in FIELDS.items():
        name = opts.get(key, default)
        if name.startswith("@") or name in header:
            cols[key] = name
        elif key in REQUIRED or opts.get(key) is not None:
            shown = ", ".join(sorted(header)[:20]) + (", ..." if len(header) > 20 else "")
            return cols, (f"missing column {name!r} for {key} (columns: {shown}); map it with ?{key}=COLUMN")
    return cols, None


def rows_to_conversations(rows: Iterator[tuple[str, dict | RowError | Skipped]], cols: dict[str, str],
                          opts: Options, prefix: str, quarantine: list[dict],
                          source: str) -> Iterator[Conversation | Skipped]:
    """Group ``(location, row)`` pairs into conversations, in order of first appearance."""
    roles = parse_role_map(opts.get("roles"), source)
    const_role = cols["role"][1:] if cols["role"].startswith("@") else None
    if const_role and const_role not in ("user", "assistant", "system"):
        raise IngestError(f"{source}: role=@{const_role}: a constant role is @user, @assistant or @system")
    per_row = cols["conversation"] == "@row"
    groups: dict[str, list] = {}
    i = -1
    for loc, row in rows:
        if isinstance(row, Skipped):
            yield row
            continue
        i += 1
        if isinstance(row, RowError):
            cid = None if per_row or row.row is None else row.row.get(cols["conversation"])
            if _missing(cid):
                q(quarantine, source, loc, row.raw, row.reason, row.category)
                continue
            groups.setdefault(str(cid), []).append((loc, row))
            continue
        cid = str(i) if per_row else row.get(cols["conversation"])
        if _missing(cid):
            q(quarantine, source, loc, row, f"row has no conversation id (column {cols['conversation']!r})",
              Reason.MISSING_FIELD)
            continue
        groups.setdefault(str(cid), []).append((loc, row))
        if per_row:
            yield from _group(str(cid), groups.pop(str(cid)), cols, roles, const_role, prefix, quarantine, source)
    for cid, members in groups.items():
        yield from _group(cid, members, cols, roles, const_role, prefix, quarantine, source)


def _group(cid, members, cols, roles, const_role, prefix, quarantine, source) -> Iterator[Conversation]:
    where = span([loc for loc, _ in members])
    conv_id = f"{prefix}-{cid}"

    def refuse(loc: str, raw, category: Reason, detail: str) -> None:
        others = f"; the conversation's other {len(members) - 1} row(s) are quarantined with it" \
            if len(members) > 1 else ""
        q(quarantine, source, where, raw, f"{loc}: {detail}{others}", category, conversation_id=conv_id)

    broken = next(((loc, r) for loc, r in members if isinstance(r, RowError)), None)
    if broken:
        refuse(broken[0], broken[1].raw, broken[1].category, broken[1].reason)
        return
    if cols.get("turn"):
        problem = _turn_order(members, cols["turn"])
        if problem:
            refuse(*problem)
            return
        members = sorted(members, key=lambda m: float(m[1][cols["turn"]]))
    turns = []
    for loc, row in members:
        try:
            turns.append({**_turn(row, cols, roles, const_role), "location": loc})
        except RecordError as exc:
            refuse(loc, row, exc.category, exc.detail)
            return
    persona = next((str(r.get(cols["persona"])) for _, r in members
                    if cols.get("persona") and not _missing(r.get(cols["persona"]))), None)
    yield Conversation(conv_id, turns, persona_id=persona, location=where)


def _turn_order(members, col: str) -> tuple[str, dict, Reason, str] | None:
    """Why the turn-order column does not number the rows 0..n-1 (or 1..n), or None.

    Rows may come in any order; a gap or repeat means turns were lost, and renumbering would hide it.
    """
    values = []
    for loc, row in members:
        raw = row.get(col)
        if _missing(raw):
            return loc, row, Reason.MISSING_FIELD, f"turn index (column {col!r}) is empty"
        try:
            v = float(raw)
        except (TypeError, ValueError):
            return loc, row, Reason.INVALID_TYPE, f"turn index {raw!r} is not a number"
        if isinstance(raw, bool) or not v.is_integer():
            return loc, row, Reason.INVALID_TYPE, f"turn index {raw!r} is not a whole number"
        values.append(int(v))
    order = sorted(values)
    start = order[0]
    expected = list(range(start, start + len(order)))
    if start in (0, 1) and order == expected:
        return None
    loc, row = members[0]
    shown = ",".join(str(v) for v in order[:20]) + (",..." if len(order) > 20 else "")
    repeated = sorted({v for v in order if order.count(v) > 1})
    if repeated:
        why = f"turn index {repeated[0]} appears more than once"
    elif start not in (0, 1):
        why = f"turn indices start at {start}, not 0 or 1: earlier turns are missing"
    else:
        missing = sorted(set(range(start, order[-1] + 1)) - set(order))
        why = f"turn index {missing[0]} is missing: a turn was lost"
    return loc, row, Reason.TURN_INDEX_GAP, f"turn indices {shown}: {why}"


# ------------------------------------------------------------------ CSV

def _csv_rows(path: Path, opts: Options, encoding: str, header_out: list) -> Iterator[tuple[str, dict | RowError]]:
    sep = opts.get("sep") or ("\t" if path.suffix.lower() == ".tsv" else ",")
    sep = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(sep, sep)
    limit = opts.integer("max_line_bytes", MAX_LINE_BYTES)
    csv.field_size_limit(limit)
    # surrogateescape keeps undecodable bytes visible per row instead of failing the file (UTF-16/32 files
    # were checked whole by file_encoding, so strict decoding cannot fail half way).
    errors = "surrogateescape" if ascii_compatible(encoding) else "strict"
    name = encoding.upper().removesuffix("-SIG")
    with path.open("r", encoding=encoding, errors=errors, newline="") as fh:
        consumed: list[str] = []  # the physical lines of the record being read, for a row that fails

        def tap():
            for line in fh:
                consumed.append(line)
                yield line

        # strict: bad quoting is an error for its row, not text silently merged with the rows after it
        reader = csv.reader(tap(), delimiter=sep, strict=True)
        header = None
        while True:
            consumed.clear()
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield _unreadable_row(path, exc, consumed, reader.line_num, header, sep)
                continue
            loc = f"{path.name}:{reader.line_num}"
            if not fields or all(not f.strip() for f in fields):
                yield loc, Skipped("blank line")
                continue
            if header is None:
                header = [h.strip() for h in fields]
                header_out.append(header)
                continue
            row = dict(zip(header, fields))  # with too few or too many fields: still names the conversation
            joined = sep.join(fields)
            if not joined.isascii():
                try:
                    joined.encode("utf-8")
                except UnicodeEncodeError:
                    raw = joined.encode("utf-8", "surrogateescape").decode("latin-1")
                    yield loc, RowError(raw, f"not {name} text (pass ?encoding=...)", Reason.ENCODING, row)
                    continue
            if len(fields) != len(header):
                yield loc, RowError(joined, f"row has {len(fields)} fields, the header has {len(header)}",
                                    Reason.MALFORMED_ROW, row)
                continue
            yield loc, row


def _unreadable_row(path: Path, exc: csv.Error, lines: list[str], end: int, header, sep: str) -> tuple[str, RowError]:
    """A row the CSV reader refused, with the lines it spans and, read leniently, the conversation it names."""
    start = end - len(lines) + 1
    category = Reason.OVERSIZE if "field limit" in str(exc) else Reason.MALFORMED_ROW
    detail = f"unreadable CSV row: {exc}" + (" (option max_line_bytes)" if category is Reason.OVERSIZE else "")
    if end > start:
        detail += f"; it runs over lines {start}-{end} (an unclosed quote takes the lines after it along)"
    guess = next(csv.reader(lines[:1], delimiter=sep), []) if lines else []
    row = dict(zip(header, guess)) if header else None
    where = f"{path.name}:{start}" if end == start else f"{path.name}:{start}-{end}"
    return where, RowError("".join(lines)[:2000], detail, category, row)


def csv_file(path: Path, opts: Options, quarantine: list[dict], source: str) -> Iterator[Conversation | Skipped]:
    if (empty := empty_file(path)) is not None:
        yield empty
        return
    requested = opts.get("encoding", "utf-8-sig")
    if refuse_binary(path, quarantine, source, "CSV text", requested):
        return
    if (first_char_ := first_char(path, requested)) in ("{", "["):
        q(quarantine, source, path.name, "", f"file content is JSON (it starts with {first_char_!r}), not CSV as its "
          f"extension {path.suffix} says; read it with jsonl:PATH", Reason.FORMAT_MISMATCH)
        return
    encoding = file_encoding(path, requested, quarantine, source)
    if encoding is None:
        return
    header: list = []
    rows = _csv_rows(path, opts, encoding, header)
    leading = []  # blank lines before the first row, counted once the header is known to be usable
    for first in rows:
        if not isinstance(first[1], Skipped):
            break
        leading.append(first)
    else:
        first = None
    if not header:
        yield Skipped("empty file", warning=f"{path.name} holds only blank lines: nothing to ingest from it")
        return
    yield from (skip for _, skip in leading)
    if first is None:
        yield Skipped("empty file", warning=f"{path.name} has a header but no rows: nothing to ingest from it")
        return
    cols, missing = column_map(opts, header[0])
    if missing:
        q(quarantine, source, path.name, ",".join(header[0]), missing, Reason.MISSING_FIELD)
        return
    yield from rows_to_conversations(itertools.chain([first], rows), cols, opts, path.stem, quarantine, source)


def csv_source(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    yield from each_file(arg, quarantine, source, TABLE_OPTIONS, ("*.csv", "*.tsv"), csv_file)


# ------------------------------------------------------------------ Parquet

def parquet_file(path: Path, opts: Options, quarantine: list[dict], source: str) -> Iterator[Conversation | Skipped]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    if (empty := empty_file(path)) is not None:
        yield empty
        return
    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"PAR1":
        q(quarantine, source, path.name, magic.decode("latin-1"),
          f"file content is not Parquet (no PAR1 magic) although its extension is {path.suffix}",
          Reason.FORMAT_MISMATCH)
        return
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        q(quarantine, source, path.name, "", f"unreadable Parquet file: {exc}", Reason.UNREADABLE_FILE)
        return
    cols, missing = column_map(opts, table.column_names)
    if missing:
        q(quarantine, source, path.name, ",".join(table.column_names), missing, Reason.MISSING_FIELD)
        return
    wanted = [c for c in cols.values() if not c.startswith("@")]
    rows = ((f"{path.name}:row {i}", r) for i, r in enumerate(table.select(wanted).to_pylist()))
    yield from rows_to_conversations(rows, cols, opts, path.stem, quarantine, source)


def parquet_source(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    yield from each_file(arg, quarantine, source, TABLE_OPTIONS, ("*.parquet",), parquet_file)


__all__ = ["csv_source", "parquet_source", "csv_file", "parquet_file", "column_map", "rows_to_conversations",
           "TABLE_OPTIONS"]
