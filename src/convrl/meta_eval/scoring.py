"""Scoring meta-eval items with the reward heads (untrained defaults, or the heads a pipeline run trained)."""

from __future__ import annotations

from convrl.rewards.human_data import score_items  # noqa: F401 - re-exported: meta-eval scores with it


def build_scorer(reward_dir: str = "", encoder: str = "all-minilm-l6-v2", fluency_model: str = "",
                 learned: bool = True, precision: str = "auto"):
    """The scorer a pipeline trained (``reward_dir``), else the untrained default heads on ``encoder``."""
    from convrl import models
    from convrl.rewards.encoder import load_encoder
    from convrl.rewards.heads import FluencyScorer, RewardScorer

    if reward_dir:
        from convrl.rewards.bundle import load_scorer

        return load_scorer(reward_dir, with_fluency=bool(fluency_model), learned=learned)
    fluency = FluencyScorer(models.resolve_policy(fluency_model)) if fluency_model else None
    return RewardScorer(load_encoder(models.resolve_encoder(encoder), precision=precision), None, fluency)
