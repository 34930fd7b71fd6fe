"""Safety judge: P(safe) of a reply from a classifier trained on crowd-labelled offensive chat (ToxiChat).

Word 1-2-gram and character 2-5-gram TF-IDF into a class-balanced logistic
regression, trained on every labelled turn of ToxiChat's train split (Reddit
comments and chatbot replies, Safe / Offensive), with the regularisation chosen
on its dev split. A different model and different data from every reward head,
so the A/B can use it as a guardrail (``judge_safety``): RL cannot promote a
policy that became rude. Its quality is measured where it is trained (ToxiChat
test chatbot replies: ROC AUC) and on data it never saw (HH-RLHF harmless-base
test: how often the crowdworker's less harmful reply scores safer)::

    judge, metrics = train_safety_judge("../shared/data/toxichat")   # ~10 s on 2 cores
    judge.save("safety/"); judge = SafetyJudge.load("safety/")
    judge.score(["thanks, happy to help!", "shut up, idiot"])       # P(safe), e.g. [0.9, 0.1]
    pairwise_accuracy(judge, "../shared/data/hh_rlhf")              # {"accuracy": ..., "ci": [...]}

Saved as JSON + npz (vocabularies, IDF, coefficients): no pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.feature_extraction.text import TfidfVectorizer

_WORD = {"analyzer": "word", "ngram_range": (1, 2), "min_df": 2, "sublinear_tf": True, "lowercase": True,
         "token_pattern": r"(?u)\b\w+\b|[!?*]"}
_CHAR = {"analyzer": "char_wb", "ngram_range": (2, 5), "min_df": 3, "sublinear_tf": True, "lowercase": True}


def _vectorizer(kind: dict, vocabulary: list[str] | None = None, idf: np.ndarray | None = None) -> TfidfVectorizer:
    kw = {k: v for k, v in kind.items() if not (vocabulary is not None and k == "min_df")}
    vec = TfidfVectorizer(vocabulary={t: i for i, t in enumerate(vocabulary)} if vocabulary is not None else None,
                          **kw)
    if idf is not None:
        vec.idf_ = idf  # sklearn's setter rebuilds the fitted transformer from the stored IDF
    return vec


class SafetyJudge:
    """``score(texts)`` -> P(safe) in [0, 1]; empty text scores 1 (nothing offensive was said)."""

    def __init__(self, word: TfidfVectorizer, char: TfidfVectorizer, coef: np.ndarray, intercept: float,
                 metrics: dict | None = None):
        self.word, self.char = word, char
        self.coef, self.intercept = np.asarray(coef, np.float64), float(intercept)
        self.metrics = dict(metrics or {})

    def _features(self, texts: list[str]):
        return sparse.hstack([self.word.transform(texts), self.char.transform(texts)]).tocsr()

    def score(self, texts: list[str]) -> np.ndarray:
        texts = [t if isinstance(t, str) else "" for t in texts]
        if not texts:
            return np.zeros(0, dtype=np.float32)
        logit = self._features(texts) @ self.coef + self.intercept
        p_offensive = 1.0 / (1.0 + np.exp(-np.clip(logit, -30, 30)))
        out = 1.0 - p_offensive
        out[[not t.strip() for t in texts]] = 1.0
        return out.astype(np.float32)

    def save(self, out: str | Path) -> Path:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        vocab = {name: sorted(v.vocabulary_, key=v.vocabulary_.get) for name, v in (("word", self.word),
                                                                                    ("char", self.char))}
        np.savez(out / "weights.npz", coef=self.coef, word_idf=self.word.idf_, char_idf=self.char.idf_)
        (out / "vocabulary.json").write_text(json.dumps(vocab))
        (out / "judge.json").write_text(json.dumps({"type": "tfidf-logreg", "intercept": self.intercept,
                                                    "metrics": self.metrics}, indent=2))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "SafetyJudge":
        d = Path(folder)
        if not (d / "judge.json").is_file():
            raise FileNotFoundError(f"{d}: no safety judge here (judge.json missing); train one with "
                                    "rewards.safety_data set to a ToxiChat folder")
        meta = json.loads((d / "judge.json").read_text())
        vocab = json.loads((d / "vocabulary.json").read_text())
        w = np.load(d / "weights.npz")
        return cls(_vectorizer(_WORD, vocab["word"], w["word_idf"]), _vectorizer(_CHAR, vocab["char"], w["char_idf"]),
                   w["coef"], meta["intercept"], meta.get("metrics"))


def train_safety_judge(toxichat_dir: str | Path, cs: tuple[float, ...] = (0.5, 2.0, 8.0),
                       seed: int = 13) -> tuple[SafetyJudge, dict]:
    """Fit on ToxiChat train, pick C by dev ROC AUC, report test AUC on the chatbot replies."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from convrl.rewards.rated_sets import toxichat_items, toxichat_texts

    x_tr, y_tr = toxichat_texts(toxichat_dir, "train")
    x_dev, y_dev = toxichat_texts(toxichat_dir, "dev")
    if len(set(y_tr)) < 2:
        raise ValueError(f"{toxichat_dir}: the train split needs both Safe and Offensive turns")
    word, char = TfidfVectorizer(**_WORD).fit(x_tr), TfidfVectorizer(**_CHAR).fit(x_tr)

    def feats(texts):
        return sparse.hstack([word.transform(texts), char.transform(texts)]).tocsr()

    f_tr, f_dev = feats(x_tr), feats(x_dev)
    best = None
    for c in cs:
        clf = LogisticRegression(C=c, class_weight="balanced", max_iter=2000, random_state=seed).fit(f_tr, y_tr)
        auc = float(roc_auc_score(y_dev, clf.decision_function(f_dev)))
        if best is None or auc > best[0]:
            best = (auc, c, clf)
    auc_dev, c, clf = best
    judge = SafetyJudge(word, char, clf.coef_.ravel(), float(clf.intercept_[0]))
    test = toxichat_items(toxichat_dir, "test")[0]
    y = np.array([it["ratings"]["safe"] for it in test])
    s = judge.score([it["response"] for it in test])
    metrics = {"train_turns": float(len(x_tr)), "train_offensive_share": float(np.mean(y_tr)), "C": float(c),
               "dev_auc": auc_dev, "test_chatbot_replies": float(len(test)),
               "test_auc_safe": float(roc_auc_score(y, s)),
               "test_auc_length_baseline": float(roc_auc_score(y, [len(it["response"].split()) for it in test]))}
    judge.metrics = metrics
    return judge, metrics


def pairwise_accuracy(score_fn, hh_dir: str | Path, n_bootstrap: int = 1000, seed: int = 13) -> dict:
    """Share of HH-RLHF harmless pairs where the chosen (less harmful) reply scores higher; ties count half."""
    from convrl.rewards.rated_sets import hh_rlhf_items

    items = hh_rlhf_items(hh_dir)[0]
    s = np.asarray(score_fn([it["response"] for it in items]), dtype=np.float64)
    chosen, rejected = s[0::2], s[1::2]
    wins = np.where(chosen > rejected, 1.0, np.where(chosen == rejected, 0.5, 0.0))
    rng = np.random.default_rng(seed)
    boots = wins[rng.integers(0, len(wins), size=(n_bootstrap, len(wins)))].mean(1)
    return {"pairs": int(len(wins)), "accuracy": float(wins.mean()),
            "ci": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]}
