"""Small readers for the research corpora the learned reward heads are trained and measured on.

Self-contained on purpose (the reward heads need splits, both speakers'
personas and multi-label emotions, which the ingest schema flattens); paths
as in ``../shared/data`` (research use only, see that folder's README)::

    personachat_dialogues("../shared/data/personachat", "valid")  # [{id, personas: [a, b], turns: [(0|1, text)]}]
    dailydialog_dialogues("../shared/data/dailydialog/convlab3_unified/data.zip", "test")  # [{id, turns: [text]}]
    goemotions_split("../shared/data/goemotions/original", "test")  # texts, [[label ids]], label names
"""

from __future__ import annotations

import json
import zipfile
from functools import lru_cache
from pathlib import Path


class CorpusError(ValueError):
    """A corpus file is missing or not in the expected format."""


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        raise CorpusError(f"{path}: not found ({what})")
    return path


# ------------------------------------------------------------------ PersonaChat (KnowEE JSON)

def personachat_dialogues(path: str | Path, split: str = "valid", revised: bool = False) -> list[dict]:
    """PersonaChat dialogues with both personas; speaker 0 speaks the even turns.

    ``path`` is the ``personachat`` folder (reads ``knowee/<split>_original.json``)
    or one KnowEE JSON file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "knowee" / f"{split}_{'revised' if revised else 'original'}.json"
    data = json.loads(_need(p, "PersonaChat KnowEE JSON").read_text(encoding="utf-8"))
    out = []
    for i, d in enumerate(data):
        try:
            personas = [list(d["speaker persona"]), list(d["listener persona"])]
            turns = [(k % 2, str(t)) for k, t in enumerate(d["dialogue"]) if str(t).strip()]
        except (KeyError, TypeError):
            raise CorpusError(f"{p}: dialogue {i} lacks 'speaker persona', 'listener persona' or 'dialogue'") from None
        out.append({"id": f"personachat-{p.stem}-{i}", "personas": personas, "turns": turns})
    return out


# ------------------------------------------------------------------ DailyDialog (ConvLab-3 unified zip)

@lru_cache(maxsize=2)
def _dailydialog_all(zip_path: str) -> tuple:
    with zipfile.ZipFile(_need(Path(zip_path), "DailyDialog ConvLab-3 data.zip")) as zf:
        data = json.loads(zf.read("data/dialogues.json"))
    return tuple(data)


def dailydialog_dialogues(path: str | Path, split: str = "train") -> list[dict]:
    """DailyDialog dialogues of one split (train / validation / test) as lists of utterances."""
    p = Path(path)
    if p.is_dir():
        p = p / "convlab3_unified" / "data.zip" if (p / "convlab3_unified").exists() else p / "data.zip"
    if split not in ("train", "validation", "test"):
        raise CorpusError(f"DailyDialog split must be train, validation or test, got {split!r}")
    out = []
    for d in _dailydialog_all(str(p)):
        if d.get("data_split") != split:
            continue
        turns = [t["utterance"] for t in d.get("turns", []) if str(t.get("utterance", "")).strip()]
        out.append({"id": d.get("dialogue_id", f"dailydialog-{split}-{len(out)}"), "turns": turns,
                    "emotions": [t.get("emotion", "") for t in d.get("turns", [])]})
    return out


# ------------------------------------------------------------------ GoEmotions (TSV)

def goemotions_split(folder: str | Path, split: str = "train") -> tuple[list[str], list[list[int]], list[str]]:
    """Texts, multi-label ids and label names of one split (train / dev / test) of a GoEmotions folder."""
    root = Path(folder)
    names = [x.strip() for x in _need(root / "labels.txt", "GoEmotions labels.txt").read_text().splitlines()
             if x.strip()]
    texts, labels = [], []
    for n, line in enumerate(_need(root / f"{split}.tsv", f"GoEmotions {split}.tsv").read_text(
            encoding="utf-8").splitlines(), 1):
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip():
            continue
        try:
            ids = [int(x) for x in fields[1].split(",")]
        except ValueError:
            raise CorpusError(f"{root / split}.tsv:{n}: label ids {fields[1]!r} are not integers") from None
        if any(not 0 <= i < len(names) for i in ids):
            raise CorpusError(f"{root / split}.tsv:{n}: label id out of range 0-{len(names) - 1}")
        texts.append(fields[0])
        labels.append(ids)
    return texts, labels, names
