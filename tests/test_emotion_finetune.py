"""The fine-tuned multi-label emotion classifier: thresholds, Ekman grouping, training and save/load."""

import numpy as np
import pytest
from sklearn.metrics import f1_score

from convrl import models
from convrl.rewards.emotion_finetune import (GOEMOTIONS_EKMAN, THRESHOLD_GRID, FinetunedEmotionClassifier,
                                             FinetuneSettings, finetune_multilabel_emotion, group_probabilities,
                                             macro_f1, multi_hot, tune_thresholds)

GOEMOTIONS_28 = ("admiration amusement anger annoyance approval caring confusion curiosity desire disappointment "
                 "disapproval disgust embarrassment excitement fear gratitude grief joy love nervousness optimism "
                 "pride realization relief remorse sadness surprise neutral").split()


def test_tune_thresholds_matches_a_per_label_brute_force():
    rng = np.random.default_rng(0)
    y = (rng.random((300, 5)) < [0.02, 0.1, 0.3, 0.5, 0.0]).astype(np.float32)
    p = np.clip(y * 0.4 + rng.random((300, 5)) * 0.6, 0, 1)
    th = tune_thresholds(p, y)
    for j in range(5):
        best = max(f1_score(y[:, j], p[:, j] >= t, zero_division=0) for t in THRESHOLD_GRID)
        assert f1_score(y[:, j], p[:, j] >= th[j], zero_division=0) == pytest.approx(best)
    assert macro_f1(y, p >= th) >= macro_f1(y, p >= 0.5)
    with pytest.raises(ValueError, match="shape"):
        tune_thresholds(p, y[:, :3])


def test_ekman_grouping_covers_goemotions_and_takes_the_max():
    members = [m for ms in GOEMOTIONS_EKMAN.values() for m in ms]
    assert sorted(members) == sorted(GOEMOTIONS_28) and len(members) == 28  # each label in exactly one group
    p = np.zeros((2, 28), np.float32)
    p[0, GOEMOTIONS_28.index("annoyance")] = 0.7
    p[0, GOEMOTIONS_28.index("anger")] = 0.2
    p[1, GOEMOTIONS_28.index("curiosity")] = 0.9
    g, names = group_probabilities(p, GOEMOTIONS_28)
    assert names == list(GOEMOTIONS_EKMAN) and g.shape == (2, 7)
    assert g[0, names.index("anger")] == pytest.approx(0.7) and g[1, names.index("surprise")] == pytest.approx(0.9)
    with pytest.raises(ValueError, match="not among the labels"):
        group_probabilities(p[:, :5], GOEMOTIONS_28[:5])


def test_settings_are_validated():
    with pytest.raises(ValueError, match="precision"):
        FinetuneSettings(precision="fp8")
    with pytest.raises(ValueError):
        FinetuneSettings(epochs=0)


@pytest.mark.parametrize("precision", ["fp32", "auto"])
def test_finetune_learns_a_toy_task_and_roundtrips(tmp_path, precision):
    labels = ["happy", "sad", "neutral"]
    happy = ["what a great day", "i love this so much", "this is wonderful news", "so happy for you"]
    sad = ["i miss my dog", "this is so sad", "i lost my job", "i feel terrible today"]
    neutral = ["the meeting is at three", "it is a table", "the bus leaves at noon", "water boils at 100"]
    texts = (happy + sad + neutral) * 6
    ids = ([[0]] * 4 + [[1]] * 4 + [[2]] * 4) * 6
    s = FinetuneSettings(epochs=6, lr=1e-3, head_lr=1e-2, batch_size=8, precision=precision, warmup=0.0)
    logged = []
    clf, metrics = finetune_multilabel_emotion(texts, ids, texts[:12], ids[:12], labels,
                                               models.resolve_encoder("tiny-bert"), s, log=logged.append)
    assert metrics["steps"] == 6 * len(texts) // 8 and logged and "step" in logged[-1]
    assert metrics["dev_macro_f1_tuned"] >= metrics["dev_macro_f1_at_0.5"] - 1e-9
    assert metrics["dev_macro_f1_tuned"] > 0.8
    pred = clf.predict(texts[:12])
    assert macro_f1(multi_hot(ids[:12], 3), pred) > 0.8
    assert clf.predict_proba([]).shape == (0, 3)
    probs = clf.predict_proba(["", "😀", "word " * 500])  # bad input: defined probabilities
    assert np.isfinite(probs).all() and ((probs >= 0) & (probs <= 1)).all()
    clf.save(tmp_path / "emo")
    back = FinetunedEmotionClassifier.load(tmp_path / "emo")
    assert back.labels == labels and np.allclose(back.thresholds, clf.thresholds)
    assert np.allclose(back.predict_proba(texts[:12]), clf.predict_proba(texts[:12]), atol=1e-5)
    assert back.predict_labels(["what a great day"]) == clf.predict_labels(["what a great day"])


def test_finetune_refuses_empty_data():
    with pytest.raises(ValueError, match="training and dev"):
        finetune_multilabel_emotion([], [], ["x"], [[0]], ["a"], models.resolve_encoder("tiny-bert"))


def test_finetuned_classifier_plugs_into_the_reward_scorer(tiny_encoder):
    import torch

    from convrl.rewards.emotion import EMOTIONS
    from convrl.rewards.emotion_finetune import EKMAN_TO_CONVRL, PooledEncoderHead
    from convrl.rewards.heads import RewardScorer
    from transformers import AutoModel, AutoTokenizer

    d = models.resolve_encoder("tiny-bert")
    torch.manual_seed(0)
    for labels in (GOEMOTIONS_28, list(EKMAN_TO_CONVRL)):
        clf = FinetunedEmotionClassifier(AutoTokenizer.from_pretrained(d), PooledEncoderHead(AutoModel.from_pretrained(d),
                                         len(labels), 0.0), labels, np.full(len(labels), 0.5), precision="fp32")
        texts = ["I lost my job", "", "😀", "yay!"]
        emos = clf.predict_emotions(texts)
        assert len(emos) == 4 and set(emos) <= set(EMOTIONS) and clf.predict_emotions([]) == []
        sc = RewardScorer(tiny_encoder, clf.as_emotion_head(), None)
        out = sc.score([[{"role": "user", "content": t}] for t in texts], ["ok, tell me more"] * 4, [None] * 4)
        assert list(out.details["user_emotion"]) == emos


def _tiny_goemotions(root):
    """A few comments per label, in GoEmotions' TSV layout, 28-label and Ekman folders over the same comments."""
    from convrl.rewards.emotion_finetune import GOEMOTIONS_EKMAN

    ekman_names = list(GOEMOTIONS_EKMAN)
    to_ekman = {m: g for g, ms in GOEMOTIONS_EKMAN.items() for m in ms}
    rows = [(f"comment {i} about {lab}", GOEMOTIONS_28.index(lab), ekman_names.index(to_ekman[lab]))
            for i in range(3) for lab in GOEMOTIONS_28]
    for sub, col in (("original", 1), ("ekman", 2)):
        d = root / sub
        d.mkdir(parents=True)
        (d / "labels.txt").write_text("\n".join(GOEMOTIONS_28 if sub == "original" else ekman_names) + "\n")
        for split in ("train", "dev", "test"):
            (d / f"{split}.tsv").write_text("".join(f"{r[0]}\t{r[col]}\tid{k}\n" for k, r in enumerate(rows)))
    return root / "original"


def test_reward_stage_fine_tunes_and_load_scorer_uses_it(tiny_cfg, ingested, mlflow_store, tmp_path):
    from convrl import stages
    from convrl.config import load_config
    from convrl.rewards.emotion import EMOTIONS
    from convrl.rewards.emotion_finetune import _EmotionHeadAdapter
    from convrl.rewards.bundle import load_scorer
    from convrl.stages.rewards import rewards_stage

    folder = _tiny_goemotions(tmp_path / "goemotions")
    cfg = load_config("tiny", [f"rewards.emotion.finetune_data={folder}", "rewards.emotion.finetune_epochs=1"])
    ingested.turns.to_parquet(tmp_path / "turns.parquet", index=False)
    out = rewards_stage(cfg, stages.begin(cfg, "emotion-finetune"), str(tmp_path / "turns.parquet"),
                        str(tmp_path / "rewards"))
    for k in ("emotion_finetuned/test_macro_f1", "emotion_finetuned/test_macro_f1_ekman_from_labels",
              "emotion_finetuned/train_seconds"):
        assert 0 <= out[k] < float("inf"), k
    sc = load_scorer(str(tmp_path / "rewards"), with_fluency=False)
    assert isinstance(sc.emotion, _EmotionHeadAdapter)
    res = sc.score([[{"role": "user", "content": "comment 1 about grief"}]], ["I'm sorry."], [None])
    assert res.details["user_emotion"][0] in EMOTIONS
    # Without the key the stage is unchanged: the frozen-encoder head only.
    assert not tiny_cfg.rewards.emotion.finetune_data
