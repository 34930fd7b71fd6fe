"""Learned reward heads: each beats a trivial baseline on held-out data (small capped subsets, real MiniLM),
saves and loads back, and plugs into RewardScorer / the reward stage."""
import json

import numpy as np
import pytest

from convrl import models
from convrl.rewards.encoder import load_encoder
from convrl.rewards.heads import RewardScorer
from convrl.rewards.learned import PairHead, load_learned, recall_at_k, train_pair_head
from tests.conftest import SHARED_DATA


@pytest.fixture(scope="module")
def minilm():
    import torch

    # Encoding-bound tests: on a shared 2-core machine two OpenMP threads stall whenever another job holds a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield load_encoder(models.resolve_encoder("all-minilm-l6-v2"))
    torch.set_num_threads(threads)


def test_recall_counts_ties_fairly():
    a = np.ones((20, 4), np.float32)
    assert recall_at_k(lambda x, y: np.zeros(len(x)), a, a, k=10) == pytest.approx(0.1)


def test_pair_head_learns_and_roundtrips(tmp_path):
    rng = np.random.default_rng(0)
    # b is a rotated copy of a: cosine alone cannot match pairs, the towers can learn the rotation.
    a = rng.normal(size=(600, 16)).astype(np.float32)
    rot = np.linalg.qr(rng.normal(size=(16, 16)))[0].astype(np.float32)
    b = a @ rot + 0.1 * rng.normal(size=a.shape).astype(np.float32)
    norm = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    a, b = norm(a), norm(b)
    head, m = train_pair_head("relevance", a[:500], b[:500], epochs=30, lr=3e-3, hidden=64, seed=0)
    assert m["val_loss_best"] < m["val_loss_untrained"]
    learned = recall_at_k(head.pair_scores, a[500:], b[500:], k=10)
    cosine = recall_at_k(lambda x, y: (x * y).sum(1), a[500:], b[500:], k=10)
    assert learned > max(0.5, cosine + 0.2)
    p = head.pair_scores(a[500:], b[500:])
    assert ((0 <= p) & (p <= 1)).all()
    head.save(tmp_path / "rel")
    back = load_learned(tmp_path / "rel")
    assert isinstance(back, PairHead) and np.allclose(back.pair_scores(a[:5], b[:5]), head.pair_scores(a[:5], b[:5]))


@pytest.mark.shared_data
def test_relevance_head_on_dailydialog(minilm):
    from convrl.rewards.corpora import dailydialog_dialogues
    from convrl.rewards.training import train_relevance

    zip_path = SHARED_DATA / "dailydialog" / "convlab3_unified" / "data.zip"
    train = [d["turns"] for d in dailydialog_dialogues(zip_path, "train")[:20]]
    test = [d["turns"] for d in dailydialog_dialogues(zip_path, "test")[:10]]
    head, m = train_relevance(minilm, train, test, max_pairs=100, max_test=50, epochs=4)
    assert m["test_recall_at_1_of_10"] > 0.3  # chance is 0.1
    assert m["test_recall_at_1_of_10"] >= m["test_recall_at_1_of_10_untrained_cosine"] - 0.1


@pytest.mark.shared_data
def test_personality_head_on_personachat(minilm):
    from convrl.rewards.corpora import personachat_dialogues
    from convrl.rewards.training import train_personality

    train = personachat_dialogues(SHARED_DATA / "personachat", "valid")[:16]
    test = personachat_dialogues(SHARED_DATA / "personachat", "test")[:8]
    _, m = train_personality(minilm, train, test, max_pairs=200, epochs=4)
    assert m["test_auc_random"] > 0.6 and m["test_auc_partner"] > 0.55  # chance is 0.5


@pytest.mark.shared_data
def test_engagement_head_on_human_ratings(minilm):
    from convrl.rewards.human_data import convai2_items
    from convrl.rewards.training import train_engagement

    items, _ = convai2_items(SHARED_DATA / "convai2_human_eval", max_items=200, per_dialogue=1)
    head, m = train_engagement(minilm, items, {"convai2": "dialogue_score"})
    # Held-out dialogues: the regressor ranks bot replies by their dialogue's human score better than a
    # constant (0) and than the untrained engagement signals (~0 on ConvAI2).
    assert m["test_spearman_convai2/dialogue_score_learned"] > 0.1
    assert m["test_spearman_convai2/dialogue_score_learned"] > m["test_spearman_convai2/dialogue_score_untrained"]
    assert 0 <= head.score({"context": np.zeros((1, minilm.dim), np.float32),
                            "response": np.zeros((1, minilm.dim), np.float32), "responses": ["hi"]})[0] <= 1


@pytest.mark.shared_data
def test_emotion_head_on_goemotions(minilm):
    from sklearn.metrics import f1_score

    from convrl.rewards.corpora import goemotions_split
    from convrl.rewards.emotion import multi_hot, train_multilabel_head

    folder = SHARED_DATA / "goemotions" / "ekman"
    (x, y, names), (dx, dy, _), (tx, ty, _) = (goemotions_split(folder, s) for s in ("train", "dev", "test"))
    clf, _ = train_multilabel_head(minilm.encode(x[:300]), multi_hot(y[:300], 7), minilm.encode(dx[:100]),
                                   multi_hot(dy[:100], 7), names, hidden=64, epochs=20)
    y_test = multi_hot(ty[:150], 7)
    f1 = f1_score(y_test, clf.predict(minilm.encode(tx[:150])), average="macro", zero_division=0)
    always_neutral = np.zeros_like(y_test)
    always_neutral[:, names.index("neutral")] = 1
    assert f1 > f1_score(y_test, always_neutral, average="macro", zero_division=0) + 0.1


def test_learned_heads_in_the_scorer_and_stage_roundtrip(tiny_encoder, tiny_cfg, ingested, tmp_path):
    from convrl.rewards.training import train_configured_heads
    from convrl.rewards.bundle import load_scorer

    rc = tiny_cfg.rewards
    rc = type(rc)(**{**vars(rc), "learned_heads": ["relevance", "engagement"], "learned_max_pairs": 300,
                     "learned_epochs": 2})
    heads, metrics = train_configured_heads(rc, tiny_encoder, ingested.turns)
    assert set(heads) == {"relevance", "engagement"}
    assert "relevance/test_recall_at_1_of_10" in metrics and "engagement/test_items" in metrics
    sc = RewardScorer(tiny_encoder, None, None, learned=heads)
    ctx = [{"role": "user", "content": "hello, how are you?"}]
    out = sc.score([ctx, ctx], ["I am fine, thanks! And you?", ""], [None, None])
    assert {"relevance_untrained", "engagement_untrained"} <= set(out.details)
    assert all(((0 <= v) & (v <= 1)).all() for v in out.heads.values())
    # What load_scorer rebuilds from a reward dir written by the stage.
    for name, h in heads.items():
        h.save(tmp_path / "learned" / name)
    from convrl.rewards.bundle import RewardBundle

    RewardBundle(encoder="tiny-bert", weights=sc.weights, max_length=128, batch_size=64, fluency_model=None,
                 encoder_precision="fp32", learned=sorted(heads)).save(tmp_path)
    from convrl.rewards.emotion import EMOTIONS, EmotionClassifier, EmotionHead

    EmotionClassifier(tiny_encoder, EmotionHead(tiny_encoder.dim, len(EMOTIONS), 8), EMOTIONS, 8).save(tmp_path / "emotion")
    back = load_scorer(str(tmp_path))
    assert set(back.learned) == {"relevance", "engagement"}
    again = back.score([ctx, ctx], ["I am fine, thanks! And you?", ""], [None, None])
    assert np.allclose(again.heads["relevance"], out.heads["relevance"], atol=1e-5)
    assert not load_scorer(str(tmp_path), learned=False).learned
    with pytest.raises(ValueError, match="unknown"):
        train_configured_heads(type(rc)(**{**vars(rc), "learned_heads": ["charm"]}), tiny_encoder, ingested.turns)


def test_pair_head_stays_finite_on_degenerate_embeddings():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(1, 8)).astype(np.float32)
    a = base + 1e-3 * rng.normal(size=(60, 8)).astype(np.float32)  # a random encoder: every cosine ~0.99
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    head, _ = train_pair_head("relevance", a, a[::-1].copy(), epochs=2, hidden=8)
    assert np.isfinite(head.pair_scores(a, a)).all()
