"""Exact and near-duplicate conversation detection (MinHash + LSH over word shingles).

Two conversations are near-duplicates when the Jaccard similarity of their
word-3-gram sets (text lower-cased, punctuation dropped, turns joined) is at
least ``threshold``. MinHash signatures (64 hash functions,
banded so a pair at the threshold is found with 99.5% probability) find
candidates in roughly constant time per conversation; each candidate is
then confirmed with the exact Jaccard of the stored shingle sets, so the
signature's noise never removes a conversation on its own. The first
conversation seen is kept: source order decides, deterministically::

    from convrl.data.dedup import NearDuplicateIndex, exact_key
    index = NearDuplicateIndex(threshold=0.85)
    index.add("a", ["Hi there", "Hello, how are you?"])        # None: new
    index.add("b", ["hi there!", "hello how are you"])         # "a": a near-duplicate of a
    index.add_or_match("c", ["hi there", "hello how are you"])  # ("a", 1.0): with the similarity

Everything is hashed with fixed seeds (no Python ``hash``), so results do not
depend on PYTHONHASHSEED.
"""

from __future__ import annotations

import hashlib
import re
import zlib

import numpy as np

_NON_WORD = re.compile(r"[\W_]+", re.UNICODE)
_SEP = "\x1e"


def normalise_for_dedup(text: str) -> str:
    return _NON_WORD.sub(" ", text.lower()).strip()


def exact_key(turns: list[tuple[str, str]], normalised: bool = False) -> str:
    """Roles and normalised texts: equal keys mean the same conversation up to case and punctuation.

    ``normalised``: the texts already went through :func:`normalise_for_dedup` (ingest does it once for
    both the exact key and the shingles)."""
    return hashlib.sha1(_SEP.join(f"{r}:{t if normalised else normalise_for_dedup(t)}" for r, t in turns)
                        .encode()).hexdigest()


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a good 64-bit mixer (uint64 arithmetic wraps, as intended)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def lsh_bands(threshold: float, num_perm: int = 64, recall: float = 0.995) -> tuple[int, int]:
    """(bands, rows): the most selective banding that still finds a pair at ``threshold`` with ``recall``.

    More rows per band means fewer dissimilar candidates to verify; candidates are
    checked exactly, so only recall matters for correctness.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold ** rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


class NearDuplicateIndex:
    def __init__(self, threshold: float = 0.85, num_perm: int = 64, shingle: int = 3, seed: int = 1):
        if not 0 < threshold <= 1:
            raise ValueError("near-duplicate threshold must lie in (0, 1]")
        self.threshold, self.k = threshold, shingle
        self.bands, self.rows = lsh_bands(threshold, num_perm)
        rng = np.random.default_rng(seed)
        self._seeds = rng.integers(1, 2**63, size=self.bands * self.rows, dtype=np.uint64)[:, None]
        self._mults = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9][:shingle],
                               dtype=np.uint64)
        self._word_hash: dict[str, int] = {}
        self._buckets: dict[tuple[int, bytes], list[int]] = {}
        self._sets: list[np.ndarray] = []
        self._keys: list[str] = []

    def shingles(self, texts: list[str], normalised: bool = False) -> np.ndarray:
        words = []
        for t in texts:
            words.extend((t if normalised else normalise_for_dedup(t)).split())
            words.append(_SEP)  # turn boundary: shingles do not bridge two speakers silently
        cache = self._word_hash
        ids = np.fromiter((cache[w] if w in cache else cache.setdefault(w, zlib.crc32(w.encode()))
                           for w in words), dtype=np.uint64, count=len(words))
        if len(ids) < self.k:
            return np.unique(_mix(ids.sum(dtype=np.uint64, keepdims=True)))
        n = len(ids) - self.k + 1
        h = np.zeros(n, dtype=np.uint64)
        for j in range(self.k):
            h = h + ids[j: j + n] * self._mults[j]
        return np.unique(h)

    def signature(self, sh: np.ndarray) -> np.ndarray:
        return _mix(sh[None, :] ^ self._seeds).min(axis=1)

    def add(self, key: str, texts: list[str]) -> str | None:
        """Index a conversation; return the key of an earlier near-duplicate instead (then nothing is added)."""
        hit = self.add_or_match(key, texts)
        return None if hit is None else hit[0]

    def add_or_match(self, key: str, texts: list[str], normalised: bool = False) -> tuple[str, float] | None:
        """Like :meth:`add`, but a match comes back with its Jaccard similarity: ``(key, similarity)``."""
        sh = self.shingles(texts, normalised)
        sig = self.signature(sh).reshape(self.bands, self.rows)
        bucket_keys = [(b, sig[b].tobytes()) for b in range(self.bands)]
        seen: set[int] = set()
        for bk in bucket_keys:
            for idx in self._buckets.get(bk, ()):
                if idx in seen:
                    continue
                seen.add(idx)
                other = self._sets[idx]
                inter = np.intersect1d(sh, other, assume_unique=True).size
                similarity = inter / (sh.size + other.size - inter)
                if similarity >= self.threshold:
                    return self._keys[idx], float(similarity)
        idx = len(self._sets)
        self._sets.append(sh)
        self._keys.append(key)
        for bk in bucket_keys:
            self._buckets.setdefault(bk, []).append(idx)
        return None
