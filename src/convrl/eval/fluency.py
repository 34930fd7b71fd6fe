"""Fluency judge: a character 4-gram LM on human chat text, word coverage and compressibility.

The quality reward scores fluency with the frozen base LM's log-likelihood, a
signal a policy can inflate with bland or looping high-probability text. This
judge uses a different model on different data: a smoothed character n-gram LM
fitted on human-written chat lines (the chatterbot corpus shipped with convrl,
or any texts you pass), the share of words found in that text or the NRC/VADER
lexicons, and zlib compressibility to catch loops::

    from convrl.eval.fluency import FluencyJudge
    FluencyJudge().score(["Sure, happy to help.", "asdkj qwpeo zxmnv"])   # ~[0.9, 0.0]
"""

from __future__ import annotations

import json
import math
import re
import zlib
from collections import Counter
from functools import lru_cache
from importlib import resources

import numpy as np
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from convrl.data.textstats import is_degenerate  # noqa: F401 - re-exported: heads/judges API

_TOKEN = re.compile(r"[a-z0-9']+")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text.lower())


class CharNgramLM:
    """Character n-gram language model with interpolated add-k smoothing (order 4 by default)."""

    def __init__(self, order: int = 4, k: float = 0.1):
        self.order, self.k = order, k
        self.counts: list[Counter] = [Counter() for _ in range(order)]
        self.ctx: list[Counter] = [Counter() for _ in range(order)]
        self.vocab: set[str] = set()

    @staticmethod
    def normalise(text: str) -> str:
        # Digits share one symbol and unknown symbols another, so the alphabet stays small.
        text = re.sub(r"\s+", " ", text.lower())
        return "".join(ch if ch.isalpha() or ch in " .,!?'-" else ("0" if ch.isdigit() else "#") for ch in text)

    def fit(self, texts) -> CharNgramLM:
        for t in texts:
            s = "^" * (self.order - 1) + self.normalise(t) + "$"
            self.vocab.update(s)
            for i in range(self.order - 1, len(s)):
                for n in range(self.order):
                    c = s[i - n:i]
                    self.counts[n][(c, s[i])] += 1
                    self.ctx[n][c] += 1
        return self

    def bits_per_char(self, text: str) -> float:
        s = "^" * (self.order - 1) + self.normalise(text) + "$"
        v = len(self.vocab) + 1
        lambdas = [0.1, 0.2, 0.3, 0.4][-self.order:]
        total = 0.0
        for i in range(self.order - 1, len(s)):
            p = 0.0
            for n in range(self.order):
                c = s[i - n:i]
                p += lambdas[n] * (self.counts[n][(c, s[i])] + self.k) / (self.ctx[n][c] + self.k * v)
            total -= math.log2(p / sum(lambdas))
        return total / max(1, len(s) - self.order + 1)


# The judges' own copy, not convrl.rewards.text_signals.vader: judges import nothing from the rewards
# (tests/test_judges.py), so a held-out judge never shares code paths with what RL optimises.
@lru_cache(maxsize=1)
def vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


@lru_cache(maxsize=1)
def reference_conversations() -> tuple[tuple[str, ...], ...]:
    """Human-written conversations from the chatterbot corpus (installed with convrl): the judges' default data."""
    import yaml

    out: list[tuple[str, ...]] = []
    root = resources.files("chatterbot_corpus") / "data" / "english"
    for res in sorted(root.iterdir(), key=lambda r: r.name):
        if res.name.endswith(".yml"):
            doc = yaml.safe_load(res.read_text(encoding="utf-8")) or {}
            for conv in doc.get("conversations") or []:
                if isinstance(conv, list):
                    out.append(tuple(str(x) for x in conv if isinstance(x, (str, int, float))))
    return tuple(out)


def reference_texts() -> list[str]:
    return [line for conv in reference_conversations() for line in conv]


@lru_cache(maxsize=1)
def _lexicon_words() -> frozenset[str]:
    words = set(ENGLISH_STOP_WORDS)
    with (resources.files("nrclex") / "data" / "nrc_en.json").open(encoding="utf-8") as fh:
        words.update(json.load(fh))
    words.update(w.split("\t")[0] for w in vader().lexicon)
    return frozenset(words)


class FluencyJudge:
    """Natural-text score: char-LM bits per char, known-word coverage and compressibility.

    ``0.5 lm + 0.5 coverage``, times a repetition factor: ``lm`` maps 2.6 bits/char
    (ordinary chat text) to 1 and 4.6 (token salad) to 0; ``coverage`` is the
    share of words seen in the reference text or the NRC/VADER lexicons; text
    whose zlib ratio falls below 0.45 (loops like "I am I am I am") is scaled down.
    """

    def __init__(self, texts=None):
        texts = list(texts) if texts is not None else list(reference_texts())
        self.lm = CharNgramLM().fit(texts)
        self.vocab = set(_lexicon_words()) | {w for t in texts for w in tokens(t)}

    def score(self, responses: list[str]) -> np.ndarray:
        out = np.zeros(len(responses), dtype=np.float32)
        for i, r in enumerate(responses):
            words = tokens(r)
            if is_degenerate(r) or not words:
                continue
            lm = min(1.0, max(0.0, (4.6 - self.lm.bits_per_char(r)) / 2.0))
            coverage = sum(w.strip("'") in self.vocab for w in words) / len(words)
            raw = r.strip().encode()
            ratio = len(zlib.compress(raw, 9)) / len(raw) if len(raw) >= 60 else 1.0
            rep = 1.0 - min(1.0, max(0.0, (0.45 - ratio) / 0.25))
            out[i] = (0.5 * lm + 0.5 * coverage) * rep
        return out
