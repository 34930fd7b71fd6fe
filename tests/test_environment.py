import numpy as np
import pytest

from convrl import models
from convrl.rewards.encoder import SentenceEncoder
from convrl.rewards.environment import ConversationEnvironment, EpisodeError, normalise_conversation
from convrl.rewards.heads import HEADS, RewardHeadError, RewardScorer


@pytest.fixture(scope="module")
def scorer():
    return RewardScorer(SentenceEncoder(models.resolve_encoder("all-minilm-l6-v2")), None, None)


def test_step_scores_every_head_and_updates_the_context(scorer, personas):
    seen = []

    def user(ctx, persona):
        seen.append((len(ctx), persona.persona_id))
        return "It was my driving test, I was so nervous."

    env = ConversationEnvironment(scorer, personas, user_simulator=user, max_turns=2)
    ctx = env.reset([{"role": "user", "content": "I failed my exam today."}], "empathetic_coach")
    assert ctx == [{"role": "user", "content": "I failed my exam today."}]
    reward, info = env.step("I'm so sorry, that sounds really disappointing. What happened?")
    assert set(info["heads"]) == set(HEADS)
    expected = sum(scorer.weights[h] * info["heads"][h] for h in HEADS) / sum(scorer.weights.values())
    assert reward == pytest.approx(expected, rel=1e-5)
    assert [m["role"] for m in info["context"]] == ["user", "assistant", "user"]
    assert info["user_turn"].startswith("It was my driving test")
    assert info["turn"] == 1 and not info["done"] and seen == [(2, "empathetic_coach")]
    assert set(info["details"]) >= {"fluency", "repetition", "appropriateness", "user_emotion"}
    _, info = env.step("Driving tests are stressful. Do you want to try again soon?")
    assert info["done"] and info["user_turn"] is None  # no simulated turn after the last step
    assert len(env.rewards) == 2
    with pytest.raises(EpisodeError, match="over"):
        env.step("one more")


def test_scores_use_the_context_before_the_reply(scorer):
    env = ConversationEnvironment(scorer)
    env.reset("My laptop will not turn on after the update, what should I do?")
    composite, heads = env.score_candidates(
        ["Hold the power button for ten seconds, then plug in the charger and restart the laptop.",
         "I love spicy ramen and playing the ukulele."])
    assert heads["relevance"][0] > heads["relevance"][1]
    assert len(env.context) == 1  # scoring candidates does not advance


def test_given_user_reply_and_context_window(scorer):
    env = ConversationEnvironment(scorer, max_context_messages=2)
    env.reset(["hi", "hello! how are you?", "great, I got a puppy!"], persona=["i love dogs.", "i am a vet."])
    assert env.persona is not None and env.persona.facts == ["i love dogs.", "i am a vet."]
    _, info = env.step("A puppy! What breed is it?", user_reply="A beagle.")
    assert info["context"][-1] == {"role": "user", "content": "A beagle."}
    env.observe_user("He is called Max.")
    assert env.context[-1]["content"] == "He is called Max." and len(env._visible()) == 2


def test_misuse_and_bad_input_are_clear(scorer, personas):
    env = ConversationEnvironment(scorer, personas)
    with pytest.raises(EpisodeError, match="reset"):
        env.step("hello")
    with pytest.raises(EpisodeError, match="unknown persona"):
        env.reset("hi", "nobody")
    with pytest.raises(EpisodeError, match="message 0"):
        normalise_conversation([{"role": "robot", "content": "x"}])
    env.reset("hi", None)  # no persona: the personality head scores neutrally, no crash
    for bad in ["", "😀😀🎉", "word " * 10000, None]:
        reward, info = env.step(bad)
        assert np.isfinite(reward) and all(0 <= v <= 1 for v in info["heads"].values())


def test_failing_head_is_named(scorer):
    class Broken:
        def predict(self, texts):
            raise ValueError("boom")

    env = ConversationEnvironment(RewardScorer(scorer.encoder, Broken(), None))
    env.reset("hi")
    with pytest.raises(RewardHeadError, match="'emotion'"):
        env.step("hello")
    assert env.context == [{"role": "user", "content": "hi"}]  # a failed step leaves the episode unchanged
