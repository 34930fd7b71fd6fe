"""Table sources: one row per turn in CSV/TSV or Parquet, and Hugging Face ``datasets``.

Specs (column names are mapped with options; the defaults are the canonical names)::

    csv:turns.csv                                 columns conversation_id, role, text (+ optional ones)
    csv:f.csv?conversation=cid&role=speaker&text=utt&turn=idx
    csv:situations.csv?conversation=@row&role=@user&text=text    one single-turn conversation per row
    parquet:turns.parquet?role=speaker
    hf:/data/saved_dataset                        a ``save_to_disk`` folder (Dataset or DatasetDict)
    hf:org/name?config=default&hf_split=train     any load_dataset name, where a hub is reachable

Mapping options: ``conversation, turn, role, text, emotion, act, persona, rating,
thumb`` (``@row`` / ``@user`` style constants for conversation and role),
``roles=NAME:user,...`` extra role names, ``sep=tab`` and ``encoding=`` for CSV.
Rows keep file order within a conversation unless ``turn`` names an ordering
column. A bad row (unknown role, bad rating, undecodable bytes, wrong field
count) quarantines its whole conversation with the row's reason: a dialogue
with a hole in it would teach the wrong thing. A ``datasets`` dataset with a
``messages`` or ``conversations`` column is read as chat records instead.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Iterable, Iterator

from convrl.data.sources.base import (MAX_LINE_BYTES, Conversation, IngestError, Options, files_in, open_source,
                                      parse_role_map, q, refuse_binary, role_of)
from convrl.data.sources.chat import _THUMBS, parse_record, record_conversation
from convrl.data.sources.labels import map_emotion, normalise_act

FIELDS = {"conversation": "conversation_id", "turn": "turn_index", "role": "role", "text": "text",
          "emotion": "emotion", "act": "act", "persona": "persona_id", "rating": "feedback_rating",
          "thumb": "feedback_thumb"}
REQUIRED = ("conversation", "role", "text")
TABLE_OPTIONS = tuple(FIELDS) + ("roles", "sep", "encoding", "max_line_bytes")
_SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                "val": "validation", "dev": "validation", "test": "test", "testing": "test"}


class RowError:
    """A row the reader could not use: what it saw, why, and its fields when they are known
    (then the row's conversation is quarantined with it, instead of arriving with a hole)."""

    def __init__(self, raw: str, reason: str, row: dict | None = None):
        self.raw, self.reason, self.row = raw, reason, row


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip())


def _turn(row: dict, cols: dict[str, str], roles: dict[str, str], const_role: str | None) -> tuple[dict | None, str]:
    role = const_role or role_of(row.get(cols["role"]), roles)
    if role is None:
        return None, f"unknown role {row.get(cols['role'])!r} (allowed: user, assistant, system, or map with roles=)"
    text = row.get(cols["text"])
    if not isinstance(text, str):
        return None, f"text is {'missing' if _missing(text) else type(text).__name__}, not a string"
    turn = {"role": role, "text": text}
    raw = row.get(cols.get("rating", ""))
    if cols.get("rating") and not _missing(raw):
        try:
            rating = float(raw)
        except (TypeError, ValueError):
            rating = float("nan")
        if not 1 <= rating <= 5:
            return None, f"rating {raw!r} is not a number from 1 to 5"
        turn["feedback_rating"] = rating
    raw = row.get(cols.get("thumb", ""))
    if cols.get("thumb") and not _missing(raw):
        thumb = _THUMBS.get(str(raw).strip().lower().removesuffix(".0"))
        if thumb is None:
            return None, f"thumb {raw!r} is not up/down/1/0"
        turn["feedback_thumb"] = thumb
    raw = row.get(cols.get("emotion", ""))
    if cols.get("emotion") and not _missing(raw):
        emo = map_emotion(str(raw))
        if emo is None:
            return None, f"unknown emotion label {raw!r}"
        turn["emotion"] = emo
        if str(raw).strip().lower() != emo:
            turn["emotion_fine"] = str(raw).strip().lower()
    raw = row.get(cols.get("act", ""))
    if cols.get("act") and not _missing(raw):
        if normalise_act(str(raw)) is None:
            return None, f"unknown dialogue act {raw!r}"
        turn["act"] = normalise_act(str(raw))
    return turn, ""


def column_map(opts: Options, header: Iterable[str]) -> tuple[dict[str, str], str | None]:
    """Field -> column for the columns present; the first missing required column, if any."""
    header = set(header)
    cols = {}
    for key, default in FIELDS.items():
        name = opts.get(key, default)
        if name.startswith("@") or name in header:
            cols[key] = name
        elif key in REQUIRED or opts.get(key) is not None:
            return cols, (f"missing column {name!r} for {key} (columns: {', '.join(sorted(header))}); "
                          f"map it with ?{key}=COLUMN")
    return cols, None


def rows_to_conversations(rows: Iterator[tuple[str, dict | RowError]], cols: dict[str, str], opts: Options,
                          prefix: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    """Group ``(location, row)`` pairs into conversations, in order of first appearance."""
    roles = parse_role_map(opts.get("roles"), source)
    const_role = cols["role"][1:] if cols["role"].startswith("@") else None
    if const_role and const_role not in ("user", "assistant", "system"):
        raise IngestError(f"{source}: role=@{const_role}: a constant role is @user, @assistant or @system")
    per_row = cols["conversation"] == "@row"
    groups: dict[str, list] = {}
    for i, (loc, row) in enumerate(rows):
        if isinstance(row, RowError):
            cid = None if per_row or row.row is None else row.row.get(cols["conversation"])
            if _missing(cid):
                q(quarantine, source, loc, row.raw, row.reason)
                continue
            groups.setdefault(str(cid), []).append((loc, row))
            continue
        cid = str(i) if per_row else row.get(cols["conversation"])
        if _missing(cid):
            q(quarantine, source, loc, row, f"row has no conversation id (column {cols['conversation']!r})")
            continue
        groups.setdefault(str(cid), []).append((loc, row))
        if per_row:
            yield from _group(str(cid), groups.pop(str(cid)), cols, roles, const_role, prefix, quarantine, source)
    for cid, members in groups.items():
        yield from _group(cid, members, cols, roles, const_role, prefix, quarantine, source)


def _group(cid, members, cols, roles, const_role, prefix, quarantine, source) -> Iterator[Conversation]:
    where = f"{members[0][0]}" + (f" .. {members[-1][0].rsplit(':', 1)[-1]}" if len(members) > 1 else "")
    broken = next(((loc, r) for loc, r in members if isinstance(r, RowError)), None)
    if broken:
        q(quarantine, source, where, broken[1].raw, f"conversation {cid!r}: {broken[0]}: {broken[1].reason}")
        return
    if cols.get("turn"):
        try:
            members = sorted(members, key=lambda m: float(m[1].get(cols["turn"])))
        except (TypeError, ValueError):
            bad = next(m for m in members if not _is_number(m[1].get(cols["turn"])))
            q(quarantine, source, where, bad[1], f"conversation {cid!r}: {bad[0]}: turn order "
                                                 f"{bad[1].get(cols['turn'])!r} is not a number")
            return
        order = [float(m[1].get(cols["turn"])) for m in members]
        if len(set(order)) != len(order):
            q(quarantine, source, where, members[0][1], f"conversation {cid!r}: duplicate turn order values")
            return
    turns = []
    for loc, row in members:
        turn, reason = _turn(row, cols, roles, const_role)
        if turn is None:
            q(quarantine, source, where, row, f"conversation {cid!r}: {loc}: {reason}")
            return
        turns.append(turn)
    persona = next((str(r.get(cols["persona"])) for _, r in members
                    if cols.get("persona") and not _missing(r.get(cols["persona"]))), None)
    yield Conversation(f"{prefix}-{cid}", turns, persona_id=persona, location=where)


def _is_number(v) -> bool:
    try:
        float(v)
        return True
    except (TypeError, ValueError):
        return False


# ------------------------------------------------------------------ CSV

def _csv_rows(path: Path, opts: Options, header_out: list) -> Iterator[tuple[str, dict | RowError]]:
    sep = opts.get("sep") or ("\t" if path.suffix.lower() == ".tsv" else ",")
    sep = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}.get(sep, sep)
    encoding = opts.get("encoding", "utf-8-sig")
    csv.field_size_limit(opts.integer("max_line_bytes", MAX_LINE_BYTES))
    # surrogateescape keeps undecodable bytes visible per row instead of failing the file.
    with path.open("r", encoding=encoding, errors="surrogateescape", newline="") as fh:
        reader = csv.reader(fh, delimiter=sep)
        header = None
        while True:
            try:
                fields = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:
                yield f"{path.name}:{reader.line_num}", RowError("", f"unreadable CSV row: {exc}")
                continue
            loc = f"{path.name}:{reader.line_num}"
            if header is None:
                header = [h.strip() for h in fields]
                header_out.append(header)
                continue
            if not fields or all(not f.strip() for f in fields):
                continue
            try:
                sep.join(fields).encode("utf-8")
            except UnicodeEncodeError:
                raw = sep.join(fields).encode("utf-8", "surrogateescape").decode("latin-1")
                fields_ok = len(fields) == len(header)
                yield loc, RowError(raw, f"not {encoding.upper().removesuffix('-SIG')} text (pass ?encoding=...)",
                                    dict(zip(header, fields)) if fields_ok else None)
                continue
            if len(fields) != len(header):
                yield loc, RowError(sep.join(fields), f"row has {len(fields)} fields, the header has {len(header)}")
                continue
            yield loc, dict(zip(header, fields))


def csv_file(path: Path, opts: Options, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    if refuse_binary(path, quarantine, source, "CSV text"):
        return
    header: list = []
    rows = _csv_rows(path, opts, header)
    first = next(rows, None)
    if first is None:
        q(quarantine, source, path.name, "", "empty CSV file (no header row)")
        return
    cols, missing = column_map(opts, header[0] if header else [])
    if missing:
        q(quarantine, source, path.name, ",".join(header[0] if header else []), missing)
        return
    yield from rows_to_conversations(_chain(first, rows), cols, opts, path.stem, quarantine, source)


def _chain(first, rest):
    yield first
    yield from rest


def csv_source(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    path, opts = open_source(arg, source, TABLE_OPTIONS)
    files = files_in(path, ("*.csv", "*.tsv"))
    if not files:
        raise IngestError(f"{source}: no .csv or .tsv files in {path}")
    for f in files:
        yield from csv_file(f, opts, quarantine, source)


# ------------------------------------------------------------------ Parquet

def parquet_file(path: Path, opts: Options, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with path.open("rb") as fh:
        magic = fh.read(4)
    if magic != b"PAR1":
        q(quarantine, source, path.name, magic.decode("latin-1"),
          f"file content is not Parquet (no PAR1 magic) although its extension is {path.suffix}")
        return
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        q(quarantine, source, path.name, "", f"unreadable Parquet file: {exc}")
        return
    cols, missing = column_map(opts, table.column_names)
    if missing:
        q(quarantine, source, path.name, ",".join(table.column_names), missing)
        return
    wanted = [c for c in cols.values() if not c.startswith("@")]
    rows = ((f"{path.name}:row {i}", r) for i, r in enumerate(table.select(wanted).to_pylist()))
    yield from rows_to_conversations(rows, cols, opts, path.stem, quarantine, source)


def parquet_source(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    path, opts = open_source(arg, source, TABLE_OPTIONS)
    files = files_in(path, ("*.parquet",))
    if not files:
        raise IngestError(f"{source}: no .parquet files in {path}")
    for f in files:
        yield from parquet_file(f, opts, quarantine, source)


# ------------------------------------------------------------------ Hugging Face datasets

def hf_source(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation]:
    path, opts = open_source(arg, source, TABLE_OPTIONS + ("config", "hf_split"), must_exist=False)
    import datasets

    if path.exists():
        try:
            loaded = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError) as exc:
            raise IngestError(f"{source}: {path} is not a datasets save_to_disk folder: {exc}") from None
    else:
        name = str(path)
        try:
            loaded = datasets.load_dataset(name, opts.get("config"), split=opts.get("hf_split"))
        except Exception as exc:  # noqa: BLE001 - hub, network and script errors all mean "cannot load"
            raise IngestError(f"{source}: {name} is not a local folder and could not be loaded from the hub "
                              f"({type(exc).__name__}: {str(exc)[:200]}); offline runs (HF_HUB_OFFLINE=1) "
                              "need a save_to_disk folder") from None
    parts = loaded.items() if isinstance(loaded, datasets.DatasetDict) else [(opts.get("hf_split") or "", loaded)]
    want = opts.get("hf_split")
    for split, ds in parts:
        if want and split and split != want:
            continue
        yield from _hf_split(ds, split, path.name or str(path), opts, quarantine, source)


def _hf_split(ds, split: str, label: str, opts: Options, quarantine, source) -> Iterator[Conversation]:
    original = _SPLIT_NAMES.get(split.lower()) if split else None
    stem = label + (f"-{split}" if split else "")
    prefix = f"hf-{stem}"
    if "messages" in ds.column_names or "conversations" in ds.column_names:
        roles = parse_role_map(opts.get("roles"), source)
        for n, rec in enumerate(ds):
            conv = record_conversation(rec, roles, stem, n, f"{label}[{split or 'all'}]:{n}", quarantine, source)
            if conv:
                conv.conversation_id = f"hf-{conv.conversation_id.split('-', 1)[1]}"
                conv.split = original
                yield conv
        return
    cols, missing = column_map(opts, ds.column_names)
    if missing:
        q(quarantine, source, f"{label}[{split or 'all'}]", ",".join(ds.column_names), missing)
        return
    rows = ((f"{label}[{split or 'all'}]:{i}", r) for i, r in enumerate(ds))
    for conv in rows_to_conversations(rows, cols, opts, prefix, quarantine, source):
        conv.split = original
        yield conv


__all__ = ["csv_source", "parquet_source", "hf_source", "csv_file", "parquet_file", "TABLE_OPTIONS", "parse_record"]
