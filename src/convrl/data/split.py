"""Deterministic, per-source (stratified) train/validation/test split by conversation id.

A conversation's split depends only on its id, the seed and the other ids of
its source (hash-ordered), so re-running ingest gives the same split and no
conversation is ever in two splits. Conversations given one group (``groups``:
the two halves of a preference pair) are split as one unit::

    from convrl.data.split import assign_splits
    assign_splits(ids, sources, val_fraction=0.1, test_fraction=0.2, seed=13)   # {id: split}
    assign_splits(ids, sources, 0.1, 0.2, 13, groups={"a-chosen": "a", "a-rejected": "a"})
"""

from __future__ import annotations

import hashlib

import pandas as pd


def bucket(key: str, seed: int) -> float:
    """A reproducible number in [0, 1) for ``key`` (sha256, so PYTHONHASHSEED does not matter)."""
    h = hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()
    return int(h[:12], 16) / float(16 ** 12)


def assign_splits(conv_ids: pd.Series, sources: pd.Series, val_fraction: float, test_fraction: float,
                  seed: int, groups: dict[str, str] | None = None) -> dict[str, str]:
    """Deterministic, per-source (stratified) split by conversation id, or by group for grouped ones."""
    out: dict[str, str] = {}
    groups = groups or {}
    frame = pd.DataFrame({"cid": conv_ids, "src": sources}).drop_duplicates("cid")
    frame["unit"] = [groups.get(c, c) for c in frame["cid"]]
    for _, grp in frame.groupby("src", sort=True):
        units = sorted(set(grp["unit"]), key=lambda u: bucket(u, seed))
        n = len(units)
        n_test = max(1, round(n * test_fraction)) if n >= 3 else 0
        n_val = max(1, round(n * val_fraction)) if n >= 3 else 0
        split_of = {u: "test" if i < n_test else "validation" if i < n_test + n_val else "train"
                    for i, u in enumerate(units)}
        out.update({c: split_of[u] for c, u in zip(grp["cid"], grp["unit"])})
    return out


__all__ = ["assign_splits", "bucket"]
