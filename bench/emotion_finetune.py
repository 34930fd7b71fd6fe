"""GoEmotions with the MiniLM encoder fine-tuned end to end (not frozen): macro-F1 on the test split.

Slow on CPU (one epoch over the 43,410 training comments is ~15-30 minutes on 2
shared cores), so it is a benchmark only, never part of tests or the default
pipeline. The frozen-encoder figure comes from ``bench/emotion_goemotions.py``.

    .venv/bin/python bench/emotion_finetune.py --grouping original --epochs 1
    .venv/bin/python bench/emotion_finetune.py --grouping ekman --epochs 1 --max-train 20000

How: all-MiniLM-L6-v2 + a linear multi-label head on the mean-pooled output,
BCE, AdamW (lr 5e-5 encoder, 1e-3 head), linear decay, max 64 tokens; the
per-label thresholds are tuned on dev; macro-F1 is measured once on test.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def main() -> None:
    import torch
    from sklearn.metrics import f1_score
    from transformers import AutoModel, AutoTokenizer

    from convrl import models
    from convrl.rewards.corpora import goemotions_split
    from convrl.rewards.emotion import multi_hot

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grouping", default="original", choices=["original", "ekman"])
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default="")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(13)
    folder = SHARED / "goemotions" / a.grouping
    (x, y, names), (dx, dy, _), (tx, ty, _) = (goemotions_split(folder, s) for s in ("train", "dev", "test"))
    if a.max_train:
        x, y = x[:a.max_train], y[:a.max_train]
    d = models.resolve_encoder("all-minilm-l6-v2")
    tok, enc = AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d)
    head = torch.nn.Linear(enc.config.hidden_size, len(names))
    opt = torch.optim.AdamW([{"params": enc.parameters(), "lr": 5e-5}, {"params": head.parameters(), "lr": 1e-3}],
                            weight_decay=0.01)
    steps = int(a.epochs * len(x) / a.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, steps)))
    yt = torch.from_numpy(multi_hot(y, len(names)))

    def forward(texts):
        b = tok(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        h = enc(**b).last_hidden_state
        m = b["attention_mask"].unsqueeze(-1).float()
        return head((h * m).sum(1) / m.sum(1))

    @torch.inference_mode()
    def probs(texts):
        enc.eval()
        out = [torch.sigmoid(forward(texts[i:i + 256])).numpy() for i in range(0, len(texts), 256)]
        enc.train()
        return np.concatenate(out)

    t0, step = time.time(), 0
    enc.train()
    gen = torch.Generator().manual_seed(13)
    while step < steps:
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x) - a.batch_size + 1, a.batch_size):
            idx = perm[i:i + a.batch_size]
            loss = torch.nn.functional.binary_cross_entropy_with_logits(forward([x[j] for j in idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 100 == 0:
                print(f"step {step}/{steps} loss {loss.item():.4f} {time.time() - t0:.0f}s", flush=True)
            if step >= steps:
                break
    pd_, pt = probs(dx), probs(tx)
    ydv, yte = multi_hot(dy, len(names)), multi_hot(ty, len(names))
    grid = np.arange(0.05, 0.95, 0.025)
    th = np.array([grid[int(np.argmax([f1_score(ydv[:, j], pd_[:, j] >= t, zero_division=0) for t in grid]))]
                   for j in range(len(names))])
    res = {"grouping": a.grouping, "train_size": len(x), "epochs": a.epochs, "seconds": time.time() - t0,
           "test_macro_f1": float(f1_score(yte, pt >= th, average="macro", zero_division=0)),
           "test_macro_f1_threshold_0.3": float(f1_score(yte, pt >= 0.3, average="macro", zero_division=0))}
    print(f"GoEmotions {a.grouping}: fine-tuned MiniLM macro-F1 {res['test_macro_f1']:.3f} "
          f"(threshold 0.3: {res['test_macro_f1_threshold_0.3']:.3f}), {res['seconds']:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
