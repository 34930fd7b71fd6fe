"""GoEmotions with the MiniLM encoder fine-tuned end to end: macro-F1 on the test split, 28 labels and Ekman.

Slow on CPU (an epoch over the 43,410 training comments takes about 7 minutes
on one core in bf16), so it is a benchmark only, never part of tests or the
default pipeline (``rewards.emotion.finetune_data`` turns it on there). The
method lives in ``convrl.rewards.emotion_finetune.finetune_goemotions``
(fine-tuned MiniLM, bf16 autocast where supported, length-grouped batches,
per-label thresholds tuned on dev); the frozen-encoder figures come from
``bench/emotion_goemotions.py``.

    taskset -c 1 .venv/bin/python bench/emotion_finetune.py --epochs 2 --threads 1 --out /tmp/emo
    .venv/bin/python bench/emotion_finetune.py --grouping ekman        # a separate Ekman fine-tune

With ``--grouping original`` (default) the Ekman figure is also reported from
the same model: each Ekman group's probability is the max of its GoEmotions
members' probabilities, thresholds tuned on the Ekman dev labels. Macro-F1 is
measured once on test. GoEmotions is CC BY 4.0 (research use of ../shared/data).
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

    from convrl import models
    from convrl.rewards.emotion_finetune import FinetuneSettings, finetune_goemotions

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--grouping", default="original", choices=["original", "ekman"])
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--lr", type=float, default=8e-5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--seed", type=int, default=13)
    p.add_argument("--max-train", type=int, default=0)
    p.add_argument("--max-steps", type=int, default=0, help="cap the optimizer steps (smoke runs)")
    p.add_argument("--max-eval", type=int, default=0, help="cap dev/test sizes (smoke runs)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="", help="folder for the model, dev/test probabilities and results.json")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    t0 = time.time()
    s = FinetuneSettings(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, precision=a.precision,
                         max_steps=a.max_steps, seed=a.seed)
    clf, res = finetune_goemotions(SHARED / "goemotions" / a.grouping, models.resolve_encoder("all-minilm-l6-v2"), s,
                                   max_train=a.max_train, max_eval=a.max_eval, log=lambda m: print(m, flush=True))
    res.update({"grouping": a.grouping, "total_seconds": time.time() - t0, "threads": a.threads})
    print(json.dumps(res, indent=2))
    ekman = res.get("test_macro_f1_ekman_from_labels")
    print(f"GoEmotions fine-tuned MiniLM ({a.grouping}, {a.epochs:g} epochs, lr {a.lr:g}, {s.precision}): "
          f"test macro-F1 {a.grouping} {res['test_macro_f1']:.3f}"
          + (f", Ekman (from the 28-label model) {ekman:.3f}" if ekman is not None else "")
          + f"; train {res['train_seconds']:.0f} s, total {res['total_seconds']:.0f} s on {a.threads} thread(s)")
    if a.out:
        out = Path(a.out)
        clf.save(out / "model")
        np.savez_compressed(out / "probs.npz", **clf.eval_probs)
        (out / "results.json").write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
