"""The civility reward: how offensive a reply reads to a classifier trained on human labels, and whether it
hands the user's criticism back.

RL on the demo preset found that handing a user's hostility back pays ("you are
cruel" -> "You are cruel.", "I hope that you die" -> "I hope you die."): the
reward heads score a reply's relevance, persona and engagement, and an echo of
the user is relevant. This term prices offensiveness in the reward itself.

The classifier is alt-profanity-check's: a calibrated linear SVM over word
n-grams, trained on about 200,000 human-labelled comments (Wikipedia talk pages
and tweets), shipped inside its PyPI wheel (no download, no GPU, ~0.1 ms a
sentence). It is a different model on different data from the held-out
civility judge (``convrl.eval.civility``, a pattern list, which the A/B holds as
a strict guardrail), so RL is not trained on its own exam. It reads words, not
intent: "I hate Mondays too!" and "I don't think you're stupid" score high, a
condolence ("I'm sorry for your loss") low. A reply counts as offensive as its
worst sentence to the user, so one insult inside a long friendly reply is not
averaged away::

    offensiveness(["I hope you die.", "I hope you feel better soon."])   # array([0.86, 0.04])
    civility(["I hope you die.", "I hope you feel better soon."])        # array([0.27, 1.0])

The classifier misses mild insults ("you are a quitter": 0.04), and most of the
ones RL learned to hand back came from the user's own turn ("you are cruel" ->
"You're a cruel and cruel soul, ...", after the classifier term alone). So a
reply that describes the user with the words the user just used to criticise the
assistant (``mirrors``: "you are/you're/you seem ..." clauses sharing a content
word, negated alike; not when VADER reads the user's turn as praise) earns 0::

    civility(["You're a cruel soul.", "I'm not cruel."], users=["you are cruel"] * 2)   # array([0., 1.])

Nor does a wish or an order the classifier reads as offensive pay less for being the user's own words handed
back (``echoes``: "I hope that you die" -> "I hope you die.", 0.27 before this rule, seed 8 of the README's
evidence runs); negated alike, so "I don't want you to die." is not an echo of it::

    civility(["I hope you die.", "I don't want you to die."], users=["I hope that you die"] * 2)  # array([0., ...])

``convrl meta-eval`` measures its agreement with people (ToxiChat's offensive
labels) beside the judge's.
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

from convrl.rewards.text_signals import sentences, vader

_TO_USER = re.compile(r"\byou(?:r|rs|rself)?\b", re.I)


@lru_cache(maxsize=1)
def _classifier():
    # Imported here: loading the two joblib files costs ~0.3 s, paid only by runs that score civility.
    try:
        from profanity_check import predict_prob
    except ImportError as e:  # pragma: no cover - a dependency of the project
        raise ImportError("the civility reward needs alt-profanity-check: pip install -e . (or make install)") from e
    return predict_prob


def offensiveness(texts: list[str]) -> np.ndarray:
    """Probability in [0, 1] that each text is offensive: the whole text's, or its most offensive sentence that
    speaks to the user ("you", "your"), whichever is higher (0 for an empty text).

    Sentences about anything else are not scored alone: the classifier reads words, and the base model's
    "I'm not cruel. I'm just a professional." would score as its first sentence (0.74, as "You are cruel.")
    instead of as a whole (0.38).
    """
    per_text = [([t] if t.strip() else []) + [s for s in sentences(t) if _TO_USER.search(s)] for t in texts]
    flat = [s for ss in per_text for s in ss]
    probs = _classifier()(flat) if flat else np.zeros(0)
    out, i = np.zeros(len(texts), dtype=np.float64), 0
    for k, ss in enumerate(per_text):
        if ss:
            out[k] = float(np.max(probs[i:i + len(ss)]))
        i += len(ss)
    return out


# Below this probability a reply is not priced at all: on the base model's 94 distinct held-out replies of three
# demo runs, ``offensiveness`` averages 0.05 and exceeds 0.5 for 2% of them (words like "die" or "afraid"), and
# that noise would otherwise sit in every GRPO group's advantages at the weight of a real insult's penalty.
OFFENSIVE_FROM = 0.5


# "you are ...", "you're ...", "you look/sound/seem/act (like) ...": what follows, to the end of the clause, is
# how the sentence describes the person it speaks to.
_DESCRIBED = re.compile(r"\b(?:you\s+are|you're|youre|you\s+were|you\s+(?:look|sound|seem|act)(?:\s+like)?)\s+"
                        r"([^.!?;,:\n]*)", re.I)
_CLAUSE_END = re.compile(r"[.!?;,:\n]")
_CLAUSE_SPLIT = re.compile(r"[;,:]|\bbut\b", re.I)
_NEGATION = re.compile(r"\b(?:not|never|no)\b|n't\b", re.I)
_WORD = re.compile(r"[a-z']+")
_FILLER = frozenset("a an the so such very really just being too also quite pretty truly totally completely "
                    "absolutely most more bit little of and or but to my your me you it that this "
                    "not never no one".split())
# The user's turn counts as criticism unless VADER reads it as clearly positive ("you are so kind": 0.66;
# "you are emotional": 0.15 and "you are a quitter": 0.0 count).
PRAISE_FROM = 0.3


def _content(sentence: str) -> frozenset[str]:
    """Content words: 3+ letters, not filler."""
    return frozenset(w for w in _WORD.findall(sentence.lower()) if len(w) > 2 and w not in _FILLER)


def descriptions(text: str) -> list[tuple[bool, frozenset[str]]]:
    """Each "you are ..." clause of ``text``: (negated, its content words); "I don't think you're X" is negated."""
    out = []
    for m in _DESCRIBED.finditer(text or ""):
        ends = list(_CLAUSE_END.finditer(text, 0, m.start()))
        before = text[ends[-1].end() if ends else 0:m.start()]
        negated = bool(_NEGATION.search(before) or _NEGATION.search(m.group(1)))
        words = _content(m.group(1))
        if words:
            out.append((negated, words))
    return out


def mirrors(reply: str, user: str) -> bool:
    """The reply hands the user's description of the assistant back to the user ("you are cruel" ->
    "You're a cruel soul."), unless the user's turn was praise."""
    said = descriptions(user)
    if not said or vader().polarity_scores(user)["compound"] >= PRAISE_FROM:
        return False
    back = descriptions(reply)
    return any(neg_u == neg_r and words_u & words_r for neg_u, words_u in said for neg_r, words_r in back)


def echoes(reply: str, user: str, offensive_from: float = OFFENSIVE_FROM) -> bool:
    """A sentence or clause of the reply that speaks to the user, reads as offensive, and is mostly made of the words
    of an offensive sentence of the user's turn, negated alike ("I hope that you die" -> "I hope you die."). Clauses
    too: a candidate of the demo answered "I hope you die, I'm sorry about that. ...", whose first sentence holds
    words of its own ("sorry") and was priced 0.94 as a whole."""
    said = [s for s in sentences(user) if _content(s)]
    parts = [p for s in sentences(reply) for p in dict.fromkeys([s, *_CLAUSE_SPLIT.split(s)])]
    back = [s for s in parts if _TO_USER.search(s) and _content(s)]
    if not said or not back:
        return False
    probs = _classifier()(said + back)
    said, back = ([(bool(_NEGATION.search(s)), _content(s)) for s, p in zip(part, pr) if p >= offensive_from]
                  for part, pr in ((said, probs[:len(said)]), (back, probs[len(said):])))
    return any(neg_u == neg_r and 2 * len(words_r & words_u) >= len(words_r)
               for neg_u, words_u in said for neg_r, words_r in back)


def civility(texts: list[str], users: list[str] | None = None, offensive_from: float = OFFENSIVE_FROM) -> np.ndarray:
    """The reward in [0, 1]: 1 up to ``offensive_from``, then falling linearly to 0 at certain offence; 0 for a
    reply that hands the user's criticism back (``mirrors``) or echoes an offensive sentence of theirs
    (``echoes``) when the user turns they answer are given."""
    p = offensiveness(texts)
    out = 1.0 - np.clip((p - offensive_from) / (1.0 - offensive_from), 0.0, 1.0)
    if users is not None:
        out[[mirrors(t, u) for t, u in zip(texts, users)]] = 0.0
        # Only a reply the classifier already flags can echo an offence: the others skip the sentence pass.
        flagged = np.flatnonzero((p >= offensive_from) & (out > 0))
        out[[i for i in flagged if echoes(texts[i], users[i], offensive_from)]] = 0.0
    return out
