"""JSON files for the typed stage artifacts (reward bundle, policy, A/B decision): one way to write and read them.

    save_json(artifact, path)                 # a dataclass -> indented, key-sorted JSON
    load_json(PolicyArtifact, path, hint)     # unknown keys (from newer writers) are ignored
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def save_json(artifact, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(dataclasses.asdict(artifact), indent=2, sort_keys=True, default=str))
    return path


def read_json(path: str | Path, hint: str) -> dict:
    """The JSON mapping at ``path``; a missing file says what the artifact is and what to pass instead."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path.parent} is not {hint} (no {path.name})")
    return json.loads(path.read_text())


def from_mapping(cls: type[T], data: dict) -> T:
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in data.items() if k in known})


def load_json(cls: type[T], path: str | Path, hint: str) -> T:
    return from_mapping(cls, read_json(path, hint))
