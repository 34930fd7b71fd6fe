"""Reward heads from one cross-encoder fine-tuned end to end on human judgement (multi-task).

The frozen-encoder heads compare two separately encoded texts; a cross-encoder
reads (persona, context, reply) together, which is what the emotion head
showed pays off here. One all-MiniLM-L6-v2 encoder, mean-pooled, with one
sigmoid output per task (``TASKS``: relevance, personality, engagement,
quality). Training targets are soft labels in [0, 1]: human ratings where they
exist (rescaled per source), 1 / 0 for a true reply vs a negative (random reply
from another dialogue, or another reply of the same dialogue) where ratings are
scarce; each example carries a mask of the tasks it labels. AdamW with warm-up
and linear decay, bf16 autocast where the CPU has bf16 units, length-grouped
batches; the weights are kept from the evaluation on a dialogue-level dev split
that scored best (early stopping; step 0 counts). Data builders live in
:mod:`convrl.rewards.cross_training`::

    model, metrics = train_cross_encoder(examples, dev_examples, encoder_dir, CrossSettings(max_steps=300))
    model.save(out); model = CrossEncoderHeads.load(out)
    heads = model.as_heads()          # {"relevance": ..., ...}: RewardScorer(..., learned=heads)

In the RL hot path every task comes out of one forward per (context, reply):
``RewardScorer.score`` asks each head in turn and the heads share the last
batch's outputs, so batched scoring keeps its lead over per-head scoring.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from convrl.rewards.emotion_finetune import (PooledEncoderHead, autocast_dtype, length_grouped_batches,
                                             load_encoder_head, optimizer_step, save_encoder_head)

TASKS = ("relevance", "personality", "engagement", "quality")


@dataclass
class CrossSettings:
    lr: float = 5e-5
    head_lr: float = 1e-3
    batch_size: int = 32
    max_length: int = 128
    epochs: float = 1.0
    max_steps: int = 0        # > 0 caps the steps (the demo's time budget, tests)
    eval_every: int = 100     # dev evaluation (early stopping) every N steps
    warmup: float = 0.06
    weight_decay: float = 0.01
    dropout: float = 0.1
    precision: str = "auto"
    seed: int = 13

    def __post_init__(self):
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"cross-encoder precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.lr <= 0 or self.batch_size < 1 or self.epochs <= 0 or self.eval_every < 1:
            raise ValueError(f"bad cross-encoder settings: {self}")


def pair_text(context_text: str, persona_text: str, budget: int = 250) -> str:
    """The first segment: persona first (kept), then the context newest first (truncation cuts the oldest)."""
    card = (persona_text or "").strip()[:budget]
    return f"persona: {card} | {context_text}" if card else context_text


class CrossEncoderHeads:
    """The fine-tuned cross-encoder; ``predict`` gives (n, len(TASKS)) probabilities, cached for the last batch."""

    def __init__(self, tokenizer, net: PooledEncoderHead, max_length: int = 128, precision: str = "auto", metrics: dict | None = None):
        self.tokenizer, self.net = tokenizer, net.eval()
        self.max_length, self.precision = max_length, precision
        self._dtype = autocast_dtype(precision)
        self.metrics = dict(metrics or {})
        self._last_key: tuple | None = None
        self._last: np.ndarray | None = None

    @torch.inference_mode()
    def predict(self, firsts: list[str], responses: list[str], batch_size: int = 64) -> np.ndarray:
        key = (tuple(firsts), tuple(responses))
        if key == self._last_key:
            return self._last
        out = np.zeros((len(responses), len(TASKS)), dtype=np.float32)
        pairs = list(dict.fromkeys(zip(firsts, responses)))  # a GRPO group repeats contexts, rarely whole pairs
        order = sorted(range(len(pairs)), key=lambda i: len(pairs[i][0]) + len(pairs[i][1]))
        probs = np.zeros((len(pairs), len(TASKS)), dtype=np.float32)
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            b = self.tokenizer([pairs[j][0] or " " for j in idx], [pairs[j][1] or " " for j in idx], padding=True,
                               truncation="longest_first", max_length=self.max_length, return_tensors="pt")
            with torch.autocast("cpu", dtype=self._dtype or torch.bfloat16, enabled=self._dtype is not None):
                probs[idx] = torch.sigmoid(self.net(**b)).numpy()
        where = {p: k for k, p in enumerate(pairs)}
        out[:] = probs[[where[p] for p in zip(firsts, responses)]]
        self._last_key, self._last = key, out
        return out

    def score_items(self, contexts: list[str], personas: list[str], responses: list[str]) -> dict[str, np.ndarray]:
        p = self.predict([pair_text(c, q) for c, q in zip(contexts, personas)], responses)
        return {t: p[:, k] for k, t in enumerate(TASKS)}

    def as_heads(self) -> dict[str, "CrossHead"]:
        return {t: CrossHead(self, t) for t in TASKS}

    def save(self, out: str | Path) -> Path:
        out = save_encoder_head(self.net, self.tokenizer, out)
        (out / "head.json").write_text(json.dumps({"type": "cross-encoder", "tasks": list(TASKS),
                                                   "max_length": self.max_length, "precision": self.precision,
                                                   "metrics": self.metrics}, indent=2, default=float))
        return out

    @classmethod
    def load(cls, folder: str | Path) -> "CrossEncoderHeads":
        d = Path(folder)
        meta = json.loads((d / "head.json").read_text())
        if meta.get("tasks") != list(TASKS):
            raise ValueError(f"{d}: cross-encoder trained for tasks {meta.get('tasks')}, expected {list(TASKS)}")
        tok, net = load_encoder_head(d, len(TASKS))
        return cls(tok, net, meta["max_length"], meta["precision"],
                   meta.get("metrics"))


class CrossHead:
    """One task of the cross-encoder as a learned head of ``RewardScorer`` (``score(inputs)``)."""

    def __init__(self, model: CrossEncoderHeads, task: str):
        if task not in TASKS:
            raise ValueError(f"cross-encoder task must be one of {TASKS}, got {task!r}")
        self.model, self.kind = model, task
        self.metrics = model.metrics

    def score(self, inputs: dict) -> np.ndarray:
        p = self.model.predict([pair_text(c, q) for c, q in zip(inputs["context_text"], inputs["persona_text"])],
                               inputs["responses"])[:, TASKS.index(self.kind)]
        if self.kind == "personality":
            p = np.where(inputs["no_persona"], 0.5, p)  # no card: undefined, neutral (as the other heads)
        return p.astype(np.float32)


def _evaluate(model: CrossEncoderHeads, dev: list[dict]) -> dict[str, float]:
    """Dev agreement per task: Spearman of the task's output with its soft label, over examples that carry it."""
    from scipy import stats

    p = model.predict([e["first"] for e in dev], [e["response"] for e in dev])
    model._last_key = None  # weights change between evaluations: never serve a stale batch
    out = {}
    for k, t in enumerate(TASKS):
        idx = [i for i, e in enumerate(dev) if t in e["labels"]]
        y = np.array([dev[i]["labels"][t] for i in idx])
        if len(idx) >= 10 and np.ptp(y) > 0:
            out[t] = float(stats.spearmanr(p[idx, k], y).statistic)
    return out


def train_cross_encoder(train: list[dict], dev: list[dict], encoder_dir: str | Path,
                        settings: CrossSettings | None = None, log=print) -> tuple[CrossEncoderHeads, dict]:
    """Examples are ``{first, response, labels: {task: target in [0, 1]}}`` (see ``cross_training``)."""
    from transformers import AutoModel, AutoTokenizer

    s = settings or CrossSettings()
    if len(train) < s.batch_size or not dev:
        raise ValueError(f"cross-encoder: need at least {s.batch_size} training and some dev examples, "
                         f"got {len(train)} / {len(dev)}")
    torch.manual_seed(s.seed)
    tok = AutoTokenizer.from_pretrained(str(encoder_dir))
    net = PooledEncoderHead(AutoModel.from_pretrained(str(encoder_dir)), len(TASKS), s.dropout)
    model = CrossEncoderHeads(tok, net, s.max_length, s.precision)
    opt = torch.optim.AdamW([{"params": net.encoder.parameters(), "lr": s.lr},
                             {"params": net.head.parameters(), "lr": s.head_lr}], weight_decay=s.weight_decay)
    steps = max(1, int(math.ceil(s.epochs * len(train) / s.batch_size)))
    steps = min(steps, s.max_steps) if s.max_steps else steps
    warm = int(s.warmup * steps)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: (k + 1) / max(1, warm) if k < warm else max(0.0, (steps - k) / max(1, steps - warm)))
    enc = tok([e["first"] or " " for e in train], [e["response"] or " " for e in train], truncation="longest_first",
              max_length=s.max_length)["input_ids"]
    y = torch.tensor([[e["labels"].get(t, 0.0) for t in TASKS] for e in train], dtype=torch.float32)
    mask = torch.tensor([[t in e["labels"] for t in TASKS] for e in train], dtype=torch.float32)
    lengths, gen = np.array([len(x) for x in enc]), torch.Generator().manual_seed(s.seed)
    dtype = autocast_dtype(s.precision)

    def dev_score() -> tuple[float, dict]:
        net.eval()
        per = _evaluate(model, dev)
        net.train()
        return (float(np.mean(list(per.values()))) if per else float("-inf")), per

    best_val, best_per = dev_score()
    best = (best_val, 0, {k: v.clone() for k, v in net.state_dict().items()})
    t0, step, losses, curve = time.time(), 0, [], [(0, best_val)]
    net.train()
    while step < steps:
        for idx in length_grouped_batches(lengths, min(s.batch_size, len(train)), gen):
            b = tok.pad({"input_ids": [enc[j] for j in idx]}, return_tensors="pt")
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                logits = net(**b)
            m = mask[idx]
            loss = (torch.nn.functional.binary_cross_entropy_with_logits(logits, y[idx], reduction="none") * m
                    ).sum() / m.sum().clamp(min=1)
            losses.append(optimizer_step(net, opt, sched, loss))
            step += 1
            if step % s.eval_every == 0 or step == steps:
                val, per = dev_score()
                curve.append((step, val))
                if val > best[0]:
                    best, best_per = (val, step, {k: v.clone() for k, v in net.state_dict().items()}), per
                if log:
                    el = time.time() - t0
                    log(f"cross-encoder step {step}/{steps} loss {np.mean(losses[-s.eval_every:]):.4f} dev {val:.3f} "
                        f"{el:.0f}s (eta {el / step * (steps - step):.0f}s)")
            if step >= steps:
                break
    net.load_state_dict(best[2])
    net.eval()
    model._last_key = None
    metrics = {"train_examples": float(len(train)), "dev_examples": float(len(dev)), "steps": float(steps),
               "best_step": float(best[1]), "dev_mean_spearman_best": best[0], "dev_mean_spearman_untrained": curve[0][1],
               "train_seconds": time.time() - t0, **{f"dev_spearman_{t}": v for t, v in best_per.items()},
               "settings": asdict(s)}
    model.metrics = metrics
    return model, metrics
