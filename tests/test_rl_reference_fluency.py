"""The KL reference pass hands the fluency head its log-probs: same numbers, no second LM pass.

GRPO with ``beta > 0`` runs the frozen base model over prompt + completion for
the KL term. When the fluency LM is that base model, its temperature-1
log-probs are the fluency head's input; these tests check that the reference
pass computes them exactly, that the hand-over only ever applies to the batch
it came from, and that training uses it instead of running the LM again.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convrl.rewards.fluency import EMPTY_REPLY, FluencyScorer, ReferenceLogprobs
from convrl.rewards.heads import RewardScorer


@pytest.fixture(scope="module")
def fused_tiny(tiny_policy_dir):
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    m = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32).eval()
    add_fused_lm_head(m, temperature=0.7, outputs=("log_probs",))
    return m


def test_reference_pass_gives_kl_and_plain_logprobs_exactly(fused_tiny):
    from convrl.rl.prefix import shared_prefix_logps, shared_prefix_ref_logps
    from tests.test_rl_speed import grouped_batch

    ids, am, C = grouped_batch(fused_tiny.config.vocab_size)
    mask = am[:, -C:].bool()
    with torch.no_grad():
        kl_lp, _ = shared_prefix_logps(fused_tiny, ids, am, C)
        scaled, plain = shared_prefix_ref_logps(fused_tiny, ids, am, C, temperature=0.7)
        logits = fused_tiny(input_ids=ids, attention_mask=am).logits[:, -C - 1:-1]
    full = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -C:, None]).squeeze(-1)
    assert torch.allclose(scaled[mask], kl_lp[mask], atol=1e-5)  # what the KL term needs, unchanged
    assert torch.allclose(plain[mask], full[mask], atol=1e-5)    # the plain likelihood: temperature 1
    assert not torch.allclose(plain[mask], scaled[mask], atol=1e-3)
    assert (plain[~mask] == 0).all()


def test_lookup_only_matches_the_batch_it_came_from():
    ref = ReferenceLogprobs(special_ids=[2])
    assert ref.lookup([[5, 6]]) is None  # nothing handed over yet
    ref.put([[5, 6, 2, 0], [7, 8, 9, 2]], [np.array([-1.0, -3.0, -9.0, 0.0]), np.array([-2.0, -2.0, -2.0, -8.0])])
    got = ref.lookup([[5, 6, 2], [7, 8, 9, 2]])  # unpadded ids, as TRL passes them to reward functions
    assert [len(g) for g in got] == [3, 4]
    assert ref.mean([5, 6, 2], got[0]) == pytest.approx(-2.0)  # the EOS token is not part of the reply
    assert ref.mean([7, 8, 9, 2], got[1], 1, 3) == pytest.approx(-2.0)  # a turn's span
    assert ref.mean([2], np.array([-4.0])) == EMPTY_REPLY
    for other in ([[5, 6, 2]], [[5, 7, 2], [7, 8, 9, 2]], [[7, 8, 9, 2], [5, 6, 2]]):
        assert ref.lookup(other) is None  # other rows, other tokens, other order: the LM must run
    assert ref.hits == 1 and ref.misses == 4


def test_scorer_takes_handed_over_fluency_and_falls_back_to_the_lm(tiny_encoder, tiny_policy_dir, monkeypatch):
    flu = FluencyScorer(tiny_policy_dir, dtype=torch.float32)
    sc = RewardScorer(tiny_encoder, None, flu)
    ctx = [{"role": "user", "content": "how are you?"}]
    funcs, _ = sc.trl_reward_funcs({})
    quality = funcs[0]
    assert quality.__name__ == "quality"
    sc.reference_logprobs = ref = ReferenceLogprobs(special_ids=[0])
    ref.put([[11, 12, 0]], [np.array([-4.0, -5.0, -7.0])])
    calls = []
    real = FluencyScorer.mean_logprob
    monkeypatch.setattr(FluencyScorer, "mean_logprob", lambda self, c, r: calls.append(r) or real(self, c, r))
    quality(prompts=[ctx], completions=[[{"role": "assistant", "content": "fine, thanks"}]], completion_ids=[[11, 12, 0]])
    assert calls == [] and sc._last.details["fluency"][0] == pytest.approx((-4.5 + 6.0) / 2.5)
    quality(prompts=[ctx], completions=[[{"role": "assistant", "content": "great"}]], completion_ids=[[13, 0]])
    assert calls == [["great"]]  # a batch the reference pass did not see: the LM scores it


def test_multiturn_scores_take_each_turns_span(tiny_encoder, tiny_policy_dir, monkeypatch):
    from convrl.rl.turn_rewards import ConversationScores

    sc = RewardScorer(tiny_encoder, None, FluencyScorer(tiny_policy_dir, dtype=torch.float32))
    monkeypatch.setattr(FluencyScorer, "mean_logprob", lambda *a: pytest.fail("the LM ran"))
    sc.reference_logprobs = ref = ReferenceLogprobs(special_ids=[0])
    ids = [21, 22, 0, 5, 5, 31, 0]  # turn 1, EOS, user glue, turn 2, EOS
    ref.put([ids], [np.array([-1.0, -1.0, -9.0, -9.0, -9.0, -4.0, -9.0])])
    turns = [[{"context": [{"role": "user", "content": "hi"}], "response": "a b", "span": [0, 3]},
              {"context": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a b"},
                           {"role": "user", "content": "ok"}], "response": "c", "span": [5, 7]}]]
    given = []
    real_score = sc.score
    monkeypatch.setattr(sc, "score", lambda c, r, p, lp=None: given.append(lp) or real_score(c, r, p, lp))
    ConversationScores(sc, {})(turns, [None], [ids])
    assert given[0].tolist() == pytest.approx([-1.0, -4.0])  # each turn's own tokens, EOS and user glue left out


def spy_reference_pass(monkeypatch, ingested, personas, tiny_encoder, tiny_policy_dir):
    """(scorer with the fluency LM, 4 prompts, reward funcs, weights, seen, lm_calls) for GRPO on the tiny policy:
    ``seen`` collects each reference pass's (ids, mask, logits_to_keep, plain log-probs), ``lm_calls`` each time
    the fluency LM itself had to run."""
    import convrl.rl.prefix as prefix
    from convrl.data.prompts import build_prompts

    scorer = RewardScorer(tiny_encoder, None, FluencyScorer(tiny_policy_dir, dtype=torch.float32))
    prompts = build_prompts(ingested.turns, personas, "train", 4, 4, seed=1)
    funcs, weights = scorer.trl_reward_funcs({p.persona_id: p for p in personas})
    seen, lm_calls = [], []
    real_ref = prefix.shared_prefix_ref_logps

    def spy(model, input_ids, attention_mask, logits_to_keep, *a, **kw):
        out = real_ref(model, input_ids, attention_mask, logits_to_keep, *a, **kw)
        seen.append((input_ids.clone(), attention_mask.clone(), logits_to_keep, out[1].clone()))
        return out

    monkeypatch.setattr(prefix, "shared_prefix_ref_logps", spy)
    monkeypatch.setattr(FluencyScorer, "mean_logprob", lambda self, c, r: lm_calls.append(len(r)) or
                        np.zeros(len(r), dtype=np.float32))
    return scorer, prompts, funcs, weights, seen, lm_calls


@pytest.mark.parametrize("mask_truncated", [True, False])
def test_grpo_reference_pass_feeds_the_fluency_head(ingested, personas, tiny_encoder, tiny_policy_dir, tmp_path,
                                                     monkeypatch, mask_truncated):
    from transformers import AutoModelForCausalLM

    from convrl.config import RLConfig
    from convrl.rl.grpo import train_grpo

    scorer, prompts, funcs, weights, seen, lm_calls = spy_reference_pass(monkeypatch, ingested, personas,
                                                                         tiny_encoder, tiny_policy_dir)
    # Masked: truncated rows (a random tiny model rarely ends in 8 tokens) must still be scored. Unmasked: the
    # policy moves, so reading the policy instead of the frozen base would show.
    rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=8, save_steps=10,
                  precision="fp32", learning_rate=0.05, mask_truncated_completions=mask_truncated)
    res = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path, scorer=scorer)
    assert res.steps == 2 and len(seen) == 2
    assert lm_calls == []  # every batch's fluency came from the reference pass
    assert scorer.reference_logprobs is None  # detached after training
    # The handed-over numbers are the frozen base model's (adapters off), whatever the policy does.
    base = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32).eval()
    if not mask_truncated:
        trained = AutoModelForCausalLM.from_pretrained(res.policy_dir, dtype=torch.float32).state_dict()
        assert any(not torch.equal(v, trained[k]) for k, v in base.state_dict().items() if k in trained)
    for ids, am, C, plain in seen:
        # Truncated rows (no EOS in 8 tokens; their completion mask is zeroed for the loss) are scored in full too:
        # their rewards set the group baseline.
        assert (am[:, -C:].sum(1) > 0).all() and (plain != 0).any(1).all()
        with torch.no_grad():
            logits = base(input_ids=ids, attention_mask=am).logits[:, -C - 1:-1]
        want = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -C:, None]).squeeze(-1)
        m = am[:, -C:].bool()
        assert torch.allclose(plain[m], want[m], atol=1e-4)


def test_score_head_takes_handed_over_fluency_like_score(tiny_encoder, tiny_policy_dir, monkeypatch):
    sc = RewardScorer(tiny_encoder, None, FluencyScorer(tiny_policy_dir, dtype=torch.float32))
    ctx = [[{"role": "user", "content": "I lost my keys"}]] * 2
    replies = ["Check your coat pockets.", "Keys keys keys"]
    lp = np.array([-1.0, -3.0], dtype=np.float32)
    monkeypatch.setattr(FluencyScorer, "mean_logprob", lambda *a: pytest.fail("the LM ran"))
    alone = sc.score_head("quality", ctx, replies, [None, None], lp)
    assert np.allclose(alone, sc.score(ctx, replies, [None, None], lp).heads["quality"])


def test_grpo_policy_pass_starts_where_the_adapters_do(ingested, personas, tiny_encoder, tiny_policy_dir, tmp_path,
                                                       monkeypatch):
    """With ``rl.lora.top_layers`` the trainer's policy pass starts from the reference pass's hidden states below the
    adapters (``prefix.BottomStash``) for every prompt group of every step, and trains the same as without."""
    import convrl.rl.prefix as prefix
    from convrl.config import RLConfig
    from convrl.config.rl import LoraSection
    from convrl.rl.grpo import train_grpo

    scorer, prompts, funcs, weights, seen, _ = spy_reference_pass(monkeypatch, ingested, personas, tiny_encoder,
                                                                  tiny_policy_dir)
    used = []
    real = prefix._top_from_stash
    monkeypatch.setattr(prefix, "_top_from_stash", lambda *a: (used.append(1), real(*a))[1])
    rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=8, save_steps=10,
                  precision="fp32", learning_rate=0.05, mask_truncated_completions=False,
                  lora=LoraSection(top_layers=1))
    res = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path / "stash", scorer=scorer)
    assert res.steps == 2 and len(seen) == 2 and len(used) == 4  # 2 steps x 2 prompt groups
    monkeypatch.setattr(prefix.BottomStash, "depth", staticmethod(lambda backbone: 0))  # the lever off
    plain = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path / "plain", scorer=scorer)
    assert len(used) == 4
    assert [h.get("loss") for h in res.history] == [h.get("loss") for h in plain.history]
