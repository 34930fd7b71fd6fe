"""Bad input gets defined scores from every head, through every entry point; a failing head is named.

Every head is live here (unlike the cheaper tests in test_rewards.py, which run
without the fluency LM and the emotion classifier): the tiny encoder, an
emotion classifier, the fluency LM (tiny Llama) and all three learned heads.
Each bad input goes through ``RewardScorer.score``, ``ConversationEnvironment.step``
and the TRL reward callables.
"""

import numpy as np
import pytest

from convrl.rewards.emotion import EMOTIONS, EmotionClassifier, EmotionHead
from convrl.rewards.environment import ConversationEnvironment
from convrl.rewards.fluency import FluencyScorer
from convrl.rewards.heads import HEADS, RewardHeadError, RewardScorer
from convrl.rewards.learned import PairHead, PairTowers, engagement_features, train_engagement_regressor

BAD_RESPONSES = {
    "empty": "",
    "whitespace": "   \n\t ",
    "10k_tokens_words": "word " * 10_000,
    "10k_tokens_no_spaces": "abc" * 10_000,
    "german": "Das ist eine sehr gute Frage, mein Freund. Wie geht es dir heute?",
    "chinese": "你好，我今天很难过，因为我的狗死了。",
    "arabic": "مرحبا، كيف حالك اليوم؟",
    "russian_japanese": "Привет! 元気ですか？",
    "emoji_only": "😀😀🎉🎉🔥",
    "emoji_10k": "🔥" * 10_000,
    "control_chars": "\x00\x1b[31m\u200b\ufeff",
}
BAD_CONTEXTS = {
    "normal": [{"role": "user", "content": "I lost my job today."}],
    "empty_user": [{"role": "user", "content": ""}],
    "long_user": [{"role": "user", "content": "please " * 10_000}],
    "emoji_user": [{"role": "user", "content": "😭😭😭"}],
    "non_english_user": [{"role": "user", "content": "我今天很难过"}],
    "system_only": [{"role": "system", "content": "Be kind."}],
    "no_messages": [],
}


class _Fixed:
    """A learned head that returns a fixed array (or raises)."""

    def __init__(self, value=None, exc=None):
        self.value, self.exc = value, exc

    def score(self, inputs):
        if self.exc:
            raise self.exc
        return np.full(len(inputs["responses"]), self.value, dtype=np.float32)


@pytest.fixture(scope="module")
def full_scorer(tiny_encoder, tiny_policy_dir):
    """Every head live: emotion classifier, fluency LM and all three learned heads."""
    import torch

    torch.manual_seed(0)
    dim = tiny_encoder.dim
    emotion = EmotionClassifier(tiny_encoder, EmotionHead(dim, len(EMOTIONS), 8), EMOTIONS, 8)
    rng = np.random.default_rng(0)
    c, r = rng.normal(size=(30, dim)).astype(np.float32), rng.normal(size=(30, dim)).astype(np.float32)
    texts = [f"reply number {i}?" if i % 2 else f"ok {i}" for i in range(30)]
    engagement, _ = train_engagement_regressor(engagement_features(c, r, texts), rng.normal(size=30))
    learned = {"relevance": PairHead("relevance", PairTowers(dim, 16), 16),
               "personality": PairHead("personality", PairTowers(dim, 16), 16),
               "engagement": engagement}
    return RewardScorer(tiny_encoder, emotion, FluencyScorer(tiny_policy_dir), learned=learned)


def _check_heads(heads: dict, n: int):
    assert set(heads) >= set(HEADS)
    for h in HEADS:
        v = np.asarray(heads[h], dtype=float)
        assert v.shape == (n,) and np.isfinite(v).all() and ((v >= 0) & (v <= 1)).all(), (h, v)


@pytest.mark.parametrize("name", sorted(BAD_RESPONSES))
def test_bad_responses_via_score(full_scorer, personas, name):
    resp = BAD_RESPONSES[name]
    ctx = BAD_CONTEXTS["normal"]
    out = full_scorer.score([ctx, ctx], [resp, resp], [personas[0], None])  # with and without a persona
    _check_heads(out.heads, 2)
    assert np.isfinite(out.composite).all()
    for k in ("fluency", "repetition", "appropriateness", "relevance_untrained", "personality_untrained",
              "engagement_untrained"):
        assert np.isfinite(out.details[k].astype(float)).all(), k
    assert all(e in EMOTIONS for e in out.details["user_emotion"])


@pytest.mark.parametrize("name", sorted(BAD_CONTEXTS))
def test_bad_contexts_via_score(full_scorer, name):
    ctx = BAD_CONTEXTS[name]
    out = full_scorer.score([ctx], ["I'm here for you. What happened?"], [None])
    _check_heads(out.heads, 1)
    assert np.isfinite(out.composite).all()


def test_one_batch_mixing_every_bad_input(full_scorer, personas):
    """Bad items must not poison the good ones in the same batch (shared prefix, padding, sorting)."""
    resps = list(BAD_RESPONSES.values()) + ["That sounds hard. Do you want to talk about it?"]
    ctxs = [BAD_CONTEXTS["normal"]] * len(resps)
    out = full_scorer.score(ctxs, resps, [None] * len(resps))
    _check_heads(out.heads, len(resps))
    alone = full_scorer.score(ctxs[-1:], resps[-1:], [None])
    for h in HEADS:
        assert out.heads[h][-1] == pytest.approx(alone.heads[h][0], abs=2e-2)


@pytest.mark.parametrize("name", sorted(BAD_RESPONSES))
def test_bad_responses_via_environment_step(full_scorer, personas, name):
    for persona in (personas[1], None):  # a card, and a missing persona
        env = ConversationEnvironment(full_scorer, personas)
        env.reset(BAD_CONTEXTS["normal"], persona)
        reward, info = env.step(BAD_RESPONSES[name])
        assert np.isfinite(reward)
        _check_heads({h: [v] for h, v in info["heads"].items()}, 1)
        assert info["context"][-1] == {"role": "assistant", "content": BAD_RESPONSES[name]}


def test_bad_user_turns_via_environment(full_scorer):
    env = ConversationEnvironment(full_scorer, user_simulator=lambda ctx, persona: "😀" * 50)
    env.reset(BAD_CONTEXTS["emoji_user"], None)
    for resp in ("", "你好", "word " * 10_000):
        reward, info = env.step(resp)
        assert np.isfinite(reward)
        _check_heads({h: [v] for h, v in info["heads"].items()}, 1)


def test_bad_responses_via_trl_callables(full_scorer, personas):
    funcs, weights = full_scorer.trl_reward_funcs({p.persona_id: p for p in personas})
    resps = list(BAD_RESPONSES.values())
    prompts = [[{"role": "user", "content": "How are you?"}]] * len(resps)
    completions = [[{"role": "assistant", "content": r}] for r in resps]
    n = len(resps)
    columns = [
        {"persona_id": [personas[0].persona_id] * n},        # a card
        {},                                                   # no persona column at all
        {"persona_id": [None] * n},                           # missing per row
        {"persona_id": ["no-such-persona"] * n},             # an id without a card: scored as no persona
    ]
    for kw in columns:
        vals = [f(prompts=prompts, completions=completions, **kw) for f in funcs]
        for head, v in zip(HEADS, vals):
            assert len(v) == n and all(isinstance(x, float) and np.isfinite(x) and 0 <= x <= 1 for x in v), head
    # Plain-string prompts and completions (TRL's non-conversational format) too.
    vals = [f(prompts=["hi"] * n, completions=resps) for f in funcs]
    assert all(np.isfinite(v).all() for v in vals)


# ------------------------------------------------------------------ a failing head is named, never a silent 0

class _BrokenFluency:
    def mean_logprob(self, user_texts, responses):
        raise RuntimeError("LM out of memory")


class _BrokenEncoder:
    def __init__(self, inner):
        self.inner, self.dim, self.broken = inner, inner.dim, False

    def encode(self, texts):
        if self.broken:
            raise RuntimeError("tokenizer crashed")
        return self.inner.encode(texts)


def _broken(full_scorer, what):
    enc, emo, flu, learned = full_scorer.encoder, full_scorer.emotion, full_scorer.fluency, dict(full_scorer.learned)
    if what == "quality":
        flu = _BrokenFluency()
    elif what == "encoder":
        enc = _BrokenEncoder(enc)
    elif what == "engagement":
        learned["engagement"] = _Fixed(value=np.nan)                 # a non-finite score is an error too
    else:
        learned[what] = _Fixed(exc=ValueError(f"{what} weights corrupt"))
    sc = RewardScorer(enc, emo, flu, learned=learned)
    if what == "encoder":
        enc.broken = True  # after the constructor encoded the tone prototypes
    return sc


@pytest.mark.parametrize("head", ["quality", "encoder", "relevance", "personality", "engagement"])
def test_failing_head_raises_naming_it_everywhere(full_scorer, personas, head):
    ctx = BAD_CONTEXTS["normal"]
    with pytest.raises(RewardHeadError, match=f"'{head}'"):
        _broken(full_scorer, head).score([ctx], ["hello there"], [personas[0]])
    env = ConversationEnvironment(_broken(full_scorer, head), personas)
    env.reset(ctx, personas[0])
    with pytest.raises(RewardHeadError, match=f"'{head}'"):
        env.step("hello there")
    assert env.context == ctx  # a failed step leaves the episode unchanged
    funcs, _ = _broken(full_scorer, head).trl_reward_funcs({p.persona_id: p for p in personas})
    for f in funcs:  # every callable raises (none returns a 0 for the batch another head broke)
        with pytest.raises(RewardHeadError, match=f"'{head}'"):
            f(prompts=[ctx], completions=[[{"role": "assistant", "content": "hello there"}]],
              persona_id=[personas[0].persona_id])
