"""Multi-label emotion classifier with the MiniLM encoder fine-tuned end to end (GoEmotions-style).

The frozen-encoder heads in ``emotion.py`` are cheap but plateau around 0.39
macro-F1 on GoEmotions' 28 labels; fine-tuning the encoder is what reaches the
paper's BERT-base level (0.46). The method:

* all-MiniLM-L6-v2 + dropout + a linear head on the mean-pooled output, one
  sigmoid per label, BCE; AdamW (encoder ``lr``, head ``head_lr``), linear
  warm-up then linear decay; inputs truncated to ``max_length`` tokens;
* length-grouped batches (shuffled mega-batches sorted by length) so little
  time goes to padding;
* bf16 autocast where the CPU/GPU has bf16 units (``precision="auto"``); the
  weights and the optimizer stay fp32;
* per-label decision thresholds tuned on the dev split (standard for
  multi-label macro-F1), never on test;
* coarser label sets (the Ekman grouping) from the same model: a group's
  probability is the max of its members' probabilities, with its own
  thresholds tuned on the grouped dev labels (``group_probabilities``).

::

    clf, metrics = finetune_multilabel_emotion(texts, label_ids, dev_texts, dev_label_ids, names, encoder_dir)
    clf.predict(["thanks so much!"])          # multi-hot (n, 28) with the tuned thresholds
    clf.save(out); FinetunedEmotionClassifier.load(out)
    RewardScorer(encoder, clf.as_emotion_head(), fluency)   # the reward's emotion head (convrl's 7 emotions)

About 7 minutes per epoch over GoEmotions' 43k comments on one CPU core in bf16
(2 epochs: test macro-F1 0.520 on the 28 labels, 0.631 on Ekman from the same
model), so the pipeline runs it only when asked (``rewards.emotion.finetune_data``);
``bench/emotion_finetune.py`` measures it on the GoEmotions test split.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# GoEmotions' own mapping of its 27 emotions to Ekman's 6 (Demszky et al. 2020, ekman_mapping.json) + neutral.
GOEMOTIONS_EKMAN: dict[str, tuple[str, ...]] = {
    "anger": ("anger", "annoyance", "disapproval"),
    "disgust": ("disgust",),
    "fear": ("fear", "nervousness"),
    "joy": ("joy", "amusement", "approval", "excitement", "gratitude", "love", "optimism", "relief", "pride",
            "admiration", "desire", "caring"),
    "neutral": ("neutral",),
    "sadness": ("sadness", "disappointment", "embarrassment", "grief", "remorse"),
    "surprise": ("surprise", "realization", "confusion", "curiosity"),
}

EKMAN_TO_CONVRL = {"anger": "angry", "disgust": "disgusted", "fear": "fearful", "joy": "happy", "neutral": "neutral",
                   "sadness": "sad", "surprise": "surprised"}

THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 4)


@dataclass
class FinetuneSettings:
    epochs: float = 2.0
    lr: float = 8e-5          # encoder
    head_lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 64
    warmup: float = 0.06      # fraction of the steps
    weight_decay: float = 0.01
    dropout: float = 0.1
    precision: str = "auto"   # auto | bf16 | fp32 (autocast dtype; weights stay fp32)
    seed: int = 13
    max_steps: int = 0        # > 0 caps the steps (tests, smoke runs)

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.epochs <= 0 or self.batch_size < 1 or self.lr <= 0 or not 0 <= self.warmup < 1:
            raise ValueError(f"bad fine-tune settings: {self}")


def multi_hot(label_ids: list[list[int]], n: int) -> np.ndarray:
    y = np.zeros((len(label_ids), n), dtype=np.float32)
    for i, ids in enumerate(label_ids):
        y[i, list(ids)] = 1
    return y


def tune_thresholds(probs: np.ndarray, y: np.ndarray, grid: np.ndarray = THRESHOLD_GRID) -> np.ndarray:
    """Per-label threshold maximising that label's F1 on (dev) data; ties go to the lowest threshold."""
    probs, y = np.asarray(probs), np.asarray(y) > 0.5
    if probs.shape != y.shape:
        raise ValueError(f"probabilities {probs.shape} and labels {y.shape} differ in shape")
    pred = probs[None, :, :] >= np.asarray(grid)[:, None, None]          # (g, n, k)
    tp = (pred & y[None]).sum(1).astype(float)
    fp = (pred & ~y[None]).sum(1)
    fn = (~pred & y[None]).sum(1)
    f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
    return np.asarray(grid, dtype=np.float32)[f1.argmax(0)]


def macro_f1(y: np.ndarray, pred: np.ndarray) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(np.asarray(y) > 0.5, np.asarray(pred) > 0.5, average="macro", zero_division=0))


def group_probabilities(probs: np.ndarray, labels: list[str],
                        groups: dict[str, tuple[str, ...]] = GOEMOTIONS_EKMAN) -> tuple[np.ndarray, list[str]]:
    """Probabilities of coarser labels: each group's max over its members (columns in ``groups`` order)."""
    index = {lab: i for i, lab in enumerate(labels)}
    missing = sorted({m for ms in groups.values() for m in ms} - set(index))
    if missing:
        raise ValueError(f"group members not among the labels: {missing}")
    out = np.stack([np.asarray(probs)[:, [index[m] for m in ms]].max(1) for ms in groups.values()], axis=1)
    return out.astype(np.float32), list(groups)


def autocast_dtype(precision: str) -> torch.dtype | None:
    if precision == "auto":
        from convrl.runtime import bf16_supported

        precision = "bf16" if bf16_supported() else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


class PooledEncoderHead(torch.nn.Module):
    """An encoder, mean-pooled over real tokens, dropout and one linear output per label (or task)."""

    def __init__(self, encoder, n_labels: int, dropout: float):
        super().__init__()
        self.encoder = encoder
        self.dropout = torch.nn.Dropout(dropout)
        self.head = torch.nn.Linear(encoder.config.hidden_size, n_labels)

    def forward(self, input_ids, attention_mask, **kw):
        h = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **kw).last_hidden_state.float()
        m = attention_mask.unsqueeze(-1).to(h.dtype)
        pooled = (h * m).sum(1) / m.sum(1).clamp(min=1e-6)
        return self.head(self.dropout(pooled)).float()


def save_encoder_head(net: "PooledEncoderHead", tokenizer, out_dir: str | Path) -> Path:
    """Write a fine-tuned encoder + its head as ``encoder/`` (HF format) and ``head.pt``; returns the folder."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    net.encoder.save_pretrained(out / "encoder")
    tokenizer.save_pretrained(out / "encoder")
    torch.save(net.head.state_dict(), out / "head.pt")
    return out


@torch.inference_mode()
def forward_batches(net: "PooledEncoderHead", tokenizer, texts: list[str], n_out: int, max_length: int, dtype,
                    batch_size: int = 256) -> np.ndarray:
    """(len(texts), n_out) float32 outputs of ``net``, in batches of similar length (little padding), bf16
    autocast when ``dtype`` is set; an empty text is read as one space."""
    out = np.zeros((len(texts), n_out), dtype=np.float32)
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        b = tokenizer([texts[j] or " " for j in idx], padding=True, truncation=True, max_length=max_length,
                      return_tensors="pt")
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            out[idx] = net(**b).float().numpy()
    return out


def load_encoder_head(folder: str | Path, n_labels: int):
    """The tokenizer and ``PooledEncoderHead`` (dropout off) that ``save_encoder_head`` wrote to ``folder``."""
    from transformers import AutoModel, AutoTokenizer

    d = Path(folder)
    net = PooledEncoderHead(AutoModel.from_pretrained(d / "encoder"), n_labels, 0.0)
    net.head.load_state_dict(torch.load(d / "head.pt", weights_only=True))
    return AutoTokenizer.from_pretrained(d / "encoder"), net.eval()


class FinetunedEmotionClassifier:
    """A fine-tuned encoder + multi-label head with per-label thresholds."""

    def __init__(self, tokenizer, model: PooledEncoderHead, labels: list[str], thresholds: np.ndarray, max_length: int = 64,
                 precision: str = "auto"):
        self.tokenizer = tokenizer
        self.model = model.eval()
        self.labels = list(labels)
        self.thresholds = np.asarray(thresholds, dtype=np.float32)
        self.max_length = max_length
        self.precision = precision
        self._dtype = autocast_dtype(precision)

    def predict_proba(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        self.model.eval()
        logits = forward_batches(self.model, self.tokenizer, texts, len(self.labels), self.max_length, self._dtype,
                                 batch_size)
        return torch.sigmoid(torch.from_numpy(logits)).numpy()

    def predict(self, texts: list[str]) -> np.ndarray:
        return (self.predict_proba(texts) >= self.thresholds).astype(np.int8)

    def predict_labels(self, texts: list[str]) -> list[list[str]]:
        return [[self.labels[j] for j in np.flatnonzero(row)] for row in self.predict(texts)]

    def predict_emotions(self, texts: list[str]) -> list[str]:
        """One of convrl's ``EMOTIONS`` per text (the most probable Ekman group), so the classifier can be the
        ``RewardScorer``'s emotion head: ``RewardScorer(encoder, clf.as_emotion_head(), ...)``."""
        uniq = list(dict.fromkeys(texts))  # a GRPO group repeats its context: classify each text once
        probs = self.predict_proba(uniq)
        if set(self.labels) != set(EKMAN_TO_CONVRL):
            probs, names = group_probabilities(probs, self.labels)
        else:
            names = self.labels
        label = {t: EKMAN_TO_CONVRL[names[i]] for t, i in zip(uniq, probs.argmax(1))}
        return [label[t] for t in texts]

    def as_emotion_head(self) -> _EmotionHeadAdapter:
        return _EmotionHeadAdapter(self)

    def save(self, out_dir: str | Path) -> None:
        out = save_encoder_head(self.model, self.tokenizer, out_dir)
        (out / "classifier.json").write_text(json.dumps(
            {"labels": self.labels, "thresholds": [float(t) for t in self.thresholds],
             "max_length": self.max_length, "precision": self.precision}, indent=2))

    @classmethod
    def load(cls, path: str | Path) -> FinetunedEmotionClassifier:
        d = Path(path)
        cfg = json.loads((d / "classifier.json").read_text())
        tok, model = load_encoder_head(d, len(cfg["labels"]))
        return cls(tok, model, cfg["labels"], np.asarray(cfg["thresholds"]), cfg["max_length"], cfg["precision"])


class _EmotionHeadAdapter:
    """What ``RewardScorer`` calls on its emotion head: ``predict(texts) -> [emotion]``."""

    def __init__(self, clf: FinetunedEmotionClassifier):
        self.clf = clf

    def predict(self, texts: list[str]) -> list[str]:
        return self.clf.predict_emotions(texts)


def optimizer_step(model: torch.nn.Module, opt, sched, loss: torch.Tensor) -> float:
    """Backward, clip the gradient norm at 1, step the optimizer and the schedule; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    sched.step()
    return float(loss.detach())


def length_grouped_batches(lengths: np.ndarray, batch_size: int, gen: torch.Generator,
                            mega: int = 50) -> list[np.ndarray]:
    """Shuffle, sort inside mega-batches of ``mega * batch_size`` by length, cut batches, shuffle the batches."""
    perm = torch.randperm(len(lengths), generator=gen).numpy()
    batches = []
    for i in range(0, len(perm), mega * batch_size):
        chunk = perm[i:i + mega * batch_size]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)
                    if len(chunk[j:j + batch_size]) == batch_size]
    order = torch.randperm(len(batches), generator=gen).numpy()
    return [batches[k] for k in order]


def train_loop(model, tok, ids: list[list[int]], optim: tuple, steps: int, batch_size: int, gen: torch.Generator,
               dtype, loss_of: Callable, log: Callable[[str], None] | None = None, label: str = "fine-tune") -> list[float]:
    """``steps`` optimizer steps over length-grouped batches of tokenised ``ids`` (epochs repeat), bf16 autocast
    when ``dtype`` is set; ``loss_of(outputs, batch_indices)`` gives each batch's loss. Returns the losses."""
    opt, sched = optim
    lengths = np.array([len(e) for e in ids])
    t0, step, losses = time.time(), 0, []
    model.train()
    while step < steps:
        for idx in length_grouped_batches(lengths, batch_size, gen):
            b = tok.pad({"input_ids": [ids[j] for j in idx]}, return_tensors="pt")
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = model(**b)
            losses.append(optimizer_step(model, opt, sched, loss_of(out, idx)))
            step += 1
            if log and (step % 100 == 0 or step == steps):
                el = time.time() - t0
                log(f"{label} step {step}/{steps} loss {np.mean(losses[-100:]):.4f} "
                    f"{el:.0f}s (eta {el / step * (steps - step):.0f}s)")
            if step >= steps:
                break
    return losses


def finetune_multilabel_emotion(texts: list[str], label_ids: list[list[int]], dev_texts: list[str],
                                dev_label_ids: list[list[int]], labels: list[str], encoder_dir: str | Path,
                                settings: FinetuneSettings | None = None,
                                log: Callable[[str], None] | None = print) -> tuple[FinetunedEmotionClassifier, dict]:
    """Fine-tune the encoder + a multi-label head; thresholds tuned on dev. Returns the classifier and metrics."""
    from transformers import AutoModel, AutoTokenizer

    s = settings or FinetuneSettings()
    if not texts or not dev_texts:
        raise ValueError("emotion fine-tune: needs training and dev texts")
    torch.manual_seed(s.seed)
    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    model = PooledEncoderHead(AutoModel.from_pretrained(str(encoder_dir)), len(labels), s.dropout)
    dtype = autocast_dtype(s.precision)
    no_decay = ("bias", "LayerNorm.weight", "layer_norm.weight")
    enc_params = list(model.encoder.named_parameters())
    opt = torch.optim.AdamW([
        {"params": [p for n, p in enc_params if not n.endswith(no_decay)], "lr": s.lr, "weight_decay": s.weight_decay},
        {"params": [p for n, p in enc_params if n.endswith(no_decay)], "lr": s.lr, "weight_decay": 0.0},
        {"params": model.head.parameters(), "lr": s.head_lr, "weight_decay": s.weight_decay},
    ])
    per_epoch = len(texts) // s.batch_size
    steps = max(1, int(math.ceil(s.epochs * per_epoch)))
    if s.max_steps:
        steps = min(steps, s.max_steps)
    warm = int(s.warmup * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / max(1, warm) if k < warm else max(0.0, (steps - k) / max(1, steps - warm)))
    y = torch.from_numpy(multi_hot(label_ids, len(labels)))
    enc_ids = tok(list(texts), truncation=True, max_length=s.max_length)["input_ids"]
    gen = torch.Generator().manual_seed(s.seed)
    t0 = time.time()
    losses = train_loop(model, tok, enc_ids, (opt, sched), steps, min(s.batch_size, len(texts)), gen, dtype,
                        lambda logits, idx: torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx]),
                        log, "emotion fine-tune")
    train_s = time.time() - t0
    clf = FinetunedEmotionClassifier(tok, model, labels, np.full(len(labels), 0.5, np.float32), s.max_length,
                                     s.precision)
    dev_p = clf.predict_proba(list(dev_texts))
    dev_y = multi_hot(dev_label_ids, len(labels))
    clf.thresholds = tune_thresholds(dev_p, dev_y)
    metrics = {"train_size": float(len(texts)), "steps": float(steps), "train_seconds": train_s,
               "final_train_loss": float(np.mean(losses[-100:])),
               "dev_macro_f1_at_0.5": macro_f1(dev_y, dev_p >= 0.5),
               "dev_macro_f1_tuned": macro_f1(dev_y, dev_p >= clf.thresholds),
               "settings": asdict(s)}
    return clf, metrics


def finetune_goemotions(folder: str | Path, encoder_dir: str | Path, settings: FinetuneSettings | None = None,
                        max_train: int = 0, max_eval: int = 0, ekman_folder: str | Path | None = None,
                        log: Callable[[str], None] | None = print) -> tuple[FinetunedEmotionClassifier, dict]:
    """Fine-tune on a GoEmotions folder (``train``/``dev``/``test.tsv`` + ``labels.txt``) and measure macro-F1 once
    on its test split. For the 28-label folder the Ekman grouping is also measured from the same model (group
    probabilities, thresholds tuned on the Ekman dev labels of ``ekman_folder``, default ``<folder>/../ekman``).
    Metrics: ``test_macro_f1`` (the folder's labels), ``test_macro_f1_ekman_from_labels``, their dev
    counterparts, ``test_macro_f1_at_0.5`` (one threshold for all labels), sizes and seconds."""
    from convrl.rewards.corpora import goemotions_split

    folder = Path(folder)
    (x, y, names), (dx, dy, _), (tx, ty, _) = (goemotions_split(folder, s) for s in ("train", "dev", "test"))
    if max_train:
        x, y = x[:max_train], y[:max_train]
    if max_eval:
        dx, dy, tx, ty = dx[:max_eval], dy[:max_eval], tx[:max_eval], ty[:max_eval]
    clf, metrics = finetune_multilabel_emotion(x, y, dx, dy, names, encoder_dir, settings, log=log)
    t0 = time.time()
    dev_p, test_p = clf.predict_proba(dx), clf.predict_proba(tx)
    ty_m = multi_hot(ty, len(names))
    metrics.update({"labels": float(len(names)), "test_size": float(len(tx)),
                    "test_macro_f1": macro_f1(ty_m, test_p >= clf.thresholds),
                    "test_macro_f1_at_0.5": macro_f1(ty_m, test_p >= 0.5)})
    ekman = Path(ekman_folder) if ekman_folder else folder.parent / "ekman"
    if set(names) != set(EKMAN_TO_CONVRL) and (ekman / "labels.txt").exists():
        (etx, edy, enames), (ettx, ety, _) = (goemotions_split(ekman, s) for s in ("dev", "test"))
        if max_eval:
            etx, edy, ettx, ety = etx[:max_eval], edy[:max_eval], ettx[:max_eval], ety[:max_eval]
        if etx != list(dx) or ettx != list(tx):
            raise ValueError(f"{ekman}: dev/test comments differ from {folder}'s; cannot group")
        gd, gnames = group_probabilities(dev_p, names)
        gt, _ = group_probabilities(test_p, names)
        order = [gnames.index(n) for n in enames]
        gd, gt = gd[:, order], gt[:, order]
        eth = tune_thresholds(gd, multi_hot(edy, len(enames)))
        metrics["dev_macro_f1_ekman_from_labels"] = macro_f1(multi_hot(edy, len(enames)), gd >= eth)
        metrics["test_macro_f1_ekman_from_labels"] = macro_f1(multi_hot(ety, len(enames)), gt >= eth)
    metrics["eval_seconds"] = time.time() - t0
    clf.eval_probs = {"dev": dev_p, "test": test_p}  # for callers that keep them (the benchmark)
    return clf, metrics
