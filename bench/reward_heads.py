"""Learned reward heads measured on held-out human data (research sets in ../shared/data).

    .venv/bin/python bench/reward_heads.py --head relevance     # DailyDialog: recall@1 of 10, test split
    .venv/bin/python bench/reward_heads.py --head personality   # PersonaChat: AUC on held-out dialogues
    .venv/bin/python bench/reward_heads.py --head engagement    # ConvAI2 + user satisfaction: Spearman
    .venv/bin/python bench/reward_heads.py --head all

Every head uses the frozen all-MiniLM-L6-v2 encoder; each figure is printed
beside the untrained head (cosine / implicit signals) and chance or a trivial
baseline. Splits: DailyDialog trains on its train split and is measured on its
test split; PersonaChat trains on the validation dialogues and is measured on
the test dialogues (different personas); engagement holds out 30% of the
dialogues (by a hash of the dialogue id). Embeddings are cached on disk
(``--cache``) so reruns skip encoding. Research data: non-commercial licences,
see ../shared/data/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


class DiskCachedEncoder:
    """The reward encoder with a persistent text -> embedding cache (benchmarks rerun without re-encoding)."""

    def __init__(self, encoder, path: Path):
        self.enc, self.path, self.dim = encoder, path, encoder.dim
        self.store: dict[str, np.ndarray] = {}
        if path.exists():
            z = np.load(path)
            self.store = dict(zip(z["keys"].tolist(), z["emb"]))

    def _key(self, t: str) -> str:
        return hashlib.sha1(t.encode()).hexdigest()

    def encode(self, texts: list[str]) -> np.ndarray:
        keys = [self._key(t) for t in texts]
        missing = {k: t for k, t in zip(keys, texts) if k not in self.store}
        if missing:
            emb = self.enc.encode(list(missing.values()))
            self.store.update(zip(missing, emb))
            self.save()
        return np.stack([self.store[k] for k in keys]) if keys else np.zeros((0, self.dim), np.float32)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp.npz")
        np.savez(tmp, keys=np.array(list(self.store)), emb=np.stack(list(self.store.values())))
        tmp.replace(self.path)


def relevance(enc, a) -> dict:
    from convrl.rewards.corpora import dailydialog_dialogues
    from convrl.rewards.training import train_relevance

    zip_path = SHARED / "dailydialog" / "convlab3_unified" / "data.zip"
    train = [d["turns"] for d in dailydialog_dialogues(zip_path, "train")]
    test = [d["turns"] for d in dailydialog_dialogues(zip_path, "test")]
    _, m = train_relevance(enc, train, test, max_pairs=a.max_pairs, max_test=a.max_test, epochs=a.epochs, lr=a.lr)
    return m


def personality(enc, a) -> dict:
    from convrl.rewards.corpora import personachat_dialogues
    from convrl.rewards.training import train_personality

    train = personachat_dialogues(SHARED / "personachat", "valid")
    test = personachat_dialogues(SHARED / "personachat", "test")
    if a.max_test_dialogues:
        test = test[:a.max_test_dialogues]
    _, m = train_personality(enc, train, test, max_pairs=a.max_pairs, epochs=a.epochs, lr=a.lr)
    return m


def engagement(enc, a) -> dict:
    from convrl.rewards.human_data import convai2_items, satisfaction_items
    from convrl.rewards.training import train_engagement

    c2, c2_info = convai2_items(SHARED / "convai2_human_eval", max_items=a.max_items, per_dialogue=a.per_dialogue)
    sat, sat_info = satisfaction_items(SHARED / "user_satisfaction", max_items=a.max_items, per_dialogue=a.per_dialogue)
    keys = {"convai2": "dialogue_score", **{f"satisfaction-{c}-": "satisfaction" for c in ("MWOZ", "SGD", "ReDial", "CCPE")}}
    _, m = train_engagement(enc, c2 + sat, keys)
    m["convai2_dialogues_kept"] = c2_info["kept"]
    m["convai2_dialogues_unrated"] = c2_info["unrated"]
    m["convai2_dialogues_too_short"] = c2_info["too_short"]
    return m


def main() -> None:
    import torch

    from convrl import models
    from convrl.rewards.encoder import SentenceEncoder

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--head", default="all", choices=["relevance", "personality", "engagement", "all"])
    p.add_argument("--max-pairs", type=int, default=20000, help="training pairs (relevance, personality)")
    p.add_argument("--max-test", type=int, default=2000, help="test pairs (relevance)")
    p.add_argument("--max-test-dialogues", type=int, default=0, help="PersonaChat test dialogues (0 = all 967)")
    p.add_argument("--max-items", type=int, default=8000, help="rated responses per source (engagement)")
    p.add_argument("--per-dialogue", type=int, default=4, help="rated responses per dialogue (engagement)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-4, help="learning rate of the pair heads' towers")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--precision", default="auto", help="encoder precision")
    p.add_argument("--cache", default=str(Path.home() / ".convrl" / "cache" / "bench-minilm-emb.npz"))
    p.add_argument("--json", default="")
    a = p.parse_args()
    if not SHARED.exists():
        raise SystemExit(f"{SHARED} is absent: these measurements need the research data sets")
    torch.set_num_threads(a.threads)
    enc = DiskCachedEncoder(SentenceEncoder(models.resolve_encoder("all-minilm-l6-v2"), precision=a.precision),
                            Path(a.cache).with_suffix(f".{a.precision}.npz"))
    results = {}
    for name, fn in (("relevance", relevance), ("personality", personality), ("engagement", engagement)):
        if a.head in (name, "all"):
            t0 = time.time()
            results[name] = {**fn(enc, a), "seconds": time.time() - t0}
            print(f"== {name}")
            for k, v in results[name].items():
                print(f"  {k:60s} {v:.4f}" if isinstance(v, float) else f"  {k:60s} {v}")
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
