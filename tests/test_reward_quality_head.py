"""The learned quality head (``rewards.learned_heads: [quality]``): trains on replies in context, beats chance on
held-out items, saves and loads back, plugs into RewardScorer, and keeps the copy / degenerate gates."""

import numpy as np
import pytest

from convrl.config.base import ConfigError
from convrl.config.rewards import RewardsConfig
from convrl.rewards.heads import RewardScorer
from convrl.rewards.learned import load_learned
from convrl.rewards.quality_head import QualityHead, quality_items, train_quality_head
from tests.conftest import SHARED_DATA

TOPICS = {
    "My laptop will not start after the update.": ["Hold the power button and restart the laptop.",
                                                   "Try booting the laptop in safe mode after the update."],
    "What should I cook for dinner tonight?": ["A quick pasta with garlic makes a good dinner.",
                                               "Cook rice with vegetables for dinner tonight."],
    "My dog keeps barking at night.": ["Walk the dog before night so it sleeps instead of barking.",
                                       "A dog barking at night may be bored; try a longer walk."],
    "I failed my driving test again.": ["Many people fail the driving test twice; book another lesson.",
                                        "Practise the driving manoeuvres you failed and try the test again."],
}


def _items():
    items, k = [], 0
    topics = list(TOPICS)
    for t, (user, replies) in enumerate(TOPICS.items()):
        for rep in range(6):
            for r in replies:
                ctx = [{"role": "user", "content": user}]
                wrong = TOPICS[topics[(t + 1) % len(topics)]][rep % 2]
                items.append({"context": ctx, "response": r, "ratings": {"good": 1.0}, "group": f"g{k}", "source": "a"})
                items.append({"context": ctx, "response": wrong, "ratings": {"good": 0.0}, "group": f"g{k}",
                              "source": "b" if rep % 2 else "a"})
                k += 1
    return items


def test_quality_head_trains_roundtrips_and_scores(tiny_encoder, tmp_path):
    head, m = train_quality_head(tiny_encoder, _items(), seed=0)
    assert 0 <= m["dev_auc_mean"] <= 1 and m["train_items"] > 0 and m["C"] > 0
    head.save(tmp_path / "quality")
    back = load_learned(tmp_path / "quality")
    assert isinstance(back, QualityHead)
    sc = RewardScorer(tiny_encoder, None, None, learned={"quality": back})
    user = "What should I cook for dinner tonight?"
    ctx = [{"role": "user", "content": user}]
    replies = ["A quick pasta with garlic makes a good dinner.", user, "", "😀😀🎉", "word " * 3000]
    out = sc.score([ctx] * len(replies), replies, [None] * len(replies))
    q = out.heads["quality"]
    assert np.isfinite(q).all() and ((0 <= q) & (q <= 1)).all()
    assert q[1] == 0 and q[2] == 0  # a verbatim copy of the user, an empty reply
    assert "quality_untrained" in out.details
    alone = sc.score_head("quality", [ctx] * len(replies), replies, [None] * len(replies))
    assert np.allclose(alone, q, atol=1e-5)
    orig = head.score({"user": tiny_encoder.encode([user]), "context": tiny_encoder.encode([user]),
                       "response": tiny_encoder.encode(replies[:1]), "responses": replies[:1], "user_text": [user]})
    assert np.allclose(orig, q[:1], atol=1e-5)


def test_quality_head_separates_on_topic_replies_with_minilm():
    from convrl import models
    from convrl.rewards.encoder import SentenceEncoder

    enc = SentenceEncoder(models.resolve_encoder("all-minilm-l6-v2"))
    head, m = train_quality_head(enc, _items(), seed=0)
    assert m["dev_auc_mean"] > 0.8


def test_bad_training_data_is_refused(tiny_encoder):
    one_label = [dict(it, ratings={"good": 1.0}) for it in _items()]
    with pytest.raises(ValueError, match="learned quality head: need good and bad"):
        train_quality_head(tiny_encoder, one_label)
    with pytest.raises(ValueError, match="no training data"):
        quality_items()


def test_config_validates_learned_quality():
    RewardsConfig(learned_heads=["quality"], quality_data="/x/toxichat").validate()
    with pytest.raises(ConfigError, match="quality but no training data"):
        RewardsConfig(learned_heads=["quality"]).validate()
    with pytest.raises(ConfigError, match="unknown heads"):
        RewardsConfig(learned_heads=["charm"]).validate()


@pytest.mark.shared_data
def test_quality_items_use_training_sides_only():
    from convrl.rewards.human_data import held_out

    items = quality_items(toxichat=str(SHARED_DATA / "toxichat"), convai2=str(SHARED_DATA / "convai2_human_eval"),
                          dailydialog=str(SHARED_DATA / "dailydialog" / "convlab3_unified" / "data.zip"),
                          max_dialogues=50)
    by = {s: [it for it in items if it["source"] == s] for s in ("toxichat", "convai2", "dailydialog")}
    assert all(by.values())
    assert all(it["group"].startswith("toxichat-train-") for it in by["toxichat"])
    assert not any(held_out(it["group"], 0.3, 13) for it in by["convai2"])
    assert {it["ratings"]["good"] for it in by["dailydialog"]} == {0.0, 1.0}
