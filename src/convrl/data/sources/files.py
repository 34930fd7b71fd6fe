"""Reading source files safely: binary sniffing, byte-order marks, line-by-line decoding, JSON documents.

These helpers never let one bad line, record or file stop a run: they read
bytes, decode per line, cap line length without holding an enormous line in
memory, decode UTF-16/32 files by their byte-order mark (the whole file, or
none of it: a decoding error refuses the file once, category ``encoding``),
and recognise binary content (Parquet, zip, gzip) behind a text extension so
the whole file is quarantined with one clear reason (``format_mismatch``)::

    from convrl.data.sources.files import read_lines
    for n, text, raw, total in read_lines(path, "utf-8", quarantine, source):
        ...
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path
from typing import Iterator

from convrl.data.schema import Reason
from convrl.data.sources.base import MAX_LINE_BYTES, RAW_CHARS, Skipped, json_type, q

# ------------------------------------------------------------------ reading files

_MAGIC = {b"PAR1": "Parquet", b"PK\x03\x04": "zip", b"\x1f\x8b": "gzip", b"BZh": "bzip2",
          b"\x89PNG": "PNG image", b"%PDF": "PDF", b"\xfd7zXZ": "xz", b"SQLite format 3": "SQLite"}


# Longest first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = ((codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"), (codecs.BOM_UTF8, "utf-8-sig"),
         (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))


def bom_encoding(head: bytes) -> str | None:
    """The encoding a byte-order mark at the start of ``head`` announces (a codec that strips it), or None."""
    return next((enc for bom, enc in _BOMS if head.startswith(bom)), None)


def ascii_compatible(encoding: str) -> bool:
    """Whether lines can be split on the byte ``\\n`` before decoding (not so for UTF-16/32)."""
    try:
        name = codecs.lookup(encoding).name
    except LookupError:
        return True  # an unknown codec name fails per line, with its own reason
    return name == "utf-8-sig" or "\n{".encode(name) == b"\n{"


def sniff_binary(path: Path, encoding: str = "utf-8") -> str | None:
    """Name of a binary format the file holds (by magic bytes or NULs), or None for text."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    for magic, name in _MAGIC.items():
        if head.startswith(magic):
            return name
    if bom_encoding(head) or not ascii_compatible(encoding):
        return None  # UTF-16/32 text: NULs are part of every character
    if b"\x00" in head:
        return "binary"
    return None


def refuse_binary(path: Path, quarantine: list[dict], source: str, expected: str, encoding: str = "utf-8") -> bool:
    """Quarantine the whole file (one row) when it is binary although text was expected."""
    kind = sniff_binary(path, encoding)
    if kind is None:
        return False
    hint = {"Parquet": " (use parquet:PATH)", "zip": " (dailydialog:PATH reads ConvLab zips)",
            "binary": " (UTF-16/32 text without a byte-order mark? pass ?encoding=utf-16-le or similar)"}.get(kind, "")
    q(quarantine, source, path.name, f"<{kind} content, {path.stat().st_size} bytes>",
      f"file content is {kind}, not {expected} as its extension {path.suffix or '(none)'} says{hint}",
      Reason.FORMAT_MISMATCH)
    return True


def first_char(path: Path, encoding: str = "utf-8") -> str:
    """The first non-blank character of a text file (after any byte-order mark), or "" if none shows early."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    enc = bom_encoding(head) or encoding
    try:
        text = head.decode(enc, errors="ignore")
    except LookupError:
        return ""
    text = text.lstrip("\ufeff \t\r\n")
    return text[:1]


def empty_file(path: Path) -> Skipped | None:
    """A :class:`Skipped` marker with a warning for a 0-byte file: nothing to read, nothing wrong."""
    if path.stat().st_size:
        return None
    return Skipped("empty file", warning=f"{path.name} is empty (0 bytes): nothing to ingest from it")


def file_encoding(path: Path, requested: str, quarantine: list[dict], source: str) -> str | None:
    """The encoding to read ``path`` with: the one its byte-order mark announces, else ``requested``.

    UTF-16/32 files (by mark or by request) are checked whole first, so a decoding error refuses the
    file once (category ``encoding``) instead of loading part of it. None: the file was refused.
    """
    with path.open("rb") as fh:
        head = fh.read(4)
    encoding = bom_encoding(head) or requested
    if encoding == "utf-8-sig" or ascii_compatible(encoding):
        return encoding
    decoder = codecs.getincrementaldecoder(encoding)()
    offset = 0
    with path.open("rb") as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError as exc:
                q(quarantine, source, path.name, chunk[max(0, exc.start - 40): exc.end + 40],
                  f"file is {encoding.upper()} (by its {'byte-order mark' if bom_encoding(head) else 'encoding option'})"
                  f" but bytes at offset {offset + exc.start:,} do not decode ({exc.reason}); nothing of it was "
                  "loaded", Reason.ENCODING)
                return None
            if not chunk:
                return encoding
            offset += len(chunk)


def _capped_lines(fh, max_len: int, newline, size) -> Iterator[tuple[int, bytes | str, int]]:
    """``(line_number, line, total_size)`` from an open file; a line over ``max_len`` comes back cut,
    and the rest of it is skipped (its size counted) without being held in memory."""
    n = 0
    while True:
        line = fh.readline(max_len + 1)
        if not line:
            return
        n += 1
        total = size(line)
        if total > max_len and not line.endswith(newline):
            while True:
                chunk = fh.readline(1 << 20)
                total += size(chunk)
                if not chunk or chunk.endswith(newline):
                    break
        yield n, line, total


def iter_lines(path: Path, max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes, int]]:
    """``(line_number, raw_bytes, total_length)``; a line over ``max_bytes`` comes back cut,
    with its full length, and the rest of it is skipped without being held in memory."""
    with path.open("rb") as fh:
        yield from _capped_lines(fh, max_bytes, b"\n", len)


def _utf8_size(text: str) -> int:
    return len(text.encode("utf-8", "surrogatepass"))


def decode(raw: bytes, encoding: str = "utf-8") -> str | None:
    try:
        return raw.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None


def read_lines(path: Path, encoding: str, quarantine: list[dict], source: str,
               max_bytes: int = MAX_LINE_BYTES) -> Iterator[tuple[int, str | None, bytes, int]]:
    """``(line_number, text, raw_bytes, total_length)`` of a text file in any encoding.

    ``text`` is None when the line does not decode (ASCII-compatible encodings fail line by line;
    a UTF-16/32 file was checked whole by :func:`file_encoding`, which quarantines it if it fails).
    A line over ``max_bytes`` comes back cut, with its full length.
    """
    enc = file_encoding(path, encoding, quarantine, source)
    if enc is None:
        return
    if ascii_compatible(enc):
        line_enc = "utf-8" if enc == "utf-8-sig" else enc
        for n, raw, total in iter_lines(path, max_bytes):
            text = decode(raw, line_enc)
            yield n, (text.lstrip("\ufeff") if n == 1 and text else text), raw, total
        return
    # A UTF-16/32 file was checked whole, so decoding cannot fail here; sizes are counted in UTF-8 bytes.
    with path.open("r", encoding=enc, newline="") as fh:
        for n, line, total in _capped_lines(fh, max_bytes, "\n", _utf8_size):
            yield n, line.lstrip("\ufeff") if n == 1 else line, line.encode("utf-8", "surrogatepass"), total


def text_lines(path: Path, quarantine: list[dict], source: str, label: str | None = None
               ) -> Iterator[tuple[int, str, str]]:
    """``(line_number, location, text)`` of each UTF-8 line; a line that does not decode is quarantined
    (``encoding``) and the others still come."""
    for n, raw, _total in iter_lines(path):
        loc = f"{label or path.name}:{n}"
        line = decode(raw)
        if line is None:
            q(quarantine, source, loc, raw, "line is not UTF-8 text", Reason.ENCODING)
            continue
        yield n, loc, line


def read_json_document(path: Path, quarantine: list[dict], source: str, encoding: str = "utf-8"):
    """A whole JSON document, or None after quarantining the file with the reason."""
    if refuse_binary(path, quarantine, source, "JSON", encoding):
        return None
    raw = path.read_bytes()
    enc = bom_encoding(raw[:4]) or ("utf-8-sig" if encoding.lower().replace("_", "-") == "utf-8" else encoding)
    text = decode(raw, enc)
    if text is None:
        q(quarantine, source, path.name, raw, f"file is not {enc} text (pass ?encoding=... if it is another encoding)",
          Reason.ENCODING)
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        q(quarantine, source, f"{path.name}:{exc.lineno}", text[max(0, exc.pos - 100): exc.pos + 100],
          f"malformed JSON file: {exc.msg} at line {exc.lineno} column {exc.colno}", Reason.INVALID_JSON)
        return None


def json_list(path: Path, quarantine: list[dict], source: str, encoding: str = "utf-8") -> list | None:
    doc = read_json_document(path, quarantine, source, encoding)
    if doc is None:
        return None
    if isinstance(doc, dict):  # {"data": [...]} and friends
        lists = [v for v in doc.values() if isinstance(v, list)]
        doc = lists[0] if len(lists) == 1 else doc
    if not isinstance(doc, list):
        q(quarantine, source, path.name, str(doc)[:RAW_CHARS],
          f"expected a JSON array of dialogues, found a JSON {json_type(doc)}", Reason.INVALID_TYPE)
        return None
    return doc
