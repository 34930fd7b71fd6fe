"""Learned reward heads on frozen sentence embeddings: pair heads and the engagement regressor.

* ``PairHead`` (relevance, personality): two small residual towers over the
  frozen encoder's embeddings (one for the context or persona card, one for the
  reply), a cosine between them and a calibrated sigmoid. The towers start as
  the identity, so an untrained head equals the cosine head; they are trained
  contrastively (InfoNCE with in-batch negatives: other contexts' replies, other
  personas' turns), then a logistic calibration maps the score to [0, 1].
* ``EngagementRegressor``: ridge regression from context/reply embeddings and
  implicit-engagement signals to a human rating (standardised per source),
  rescaled to [0, 1].

Both score from the inputs ``RewardScorer.score`` already computed (one
encoder pass), save to a folder (``head.json`` + weights; no pickle) and load
back with ``load_learned(folder)``. Training entry points with data builders
live in :mod:`convrl.rewards.training`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch

PAIR_KINDS = ("relevance", "personality")


class _Tower(torch.nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
        torch.nn.init.zeros_(self.net[2].weight)  # start as the identity: the untrained head is the cosine head
        torch.nn.init.zeros_(self.net[2].bias)

    def forward(self, x):
        return torch.nn.functional.normalize(x + self.net(x), dim=-1)


class PairTowers(torch.nn.Module):
    def __init__(self, dim: int, hidden: int = 512):
        super().__init__()
        self.a, self.b = _Tower(dim, hidden), _Tower(dim, hidden)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(20.0)))
        self.bias = torch.nn.Parameter(torch.tensor(-10.0))

    def matrix(self, a, b):
        return self.log_scale.exp() * self.a(a) @ self.b(b).T

    def forward(self, a, b):
        return self.log_scale.exp() * (self.a(a) * self.b(b)).sum(-1) + self.bias


class PairHead:
    """Relevance (context -> reply) or personality (persona card -> reply) on frozen embeddings."""

    def __init__(self, kind: str, towers: PairTowers, hidden: int, metrics: dict | None = None):
        if kind not in PAIR_KINDS:
            raise ValueError(f"pair head kind must be one of {PAIR_KINDS}, got {kind!r}")
        self.kind, self.towers, self.hidden = kind, towers.eval(), hidden
        self.metrics = dict(metrics or {})

    @torch.inference_mode()
    def pair_scores(self, a_emb: np.ndarray, b_emb: np.ndarray) -> np.ndarray:
        """Probability that each (a, b) pair belongs together."""
        logits = self.towers(torch.from_numpy(np.asarray(a_emb, np.float32)), torch.from_numpy(np.asarray(b_emb, np.float32)))
        return torch.sigmoid(logits).numpy()

    def score(self, inputs: dict) -> np.ndarray:
        a = inputs["context"] if self.kind == "relevance" else inputs["persona"]
        s = self.pair_scores(a, inputs["response"])
        if self.kind == "personality":
            s = np.where(inputs["no_persona"], 0.5, s)  # no card: undefined, neutral (as the untrained head)
        return s.astype(np.float32)

    def save(self, out: str | Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        torch.save(self.towers.state_dict(), out / "towers.pt")
        dim = self.towers.a.net[0].in_features
        (out / "head.json").write_text(json.dumps({"type": "pair", "kind": self.kind, "dim": dim, "hidden": self.hidden,
                                                   "metrics": self.metrics}, indent=2))


def _info_nce(towers: PairTowers, a, b, keys) -> torch.Tensor:
    logits = towers.matrix(a, b)
    same = keys[:, None] == keys[None, :]
    logits = logits.masked_fill(same & ~torch.eye(len(a), dtype=torch.bool), -1e4)
    target = torch.arange(len(a))
    return (torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)) / 2


def train_pair_head(kind: str, a_emb: np.ndarray, b_emb: np.ndarray, a_keys: list[str] | None = None,
                    groups: list[str] | None = None, epochs: int = 8, lr: float = 1e-3, batch_size: int = 256,
                    hidden: int = 512, val_fraction: float = 0.1, seed: int = 13) -> tuple[PairHead, dict]:
    """InfoNCE over in-batch negatives (both directions), then logistic calibration of scale and bias.

    ``a_keys`` names the a-side item (the persona, the context); pairs that
    share a key are not used as each other's negatives (they are positives).
    ``groups`` (the dialogue of each pair) holds out ``val_fraction`` of the
    dialogues of the *training* data for early stopping: the towers of the
    epoch with the lowest validation loss are kept, so a small data set cannot
    make the head worse than the cosine it starts from (epoch 0 counts).
    """
    from convrl.rewards.human_data import held_out

    if len(a_emb) < 4:
        raise ValueError(f"{kind} head: need at least 4 training pairs, got {len(a_emb)}")
    torch.manual_seed(seed)
    a, b = torch.from_numpy(np.asarray(a_emb, np.float32)), torch.from_numpy(np.asarray(b_emb, np.float32))
    key_names = np.asarray(a_keys if a_keys is not None else np.arange(len(a)).astype(str))
    keys = torch.from_numpy(np.unique(key_names, return_inverse=True)[1])
    groups = list(groups) if groups is not None else key_names.tolist()
    val = torch.tensor([held_out(str(g), val_fraction, seed + 1) for g in groups])
    if val.all() or val.sum() < 4:
        val = torch.zeros(len(a), dtype=torch.bool)
    tr_idx, va_idx = torch.nonzero(~val).squeeze(1), torch.nonzero(val).squeeze(1)
    towers = PairTowers(a.shape[1], hidden)
    opt = torch.optim.AdamW([p for n, p in towers.named_parameters() if n != "bias"], lr=lr, weight_decay=1e-2)
    gen = torch.Generator().manual_seed(seed)

    def val_loss() -> float:
        if not len(va_idx):
            return float("nan")
        with torch.no_grad():
            chunks = [va_idx[i:i + batch_size] for i in range(0, len(va_idx), batch_size)]
            chunks = [c for c in chunks if len(c) >= 2]
            return sum(float(_info_nce(towers, a[c], b[c], keys[c])) * len(c) for c in chunks) / sum(map(len, chunks))

    v0 = val_loss()
    best = (v0, 0, {k: v.clone() for k, v in towers.state_dict().items()})
    curve = []
    for epoch in range(1, epochs + 1):
        perm = tr_idx[torch.randperm(len(tr_idx), generator=gen)]
        towers.train()
        total = 0.0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:
                continue
            loss = _info_nce(towers, a[idx], b[idx], keys[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        towers.eval()
        v = val_loss()
        curve.append((total / max(1, len(perm)), v))
        if not len(va_idx) or v < best[0]:
            best = (v, epoch, {k: t.clone() for k, t in towers.state_dict().items()})
    towers.load_state_dict(best[2])
    _calibrate(towers, a, b, keys, gen)
    head = PairHead(kind, towers, hidden)
    return head, {"train_pairs": float(len(tr_idx)), "val_pairs": float(len(va_idx)), "best_epoch": float(best[1]),
                  "train_loss_last": curve[-1][0] if curve else float("nan"), "val_loss_untrained": v0,
                  "val_loss_best": best[0]}


def _calibrate(towers: PairTowers, a, b, keys, gen, steps: int = 200) -> None:
    """Fit scale and bias so sigmoid(score) separates true pairs from random ones (towers frozen)."""
    with torch.no_grad():
        fa, fb = towers.a(a), towers.b(b)
        shuffle = torch.randperm(len(a), generator=gen)
        neg = keys[shuffle] != keys
        cos = torch.cat([(fa * fb).sum(-1), (fa * fb[shuffle]).sum(-1)[neg]])
        y = torch.cat([torch.ones(len(a)), torch.zeros(int(neg.sum()))])
    scale0 = float(towers.log_scale.detach().exp())
    w = torch.tensor([scale0, 0.0], requires_grad=True)
    opt = torch.optim.LBFGS([w], max_iter=steps, line_search_fn="strong_wolfe")
    pos_weight = torch.tensor(float((y == 0).sum() / max(1, (y == 1).sum())))

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(w[0] * cos + w[1], y, pos_weight=pos_weight)
        loss = loss + 1e-4 * (w ** 2).sum()  # keeps (near-)separable data from sending the scale to infinity
        loss.backward()
        return loss

    opt.step(closure)
    scale, bias = (float(v) for v in w.detach())
    if not (math.isfinite(scale) and math.isfinite(bias)) or scale <= 0:
        # Degenerate embeddings (e.g. a random test encoder): fall back to the contrastive scale and
        # put the decision boundary between the mean true-pair and the mean random-pair cosine.
        mid = float((cos[y == 1].mean() + cos[y == 0].mean()) / 2) if (y == 0).any() else float(cos.mean())
        scale, bias = scale0, -scale0 * mid
    with torch.no_grad():
        towers.log_scale.fill_(math.log(min(max(scale, 1e-3), 1e3)))
        towers.bias.fill_(bias)


# ------------------------------------------------------------------ engagement

def engagement_features(c_emb: np.ndarray, r_emb: np.ndarray, responses: list[str]) -> np.ndarray:
    from convrl.rewards.heads import engagement_signals, is_degenerate
    from convrl.rewards.text_signals import repetition_rate

    words = np.array([len(r.split()) for r in responses], dtype=np.float32)
    scalars = np.stack([(c_emb * r_emb).sum(1), engagement_signals(responses), np.log1p(words),
                        np.array(["?" in r for r in responses], dtype=np.float32),
                        np.array([repetition_rate(r) for r in responses], dtype=np.float32),
                        np.array([is_degenerate(r) for r in responses], dtype=np.float32)], 1)
    return np.concatenate([c_emb, r_emb, c_emb * r_emb, scalars], 1).astype(np.float32)


class EngagementRegressor:
    """Linear model over ``engagement_features``; the prediction is rescaled to [0, 1] by training quantiles."""

    def __init__(self, coef: np.ndarray, intercept: float, mean: np.ndarray, scale: np.ndarray, lo: float, hi: float,
                 metrics: dict | None = None):
        self.coef, self.intercept = np.asarray(coef, np.float32), float(intercept)
        self.mean, self.scale = np.asarray(mean, np.float32), np.asarray(scale, np.float32)
        self.lo, self.hi = float(lo), float(hi)
        self.kind = "engagement"
        self.metrics = dict(metrics or {})

    def predict_raw(self, features: np.ndarray) -> np.ndarray:
        return ((features - self.mean) / self.scale) @ self.coef + self.intercept

    def score(self, inputs: dict) -> np.ndarray:
        raw = self.predict_raw(engagement_features(inputs["context"], inputs["response"], inputs["responses"]))
        return np.clip((raw - self.lo) / max(self.hi - self.lo, 1e-6), 0, 1).astype(np.float32)

    def save(self, out: str | Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "weights.npz", coef=self.coef, mean=self.mean, scale=self.scale)
        (out / "head.json").write_text(json.dumps({"type": "ridge", "kind": "engagement", "intercept": self.intercept,
                                                   "lo": self.lo, "hi": self.hi, "metrics": self.metrics}, indent=2))


def train_engagement_regressor(features: np.ndarray, targets: np.ndarray,
                               alphas: tuple[float, ...] = (1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6)) -> tuple[EngagementRegressor, dict]:
    """Ridge with the penalty chosen by efficient leave-one-out CV on the training rows only."""
    from sklearn.linear_model import RidgeCV

    if len(features) < 10:
        raise ValueError(f"engagement head: need at least 10 rated responses, got {len(features)}")
    mean, scale = features.mean(0), features.std(0) + 1e-6
    model = RidgeCV(alphas=alphas).fit((features - mean) / scale, targets)
    raw = model.predict((features - mean) / scale)
    lo, hi = np.percentile(raw, [2, 98])
    head = EngagementRegressor(model.coef_, model.intercept_, mean, scale, lo, hi)
    return head, {"train_items": float(len(targets)), "ridge_alpha": float(model.alpha_)}


# ------------------------------------------------------------------ persistence and metrics

def load_learned(folder: str | Path):
    d = Path(folder)
    meta = json.loads((d / "head.json").read_text())
    if meta["type"] == "pair":
        towers = PairTowers(meta["dim"], meta["hidden"])
        towers.load_state_dict(torch.load(d / "towers.pt", weights_only=True))
        return PairHead(meta["kind"], towers, meta["hidden"], meta.get("metrics"))
    if meta["type"] == "ridge":
        w = np.load(d / "weights.npz")
        return EngagementRegressor(w["coef"], meta["intercept"], w["mean"], w["scale"], meta["lo"], meta["hi"],
                                   meta.get("metrics"))
    if meta["type"] == "logistic":
        from convrl.rewards.quality_head import QualityHead

        return QualityHead.load(d, meta)
    raise ValueError(f"{d}: unknown learned head type {meta['type']!r}")


def recall_at_k(pair_fn, a_emb: np.ndarray, b_emb: np.ndarray, k: int = 10, seed: int = 13) -> float:
    """Next-utterance selection: for each a_i, is b_i ranked first among itself and k-1 random other b?"""
    n = len(a_emb)
    if n < k:
        return float("nan")
    rng = np.random.default_rng(seed)
    hits = 0
    for i in range(n):
        others = rng.choice(n - 1, size=k - 1, replace=False)
        others = others + (others >= i)  # skip i itself
        cands = np.concatenate([[i], others])
        s = pair_fn(np.repeat(a_emb[i:i + 1], k, 0), b_emb[cands])
        # A tie with the true reply counts as a fractional hit: a constant scorer gets 1/k, not 1.
        if s[0] >= s[1:].max():
            hits += 1.0 / (1 + int((s[1:] == s[0]).sum()))
    return hits / n


def cosine_pairs(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1)
