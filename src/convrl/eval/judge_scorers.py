"""The lexical judges behind ``JudgePanel``: emotion fit, relevance, personality (with contradictions), engagement.

Each scores replies in [0, 1] from words, lexicons and small count-based
models, never from the reward's encoder or LM (see :mod:`convrl.eval.judges`
for the table of what each measures and why it is independent of the reward)::

    emotion_judge(user_texts, responses, personas)    # (scores, judged user emotions)
    RelevanceJudge(conversations).score(contexts, responses, last_user)
    personality_judge(responses, personas)            # (scores, contradictions found)
    engagement_judge(responses)
"""

from __future__ import annotations

import re

import numpy as np
from sklearn.decomposition import TruncatedSVD
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS, TfidfVectorizer

from convrl.data.personas import DEFAULT_EMOTION_MAP, Persona
from convrl.eval.fluency import is_degenerate, reference_conversations, tokens, vader

_SENT = re.compile(r"[^.!?\n]+[.!?]*")
# Cards name emotions beyond the default map (fearful, surprised, ...); without a card
# the judge falls back to the use case's defaults extended the same way.
_FALLBACK_TONE = {**DEFAULT_EMOTION_MAP, "fearful": "calming", "surprised": "enthusiastic", "disgusted": "calming"}


def _count(text: str, phrases: tuple[str, ...]) -> int:
    low = " " + " ".join(tokens(text)) + " "
    return sum(low.count(f" {p} ") for p in phrases)


# ---------------------------------------------------------------- emotional appropriateness

EMPATHY = ("sorry", "understand", "hear you", "that sounds", "must be", "must feel", "hard", "tough",
           "difficult", "painful", "here for you", "it's okay", "it's ok", "feel", "feeling", "loss", "miss")
CALMING = ("let's", "together", "step", "steps", "breathe", "breath", "calm", "no rush", "take your time",
           "fix", "sort", "solution", "first", "try", "we can", "understandable", "frustrating", "help")
ENTHUSIASM = ("wow", "great", "amazing", "wonderful", "awesome", "fantastic", "congratulations", "congrats",
              "exciting", "excited", "yay", "brilliant", "thrilled", "love", "fun", "happy for you")
ANGER_CUES = ("ridiculous", "annoyed", "annoying", "furious", "angry", "hate", "stupid", "useless",
              "unacceptable", "fed up", "sick of", "mad", "terrible service", "crashed", "broken")
FEAR_CUES = ("scared", "afraid", "worried", "worry", "anxious", "panic", "panicking", "nervous", "terrified",
             "fear", "frightened", "stress", "stressed")
SAD_CUES = ("sad", "lost", "miss", "lonely", "cry", "crying", "depressed", "died", "passed away", "hurt",
            "heartbroken", "alone", "unhappy", "down")


def judge_user_emotion(text: str) -> str:
    """The user's emotion from VADER valence and cue words: happy | sad | angry | fearful | neutral."""
    c = vader().polarity_scores(text)["compound"]
    cues = {"angry": _count(text, ANGER_CUES), "fearful": _count(text, FEAR_CUES), "sad": _count(text, SAD_CUES)}
    if cues["angry"] or c <= -0.2:
        # Exclamation marks intensify anger but also joy: they only count once something is negative.
        cues["angry"] += 0.5 * min(text.count("!"), 2)
    if c <= -0.2 or max(cues.values()) >= 1:
        best = max(cues, key=lambda k: (cues[k], k == "sad"))
        if cues[best] > 0:
            return best
        return "sad" if c <= -0.2 else "neutral"
    if c >= 0.4:
        return "happy"
    return "neutral"


def tone_scores(response: str) -> dict[str, float]:
    """How well the reply fits each tone, in [0, 1]; valence from VADER, style from marker phrases."""
    if is_degenerate(response):
        return {"enthusiastic": 0.0, "empathetic": 0.0, "calming": 0.0, "neutral": 0.0}
    c = vader().polarity_scores(response)["compound"]
    n_emp, n_calm, n_enth = _count(response, EMPATHY), _count(response, CALMING), _count(response, ENTHUSIASM)
    n_excl = min(response.count("!"), 3)
    cheer = min(1.0, (n_enth + 0.5 * n_excl) / 2)
    clip = lambda x: float(min(1.0, max(0.0, x)))  # noqa: E731
    return {
        "enthusiastic": clip(0.5 * cheer + 0.5 * clip((c + 0.2) / 0.8)),
        # Cheering a sad user is the classic failure: enthusiasm markers cost points.
        "empathetic": clip(0.6 * min(1.0, n_emp / 2) + 0.4 * (1 - clip((c - 0.5) / 0.5)) - 0.4 * cheer),
        "calming": clip(0.6 * min(1.0, (n_calm + 0.5 * n_emp) / 2) + 0.4 * (1 - clip((-c - 0.3) / 0.7))
                        - 0.15 * n_excl),
        "neutral": clip(1 - 0.5 * clip((abs(c) - 0.2) / 0.8) - 0.5 * min(1.0, (n_enth + n_emp + n_excl) / 3)),
    }


def wanted_tone(persona: Persona | None, emotion: str) -> str:
    if persona is not None:
        return persona.tone_for(emotion)
    return _FALLBACK_TONE.get(emotion, "neutral")


def emotion_judge(user_texts: list[str], responses: list[str],
                  personas: list[Persona | None]) -> tuple[np.ndarray, list[str]]:
    """Fit of the reply's tone to the tone the persona should take; also returns the judged user emotions."""
    emotions = [judge_user_emotion(u) for u in user_texts]
    scores = [tone_scores(r)[wanted_tone(p, e)] for r, p, e in zip(responses, personas, emotions)]
    return np.array(scores, dtype=np.float32), emotions


# ---------------------------------------------------------------- relevance

def _stem(word: str) -> str:
    """Crude suffix stripping so "exams"/"exam" and "hiking"/"hike" meet; no NLTK data needed."""
    for suf in ("ingly", "edly", "ing", "ies", "ied", "ed", "es", "ly", "s"):
        if word.endswith(suf) and len(word) - len(suf) >= 3:
            return word[: -len(suf)] + ("y" if suf in ("ies", "ied") else "")
    return word


def _stemmed(text: str) -> str:
    return " ".join(_stem(w) for w in tokens(text))


def asked_back(reply: str, user_text: str) -> float:
    """Share of the reply's words in questions that ask one of the user's questions back instead of answering it:
    the question holds every content word (stemmed, not a stop word) of a question of the user's turn, and they
    make at least 60% of its own. Seed 1's candidate answered "can you write selection sort?" with "Can you write
    a selection sort algorithm?", which word and topic overlap scored 1.0, this judge's maximum.
    """
    def content(sentence: str) -> set[str]:
        return {_stem(w) for w in tokens(sentence) if len(w) >= 3 and w not in ENGLISH_STOP_WORDS}

    asked = [c for c in (content(q) for q in _SENT.findall(user_text or "") if q.strip().endswith("?")) if len(c) >= 2]
    total = handed = 0
    for sentence in _SENT.findall(reply or ""):
        n = len(tokens(sentence))
        total += n
        if asked and sentence.strip().endswith("?"):
            own = content(sentence)
            handed += n if any(a <= own and len(a) >= 0.6 * len(own) for a in asked) else 0
    return handed / total if total else 0.0


def relevance_judge(contexts: list[str], responses: list[str], last_user: list[str] | None = None) -> np.ndarray:
    """Lexical relevance: TF-IDF cosine (words + character 3-5-grams) of each reply with its context.

    IDF is fitted on the batch itself so words every reply shares ("the", "you")
    count little; the score is the better of the match with the last user turn
    and with the whole recent context, rescaled so a clear topical overlap
    (cosine ~0.35) reaches 1.
    """
    n = len(responses)
    last_user = last_user if last_user is not None else contexts
    docs = list(responses) + list(contexts) + list(last_user)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    sims = []
    for vec in (TfidfVectorizer(sublinear_tf=True, token_pattern=r"[a-z0-9']{2,}", stop_words="english"),
                TfidfVectorizer(sublinear_tf=True, analyzer="char_wb", ngram_range=(3, 5))):
        try:
            m = vec.fit_transform([_stemmed(d) for d in docs])
        except ValueError:  # empty vocabulary: nothing but stop words in the whole batch
            sims.append(np.zeros(n))
            continue
        r, c, u = m[:n], m[n:2 * n], m[2 * n:]
        sims.append(np.maximum(np.asarray(r.multiply(c).sum(1)).ravel(), np.asarray(r.multiply(u).sum(1)).ravel()))
    sim = 0.5 * sims[0] + 0.5 * sims[1]
    out = np.clip((sim - 0.05) / 0.30, 0, 1)
    out[[is_degenerate(x) for x in responses]] = 0.0
    return out.astype(np.float32)


class RelevanceJudge:
    """Relevance = max(lexical overlap, topic similarity under an LSA model of reference conversations).

    Lexical overlap misses answers that share no words with the question
    ("What is AI?" / "Artificial intelligence is a branch of computer science").
    LSA (TF-IDF + truncated SVD, 64 dims) fitted on whole conversations learns
    which words co-occur in one conversation, a count-based model on different
    data from the reward's MiniLM. On held-out chatterbot pairs it separates
    true replies from shuffled ones with AUC ~0.82 (lexical alone ~0.61); at the
    0.5 threshold ~66% of true and ~3% of shuffled replies count as relevant.
    """

    def __init__(self, conversations=None, dims: int = 64):
        convs = conversations if conversations is not None else reference_conversations()
        docs = [_stemmed(" ".join(c)) for c in convs if c]
        self.vec = self.svd = None
        try:
            self.vec = TfidfVectorizer(sublinear_tf=True, stop_words="english").fit(docs)
            x = self.vec.transform(docs)
            # Far fewer dimensions than conversations, or LSA just memorises each one and never generalises.
            k = min(dims, x.shape[1] - 1, max(2, x.shape[0] // 8))
            if k >= 2:
                self.svd = TruncatedSVD(k, random_state=0).fit(x)
        except ValueError:  # too little reference text: lexical overlap only
            pass

    def topic_similarity(self, a: list[str], b: list[str]) -> np.ndarray:
        if self.svd is None or not a:
            return np.zeros(len(a), dtype=np.float32)
        ea, eb = (self.svd.transform(self.vec.transform([_stemmed(t) for t in x])) for x in (a, b))
        ea /= np.maximum(np.linalg.norm(ea, axis=1, keepdims=True), 1e-9)
        eb /= np.maximum(np.linalg.norm(eb, axis=1, keepdims=True), 1e-9)
        return np.clip((ea * eb).sum(1), 0, 1).astype(np.float32)

    def score(self, contexts: list[str], responses: list[str], last_user: list[str] | None = None) -> np.ndarray:
        last_user = last_user if last_user is not None else contexts
        lexical = relevance_judge(contexts, responses, last_user)
        topic = np.maximum(self.topic_similarity(list(last_user), responses),
                           self.topic_similarity(contexts, responses))
        out = np.maximum(lexical, topic)
        # A question handed back is on topic by every overlap measure and answers nothing.
        out *= 1.0 - np.array([asked_back(r, u) for r, u in zip(responses, last_user)], dtype=np.float32)
        out[[is_degenerate(x) for x in responses]] = 0.0
        return out.astype(np.float32)


# ---------------------------------------------------------------- personality

TRAIT_MARKERS = {
    "empathy": ("understand", "feel", "feeling", "sorry", "hear you", "that sounds", "must be"),
    "warmth": ("glad", "welcome", "care", "dear", "happy to", "here for you", "lovely", "kind"),
    "patience": ("take your time", "no rush", "step by step", "one step", "slowly", "whenever you"),
    "humor": ("haha", "lol", "joke", "funny", "pun", "kidding", "hehe"),
    "enthusiasm": ("wow", "amazing", "awesome", "love", "exciting", "fantastic", "great", "yay"),
    "curiosity": ("curious", "wonder", "tell me", "what about", "how about", "interesting"),
}


def shows_trait(text: str, trait: str) -> bool:
    """Whether ``text`` holds one of the trait's marker phrases (what ``personality_judge`` counts for it)."""
    return _count(text, TRAIT_MARKERS.get(trait, (trait,))) > 0


FORMAL = ("certainly", "please", "would", "could", "recommend", "indeed", "however", "therefore", "regards")
INFORMAL = ("hey", "gonna", "wanna", "yeah", "lol", "dude", "cool", "awesome", "omg", "btw", "yay")
NEGATION = ("not", "never", "no", "don't", "dont", "doesn't", "didn't", "can't", "cannot", "isn't", "haven't",
            "hasn't", "wasn't", "won't", "hate", "dislike", "neither", "nor")
FIRST_PERSON = ("i", "i'm", "im", "my", "me", "i've", "i'd", "mine", "myself")
# Words that appear in many facts but carry no fact: "I love X" shares "love" with "I love Y".
_FACT_STOP = set(ENGLISH_STOP_WORDS) | {"love", "like", "enjoy", "prefer", "believe", "favourite", "favorite",
                                        "years", "called", "work", "happily", "badly", "really", "i'm", "i've"}
CHARACTER_BREAK = re.compile(
    r"\b(as an ai\b|an ai (language )?model|i am an ai\b|i'm an ai\b|a large language model|language model\b|"
    r"i am (just )?a (computer )?program|i'm (just )?a (chat)?bot|i am (just )?a (chat)?bot|"
    r"i (do not|don't) have (personal )?(feelings|emotions|experiences|opinions|preferences|a body))")


def fact_keywords(fact: str) -> set[str]:
    return {w for w in tokens(fact) if len(w) >= 3 and w not in _FACT_STOP}


def _polarity(sentence: str) -> tuple[set[str], set[str]]:
    """Content words of a sentence, and those within four words after a negation ("don't have a dog")."""
    words = tokens(sentence)
    content, negated = set(), set()
    for i, w in enumerate(words):
        if len(w) >= 3 and w not in _FACT_STOP:
            content.add(w)
            if any(x in NEGATION for x in words[max(0, i - 4):i]):
                negated.add(w)
    return content, negated


def _statements(text: str) -> list[tuple[str, set[str], set[str]]]:
    """First-person sentences as (sentence, content words, negated content words)."""
    return [(s.strip(), *_polarity(s)) for s in _SENT.findall(text) if any(w in FIRST_PERSON for w in tokens(s))]


def _persona_given_to_user(low: str, persona: Persona) -> str:
    """The words that tell the user they are the persona ("you're alex", "you are a wellbeing coach"), or "".

    The persona's name, or the role that ends its description's first phrase ("a warm, patient wellbeing coach
    who ..." -> "coach"), after "you are"/"you're": seed 1 of the demo recited its system prompt to the user
    this way in most of its replies, and trait words and facts alone scored that as in character.
    """
    head = re.split(r"\b(?:who|that|with)\b|[.;]", persona.description.lower(), maxsplit=1)[0].split()
    role = head[-1] if head and head[-1] not in ENGLISH_STOP_WORDS else ""
    names = "|".join(re.escape(x) for x in (persona.name.lower(), role) if x)
    if not names:
        return ""
    m = re.search(rf"\byou(?:'re|\u2019re| are)\s+(?:(?:an?|the)\s+)?(?:[\w-]+,?\s+){{0,3}}?(?:{names})\b", low)
    return m.group(0) if m else ""


def contradictions(text: str, persona: Persona | None, earlier: list[str] = ()) -> list[str]:
    """Persona facts (and earlier own statements) the reply contradicts, in words.

    Lexical heuristic: a first-person sentence and a fact share a content word
    that only one of them negates ("I don't have a dog" vs "I have a rescue
    dog"); a different name after "my name is"; or a character break ("as an AI").
    """
    found: list[str] = []
    low = text.lower()
    if CHARACTER_BREAK.search(low):
        found.append(f"character break: '{CHARACTER_BREAK.search(low).group(0)}'")
    refs = []
    if persona is not None:
        m = re.search(r"\bmy name is ([a-z]+)", low)
        if m and persona.name and m.group(1) != persona.name.lower():
            found.append(f"name '{m.group(1)}' but the persona is {persona.name}")
        given = _persona_given_to_user(low, persona)
        if given:
            found.append(f"character break: the persona given to the user ('{given}')")
        refs = [(f, *_polarity(f)) for f in persona.facts]
    for e in earlier:
        refs += [(f"earlier: {sent[:80]}", kw, neg) for sent, kw, neg in _statements(e)]
    for _, words, negated in _statements(text):
        for ref, kw, ref_neg in refs:
            flipped = {w for w in words & kw if (w in negated) != (w in ref_neg)}
            if flipped:
                found.append(f"contradicts '{ref}' (on {', '.join(sorted(flipped))})")
                break
    return found


def personality_judge(responses: list[str], personas: list[Persona | None]) -> tuple[np.ndarray, list[list[str]]]:
    """In-character score: persona facts or strong-trait markers shown, weak-trait markers absent.

    A contradiction of a persona fact or a character break scores 0; otherwise
    ``(0.4 + 0.6 * signal) * (1 - 0.5 * mismatch)`` where ``signal`` is the
    better of fact-keyword overlap and strong-trait marker coverage, and
    ``mismatch`` counts markers of traits the persona lacks (jokes from a
    humourless expert, slang from a formal one). Without a card: 0.5.
    """
    scores, contras = [], []
    for r, p in zip(responses, personas):
        found = contradictions(r, p)
        contras.append(found)
        if is_degenerate(r) or found:
            scores.append(0.0)
            continue
        if p is None:
            scores.append(0.5)
            continue
        words = set(tokens(r))
        fact_kw = set().union(*(fact_keywords(f) for f in p.facts)) if p.facts else set()
        fact_hit = min(1.0, len(words & fact_kw) / 2)
        strong = {t: s for t, s in p.traits.items() if s >= 0.5 and t != "formality"}
        hit = sum(s for t, s in strong.items() if _count(r, TRAIT_MARKERS.get(t, (t,))))
        trait_fit = min(1.0, 2 * hit / sum(strong.values())) if strong else 0.0
        formality = p.traits.get("formality", 0.5)
        if formality >= 0.6:
            trait_fit = max(trait_fit, 0.5 * min(1, _count(r, FORMAL)))
        mismatch = sum(_count(r, TRAIT_MARKERS.get(t, ())) for t, s in p.traits.items() if s < 0.4)
        if formality >= 0.6:
            mismatch += _count(r, INFORMAL)
        signal = max(fact_hit, trait_fit)
        scores.append((0.4 + 0.6 * signal) * (1 - 0.5 * min(1.0, mismatch / 2)))
    return np.array(scores, dtype=np.float32), contras


# ---------------------------------------------------------------- engagement

OPEN_STARTS = ("what", "how", "why", "which", "where", "when", "who", "tell me", "would you like to share",
               "could you tell", "can you tell", "what's", "how's")
SECOND_PERSON = {"you", "your", "you're", "yours", "yourself", "you've", "you'll", "you'd"}
GENERIC = {"ok", "okay", "sure", "yes", "no", "thanks", "thank you", "i don't know", "i dont know", "hello",
           "hi", "hmm", "maybe", "i see", "alright", "cool", "nice", "good"}


def engagement_judge(responses: list[str]) -> np.ndarray:
    """Does the reply invite the user to go on? Open questions, addressing the user, specific content.

    ``0.3 question + 0.2 address + 0.25 specificity + 0.15 diversity + 0.1 length``:
    an open question (what/how/why, "tell me") counts 1, a closed one 0.6, more
    than three questions 0.7 (interrogation); address is the share of
    second-person words (6% = full); specificity the share of content words
    (50% = full); diversity the type/token ratio. Generic replies ("ok",
    "thanks", also with "and you?" tacked on) cap at 0.2, replies under four
    words at 0.4.
    """
    out = np.zeros(len(responses), dtype=np.float32)
    for i, r in enumerate(responses):
        words = tokens(r)
        if is_degenerate(r) or not words:
            continue
        questions = [s.strip().lower() for s in _SENT.findall(r) if s.strip().endswith("?")]
        if not questions:
            q = 0.0
        elif len(questions) > 3:
            q = 0.7
        else:
            open_q = any(s.startswith(OPEN_STARTS) or " you think" in s or "about you" in s for s in questions)
            q = 1.0 if open_q else 0.6
        address = min(1.0, sum(w in SECOND_PERSON for w in words) / len(words) / 0.06)
        content = [w for w in words if w not in ENGLISH_STOP_WORDS and len(w) >= 4]
        specificity = min(1.0, len(content) / len(words) / 0.5)
        diversity = len(set(words)) / len(words) if len(words) >= 3 else len(words) / 3
        n = len(words)
        length = 1.0 if 6 <= n <= 60 else (n / 6 if n < 6 else max(0.0, 1 - (n - 60) / 60))
        s = 0.3 * q + 0.2 * address + 0.25 * specificity + 0.15 * diversity + 0.1 * length
        # A tacked-on "and you?" is the cheapest way to look engaging; judge what comes before it.
        core = re.sub(r"\b(and|what|how) (about )?you$|\byou$", "", " ".join(words)).strip()
        if core in GENERIC or not core:
            s = min(s, 0.2)
        elif n < 4:
            s = min(s, 0.4)
        out[i] = s
    return out
