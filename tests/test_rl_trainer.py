"""The named trainer (ConvRLGRPOTrainer), its TRL contract, the cached multi-turn decoder and the advantages.

* The TRL methods the trainer overrides must keep the signatures recorded for
  ``TRL_CHECKED_VERSION``: a TRL upgrade that changes them fails here first.
* ``CachedDecoder`` (KV cache carried across turns, ragged rows, shared group
  prefixes) must produce the logits of a full forward over each row's whole
  unpadded conversation.
* ``group_advantages`` must equal TRL's own computation for both aggregations.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch


def test_overridden_trl_methods_keep_their_recorded_signatures():
    import trl

    from convrl.rl.trainer import OVERRIDES, TRL_CHECKED_VERSION, ConvRLGRPOTrainer, ConvRLRLOOTrainer

    changed = [f"{cls.__name__}.{name}: recorded {sig}, installed {inspect.signature(getattr(cls, name))}"
               for (cls, name), sig in OVERRIDES.items() if str(inspect.signature(getattr(cls, name))) != sig]
    assert not changed, (f"TRL {trl.__version__} changed methods convrl overrides (checked against TRL "
                         f"{TRL_CHECKED_VERSION}); review convrl/rl/trainer.py, then update OVERRIDES:\n"
                         + "\n".join(changed))
    # Every private TRL method the trainers override is in the record.
    for ours in (ConvRLGRPOTrainer, ConvRLRLOOTrainer):
        base = ours.__mro__[2]
        mine = {n for n, v in vars(ours.__mro__[1]).items() if callable(v) and n.startswith("_") and hasattr(base, n)
                and not n.startswith("__")}
        assert mine <= {n for (cls, n) in OVERRIDES if cls is base}, mine


def test_stock_config_switches_every_lever_off():
    from convrl.rl.trainer import ConvRLTrainerConfig

    stock = ConvRLTrainerConfig.stock()
    assert not (stock.fast_rollouts or stock.share_prompt_prefix or stock.carry_kv_cache)
    assert stock.turn_credit == 0.0 and stock.reference_logprobs is None


@pytest.fixture(scope="module")
def gqa_tiny():
    from transformers import AutoModelForCausalLM

    from convrl import models
    from convrl.rl.decoding import gqa_attention

    path = models.resolve_policy("tiny-llama")
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=gqa_attention()).eval()


class Recorder:
    """A logits processor that keeps every step's scores and leaves them as they are (greedy decoding)."""

    def __init__(self):
        self.steps = []

    def __call__(self, ids, scores):
        self.steps.append(scores.clone())
        return scores


def test_cached_decoder_matches_full_forwards_across_turns(gqa_tiny):
    """Two turns, ragged user turns, one row ending early on EOS, a cache grown past its first size."""
    from convrl.rl.conversation_decoder import CachedDecoder

    m, V = gqa_tiny, gqa_tiny.config.vocab_size
    g = torch.Generator().manual_seed(3)
    p1, p2 = torch.randint(5, V, (9,), generator=g).tolist(), torch.randint(5, V, (6,), generator=g).tolist()
    prompts = [p1, p1, p2, p2]
    with torch.no_grad():
        # The token row 2 would produce first ends its turn there: one row finishes while the others go on.
        eos = int(m(input_ids=torch.tensor([p2])).logits[0, -1].argmax())
    dec = CachedDecoder(m, pad_id=0, eos_ids=[eos], capacity_hint=8)
    dec.prefill(prompts, [[0, 1], [2, 3]])
    assert dec.prefill_tokens == len(p1) - 1 + len(p2) - 1  # one prefix pass per group (last tokens: generate)
    rec1 = Recorder()
    turn1 = dec.generate(5, [rec1])
    assert turn1[2] == [eos] and len(turn1[0]) == 5
    users = [torch.randint(5, V, (k,), generator=g).tolist() for k in (3, 4, 2, 5)]
    dec.extend(users)
    rec2 = Recorder()
    turn2 = dec.generate(4, [rec2])
    with torch.no_grad():
        for i in range(4):
            assert dec.tokens(i) == prompts[i] + turn1[i] + users[i] + turn2[i]
            for rec, start, out in ((rec1, prompts[i], turn1[i]), (rec2, prompts[i] + turn1[i] + users[i], turn2[i])):
                full = m(input_ids=torch.tensor([start + out])).logits[0]
                for k in range(len(out)):  # the logits each generated token was drawn from
                    want = full[len(start) - 1 + k]
                    assert torch.allclose(rec.steps[k][i], want, atol=1e-4), (i, k)


def test_cached_decoder_greedy_rows_beside_sampled_rows_then_dropped(gqa_tiny):
    """A greedy probe row decodes what a greedy decoder alone would, while the other rows sample; ``select`` then
    drops it and the kept rows go on exactly as an unprobed decoder of their own would."""
    from convrl.rl.conversation_decoder import CachedDecoder
    m, V = gqa_tiny, gqa_tiny.config.vocab_size
    g = torch.Generator().manual_seed(5)
    p = torch.randint(5, V, (7,), generator=g).tolist()

    class Flip:
        """Stands in for a sampler: the second-best token, so sampled rows never match the greedy one."""

        def __call__(self, ids, scores):
            second = scores.topk(2, -1).indices[:, 1:]
            return torch.full_like(scores, float("-inf")).scatter(-1, second, 0.0)

    alone = CachedDecoder(m, 0, [V + 1])
    alone.prefill([p])
    want = alone.generate(6)[0]
    dec = CachedDecoder(m, 0, [V + 1])
    dec.prefill([p, p, p], [[0, 1, 2]])
    out = dec.generate(6, [Flip()], greedy=[False, False, True])
    assert out[2] == want and out[0] != want and out[0] == out[1]
    dec.select([0, 1])
    assert dec.rows == 2 and dec.tokens(0) == p + out[0]
    ref = CachedDecoder(m, 0, [V + 1])
    ref.prefill([p, p], [[0, 1]])
    assert ref.generate(6, [Flip()]) == out[:2]
    user = torch.randint(5, V, (3,), generator=g).tolist()
    dec.extend([user, user])
    ref.extend([user, user])
    assert dec.generate(4) == ref.generate(4)
    # A greedy row's own processors (the chat n-gram ban) apply to it alone.
    from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

    banned = CachedDecoder(m, 0, [V + 1])
    banned.prefill([p, p])
    out = banned.generate(12, greedy=[False, True], greedy_processors=[NoRepeatNGramLogitsProcessor(2)])
    bigrams = [[tuple(s[k:k + 2]) for k in range(len(s) - 1)] for s in (p + out[0], p + out[1])]
    assert len(set(bigrams[0])) < len(bigrams[0]) and len(set(bigrams[1])) == len(bigrams[1])  # row 0: unbanned
    with pytest.raises(ValueError, match="row indices"):
        dec.select([5])


def test_cached_decoder_drops_stopped_rows_without_changing_any_row(gqa_tiny):
    """Rows that stopped leave the forward passes (the cache is reordered): every row draws the same tokens from the
    same logits as with every row decoding to the end, and the next turn goes on from an intact cache."""
    from convrl.rl.conversation_decoder import CachedDecoder
    from transformers import GenerationConfig

    from convrl.rl.generation import InverseCDFSampler

    m, V = gqa_tiny, gqa_tiny.config.vocab_size
    g = torch.Generator().manual_seed(11)
    p1, p2 = torch.randint(5, V, (9,), generator=g).tolist(), torch.randint(5, V, (6,), generator=g).tolist()
    prompts = [p1] * 4 + [p2] * 4
    eos = V - 1
    users = [torch.randint(5, V, (k,), generator=torch.Generator().manual_seed(k)).tolist()
             for k in (3, 4, 2, 5, 1, 2, 3, 4)]

    class StopAt:
        """Ends row i's turn after stops[i] tokens, so rows stop one after another."""

        def __init__(self, stops):
            self.stops, self.step = stops, 0

        def __call__(self, ids, scores):
            scores = scores.clone()
            for i, s in enumerate(self.stops):
                if self.step == s:
                    scores[i] = float("-inf")
                    scores[i, eos] = 0.0
            self.step += 1
            return scores

    def run(compact):
        dec = CachedDecoder(m, 0, [eos], capacity_hint=8, compact=compact)
        dec.prefill(prompts, [[0, 1, 2, 3], [4, 5, 6, 7]])
        sampler = InverseCDFSampler(GenerationConfig(do_sample=True, temperature=0.9), torch.Generator().manual_seed(1))
        rec1 = Recorder()
        t1 = dec.generate(12, [rec1, StopAt([1, 3, 3, 4, 6, 20, 2, 5]), sampler])
        dec.extend(users)
        rec2 = Recorder()
        t2 = dec.generate(8, [rec2, StopAt([0, 7, 2, 2, 3, 1, 4, 4]), sampler], greedy=[False] * 7 + [True])
        return dec, t1, t2, rec1, rec2

    dec, t1, t2, rec1, rec2 = run(True)
    plain, p_t1, p_t2, _, _ = run(False)
    assert [len(x) for x in t1] == [2, 4, 4, 5, 7, 12, 3, 6]
    assert (t1, t2) == (p_t1, p_t2)
    assert dec.compactions >= 3 and plain.compactions == 0
    assert [dec.tokens(i) for i in range(8)] == [plain.tokens(i) for i in range(8)]
    with torch.no_grad():
        for i in range(8):
            for rec, before, out in ((rec1, prompts[i], t1[i]),
                                     (rec2, prompts[i] + t1[i] + users[i], t2[i])):
                full = m(input_ids=torch.tensor([before + out])).logits[0]
                for k in range(len(out)):
                    assert torch.allclose(rec.steps[k][i], full[len(before) - 1 + k], atol=1e-4), (i, k)


def test_cached_decoder_rejects_bad_input(gqa_tiny):
    from convrl.rl.conversation_decoder import CachedDecoder

    dec = CachedDecoder(gqa_tiny, 0, [2])
    with pytest.raises(ValueError, match="at least one token"):
        dec.prefill([[5, 6], []])
    with pytest.raises(ValueError, match="every row exactly once"):
        dec.prefill([[5, 6], [7, 8]], [[0]])
    dec.prefill([[5, 6], [7, 8]])
    with pytest.raises(ValueError, match="batch of 2"):
        dec.extend([[1]])


def _trl_advantages(rewards: torch.Tensor, weights: torch.Tensor, G: int, how: str) -> torch.Tensor:
    """TRL 1.16's formulas (GRPOTrainer._generate_and_score_completions, scale_rewards='group')."""
    from trl.trainer.utils import nanstd

    if how == "sum_then_normalize":
        r = (rewards * weights).nansum(1)
        mean = r.view(-1, G).nanmean(1).repeat_interleave(G)
        std = nanstd(r.view(-1, G), dim=1).repeat_interleave(G)
        return (r - mean) / (std + 1e-4)
    g = rewards.view(-1, G, rewards.size(1))
    z = ((g - g.nanmean(1, keepdim=True)) / (nanstd(g, dim=1, keepdim=True) + 1e-4)).view(-1, rewards.size(1))
    r = (z * weights).nansum(1)
    return (r - r.nanmean()) / (nanstd(r) + 1e-4)


@pytest.mark.parametrize("how", ["sum_then_normalize", "normalize_then_sum"])
def test_group_advantages_equal_trl(how):
    from convrl.rl.advantages import group_advantages

    torch.manual_seed(0)
    rewards, weights = torch.rand(8, 5, dtype=torch.float64), torch.tensor([0.4, 0.25, 0.2, 0.15, 0.1],
                                                                           dtype=torch.float64)
    ours = group_advantages(rewards.numpy(), weights.numpy(), 4, how)
    assert np.allclose(ours, _trl_advantages(rewards, weights, 4, how).numpy(), atol=1e-9)
    with pytest.raises(ValueError, match="aggregation"):
        group_advantages(rewards.numpy(), weights.numpy(), 4, "max")


def test_normalize_then_sum_separates_reward_mixes_that_sum_alike():
    """Two heads on different scales: summing first lets the wide head decide; normalising first keeps both."""
    from convrl.rl.advantages import group_advantages

    wide, narrow = np.array([0.0, 1.0, 0.0, 1.0]), np.array([0.00, 0.00, 0.01, 0.01])
    per_func, w = np.stack([wide, narrow], 1), np.array([1.0, 1.0])
    summed = group_advantages(per_func, w, 4, "sum_then_normalize")
    assert abs(summed[2] - summed[0]) < 0.05  # the narrow head's signal is nearly invisible
    separate = group_advantages(per_func, w, 4, "normalize_then_sum")
    assert separate[2] - separate[0] > 0.5


def test_turn_level_advantages_credit_each_turn_with_its_own_reward():
    from convrl.rl.advantages import turn_level_advantages

    seq = np.array([1.0, -1.0])
    per_turn = np.array([[0.0, 1.0], [1.0, 0.0]])  # row 0: bad first reply, good second; row 1 the reverse
    spans = [[[0, 2], [4, 6]], [[0, 1], [3, 5]]]
    adv = turn_level_advantages(seq, per_turn, spans, G=2, width=7, credit=1.0)
    assert adv.shape == (2, 7)
    assert adv[0, 0] < 0 < adv[0, 4] and adv[1, 0] > 0 > adv[1, 3]
    assert adv[0, 2] == 1.0 and adv[0, 6] == 1.0  # user tokens / padding keep the sequence advantage
    half = turn_level_advantages(seq, per_turn, spans, G=2, width=7, credit=0.5)
    assert np.allclose(half[0, 0], 0.5 * adv[0, 0] + 0.5 * seq[0])
    with pytest.raises(ValueError, match="rows"):
        turn_level_advantages(seq, per_turn[:1], spans, G=2, width=7, credit=0.5)
