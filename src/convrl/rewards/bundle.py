"""The reward bundle: everything a later stage needs to rebuild the reward model the reward stage trained.

A bundle directory holds ``reward_bundle.json`` (this dataclass) beside the trained heads
(``emotion/``, ``emotion_finetuned/``, ``learned/<head>/``, ``cross/``, ``dialogue/``, ``safety/``). The reward stage writes it; RL,
evaluation, meta-eval and monitoring read it back::

    bundle = RewardBundle.load(reward_dir)
    scorer = bundle.scorer(reward_dir)          # or load_scorer(reward_dir)
    bundle.weights["quality"], bundle.learned   # what the composite is made of
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from convrl import models
from convrl.artifact_io import load_json, save_json
from convrl.rewards.emotion import EmotionClassifier
from convrl.rewards.encoder import SentenceEncoder
from convrl.rewards.heads import FluencyScorer, RewardScorer

BUNDLE_FILE = "reward_bundle.json"
LEGACY_FILE = "reward_config.json"  # bundles written before the typed artifact existed


@dataclass
class RewardBundle:
    encoder: str
    weights: dict[str, float]
    max_length: int = 128
    batch_size: int = 64
    # Bundles written before encoder_precision existed were scored in fp32.
    encoder_precision: str = "fp32"
    fluency_model: str | None = None
    emotion_label_kind: str = ""
    emotion_finetuned: bool = False
    learned: list[str] = field(default_factory=list)
    # Trained on human judgement (rewards.judgement): heads served by the cross-encoder in cross/, the
    # dialogue judge in dialogue/, the safety judge in safety/, and composite weights fitted on ratings.
    cross: list[str] = field(default_factory=list)
    dialogue_judge: bool = False
    safety_judge: bool = False
    calibrated_weights: dict[str, float] = field(default_factory=dict)
    use_calibrated: bool = False
    # The personality head's style term (rewards.personality_style, off by default; older bundles had none).
    personality_style: bool = False

    def save(self, reward_dir: str | Path) -> Path:
        return save_json(self, Path(reward_dir) / BUNDLE_FILE)

    @classmethod
    def load(cls, reward_dir: str | Path) -> RewardBundle:
        root = Path(reward_dir)
        path = root / BUNDLE_FILE if (root / BUNDLE_FILE).exists() else root / LEGACY_FILE
        hint = ("a reward bundle: pass the reward_models output of the reward stage (`convrl run` writes it under "
                "the run's outputs)")
        return load_json(cls, path if path.exists() else root / BUNDLE_FILE, hint)

    def scorer(self, reward_dir: str | Path, with_fluency: bool = True, learned: bool = True) -> RewardScorer:
        """The ``RewardScorer`` the reward stage packaged; ``learned=False`` leaves out the learned heads."""
        root = Path(reward_dir)
        encoder = SentenceEncoder(models.resolve_encoder(self.encoder), max_length=self.max_length,
                                  batch_size=self.batch_size, precision=self.encoder_precision)
        clf = EmotionClassifier.load(root / "emotion", encoder=encoder)
        if self.emotion_finetuned:  # the fine-tuned GoEmotions classifier detects the user's emotion
            from convrl.rewards.emotion_finetune import FinetunedEmotionClassifier

            clf = FinetunedEmotionClassifier.load(root / "emotion_finetuned").as_emotion_head()
        fluency = FluencyScorer(models.resolve_policy(self.fluency_model)) if with_fluency and self.fluency_model \
            else None
        heads = {}
        if learned:
            from convrl.rewards.learned import load_learned

            heads = {name: load_learned(root / "learned" / name) for name in self.learned}
            if self.cross:
                from convrl.rewards.cross_encoder import CrossEncoderHeads

                heads.update({h: v for h, v in CrossEncoderHeads.load(root / "cross").as_heads().items()
                              if h in self.cross})
        weights = self.calibrated_weights if self.use_calibrated and self.calibrated_weights else self.weights
        return RewardScorer(encoder, clf, fluency, weights, learned=heads, personality_style=self.personality_style)

    def safety(self, reward_dir: str | Path):
        """The safety judge the stage trained (``rewards.safety_data``), else None."""
        from convrl.rewards.safety import SafetyJudge

        return SafetyJudge.load(Path(reward_dir) / "safety") if self.safety_judge else None

    def dialogue(self, reward_dir: str | Path):
        """The dialogue-level judge the stage trained (``rewards.dialogue_data``), else None."""
        from convrl.rewards.dialogue import DialogueJudge

        return DialogueJudge.load(Path(reward_dir) / "dialogue") if self.dialogue_judge else None


def load_scorer(reward_dir: str | Path, with_fluency: bool = True, learned: bool = True) -> RewardScorer:
    """The scorer a reward bundle directory describes (see ``RewardBundle.scorer``)."""
    return RewardBundle.load(reward_dir).scorer(reward_dir, with_fluency=with_fluency, learned=learned)
