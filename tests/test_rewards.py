import numpy as np
import pytest

from convrl import models
from convrl.rewards.emotion import EMOTIONS, EmotionClassifier, nrc_silver_label, train_emotion_head
from convrl.rewards.encoder import SentenceEncoder
from convrl.rewards.heads import HEADS, RewardHeadError, RewardScorer, is_degenerate
from convrl.rewards.text_signals import length_sanity, repetition_rate


@pytest.fixture(scope="module")
def minilm():
    return SentenceEncoder(models.resolve_encoder("all-minilm-l6-v2"))


@pytest.fixture(scope="module")
def scorer(minilm):
    return RewardScorer(minilm, None, None)


def test_nrc_silver_labels():
    assert nrc_silver_label("I am so happy and joyful today") == "happy"
    assert nrc_silver_label("my dog died and I cry") == "sad"
    assert nrc_silver_label("the table is made of wood") == "neutral"


def test_encoder_caches_and_normalises(minilm):
    a = minilm.encode(["hello there", "hello there", "general kenobi"])
    assert a.shape == (3, minilm.dim)
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-4)
    assert np.allclose(a[0], a[1])
    assert "general kenobi" in minilm._cache


def test_emotion_head_trains_and_roundtrips(tiny_encoder, tmp_path):
    texts = ["I am so happy", "what a joy", "great news, I love it", "I feel sad", "I miss her, I cry",
             "this is terrible and I am angry", "I hate this, furious", "the sky is blue", "it is a chair"] * 5
    labels = [nrc_silver_label(t) for t in texts]
    clf, metrics = train_emotion_head(tiny_encoder, texts, labels, texts[:9], labels[:9], epochs=40, lr=1e-2,
                                      hidden=16, progress=False)
    assert metrics["loss_curve"][-1] < metrics["loss_curve"][0]
    assert 0 <= metrics["val_macro_f1"] <= 1
    clf.save(tmp_path / "emo")
    back = EmotionClassifier.load(tmp_path / "emo", encoder=tiny_encoder)
    assert back.predict(texts[:4]) == clf.predict(texts[:4])
    assert set(back.labels) == set(EMOTIONS)


def test_simple_scorers():
    assert repetition_rate("the cat sat on the mat the cat sat on the mat the cat sat") > 0.3
    assert repetition_rate("a perfectly ordinary sentence with no repeats") == 0
    assert is_degenerate("") and is_degenerate("!!!! ???? ....") and not is_degenerate("Hi there")
    assert length_sanity("ok") < 1 and length_sanity("a reasonable reply of some words") == 1


def test_relevance_and_personality_prefer_the_right_reply(scorer, personas):
    ctx = [{"role": "user", "content": "My laptop will not turn on after the update, what should I do?"}]
    good = "Try holding the power button for ten seconds, then plug in the charger and restart the laptop."
    bad = "I love spicy ramen and playing the ukulele."
    expert = next(p for p in personas if p.persona_id == "calm_expert")
    out = scorer.score([ctx, ctx], [good, bad], [expert, expert])
    assert out.heads["relevance"][0] > out.heads["relevance"][1]
    guide = next(p for p in personas if p.persona_id == "cheerful_guide")
    out2 = scorer.score([ctx, ctx], [bad, good], [guide, guide])
    assert out2.heads["personality"][0] > out2.heads["personality"][1]


def test_appropriateness_follows_the_emotion_map(minilm, personas):
    class Sad:  # a stand-in detector isolates the tone head from the classifier's accuracy
        def predict(self, texts):
            return ["sad"] * len(texts)

    sc = RewardScorer(minilm, Sad(), None)
    ctx = [{"role": "user", "content": "My grandmother passed away last night."}]
    coach = personas[0]
    empathetic = "I'm so sorry for your loss. That must be incredibly painful; I'm here for you."
    cheerful = "Wow, fantastic! That's awesome, congratulations!"
    out = sc.score([ctx, ctx], [empathetic, cheerful], [coach, coach])
    assert out.details["appropriateness"][0] > out.details["appropriateness"][1]
    assert out.heads["quality"][0] > out.heads["quality"][1]


@pytest.mark.parametrize("response", ["", "word " * 10000, "Das ist eine sehr gute Frage, mein Freund.",
                                      "😀😀🎉🎉🔥", "   \n\t "])
def test_bad_input_gives_defined_scores(scorer, response):
    ctx = [{"role": "user", "content": "hello"}]
    out = scorer.score([ctx], [response], [None])
    for h in HEADS:
        assert np.isfinite(out.heads[h]).all() and 0 <= out.heads[h][0] <= 1
    assert np.isfinite(out.composite).all()


def test_degenerate_reply_scores_zero_quality(scorer):
    ctx = [{"role": "user", "content": "hello"}]
    out = scorer.score([ctx, ctx], ["", "Hello! How are you doing today?"], [None, None])
    assert out.heads["quality"][0] == 0 and out.heads["quality"][1] > 0


def test_failing_head_is_named(minilm):
    class Broken:
        def predict(self, texts):
            raise ValueError("boom")

    sc = RewardScorer(minilm, Broken(), None)
    with pytest.raises(RewardHeadError, match="'emotion'"):
        sc.score([[{"role": "user", "content": "hi"}]], ["hello"], [None])


def test_composite_uses_weights(scorer):
    heads = {"quality": np.array([1.0]), "personality": np.array([0.0]), "engagement": np.array([0.0]),
             "relevance": np.array([0.0])}
    assert scorer.composite(heads)[0] == pytest.approx(0.4)


def test_trl_reward_callables(scorer, personas):
    funcs, weights = scorer.trl_reward_funcs({p.persona_id: p for p in personas})
    assert [f.__name__ for f in funcs] == list(HEADS)
    assert weights == [0.4, 0.25, 0.2, 0.15]
    prompts = [[{"role": "system", "content": "be nice"}, {"role": "user", "content": "How are you?"}]] * 2
    completions = [[{"role": "assistant", "content": "Great, thanks! And you?"}],
                   [{"role": "assistant", "content": ""}]]
    vals = [f(prompts=prompts, completions=completions, persona_id=["empathetic_coach", "calm_expert"])
            for f in funcs]
    assert all(len(v) == 2 and all(isinstance(x, float) for x in v) for v in vals)
