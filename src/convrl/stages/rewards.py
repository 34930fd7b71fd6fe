"""Reward-model stage: train the emotion head (and the learned heads the config asks for), measure
each on held-out data, package every head.

The output directory is a reward bundle (``reward_bundle.json``, ``emotion/``,
``emotion_finetuned/`` with ``rewards.emotion.finetune_data``, ``learned/<head>/``, and what
``rewards.judgement`` trains on human ratings: ``cross/``, ``dialogue/``, ``safety/``)
so later stages rebuild the same ``RewardScorer`` with ``convrl.rewards.bundle.load_scorer(reward_dir)``. Learned heads are opt-in (``rewards.learned_heads``);
the default pipeline trains only the emotion head.

In the pipeline, ``rewards_compute`` is the cached step (keyed on the ``models`` and ``rewards``
sections and the ingested tables; no MLflow) and ``rewards_record`` logs its results under each
run's parent run (``convrl.stages.cached``); ``rewards_stage`` does both.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from convrl import models, tracking
from convrl.config import Config
from convrl.rewards.emotion import EMOTIONS, EmotionClassifier, nrc_silver_label, train_emotion_head
from convrl.rewards.bundle import RewardBundle
from convrl.rewards.encoder import SentenceEncoder
from convrl.rewards.heads import FluencyScorer, RewardScorer
from convrl.stages import cached
from convrl.tracking.pyfunc import EmotionHeadModel

TRAINING_SUMMARY = "training_summary.json"  # in the bundle dir: what the record step logs


def emotion_training_data(turns: pd.DataFrame, split: str, cap: int = 0) -> tuple[list[str], list[str], str]:
    """Texts and labels of one split: gold where the data has them, NRC silver otherwise."""
    sub = turns[turns["split"] == split]
    gold = sub[sub["emotion"].isin(EMOTIONS)]
    if len(gold) >= 0.5 * len(sub) and len(gold) > 0:
        texts, labels, kind = gold["text"].tolist(), gold["emotion"].tolist(), "gold"
    else:
        texts = sub["text"].drop_duplicates().tolist()
        labels, kind = [nrc_silver_label(t) for t in texts], "nrc_silver"
    if cap:
        texts, labels = texts[:cap], labels[:cap]
    return texts, labels, kind


def relevance_recall_at_1(scorer: RewardScorer, turns: pd.DataFrame, split: str, k: int = 10,
                          seed: int = 13, max_items: int = 300) -> float:
    """Next-utterance selection: is the true reply the most relevant among k candidates?"""
    from convrl.data.prompts import conversation_prefixes

    items = [p for p in conversation_prefixes(turns, split, 4) if p["reference"]]
    if len(items) < k:
        return float("nan")
    rng = np.random.default_rng(seed)
    items = [items[i] for i in rng.permutation(len(items))[:max_items]]
    replies = [p["reference"] for p in items]
    hits = 0
    for i, p in enumerate(items):
        others = rng.choice([j for j in range(len(items)) if j != i], size=k - 1, replace=False)
        cands = [replies[i]] + [replies[j] for j in others]
        ctx = " ".join(m["content"] for m in p["context"])
        emb = scorer.encoder.encode([ctx] + cands)
        hits += int(np.argmax(emb[1:] @ emb[0]) == 0)
    return hits / len(items)


def rewards_compute(cfg: Config, turns_path: str, reward_dir: str, personas_path: str = "") -> dict:
    """Train and measure every head without MLflow (the cached pipeline step); writes the bundle to ``reward_dir``
    and what ``rewards_record`` logs to ``reward_dir/training_summary.json``.

    ``personas_path`` (the persona table) is needed only for a learned personality head trained on the
    ingested conversations (``rewards.learned_heads`` has personality and ``rewards.personality_data`` is empty).
    """
    summary: dict = {}
    with cached.deferred_errors(summary):
        summary.update(_train_heads(cfg, turns_path, Path(reward_dir), personas_path))
    cached.write_summary(Path(reward_dir) / TRAINING_SUMMARY, summary)
    return summary


def _train_heads(cfg: Config, turns_path: str, out: Path, personas_path: str) -> dict:
    turns = pd.read_parquet(turns_path)
    enc_dir = models.resolve_encoder(cfg.models.encoder)
    encoder = SentenceEncoder(enc_dir, max_length=cfg.rewards.max_length, batch_size=cfg.rewards.batch_size,
                              precision=cfg.rewards.encoder_precision)
    e = cfg.rewards.emotion
    tr_x, tr_y, kind = emotion_training_data(turns, "train", e.max_texts)
    va_x, va_y, _ = emotion_training_data(turns, "validation")
    clf, metrics = train_emotion_head(encoder, tr_x, tr_y, va_x, va_y, epochs=e.epochs,
                                      lr=e.learning_rate, hidden=e.hidden_size, seed=e.seed)
    clf.save(out / "emotion")
    finetuned_metrics = {}
    if e.finetune_data:
        from convrl.rewards.emotion_finetune import FinetuneSettings, finetune_goemotions

        ft, ft_metrics = finetune_goemotions(
            e.finetune_data, enc_dir, FinetuneSettings(epochs=e.finetune_epochs, lr=e.finetune_lr, seed=e.seed),
            max_train=e.finetune_max_train)
        ft.save(out / "emotion_finetuned")
        finetuned_metrics = {f"emotion_finetuned/{k}": float(v) for k, v in ft_metrics.items()
                             if isinstance(v, (int, float))}
    learned, learned_metrics = {}, {}
    if cfg.rewards.learned_heads:
        from convrl.data.personas import personas_from_table
        from convrl.rewards.training import train_configured_heads

        personas = ({p.persona_id: p for p in personas_from_table(pd.read_parquet(personas_path))}
                    if personas_path else {})
        learned, learned_metrics = train_configured_heads(cfg.rewards, encoder, turns, personas, seed=e.seed)
        for name, head in learned.items():
            head.save(out / "learned" / name)
    from convrl.rewards.judgement import train_human_judgement

    def calibration_scorer(cross_heads):  # the scorer RL will use, to fit its composite weights on ratings
        fluency = FluencyScorer(models.resolve_policy(cfg.models.policy)) if cfg.rewards.fluency else None
        return RewardScorer(encoder, clf, fluency, cfg.rewards.weights, learned={**learned, **cross_heads},
                            personality_style=cfg.rewards.personality_style)

    judged, judged_metrics, cross = train_human_judgement(cfg.rewards, encoder, enc_dir, out, seed=e.seed,
                                                          scorer_for_calibration=calibration_scorer)
    learned_metrics.update(judged_metrics)
    RewardBundle(encoder=cfg.models.encoder, weights=dict(cfg.rewards.weights), max_length=cfg.rewards.max_length,
                 batch_size=cfg.rewards.batch_size, encoder_precision=cfg.rewards.encoder_precision,
                 fluency_model=cfg.models.policy if cfg.rewards.fluency else None, emotion_label_kind=kind,
                 emotion_finetuned=bool(e.finetune_data), learned=sorted(set(learned) - set(cross)),
                 use_calibrated=cfg.rewards.calibrate, personality_style=cfg.rewards.personality_style,
                 **judged).save(out)
    curve = metrics.pop("loss_curve")
    scorer = RewardScorer(encoder, clf, None, cfg.rewards.weights, personality_style=cfg.rewards.personality_style)
    head_metrics = {f"emotion/{k}": v for k, v in metrics.items()}
    head_metrics["relevance/val_recall_at_1_of_10"] = relevance_recall_at_1(scorer, turns, "validation", seed=e.seed)
    head_metrics.update({k: float(v) for k, v in learned_metrics.items() if isinstance(v, (int, float))})
    head_metrics.update(finetuned_metrics)
    # Plain floats/ints: the summary is JSON, and numpy scalars would come back as strings.
    return {"metrics": {k: float(v) for k, v in head_metrics.items()}, "loss_curve": [float(x) for x in curve],
            "label_kind": kind, "encoder": str(enc_dir), "weights": dict(cfg.rewards.weights),
            "learned_heads": sorted(learned),
            "train_label_distribution": {str(k): int(v) for k, v in pd.Series(tr_y).value_counts().items()}}


def rewards_record(cfg: Config, parent_run_id: str, reward_dir: str) -> dict:
    """Log a reward step's metrics, params and emotion-head LoggedModel under ``parent_run_id`` (every run, cache
    hit or not); raise the input error the compute step deferred."""
    s = cached.read_summary(Path(reward_dir) / TRAINING_SUMMARY, "reward-model")
    with tracking.stage_run(parent_run_id, "reward_models", cfg.tracking.experiment) as run:
        cached.raise_deferred(s)
        for i, loss in enumerate(s["loss_curve"]):
            run.log_metrics({"emotion/train_loss_epoch": loss}, step=i)
        head_metrics = s["metrics"]
        run.log_metrics(head_metrics, parent=True)
        run.log_params({"emotion.label_kind": s["label_kind"], "encoder": s["encoder"],
                        "weights": json.dumps(s["weights"])})
        run.log_dict({"train_label_distribution": s["train_label_distribution"], "metrics": head_metrics},
                     "emotion/summary.json")
        uri = run.log_pyfunc("emotion_head", EmotionHeadModel(), {"head_dir": str(Path(reward_dir) / "emotion")},
                             metrics={k: v for k, v in head_metrics.items() if v == v})
        return {**head_metrics, "label_kind": s["label_kind"], "logged_model": uri,
                "learned_heads": s["learned_heads"]}


def rewards_stage(cfg: Config, parent_run_id: str, turns_path: str, reward_dir: str, personas_path: str = "") -> dict:
    """Train and log in one call (outside a pipeline)."""
    rewards_compute(cfg, turns_path, reward_dir, personas_path)
    return rewards_record(cfg, parent_run_id, reward_dir)
