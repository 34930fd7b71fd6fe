"""Typed evaluation artifacts passed between the evaluate, A/B and register stages.

* ``EvaluationScores``: the per-prompt score table of candidate and baseline, plus the
  candidate's headline metrics and what the baseline was, in one Parquet file (the
  headline rides in the file's key-value metadata, so the table and its summary never
  part ways).
* ``DecisionRecord``: the A/B decision with its statistics, the summary in words, and the
  evaluation headline it was based on; ``register`` tags the model version from it::

    ev = EvaluationScores.load(scores_path); ev.scores, ev.headline
    rec = DecisionRecord.load(decision_path); rec.outcome, rec.headline
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from convrl.artifact_io import from_mapping, read_json, save_json

_META_KEY = b"convrl.evaluation"


@dataclass
class EvaluationScores:
    scores: pd.DataFrame
    headline: dict[str, float] = field(default_factory=dict)
    baseline: str = ""

    def save(self, path: str | Path) -> Path:
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        table = pa.Table.from_pandas(self.scores, preserve_index=False)
        meta = dict(table.schema.metadata or {})
        meta[_META_KEY] = json.dumps({"headline": self.headline, "baseline": self.baseline}, default=float).encode()
        pq.write_table(table.replace_schema_metadata(meta), path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> EvaluationScores:
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        extra = json.loads((table.schema.metadata or {}).get(_META_KEY, b"{}"))
        return cls(table.to_pandas(), dict(extra.get("headline", {})), extra.get("baseline", ""))


@dataclass
class DecisionRecord:
    outcome: str
    reasons: list[str] = field(default_factory=list)
    metrics: dict[str, dict] = field(default_factory=dict)
    n: int = 0
    settings: dict = field(default_factory=dict)
    summary: str = ""
    headline: dict[str, float] = field(default_factory=dict)
    baseline: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def save(self, path: str | Path) -> Path:
        return save_json(self, path)

    @classmethod
    def load(cls, path: str | Path) -> DecisionRecord:
        data = read_json(path, "an A/B decision: pass the decision output of ab_compare")
        if not isinstance(data, dict) or "outcome" not in data:
            raise ValueError(f"{path} is not an A/B decision (no 'outcome'): pass the decision output of ab_compare")
        return from_mapping(cls, data)

    def primary(self) -> dict:
        return self.metrics.get(self.settings.get("primary", "composite"), {})
