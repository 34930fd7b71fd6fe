"""How the user took the conversation: lexical cues and a turn-level reaction model for the dialogue judge.

A person rating a whole conversation remembers how it went for them: whether
the assistant had to apologise ("sorry, there are no hotels..."), whether they
had to correct it ("no, I said the north"), whether it got things done
("booked, your reference number is...") and whether they thanked it at the end.
``cue_features`` counts those cues in a conversation's text. ``ReactionModel``
learns the same from people: a TF-IDF ridge regression from each exchange (the
assistant's turn and the user's next turn) to the satisfaction a rater gave at
that turn (the user-satisfaction sessions rate every turn), whose per-exchange
predictions the dialogue judge reads as the mean, minimum, last and mean of the
last three. It only reads the messages' text, never their ratings::

    model = ReactionModel.fit(conversations)            # message lists; assistant turns with ratings.satisfaction
    model.features(conversations)                       # (n, len(REACTION_FEATURES))
    feats, model = crossfit_reaction(conversations, train_mask, ids)   # out-of-fold on the training rows

Chosen on the training side only (``bench/dialogue_judge_dev.py``: the dev split of the training-side dialogues,
never meta-eval's held-out ones).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np

_SORRY = re.compile(r"\b(sorry|unfortunately|i'm afraid|there (are|is) no|not available|unable|can't find|"
                    r"cannot find|couldn't find|didn't find|don't have|no (hotels?|restaurants?|trains?|results|"
                    r"matches))\b", re.I)
_DONE = re.compile(r"\b(booked|booking (is|was) (successful|complete)|reference (number|code)|confirmation|"
                   r"confirmed|reserved|all set|have a (great|nice|good)|you're welcome|glad (i|to))\b", re.I)
_CORRECT = re.compile(r"^\s*(no\b|nope|actually|not\b)|\b(instead|i said|i already|again|wrong|that's not|"
                      r"that is not|not what|didn't ask|i meant|rather)\b", re.I)
_THANKS = re.compile(r"\b(thank|thanks|great|perfect|awesome|excellent|wonderful|helpful|appreciate)\b", re.I)
_NEGATIVE = re.compile(r"\b(not interested|don't like|hate|boring|bad|terrible|worse|disappoint|frustrat|annoy|"
                       r"useless)\b", re.I)
CUE_FEATURES = ("bot_sorry", "bot_done", "user_correct", "user_thanks", "user_thanks_end", "user_negative",
                "bot_sorry_count", "user_correct_count")
REACTION_FEATURES = ("reaction_mean", "reaction_min", "reaction_last", "reaction_last3")
REACTION_FILE = "reaction.skops"
ENCODER_REACTION_DIR = "reaction_encoder"  # where reaction_encoder.EncoderReactionModel saves itself
# Fewer labelled exchanges than this and the model is not fitted (its features stay 0 and the trees ignore them).
MIN_EXCHANGES = 50


def _turns(conversation: list[dict]) -> tuple[list[str], list[str]]:
    msgs = [m for m in conversation if m.get("role") in ("user", "assistant")]
    return ([m["content"] for m in msgs if m["role"] == "user"],
            [m["content"] for m in msgs if m["role"] == "assistant"])


def cue_features(conversations: list[list[dict]]) -> np.ndarray:
    """(n, len(CUE_FEATURES)): shares of turns with each cue (apology, done, correction, thanks, ...) and counts."""
    def share(rx, texts):
        return float(np.mean([bool(rx.search(t)) for t in texts])) if texts else 0.0

    rows = []
    for conv in conversations:
        usr, bot = _turns(conv)
        rows.append([share(_SORRY, bot), share(_DONE, bot), share(_CORRECT, usr), share(_THANKS, usr),
                     share(_THANKS, usr[-2:]), share(_NEGATIVE, usr), float(sum(bool(_SORRY.search(t)) for t in bot)),
                     float(sum(bool(_CORRECT.search(t)) for t in usr))])
    return np.asarray(rows, dtype=np.float64).reshape(len(conversations), len(CUE_FEATURES))


def exchange_text(reply: str, next_user_turn: str) -> str:
    """One exchange as the reaction model reads it: the assistant's turn, then the user's answer to it."""
    return f"SYS {reply} || USR {next_user_turn}"


def replies_with_answers(conversation: list[dict]) -> list[tuple[dict, str | None]]:
    """Each assistant message with the user's message right after it (None when nobody answered it)."""
    msgs = [m for m in conversation if m.get("role") in ("user", "assistant")]
    return [(m, msgs[i + 1]["content"] if i + 1 < len(msgs) and msgs[i + 1]["role"] == "user" else None)
            for i, m in enumerate(msgs) if m["role"] == "assistant"]


def exchanges(conversation: list[dict]) -> list[tuple[str, float | None]]:
    """Each assistant turn with the user's next turn as one text, and the satisfaction rated there (or None)."""
    out = []
    for m, answer in replies_with_answers(conversation):
        label = (m.get("ratings") or {}).get("satisfaction")
        out.append((exchange_text(m["content"], answer or ""), None if label is None else float(label)))
    return out


def load_sklearn(file: str | Path):
    """A skops file holding scikit-learn / numpy / scipy.sparse objects only (no pickle); anything else is refused."""
    import skops.io as sio

    types = sio.get_untrusted_types(file=file)
    foreign = [t for t in types if not t.startswith(("sklearn.", "numpy.", "scipy.sparse."))]
    if foreign:
        raise ValueError(f"{file}: refusing to load types other than scikit-learn's: {foreign}")
    return sio.load(file, trusted=types)


class ReactionModel:
    """TF-IDF (word 1-2-grams) ridge from an exchange's text to the satisfaction rated at that turn."""

    def __init__(self, pipeline=None, exchanges_fitted: int = 0):
        self.pipeline, self.exchanges_fitted = pipeline, int(exchanges_fitted)

    @classmethod
    def fit(cls, conversations: list[list[dict]]) -> "ReactionModel":
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline

        pairs = [(t, y) for c in conversations for t, y in exchanges(c) if y is not None]
        if len(pairs) < MIN_EXCHANGES:
            return cls(None, len(pairs))
        texts, y = zip(*pairs)
        pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True), Ridge(alpha=3.0))
        pipe.fit(list(texts), np.asarray(y, dtype=np.float64))
        return cls(pipe, len(pairs))

    def predict(self, replies: list[str], next_user_turns: list[str]) -> np.ndarray:
        """Predicted satisfaction (the raters' 1-5 scale) of each reply, read from the user's next turn.

        NaN everywhere when no model was fitted. This is what ``convrl monitor`` tracks for served turns.
        """
        return self.predict_texts([exchange_text(r, u) for r, u in zip(replies, next_user_turns)])

    def predict_texts(self, texts: list[str]) -> np.ndarray:
        """Predicted satisfaction of exchange texts (``exchange_text``); NaN when no model was fitted."""
        if self.pipeline is None:
            return np.full(len(texts), np.nan)
        return self.pipeline.predict(texts) if texts else np.zeros(0)

    @property
    def fitted(self) -> bool:
        return self.pipeline is not None

    def features(self, conversations: list[list[dict]]) -> np.ndarray:
        return reaction_features(conversations, self.predict_texts if self.fitted else None)

    def save(self, folder: str | Path) -> None:
        import shutil

        import skops.io as sio

        f = Path(folder) / REACTION_FILE
        # A judge saved over an older one must not load the older one's model, of either kind.
        shutil.rmtree(Path(folder) / ENCODER_REACTION_DIR, ignore_errors=True)
        if self.pipeline is not None:
            sio.dump(self.pipeline, f)
        else:
            f.unlink(missing_ok=True)

    @classmethod
    def load(cls, folder: str | Path, exchanges_fitted: int = 0) -> "ReactionModel":
        f = Path(folder) / REACTION_FILE
        return cls(load_sklearn(f), exchanges_fitted) if f.is_file() else cls(None, exchanges_fitted)


def reaction_features(conversations: list[list[dict]], predict_texts) -> np.ndarray:
    """(n, len(REACTION_FEATURES)): mean, min, last and mean of the last three predicted ratings of each
    conversation's exchanges; ``predict_texts(exchange texts) -> ratings``, or None for an unfitted model (0s)."""
    out = np.zeros((len(conversations), len(REACTION_FEATURES)))
    if predict_texts is None:
        return out
    texts = [[t for t, _ in exchanges(c)] for c in conversations]
    flat = [t for ts in texts for t in ts]
    pred = np.asarray(predict_texts(flat), dtype=np.float64) if flat else np.zeros(0)
    k = 0
    for i, ts in enumerate(texts):
        s, k = pred[k:k + len(ts)], k + len(ts)
        if len(s):
            out[i] = [s.mean(), s.min(), s[-1], s[-3:].mean()]
    return out


def crossfit_reaction(conversations: list[list[dict]], train: np.ndarray, ids: list[str],
                      folds: int = 5, fit=None) -> tuple[np.ndarray, ReactionModel]:
    """Reaction features with no row scored by a model that saw its own ratings, and the model for new data.

    Training rows get out-of-fold predictions (``folds`` folds by a hash of the dialogue id), so the judge
    fitted on them learns how far to trust the reaction model on unseen dialogues; the other rows get the
    model fitted on every training row, which is the one returned. ``fit(conversations) -> model`` trains one
    (default ``ReactionModel.fit``; ``reaction_encoder.EncoderReactionModel`` fits a fine-tuned encoder).
    """
    fit = fit or ReactionModel.fit
    train = np.asarray(train, dtype=bool)
    fold = np.array([int(hashlib.sha1(i.encode()).hexdigest(), 16) % folds for i in ids])
    out = np.zeros((len(conversations), len(REACTION_FEATURES)))
    for k in range(folds):
        fit_rows, apply_rows = np.flatnonzero(train & (fold != k)), np.flatnonzero(train & (fold == k))
        model = fit([conversations[i] for i in fit_rows])
        out[apply_rows] = model.features([conversations[i] for i in apply_rows])
    full = fit([conversations[i] for i in np.flatnonzero(train)])
    rest = np.flatnonzero(~train)
    out[rest] = full.features([conversations[i] for i in rest])
    return out, full
