"""A learned quality head: is this reply a good answer *in its context*? (``rewards.learned_heads: [quality]``).

Logistic regression on frozen-encoder features of (the user's last turn, the recent context, the reply),
fitted in seconds once the texts are encoded, trained on people's judgements of replies in context and on
natural negatives, all from training sides (research data in ``../shared/data``; licences in its README):

* ToxiChat *train*: crowd "Plausible" / "Not Plausible" labels of chatbot replies to Reddit threads;
* ConvAI2 human evaluation, dialogues outside ``held_out(id, 0.3, 13)`` (the meta-eval's side): per-message
  thumbs;
* DailyDialog *train* (never test: Predictive Engagement and HolisticEval queries are DailyDialog test
  utterances): the true next utterance (good) against a random utterance of another dialogue and an
  utterance of the same dialogue that answers another turn (bad).

Each source carries the same total weight; the penalty ``C`` is chosen by the mean per-source ROC AUC on a
dev split of the training dialogues. No length feature: on human ratings length flips sign from set to set
(-0.65 with HolisticEval fluency, +0.42 with ConvAI-2017 engagement labels), so a head that learned it would
be a length proxy. The score is P(good) times (1 - the share copied from the user's turn), 0 for degenerate
text, like the untrained coherence term it replaces.

Measured (dev split of the training side, ``held_out(group, 0.2, 14)``, MiniLM, 9,573 items): it does *not*
beat the untrained cosine with the user's turn it would replace (ROC AUC ToxiChat 0.69 vs 0.71, DailyDialog
0.68 vs 0.74, ConvAI2 thumbs 0.61 vs 0.61; the reply-embedding features learn each source's style more than
what makes a reply fit), so no preset turns it on; it is here to be trained on more or better-matched
ratings, and must beat that baseline in its own metrics (``dev_auc_<source>`` vs
``dev_auc_<source>_untrained_cosine``) before RL uses it::

    items = quality_items(toxichat="../shared/data/toxichat", convai2="../shared/data/convai2_human_eval",
                          dailydialog="../shared/data/dailydialog/convlab3_unified/data.zip")
    head, metrics = train_quality_head(encoder, items)      # metrics: dev AUC per source vs the untrained cosine
    head.save("reward_models/learned/quality"); load_learned("reward_models/learned/quality")
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np

from convrl.rewards.heads import is_degenerate, last_user_text, recent_context
from convrl.rewards.text_signals import echo_rate, repetition_rate
from convrl.rewards.human_data import held_out

SCALARS = ("cos_user", "cos_context", "echo", "repetition", "question", "degenerate")


def quality_features(u_emb: np.ndarray, c_emb: np.ndarray, r_emb: np.ndarray, responses: list[str],
                     last_user: list[str]) -> np.ndarray:
    """[user * reply, reply, scalars]: how the reply relates to the turn it answers, and what it is."""
    scalars = np.stack([(u_emb * r_emb).sum(1), (c_emb * r_emb).sum(1),
                        np.array([echo_rate(r, u) for r, u in zip(responses, last_user)], dtype=np.float32),
                        np.array([repetition_rate(r) for r in responses], dtype=np.float32),
                        np.array(["?" in r for r in responses], dtype=np.float32),
                        np.array([is_degenerate(r) for r in responses], dtype=np.float32)], 1)
    return np.concatenate([u_emb * r_emb, r_emb, scalars], 1).astype(np.float32)


class QualityHead:
    """Logistic model over ``quality_features``; scores from the inputs ``RewardScorer.score`` computed."""

    kind = "quality"

    def __init__(self, coef: np.ndarray, intercept: float, mean: np.ndarray, scale: np.ndarray,
                 metrics: dict | None = None):
        self.coef, self.intercept = np.asarray(coef, np.float32), float(intercept)
        self.mean, self.scale = np.asarray(mean, np.float32), np.asarray(scale, np.float32)
        self.metrics = dict(metrics or {})

    def probability(self, features: np.ndarray) -> np.ndarray:
        z = ((features - self.mean) / self.scale) @ self.coef + self.intercept
        return 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    def score(self, inputs: dict) -> np.ndarray:
        responses, users = inputs["responses"], inputs["user_text"]
        p = self.probability(quality_features(inputs["user"], inputs["context"], inputs["response"], responses, users))
        # The copy discount and the degenerate gate of the untrained head: RL must not learn to parrot the user.
        keep = np.array([(1 - echo_rate(r, u)) * (not is_degenerate(r)) for r, u in zip(responses, users)])
        return (p * keep).astype(np.float32)

    def save(self, out: str | Path) -> None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "weights.npz", coef=self.coef, mean=self.mean, scale=self.scale)
        (out / "head.json").write_text(json.dumps({"type": "logistic", "kind": "quality", "intercept": self.intercept,
                                                   "metrics": self.metrics}, indent=2))

    @classmethod
    def load(cls, folder: str | Path, meta: dict) -> QualityHead:
        w = np.load(Path(folder) / "weights.npz")
        return cls(w["coef"], meta["intercept"], w["mean"], w["scale"], meta.get("metrics"))


# ------------------------------------------------------------------ training data

def _item(context: list[dict], response: str, good: float, group: str, source: str) -> dict:
    return {"context": context, "response": response, "ratings": {"good": good}, "group": group, "source": source}


def _alternating(turns: list[str]) -> list[dict]:
    """Utterances before a reply as messages: the last one is the user's, roles alternate backwards."""
    return [{"role": "user" if (len(turns) - 1 - j) % 2 == 0 else "assistant", "content": t}
            for j, t in enumerate(turns)]


def dailydialog_quality_items(path: str, max_dialogues: int = 1500, seed: int = 13) -> list[dict]:
    """DailyDialog *train*: per dialogue one true reply, one random reply from elsewhere, one same-dialogue reply."""
    from convrl.rewards.corpora import dailydialog_dialogues

    dialogues = [d for d in dailydialog_dialogues(path, "train") if len(d["turns"]) >= 4]
    rng = random.Random(seed)
    rng.shuffle(dialogues)
    dialogues = dialogues[:max_dialogues]
    items = []
    for d in dialogues:
        turns, gid = d["turns"], f"dd-{d['id']}"
        i = rng.randrange(1, len(turns))
        ctx = _alternating(turns[max(0, i - 4):i])
        other = rng.choice(dialogues)["turns"]
        same = [t for k, t in enumerate(turns) if k not in (i - 1, i, i + 1)]
        items.append(_item(ctx, turns[i], 1.0, gid, "dailydialog"))
        items.append(_item(ctx, rng.choice(other), 0.0, gid, "dailydialog"))
        if same:
            items.append(_item(ctx, rng.choice(same), 0.0, gid, "dailydialog"))
    return items


def quality_items(toxichat: str = "", convai2: str = "", dailydialog: str = "", max_dialogues: int = 1500,
                  seed: int = 13) -> list[dict]:
    """Training items from whichever sources are given (see the module docstring for the sides used)."""
    items: list[dict] = []
    if toxichat:
        from convrl.rewards.rated_sets import toxichat_items

        for it in toxichat_items(toxichat, "train")[0]:
            if "plausible" in it["ratings"]:
                items.append(_item(it["context"], it["response"], it["ratings"]["plausible"], it["group"], "toxichat"))
    if convai2:
        from convrl.rewards.human_data import convai2_items

        for it in convai2_items(convai2, seed=seed)[0]:
            if "thumb" in it["ratings"] and not held_out(it["group"], 0.3, 13):
                items.append(_item(it["context"], it["response"], it["ratings"]["thumb"], it["group"], "convai2"))
    if dailydialog:
        items += dailydialog_quality_items(dailydialog, max_dialogues, seed)
    if not items:
        raise ValueError("learned quality head: no training data; set rewards.quality_data (ToxiChat), "
                         "rewards.engagement_data (ConvAI2) or rewards.relevance_data (DailyDialog)")
    return items


def encode_items(encoder, items: list[dict]) -> np.ndarray:
    users = [last_user_text(it["context"]) for it in items]
    responses = [it["response"] for it in items]
    u = encoder.encode(users)
    c = encoder.encode([recent_context(it["context"]) for it in items])
    r = encoder.encode(responses)
    return quality_features(u, c, r, responses, users)


def train_quality_head(encoder, items: list[dict], cs: tuple[float, ...] = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2),
                       dev_fraction: float = 0.2, seed: int = 13) -> tuple[QualityHead, dict]:
    """Logistic regression, sources weighted equally, ``C`` picked on a dev split of dialogues; refit on all."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    y = np.array([it["ratings"]["good"] for it in items], dtype=np.float64)
    if len(np.unique(y)) < 2 or len(items) < 20:
        raise ValueError(f"learned quality head: need good and bad replies (20+ items), got {len(items)} items "
                         f"with labels {sorted(set(y.tolist()))}")
    x = encode_items(encoder, items)
    src = np.array([it["source"] for it in items])
    w = np.zeros(len(y))
    for s in np.unique(src):
        w[src == s] = len(y) / (len(np.unique(src)) * (src == s).sum())
    dev = np.array([held_out(it["group"], dev_fraction, seed + 1) for it in items])
    mean, scale = x[~dev].mean(0), x[~dev].std(0) + 1e-6
    cos_col = x.shape[1] - len(SCALARS) + SCALARS.index("cos_user")

    def dev_aucs(model) -> dict[str, float]:
        out = {}
        p = model.predict_proba((x[dev] - mean) / scale)[:, 1]
        for s in np.unique(src[dev]):
            m = src[dev] == s
            if len(np.unique(y[dev][m])) == 2:
                out[s] = float(roc_auc_score(y[dev][m], p[m]))
                out[f"{s}_untrained_cosine"] = float(roc_auc_score(y[dev][m], x[dev][m, cos_col]))
        return out

    metrics: dict[str, float] = {"train_items": float((~dev).sum()), "dev_items": float(dev.sum())}
    best = (-1.0, cs[0])
    for c in cs:
        model = LogisticRegression(C=c, max_iter=2000).fit((x[~dev] - mean) / scale, y[~dev], sample_weight=w[~dev])
        aucs = dev_aucs(model)
        mean_auc = float(np.mean([v for k, v in aucs.items() if not k.endswith("_untrained_cosine")] or [0.5]))
        if mean_auc > best[0]:
            best = (mean_auc, c)
            metrics.update({f"dev_auc_{k}": v for k, v in aucs.items()})
    metrics.update({"dev_auc_mean": best[0], "C": best[1]})
    metrics.update({f"items_{s}": float((src == s).sum()) for s in np.unique(src)})
    mean, scale = x.mean(0), x.std(0) + 1e-6
    model = LogisticRegression(C=best[1], max_iter=2000).fit((x - mean) / scale, y, sample_weight=w)
    return QualityHead(model.coef_[0], float(model.intercept_[0]), mean, scale, metrics), metrics
