"""A reaction model with the sentence encoder fine-tuned end to end: an exchange's text -> the satisfaction rated there.

``reactions.ReactionModel`` reads an exchange (the assistant's turn, then the
user's answer to it) with TF-IDF word n-grams and a ridge regression. Words
miss what a sentence says ("that's not what I asked" shares no n-gram with "I
wanted the north, not the centre"), so ``EncoderReactionModel`` fine-tunes the
MiniLM encoder with one regression output on the same exchanges and targets
(the raters' 1-5 satisfaction at that turn, standardised; MSE; AdamW with a
linear warm-up and decay; length-grouped batches; bf16 autocast where the CPU
has bf16 units), as ``emotion_finetune`` does for emotions. It reads single
turns and whole sessions better than TF-IDF (``bench/dialogue_judge_dev.py
--reaction encoder``; README "Agreement with people"). One epoch over the
~18,000 training-side exchanges takes about 3 minutes on 2 cores, and the
dialogue judge fits it three times (two folds for out-of-fold features, then
all), so it is the research preset's choice (``rewards.reaction_model:
encoder``, 2 epochs), not the demo's::

    model = EncoderReactionModel.fit(conversations, encoder_dir)       # message lists, turns rated
    model.predict(replies, next_user_turns)                            # 1-5, as ReactionModel.predict
    model.features(conversations)                                      # the dialogue judge's reaction columns
    model.save(folder); load_reaction(folder)                          # whichever kind the folder holds
    fit, folds = reaction_fitter("encoder", encoder_dir)
    crossfit_reaction(convs, train, ids, folds, fit)                   # out-of-fold features
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convrl.rewards.reactions import (ENCODER_REACTION_DIR, MIN_EXCHANGES, REACTION_FILE, ReactionModel, exchange_text,
                                      exchanges, reaction_features)

META_FILE = "reaction.json"


class EncoderReactionModel:
    """A fine-tuned encoder + one linear output; predictions on the raters' scale (``mean + std * output``)."""

    def __init__(self, tokenizer=None, net=None, mean: float = 0.0, std: float = 1.0, exchanges_fitted: int = 0,
                 max_length: int = 128, precision: str = "auto", metrics: dict | None = None):
        self.tokenizer, self.net = tokenizer, net
        self.mean, self.std = float(mean), float(std)
        self.exchanges_fitted, self.max_length, self.precision = int(exchanges_fitted), int(max_length), precision
        self.metrics = dict(metrics or {})

    @property
    def fitted(self) -> bool:
        return self.net is not None

    @classmethod
    def fit(cls, conversations: list[list[dict]], encoder_dir: str | Path, epochs: float = 1.0, batch_size: int = 32,
            lr: float = 3e-5, head_lr: float = 1e-3, max_length: int = 128, seed: int = 0, precision: str = "auto",
            log: Callable[[str], None] | None = None) -> "EncoderReactionModel":
        import torch
        from transformers import AutoModel, AutoTokenizer

        from convrl.rewards.emotion_finetune import PooledEncoderHead, autocast_dtype, train_loop

        pairs = [(t, y) for c in conversations for t, y in exchanges(c) if y is not None]
        if len(pairs) < MIN_EXCHANGES:
            return cls(exchanges_fitted=len(pairs))
        texts, y = [t for t, _ in pairs], np.asarray([v for _, v in pairs], dtype=np.float64)
        mean, std = float(y.mean()), float(y.std()) or 1.0
        torch.manual_seed(seed)
        tok = AutoTokenizer.from_pretrained(str(encoder_dir))
        net = PooledEncoderHead(AutoModel.from_pretrained(str(encoder_dir)), 1, 0.1)
        dtype = autocast_dtype(precision)
        opt = torch.optim.AdamW([{"params": net.encoder.parameters(), "lr": lr},
                                 {"params": net.head.parameters(), "lr": head_lr}], weight_decay=0.01)
        bs = min(batch_size, len(texts))
        steps = max(1, int(math.ceil(epochs * (len(texts) // bs))))
        warm = max(1, int(0.06 * steps))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: (k + 1) / warm if k < warm else max(0.0, (steps - k) / max(1, steps - warm)))
        ids = tok(texts, truncation=True, max_length=max_length)["input_ids"]
        target = torch.tensor((y - mean) / std, dtype=torch.float32)
        t0 = time.time()
        losses = train_loop(net, tok, ids, (opt, sched), steps, bs, torch.Generator().manual_seed(seed), dtype,
                            lambda out, idx: torch.nn.functional.mse_loss(out.squeeze(-1), target[idx]), log,
                            "reaction encoder")
        metrics = {"steps": float(steps), "train_seconds": time.time() - t0,
                   "final_train_loss": float(np.mean(losses[-100:]))}
        return cls(tok, net.eval(), mean, std, len(pairs), max_length, precision, metrics)

    def predict_texts(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Predicted satisfaction of exchange texts (``reactions.exchange_text``); NaN when not fitted."""
        if not self.fitted:
            return np.full(len(texts), np.nan)
        from convrl.rewards.emotion_finetune import autocast_dtype, forward_batches

        out = forward_batches(self.net, self.tokenizer, texts, 1, self.max_length, autocast_dtype(self.precision),
                              batch_size)[:, 0]
        return self.mean + self.std * out.astype(np.float64)

    def predict(self, replies: list[str], next_user_turns: list[str]) -> np.ndarray:
        """Predicted satisfaction (1-5) of each reply, read from the user's next turn; NaN when not fitted."""
        return self.predict_texts([exchange_text(r, u) for r, u in zip(replies, next_user_turns)])

    def features(self, conversations: list[list[dict]]) -> np.ndarray:
        return reaction_features(conversations, self.predict_texts if self.fitted else None)

    def save(self, folder: str | Path) -> None:
        import shutil

        from convrl.rewards.emotion_finetune import save_encoder_head

        d = Path(folder) / ENCODER_REACTION_DIR
        (Path(folder) / REACTION_FILE).unlink(missing_ok=True)  # never load an older TF-IDF model beside it
        shutil.rmtree(d, ignore_errors=True)
        if not self.fitted:
            return
        save_encoder_head(self.net, self.tokenizer, d)
        (d / META_FILE).write_text(json.dumps(
            {"type": "reaction-encoder", "mean": self.mean, "std": self.std, "exchanges": self.exchanges_fitted,
             "max_length": self.max_length, "precision": self.precision, "metrics": self.metrics}, indent=2))

    @classmethod
    def load(cls, folder: str | Path) -> "EncoderReactionModel":
        from convrl.rewards.emotion_finetune import load_encoder_head

        d = Path(folder) / ENCODER_REACTION_DIR
        meta = json.loads((d / META_FILE).read_text())
        tok, net = load_encoder_head(d, 1)
        return cls(tok, net, meta["mean"], meta["std"], meta["exchanges"], meta["max_length"], meta["precision"],
                   meta.get("metrics"))


def encoder_reaction_fit(encoder_dir: str | Path, epochs: float = 1.0, seed: int = 0,
                         log: Callable[[str], None] | None = None) -> Callable[[list[list[dict]]], EncoderReactionModel]:
    """``fit(conversations)`` for ``reactions.crossfit_reaction``: a fresh fine-tune of ``encoder_dir`` each call."""
    def fit(conversations: list[list[dict]]) -> EncoderReactionModel:
        return EncoderReactionModel.fit(conversations, encoder_dir, epochs=epochs, seed=seed, log=log)

    return fit


def reaction_fitter(kind: str, encoder_dir: str | Path, epochs: float = 1.0, seed: int = 0,
                    log: Callable[[str], None] | None = None) -> tuple[Callable | None, int]:
    """``(fit, folds)`` for ``crossfit_reaction`` / ``train_dialogue_judge`` by ``rewards.reaction_model``: TF-IDF's
    default fit with 5 folds, or the encoder's with 2 (each fold is a fine-tune, and the kept model a third)."""
    if kind == "encoder":
        return encoder_reaction_fit(encoder_dir, epochs, seed, log), 2
    if kind == "tfidf":
        return None, 5
    raise ValueError(f"reaction model must be tfidf or encoder, got {kind!r}")


def has_reaction(folder: str | Path) -> bool:
    """Whether ``folder`` (a dialogue judge's) holds a fitted reaction model of either kind."""
    d = Path(folder)
    return (d / REACTION_FILE).is_file() or (d / ENCODER_REACTION_DIR / META_FILE).is_file()


def load_reaction(folder: str | Path, exchanges_fitted: int = 0):
    """The reaction model saved in ``folder``: the fine-tuned encoder's when there is one, else TF-IDF's (or an
    unfitted one, whose features are 0)."""
    if (Path(folder) / ENCODER_REACTION_DIR / META_FILE).is_file():
        return EncoderReactionModel.load(folder)
    return ReactionModel.load(folder, exchanges_fitted)
