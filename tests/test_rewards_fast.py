"""The batched reward path must equal the simple one: fluency fast paths, score_head, context text."""
import numpy as np
import pytest
import torch

from convrl import models
from convrl.rewards.encoder import SentenceEncoder
from convrl.rewards.fluency import FluencyScorer
from convrl.rewards.heads import HEADS, RewardScorer, recent_context


def test_fluency_fast_paths_equal_the_reference(tiny_policy_dir):
    f = FluencyScorer(tiny_policy_dir, dtype=torch.float32, batch_size=3)
    users = ["hi there"] * 4 + ["tell me a long story about dragons", "x", "hi there"]
    replies = ["hello, how are you?", "", "I am a robot and I like long replies with many words in them", "ok",
               "once upon a time", "yes", "😀"]
    fast = f.mean_logprob(users, replies)  # a shared-prefix group and lone replies
    assert np.allclose(fast, f.mean_logprob_reference(users, replies), atol=1e-4)
    assert fast[1] == -10.0  # an empty reply gets the worst fluency, not NaN
    assert f.mean_logprob([], []).shape == (0,)  # nothing to score is no error
    f.share_prefix = False
    assert np.allclose(f.mean_logprob(users, replies), fast, atol=1e-4)


def test_fluency_common_prefix_path_equals_the_reference(tiny_policy_dir):
    # The evaluation's shape: persona system prompts shared by many prompts, some answered twice (two models),
    # and one conversation's turns scored each in its context (a context is the next one's prefix).
    f = FluencyScorer(tiny_policy_dir, dtype=torch.float32, batch_size=4)
    card = "You are Sam, a calm and patient coach who listens first, asks one question at a time " * 3
    other = "You are Ada, a cheerful guide who loves hiking, maps and bad puns about mountains " * 3
    talk = [{"role": "user", "content": "I failed my exam today"}, {"role": "assistant", "content": "That hurts."},
            {"role": "user", "content": "What now?"}]
    contexts = ([[{"role": "system", "content": card}, {"role": "user", "content": u}]
                 for u in ("hi", "I feel sad", "tell me about your day", "hi")]
                + [[{"role": "system", "content": other}] + talk[:n] for n in (1, 3)]
                + [[{"role": "system", "content": other}, {"role": "user", "content": "hello"}], "a lone string"])
    replies = ["Hello! How are you?", "I'm sorry. Do you want to talk?", "", "Hi again, good to see you.",
               "Exams can be retaken.", "Make a plan for the retake, one step at a time.", "Hey!", "ok"]
    calls = []
    real = f._score_common
    f._score_common = lambda cluster, shared, *a: (calls.append((len(cluster), shared)), real(cluster, shared, *a))
    fast = f.mean_logprob(contexts, replies)
    assert np.allclose(fast, f.mean_logprob_reference(contexts, replies), atol=1e-4)
    assert fast[2] == -10.0
    # Sam's three distinct contexts share his card; Ada's three share hers (one cluster each); the string is alone.
    assert sorted(c for c, _ in calls) == [3, 3] and all(s >= 32 for _, s in calls)
    f.min_shared = 10_000  # no common prefix long enough: the per-context paths give the same numbers
    assert np.allclose(f.mean_logprob(contexts, replies), fast, atol=1e-4)


def test_score_head_equals_the_shared_pass(tiny_encoder, tiny_policy_dir, personas):
    sc = RewardScorer(tiny_encoder, None, FluencyScorer(tiny_policy_dir, dtype=torch.float32))
    ctx = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "I lost my keys"},
           {"role": "assistant", "content": "Oh no!"}, {"role": "user", "content": "what should I do?"}]
    replies = ["Retrace your steps and check your coat pockets.", "", "Keys keys keys keys keys keys"]
    batch = sc.score([ctx] * 3, replies, [personas[0], None, personas[1]])
    for head in HEADS:
        tiny_encoder.clear_cache()
        alone = sc.score_head(head, [ctx] * 3, replies, [personas[0], None, personas[1]])
        assert np.allclose(alone, batch.heads[head], atol=1e-5), head
    with pytest.raises(ValueError, match="unknown head"):
        sc.score_head("charm", [ctx], ["x"], [None])


def test_recent_context_keeps_the_message_being_answered():
    long = [{"role": "user" if i % 2 == 0 else "assistant", "content": f"message {i} " + "blah " * 40}
            for i in range(9)]
    text = recent_context(long)
    assert text.startswith("message 8") and "message 0" not in text and len(text) <= 600
    assert recent_context([{"role": "system", "content": "sys"}, {"role": "user", "content": "hi"}]) == "hi"
    assert recent_context([]) == ""


def test_bf16_encoder_matches_fp32():
    d = models.resolve_encoder("tiny-bert")
    texts = ["hello there", "a somewhat longer sentence about the weather today"]
    a = SentenceEncoder(d, precision="fp32").encode(texts)
    b = SentenceEncoder(d, precision="bf16").encode(texts)
    assert (a * b).sum(1).min() > 0.99 and b.dtype == np.float32
    with pytest.raises(ValueError, match="precision"):
        SentenceEncoder(d, precision="int4")


def test_unknown_learned_head_is_refused(tiny_encoder):
    with pytest.raises(ValueError, match="learned heads"):
        RewardScorer(tiny_encoder, learned={"charm": object()})


def test_encoder_call_larger_than_its_cache():
    """One call with more distinct texts than the cache holds (the reward-stage KeyError of issue 17)."""
    enc = SentenceEncoder(models.resolve_encoder("tiny-bert"), cache_size=3, batch_size=2)
    texts = ["Hello.", "how are you", "fine thanks", "and you?", "Hello.", "great", "bye", "how are you"]
    small = enc.encode(texts[:2])  # cached, then must survive as hits while the call below evicts
    big = enc.encode(texts)
    assert big.shape == (len(texts), enc.dim) and len(enc._cache) <= 3
    assert np.allclose(big[0], small[0]) and np.allclose(big[0], big[4]) and np.allclose(big[1], big[7])
    enc.clear_cache()
    assert np.allclose(enc.encode(texts), big, atol=1e-6)
    enc.encode(["a", "b", "c"])
    enc.encode(["a"])  # a hit is refreshed: "b" is now the oldest and leaves first
    enc.encode(["d"])
    assert "a" in enc._cache and "b" not in enc._cache
