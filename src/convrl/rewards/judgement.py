"""What the reward stage trains on human judgement: cross-encoder heads, the dialogue judge, the safety
judge, and calibrated composite weights (each only when ``rewards.*`` names its data).

``train_human_judgement(rc, encoder, encoder_dir, out_dir)`` writes ``cross/``,
``dialogue/`` and ``safety/`` under ``out_dir`` and returns
``(config_entries, metrics, learned_heads)``: the entries go into ``reward_config.json`` so
``stages.rewards.load_scorer`` rebuilds the same scorer; the metrics are
measured on held-out data only::

    entries, metrics, heads = train_human_judgement(cfg.rewards, encoder, enc_dir, reward_dir,
                                             scorer_for_calibration=lambda heads: RewardScorer(...))
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def calibration_items(rc, max_items: int = 600, seed: int = 13) -> list[dict]:
    """Training-side rated replies of ``rewards.engagement_data`` (the held-out dialogues never calibrate)."""
    from convrl.rewards.human_data import convai2_items, held_out, satisfaction_items

    items = []
    for p in rc.engagement_data:
        path = Path(p)
        fn = convai2_items if (path.is_dir() and any(path.glob("*.json"))) else satisfaction_items
        got = fn(path, per_dialogue=2, seed=seed)[0]
        items += [it for it in got if not held_out(it["group"], 0.3, 13)][:max_items // max(1, len(rc.engagement_data))]
    return items


def calibrate(scorer, items: list[dict]) -> tuple[dict[str, float], dict[str, float]]:
    """Weights fitted on the items' turn-level rating (ConvAI2 thumb, else the dialogue score / satisfaction)."""
    from convrl.rewards.human_data import score_items
    from convrl.rewards.calibrate import fit_weights
    from convrl.rewards.heads import HEADS

    keep, y, src = [], [], []
    for it in items:
        r = it["ratings"]
        key = next((k for k in ("thumb", "satisfaction", "dialogue_score") if k in r), None)
        if key:
            keep.append(it)
            y.append(r[key])
            src.append(f"{it['group'].split('-')[0]}:{key}")
    scores = score_items(scorer, keep)
    weights = fit_weights({h: scores[h] for h in HEADS}, np.array(y), np.array(src))
    return weights, {"calibration_items": float(len(keep)), **{f"calibrated_weight_{h}": w for h, w in weights.items()}}


def train_human_judgement(rc, encoder, encoder_dir: str, out_dir: str | Path, seed: int = 13,
                          scorer_for_calibration=None, log=print) -> tuple[dict, dict[str, float], dict]:
    """Train what the config asks for; ``scorer_for_calibration(learned_heads)`` builds the scorer to calibrate.

    Returns the ``reward_config.json`` entries, the metrics and the cross-encoder heads (``RewardScorer``'s
    ``learned``)."""
    out = Path(out_dir)
    entries, metrics, learned = {}, {}, {}
    if rc.cross_heads:
        from convrl.rewards.cross_encoder import CrossSettings, train_cross_encoder
        from convrl.rewards.cross_training import cross_examples

        train, dev, counts = cross_examples(rc, seed=seed, max_dev=600)
        model, m = train_cross_encoder(train, dev, encoder_dir, CrossSettings(
            max_steps=rc.cross_steps, batch_size=16, max_length=rc.cross_max_length, eval_every=max(1, rc.cross_steps // 4),
            seed=seed), log=log)
        model.save(out / "cross")
        entries["cross"] = sorted(rc.cross_heads)
        learned = {h: head for h, head in model.as_heads().items() if h in rc.cross_heads}
        metrics.update({f"cross/{k}": float(v) for k, v in {**m, **counts}.items() if isinstance(v, (int, float))})
    if rc.dialogue_data:
        from convrl.rewards.dialogue import rated_dialogues, train_dialogue_judge
        from convrl.rewards.reaction_encoder import reaction_fitter

        fit, folds = reaction_fitter(rc.reaction_model, encoder_dir, rc.reaction_epochs, seed, log)
        judge, m = train_dialogue_judge(encoder, rated_dialogues(rc.dialogue_data, rc.dialogue_max_per_source),
                                        seed=seed, reaction_fit=fit, reaction_folds=folds)
        judge.save(out / "dialogue")
        entries["dialogue_judge"] = True
        metrics.update({f"dialogue_judge/{k}": float(v) for k, v in m.items()})
    if rc.safety_data:
        from convrl.rewards.safety import pairwise_accuracy, train_safety_judge

        judge, m = train_safety_judge(rc.safety_data)
        hh = Path(rc.safety_data).parent / "hh_rlhf"
        if (hh / "harmless-base").is_dir():  # measured on data it never saw, where the folder is there too
            acc = pairwise_accuracy(judge.score, hh)
            m.update({"hh_rlhf_pairwise_accuracy": acc["accuracy"], "hh_rlhf_ci_low": acc["ci"][0],
                      "hh_rlhf_ci_high": acc["ci"][1]})
            judge.metrics = m
        judge.save(out / "safety")
        entries["safety_judge"] = True
        metrics.update({f"safety/{k}": float(v) for k, v in m.items()})
    if rc.calibrate:
        if scorer_for_calibration is None:
            raise ValueError("rewards.calibrate: no scorer to calibrate")
        weights, m = calibrate(scorer_for_calibration(learned), calibration_items(rc, seed=seed))
        entries["calibrated_weights"] = weights
        metrics.update(m)
    return entries, metrics, learned
