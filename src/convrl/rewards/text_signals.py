"""Text-only signals of a reply that the reward heads and judges share: repetition, length sanity,
substance (content words) and how much of the user's turn a reply copies (``echo_rate``)::

    repetition_rate("the cat sat the cat sat")   # share of repeated word trigrams
    echo_rate("my laptop will not start", "My laptop will not start after the update")   # 1.0
    echo("I hope you die.", "I hope that you die")   # 1.0: reworded, nothing of its own (echo_rate: 0.0)
"""

from __future__ import annotations

import re
from functools import lru_cache

import numpy as np

WORD_RE = re.compile(r"\w+", re.UNICODE)


def repetition_rate(text: str) -> float:
    """Share of repeated word trigrams (0 = none, 1 = all repeats)."""
    words = WORD_RE.findall(text.lower())
    grams = [tuple(words[i:i + 3]) for i in range(len(words) - 2)]
    if not grams:
        return 0.0
    return 1.0 - len(set(grams)) / len(grams)


def length_sanity(text: str, lo: int = 3, hi: int = 60) -> float:
    n = len(WORD_RE.findall(text))
    if n < lo:
        return n / lo
    if n > hi:
        return max(0.0, 1.0 - (n - hi) / hi)
    return 1.0


_FUNCTION_WORDS = frozenset("""a an the and or but if so to of in on at by for with from as is am are was were be been
being it its this that these those i me my we our you your he she they them his her their do does did have has had
not no yes ok okay oh yeah well just really very too also then there here what how why who when where which can could
would should will shall may might must i'm you're it's that's don't can't""".split())


def substance_score(text: str, full: int = 6) -> float:
    """Content words (not function words, 3+ letters), saturating at ``full``: "ok, i see" 0, a specific reply 1."""
    words = [w for w in WORD_RE.findall(text.lower()) if len(w) >= 3 and w not in _FUNCTION_WORDS]
    return min(1.0, len(set(words)) / full)


# Contractions spelled out before comparing words: RL learned to answer "you are a coward" with "You're a
# coward." (no trigram in common with the user's turn, so no echo discount; docs/agreement-log.md, "The research
# preset, end to end").
_CONTRACTIONS = ((re.compile(r"\b(can)'t\b"), r"\1 not"), (re.compile(r"\bwon't\b"), "will not"),
                 (re.compile(r"n't\b"), " not"), (re.compile(r"'re\b"), " are"), (re.compile(r"\bi'm\b"), "i am"),
                 (re.compile(r"'ve\b"), " have"), (re.compile(r"'ll\b"), " will"), (re.compile(r"'d\b"), " would"),
                 (re.compile(r"\b(it|that|what|there|he|she|who)'s\b"), r"\1 is"))


def _words(text: str) -> list[str]:
    text = text.lower().replace("\u2019", "'")
    for rx, full in _CONTRACTIONS:
        text = rx.sub(full, text)
    return WORD_RE.findall(text)


def _trigrams(text: str) -> set:
    words = _words(text)
    return {tuple(words[i:i + 3]) for i in range(len(words) - 2)}


def echo_rate(reply: str, user_text: str) -> float:
    """Share of the reply copied from the user's turn (word trigrams, contractions spelled out; a short reply:
    1 if it is the same words)."""
    grams = _trigrams(reply)
    if not grams:
        words = _words(reply)
        return float(bool(words) and words == _words(user_text))
    return len(grams & _trigrams(user_text)) / len(grams)


_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The text split into sentences (at ., ! or ? followed by a space, and at line breaks)."""
    return [s for s in _SENTENCE_SPLIT.split(text or "") if s.strip()]


_NEGATIONS = frozenset({"not", "no", "never", "nothing", "nobody", "none"})


def _stem(word: str) -> str:
    """A crude suffix strip, enough to match "checks" with "checker" and "sorting" with "sort". (The held-out judges
    keep their own stemmer in ``eval.judge_scorers``: they must not share the reward's rules.)"""
    for suffix in ("ing", "er", "ed", "es", "s"):
        if len(word) > len(suffix) + 3 and word.endswith(suffix):
            return word[:-len(suffix)]
    return word


def _content(words: list[str]) -> set[str]:
    return {w for w in words if (len(w) >= 3 and w not in _FUNCTION_WORDS) or w in _NEGATIONS}


def _hands_back(question: set[str], user_questions: list[set[str]]) -> bool:
    """A question holding every content word of one of the user's (stemmed) questions (two or more), which make most of
    its own: the request asked back, not answered ("Shall I explain selection sort?" offers something new).

    Seed 1 of the demo (README "Does it learn?"): "can you write selection sort?" -> "Can you write a selection
    sort algorithm?", which the heads and the held-out relevance judge paid as a perfect match.
    """
    q = {_stem(w) for w in question}
    return any(len(asked) >= 2 and asked <= q and len(asked) >= 0.6 * len(q) for asked in user_questions)


def reworded_echo(reply: str, user_text: str) -> float:
    """Share of the reply's words in sentences that add nothing to the user's turn: statements whose every content
    word (3+ letters, not a function word; negations count) is a word of that turn, and questions that ask one of
    the user's questions back (``_hands_back``). Other questions are not echoes: asking back ("You can't sleep? Why
    not?") is how a listener reflects, and an offensive one is the civility reward's to price.

    "I hope that you die" -> "I hope you die." shares no trigram with the user (``echo_rate`` 0), so the heads
    paid it as a coherent, relevant answer, and RL learned it (README "Does it learn?"); "I'm not cruel." adds a
    negation, "The capital of France is Paris." adds "paris": neither is an echo.
    """
    said = set(_words(user_text))
    if not said:
        return 0.0
    # Stemmed once per user turn, not once per question of the reply.
    user_questions = [{_stem(w) for w in _content(_words(s))} for s in sentences(user_text) if s.rstrip().endswith("?")]
    total = echoed = 0
    for sentence in sentences(reply):
        words = _words(sentence)
        total += len(words)
        content = _content(words)
        if sentence.rstrip().endswith("?"):
            echoed += len(words) if _hands_back(content, user_questions) else 0
        elif content and content <= said:
            echoed += len(words)
    return echoed / total if total else 0.0


def echo(reply: str, user_text: str) -> float:
    """How much of the reply only repeats the user's turn: copied trigrams or reworded sentences, the larger."""
    return max(echo_rate(reply, user_text), reworded_echo(reply, user_text))


@lru_cache(maxsize=1)
def vader():
    """VADER's sentiment analyser (its lexicon: valences rated by people), built once per process."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


# "You're Alex, a technical expert ...": a clause told to the user (second person first) that carries the persona.
_CLAUSE_SPLIT = re.compile(r"[,;:]|\band\b|\bbut\b")
# Verbs and words any card and any reply use ("You're not capable of feeling love." gives the user nothing of a card).
_PERSONA_GENERIC = frozenset({"love", "like", "enjoy", "believe", "help", "feel", "keep", "thing", "people", "time",
                              "good", "great", "make", "want", "know", "think", "life", "live"})
_SECOND_PERSON = re.compile(r"^\s*(you|your|you're|youre|you've|you'd|you'll|yourself)\b", re.IGNORECASE)


def _clause_share(reply: str, counts) -> float:
    """Share of the reply's words in clauses (split at , ; : "and" "but") for which ``counts(clause, words)`` holds."""
    total = hit = 0
    for sentence in sentences(reply):
        for clause in _CLAUSE_SPLIT.split(sentence):
            words = _words(clause)
            total += len(words)
            hit += len(words) if words and counts(clause.replace("\u2019", "'"), words) else 0
    return hit / total if total else 0.0


def persona_addressed(reply: str, name: str, card: str, user_text: str = "") -> float:
    """Share of the reply's words in clauses that tell the user they are the persona: a clause opening in the second
    person ("you're", "your", "you love") holding the persona's name or a content word of its card (description and
    facts) that the user's turn does not.

    Seed 1 of the demo learned to recite its system prompt back ("You're Alex, a technical expert who explains
    things clearly ...", "You're a wellbeing coach, and I'm here to help you with a prime number checker.") in 81
    of 96 held-out replies: the personality head paid for the card's words wherever they stood. "I'm a wellbeing
    coach, and you're doing great." keeps the persona where it belongs.
    """
    said = {_stem(w) for w in _words(user_text)}
    own = {_stem(w) for w in _content(_words(card))} - said - _PERSONA_GENERIC
    tag = (name or "").strip().lower()
    return _clause_share(reply, lambda clause, words: bool(_SECOND_PERSON.match(clause) and (
        (tag and tag in words) or {_stem(w) for w in _content(words)} & own)))


# "I'm a coach", "I am not a dog": a clause saying what the assistant is.
_IDENTITY = re.compile(r"^\s*(i'm|im|i am)\s+(not\s+)?(just\s+|only\s+|also\s+|really\s+)?(a|an|the)\b", re.IGNORECASE)
_REQUEST = re.compile(r"^\s*(can|could|would|will|please)\b", re.IGNORECASE)
_ABOUT_YOU = re.compile(r"\b(you|your|yours|yourself|you're|youre)\b", re.IGNORECASE)


def self_description(reply: str, user_text: str = "") -> float:
    """Share of the reply's words in clauses that say what the assistant is ("I'm a wellbeing coach", "I am not a
    dog", "I'm a bit of a tech enthusiast"), unless the user asked about the assistant ("what do you do?", "tell me
    about yourself"): then describing itself is the answer, and 0.

    Seed 13 of the demo on a later machine learned to answer with identity claims in the card's words ("I'm a
    wellbeing coach, and I'm happy to help with your wellbeing journey. I'm a small-town dog shelter, ..."): 30% of
    its held-out replies were more than 0.3 such clauses, against the base model's 8%; the personality head (which
    correlates +0.70 with this share there) rose 0.227 -> 0.270 while the held-out personality judge fell 0.628 ->
    0.541, as the self-descriptions stumbled into contradicting the card ("I'm not a dog"). A persona shows in how
    it answers and in the facts it brings up ("my cats would love that"), not in claims of what it is.
    """
    if asks_about_assistant(user_text):
        return 0.0
    return _clause_share(reply, lambda clause, words: bool(_IDENTITY.match(clause)))


def asks_about_assistant(user_text: str) -> bool:
    """Whether the user's turn asks the assistant about itself: a question in the second person that is not a request
    ("Who are you?", "Do you like dogs?", "Tell me about yourself."; not "Can you help me?")."""
    for s in sentences(user_text):
        low = s.strip().lower()
        if "yourself" in low or ("?" in low and _ABOUT_YOU.search(low) and not _REQUEST.match(low)):
            return True
    return False


def persona_given_away(replies: list[str], personas: list, user_texts: list[str]) -> list[bool]:
    """Per reply: does it tell the user they are its persona (``persona_addressed`` > 0)? False without a persona."""
    return [p is not None and persona_addressed(r, p.name, " ".join([p.description, *p.facts]), u) > 0
            for r, p, u in zip(replies, personas, user_texts)]


def without_recited_card(scores, replies: list[str], personas: list, user_texts: list[str]) -> np.ndarray:
    """Personality scores with 0 where a reply recites its persona card to the user (``persona_given_away``), and
    times 1 minus the share of the reply that claims what it is, unasked (``self_description``).

    Applied after the head, learned or not: a learned head scores the card's words as in character as well.
    """
    out = np.asarray(scores, dtype=np.float32).copy()
    out[np.array(persona_given_away(replies, personas, user_texts), dtype=bool)] = 0.0
    described = [self_description(r, u) if p is not None else 0.0 for r, p, u in zip(replies, personas, user_texts)]
    return (out * (1.0 - np.asarray(described, dtype=np.float32))).astype(np.float32)
