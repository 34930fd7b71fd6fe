"""Emotion head: a classifier on frozen sentence embeddings.

Labels are the use case's user emotions (neutral, happy, sad, angry, fearful,
surprised, disgusted). Gold labels are used where the turn table has them
(``emotion`` column); elsewhere silver labels come from the NRC emotion
lexicon (``nrclex``'s ``nrc_en.json``). Quality is measured on held-out
conversations (the validation split), never on the training rows::

    clf, metrics = train_emotion_head(encoder, texts, labels, val_texts, val_labels)
    clf.save(dir); EmotionClassifier.load(dir).predict(["I lost my job today"])
"""

from __future__ import annotations

import json
import re
from collections import Counter
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import accuracy_score, f1_score

from convrl.data.schema import EMOTIONS  # one home for the labels, shared with the data checks

_NRC_TO_EMOTION = {"joy": "happy", "sadness": "sad", "anger": "angry", "fear": "fearful",
                   "surprise": "surprised", "disgust": "disgusted"}
_TOKEN = re.compile(r"[a-z']+")


@lru_cache(maxsize=1)
def _nrc() -> dict[str, list[str]]:
    with (resources.files("nrclex") / "data" / "nrc_en.json").open(encoding="utf-8") as fh:
        return json.load(fh)


def nrc_silver_label(text: str) -> str:
    """Most frequent NRC emotion among the text's words; 'neutral' when none."""
    lex = _nrc()
    counts: Counter[str] = Counter()
    for tok in _TOKEN.findall(text.lower()):
        for emo in lex.get(tok, ()):
            if emo in _NRC_TO_EMOTION:
                counts[_NRC_TO_EMOTION[emo]] += 1
    if not counts:
        return "neutral"
    best = max(counts.values())
    # Ties resolve in EMOTIONS order so labels are deterministic.
    return next(e for e in EMOTIONS if counts.get(e) == best)


class EmotionHead(torch.nn.Module):
    def __init__(self, dim: int, n_labels: int, hidden: int):
        super().__init__()
        if hidden:
            self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(),
                                           torch.nn.Dropout(0.1), torch.nn.Linear(hidden, n_labels))
        else:
            self.net = torch.nn.Linear(dim, n_labels)

    def forward(self, x):
        return self.net(x)


class EmotionClassifier:
    def __init__(self, encoder, head: EmotionHead, labels: tuple[str, ...], hidden: int):
        self.encoder = encoder
        self.head = head.eval()
        self.labels = list(labels)
        self.hidden = hidden

    @torch.inference_mode()
    def predict_proba(self, texts: list[str]) -> np.ndarray:
        emb = torch.from_numpy(self.encoder.encode(texts))
        return torch.softmax(self.head(emb), dim=-1).numpy()

    def predict(self, texts: list[str]) -> list[str]:
        if not texts:
            return []
        return [self.labels[i] for i in self.predict_proba(texts).argmax(1)]

    def save(self, out_dir: str | Path) -> None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.head.state_dict(), out / "head.pt")
        (out / "head_config.json").write_text(json.dumps(
            {"labels": self.labels, "hidden": self.hidden, "dim": self.encoder.dim,
             "encoder": self.encoder.model_dir}, indent=2))

    @classmethod
    def load(cls, head_dir: str | Path, encoder=None) -> EmotionClassifier:
        from convrl.rewards.encoder import SentenceEncoder

        d = Path(head_dir)
        cfg = json.loads((d / "head_config.json").read_text())
        encoder = encoder or SentenceEncoder(cfg["encoder"])
        head = EmotionHead(cfg["dim"], len(cfg["labels"]), cfg["hidden"])
        head.load_state_dict(torch.load(d / "head.pt", weights_only=True))
        return cls(encoder, head, tuple(cfg["labels"]), cfg["hidden"])


def train_emotion_head(encoder, texts: list[str], labels: list[str], val_texts: list[str],
                       val_labels: list[str], epochs: int = 30, lr: float = 5e-3, hidden: int = 128,
                       seed: int = 13, progress: bool = True) -> tuple[EmotionClassifier, dict]:
    """Train the head on cached embeddings with class-balanced loss; metrics on the held-out set."""
    from tqdm.auto import tqdm

    if not texts:
        raise ValueError("emotion head: no training texts")
    torch.manual_seed(seed)
    label_ids = {lab: i for i, lab in enumerate(EMOTIONS)}
    x = torch.from_numpy(encoder.encode(texts))
    y = torch.tensor([label_ids[lab] for lab in labels])
    counts = torch.bincount(y, minlength=len(EMOTIONS)).float()
    weights = torch.where(counts > 0, counts.sum() / (counts.clamp(min=1) * (counts > 0).sum()),
                          torch.zeros_like(counts))
    head = EmotionHead(encoder.dim, len(EMOTIONS), hidden)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights)
    gen = torch.Generator().manual_seed(seed)
    history = []
    head.train()
    for _ in tqdm(range(epochs), desc="emotion head", disable=not progress):
        perm = torch.randperm(len(x), generator=gen)
        total = 0.0
        for i in range(0, len(x), 256):
            idx = perm[i:i + 256]
            opt.zero_grad()
            loss = loss_fn(head(x[idx]), y[idx])
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        history.append(total / len(x))
    clf = EmotionClassifier(encoder, head, EMOTIONS, hidden)
    metrics = {"train_loss": history[-1], "train_size": float(len(texts)), "val_size": float(len(val_texts))}
    if val_texts:
        pred = clf.predict(val_texts)
        present = sorted(set(val_labels))
        metrics.update({
            "val_accuracy": float(accuracy_score(val_labels, pred)),
            "val_macro_f1": float(f1_score(val_labels, pred, labels=present, average="macro", zero_division=0)),
            "val_majority_baseline_accuracy": float(Counter(val_labels).most_common(1)[0][1] / len(val_labels)),
        })
    metrics["loss_curve"] = history
    return clf, metrics


# ------------------------------------------------------------------ multi-label (GoEmotions-style)

class MultiLabelEmotionHead:
    """Independent sigmoid per label on frozen embeddings, with per-label thresholds tuned on a dev split.

    GoEmotions is multi-label (a comment may carry several emotions) and its
    metric is macro-F1 over labels, which rewards getting rare labels right:
    a threshold per label, chosen on dev (never test), serves that metric.
    """

    def __init__(self, head: EmotionHead, labels: list[str], thresholds: np.ndarray):
        self.head = head.eval()
        self.labels = list(labels)
        self.thresholds = np.asarray(thresholds, dtype=np.float32)

    @torch.inference_mode()
    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        return torch.sigmoid(self.head(torch.from_numpy(np.asarray(emb, np.float32)))).numpy()

    def predict(self, emb: np.ndarray) -> np.ndarray:
        return (self.predict_proba(emb) >= self.thresholds).astype(np.int8)


def multi_hot(label_ids: list[list[int]], n: int) -> np.ndarray:
    y = np.zeros((len(label_ids), n), dtype=np.float32)
    for i, ids in enumerate(label_ids):
        y[i, ids] = 1
    return y


def train_multilabel_head(x: np.ndarray, y: np.ndarray, x_dev: np.ndarray, y_dev: np.ndarray, labels: list[str],
                          hidden: int = 256, epochs: int = 40, lr: float = 1e-3, weight_decay: float = 1e-4,
                          dropout: float = 0.1, seed: int = 13, batch_size: int = 256) -> tuple[MultiLabelEmotionHead, dict]:
    """BCE on cached embeddings; the epoch with the best dev macro-F1 is kept, then thresholds are tuned on dev."""
    torch.manual_seed(seed)
    head = EmotionHead(x.shape[1], y.shape[1], hidden)
    if hidden:
        head.net[2].p = dropout
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(np.asarray(x, np.float32)), torch.from_numpy(np.asarray(y, np.float32))
    gen = torch.Generator().manual_seed(seed)
    best = (-1.0, 0, None)
    for epoch in range(1, epochs + 1):
        head.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        clf = MultiLabelEmotionHead(head, labels, np.full(y.shape[1], 0.3))
        f1 = f1_score(y_dev, clf.predict(x_dev), average="macro", zero_division=0)
        if f1 > best[0]:
            best = (f1, epoch, {k: v.clone() for k, v in head.state_dict().items()})
    head.load_state_dict(best[2])
    clf = MultiLabelEmotionHead(head, labels, np.full(y.shape[1], 0.3))
    probs = clf.predict_proba(x_dev)
    grid = np.arange(0.05, 0.95, 0.025)
    thresholds = np.array([grid[int(np.argmax([f1_score(y_dev[:, j], probs[:, j] >= t, zero_division=0) for t in grid]))]
                           for j in range(y.shape[1])])
    clf.thresholds = thresholds.astype(np.float32)
    return clf, {"best_epoch": float(best[1]), "dev_macro_f1_at_0.3": float(best[0]),
                 "dev_macro_f1_tuned": float(f1_score(y_dev, clf.predict(x_dev), average="macro", zero_division=0))}
