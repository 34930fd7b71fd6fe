"""The ``dir:`` source: every file of a folder, each read by its extension.

    dir:folder/                           .jsonl/.json chat records, .csv/.tsv and .parquet turn rows

Options are those of the chat and table readers (``encoding``, ``roles``,
``max_line_bytes``, column mappings); each reader gets the ones it takes.
Files with other extensions are quarantined (``unsupported_file``, one row
each) rather than skipped unseen; hidden files are left alone.
"""

from __future__ import annotations

from typing import Iterator

from convrl.data.schema import Reason
from convrl.data.sources.base import Conversation, IngestError, Options, Skipped, open_source, q
from convrl.data.sources.chat import CHAT_OPTIONS, chat_file
from convrl.data.sources.tabular import TABLE_OPTIONS, csv_file, parquet_file


def folder(arg: str, quarantine: list[dict], source: str) -> Iterator[Conversation | Skipped]:
    """Every file of a folder by its extension (see the module docstring)."""
    path, opts = open_source(arg, source, tuple(sorted(set(CHAT_OPTIONS) | set(TABLE_OPTIONS))))
    if not path.is_dir():
        raise IngestError(f"{source}: {path} is not a folder")
    chat_opts = Options(source, {k: v for k, v in opts.values.items() if k in CHAT_OPTIONS}, CHAT_OPTIONS)
    table_opts = Options(source, {k: v for k, v in opts.values.items() if k in TABLE_OPTIONS}, TABLE_OPTIONS)
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        ext = f.suffix.lower()
        if f.name.startswith("."):
            continue
        if ext in (".jsonl", ".json"):
            yield from chat_file(f, chat_opts, quarantine, source)
        elif ext in (".csv", ".tsv"):
            yield from csv_file(f, table_opts, quarantine, source)
        elif ext == ".parquet":
            yield from parquet_file(f, table_opts, quarantine, source)
        else:
            q(quarantine, source, str(f.relative_to(path)), "", f"unsupported file type '{ext or f.name}' "
              "(dir: reads .jsonl, .json, .csv, .tsv, .parquet)", Reason.UNSUPPORTED_FILE)
