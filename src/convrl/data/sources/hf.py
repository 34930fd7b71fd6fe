"""The ``hf:`` source: Hugging Face ``datasets``, as turn rows or as chat records.

Specs::

    hf:/data/saved_dataset                        a ``save_to_disk`` folder (Dataset or DatasetDict)
    hf:org/name?config=default&hf_split=train     any load_dataset name, where a hub is reachable

A dataset with a ``messages`` or ``conversations`` column is read as chat
records (:mod:`convrl.data.sources.chat`); any other is read as one row per
turn with the column options of :mod:`convrl.data.sources.tabular`. A
DatasetDict's split names become the conversations' own split (``split=source``).
"""

from __future__ import annotations

from typing import Iterator

from convrl.data.schema import Reason
from convrl.data.sources.base import Conversation, IngestError, Options, open_source, parse_role_map, q
from convrl.data.sources.chat import record_conversation
from convrl.data.sources.tabular import TABLE_OPTIONS, column_map, rows_to_conversations

_SPLIT_NAMES = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
                "val": "validation", "dev": "validation", "test": "test", "testing": "test"}


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
            conv = record_conversation(rec, roles, stem, n, f"{label}[{split or 'all'}]:{n}", quarantine, source,
                                       prefix="hf")
            if conv:
                conv.split = original
                yield conv
        return
    cols, missing = column_map(opts, ds.column_names)
    if missing:
        q(quarantine, source, f"{label}[{split or 'all'}]", ",".join(ds.column_names), missing, Reason.MISSING_FIELD)
        return
    rows = ((f"{label}[{split or 'all'}]:{i}", r) for i, r in enumerate(ds))
    for conv in rows_to_conversations(rows, cols, opts, prefix, quarantine, source):
        if isinstance(conv, Conversation):
            conv.split = original
        yield conv
