"""rl.fused_step: one-token decoding steps computed as the model's own forward computes them, on every path that
uses them (the cached decoder, weights refreshed in place, biased projections, bf16), and refused where it would not be.
"""

from __future__ import annotations

import pytest
import torch

from tests.test_rl_trainer import Recorder


def _tiny(model_type: str = "llama", dtype=torch.float32, **overrides):
    from transformers import AutoConfig, AutoModelForCausalLM

    from convrl.rl.decoding import gqa_attention

    cfg = AutoConfig.for_model(model_type, vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **overrides)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=gqa_attention()).eval()


def _two_turns(m, fused: bool):
    """Two greedy turns of 3 rows (two prompts, one row ending early): (tokens, per-step logits) of both turns."""
    from convrl.rl.conversation_decoder import CachedDecoder

    V = m.config.vocab_size
    g = torch.Generator().manual_seed(2)
    p1, p2 = torch.randint(5, V, (7,), generator=g).tolist(), torch.randint(5, V, (4,), generator=g).tolist()
    with torch.no_grad():
        eos = int(m(input_ids=torch.tensor([p2])).logits[0, -1].argmax())  # row 2 ends at once
    dec = CachedDecoder(m, 0, [eos], capacity_hint=4, fused=fused)
    dec.prefill([p1, p1, p2], [[0, 1], [2]])
    r1, r2 = Recorder(), Recorder()
    t1 = dec.generate(6, [r1])
    dec.extend([[7, 8, 9], [10], [11, 12]])
    t2 = dec.generate(5, [r2])
    return (t1, t2), (r1.steps, r2.steps)


@pytest.fixture
def fused_calls(monkeypatch):
    """Counts the fused steps taken (so a test sees the fused path ran, not a silent fallback)."""
    from convrl.rl.fused_step import FusedStep

    calls, original = [], FusedStep.__call__
    monkeypatch.setattr(FusedStep, "__call__", lambda self, *a, **k: (calls.append(1), original(self, *a, **k))[1])
    return calls


@pytest.mark.parametrize("model_type,extra", [("llama", {}), ("qwen2", {"attention_bias": True})])
def test_fused_steps_give_the_models_own_logits(model_type, extra, fused_calls):
    """Same tokens and the same logits (fp32 rounding) as transformers' forward through the same decoder, across
    turns and a grown cache (which test_rl_trainer checks against full forwards); qwen2 carries q/k/v biases."""
    m = _tiny(model_type, **extra)
    if model_type == "qwen2":
        assert m.model.layers[0].self_attn.q_proj.bias is not None
    fused_tokens, fused_logits = _two_turns(m, True)
    plain_tokens, plain_logits = _two_turns(m, False)
    assert fused_calls, "the fused step never ran"
    assert fused_tokens == plain_tokens and len(fused_tokens[0][2]) == 1
    for a, b in zip(fused_logits, plain_logits):
        for x, y in zip(a, b):
            assert torch.allclose(x, y, atol=1e-5)


def test_fused_weights_follow_in_place_weight_changes():
    """The rollout copy refreshes its LoRA-merged weights in place every optimizer step: the fused q/k/v and gate/up
    copies must be rebuilt, not serve the old weights."""
    m = _tiny()
    before, _ = _two_turns(m, True)
    with torch.no_grad():
        for layer in m.model.layers:
            layer.self_attn.k_proj.weight.mul_(-1.5)
            layer.mlp.up_proj.weight.add_(0.3)
    fused, fused_logits = _two_turns(m, True)
    plain, plain_logits = _two_turns(m, False)
    assert fused == plain and fused != before
    assert all(torch.allclose(x, y, atol=1e-5) for a, b in zip(fused_logits, plain_logits) for x, y in zip(a, b))


def test_fused_steps_in_bf16_decode_the_same_tokens(fused_calls):
    m = _tiny(dtype=torch.bfloat16)
    from convrl.rl.packed_linear import pack_linears

    pack_linears(m)  # as rollouts and the simulated user run (no-op where the CPU has no bf16 kernels)
    fused, _ = _two_turns(m, True)
    plain, _ = _two_turns(m, False)
    assert fused_calls and fused == plain


def test_fused_step_refuses_what_it_does_not_compute():
    from convrl.rl.fused_step import FusedStep, fused_step_for, supported

    gelu = _tiny(hidden_act="gelu")
    assert "activation" in supported(gelu) and fused_step_for(gelu) is None
    with pytest.raises(ValueError, match="cannot run this model: activation"):
        FusedStep(gelu)
    training = _tiny().train()
    assert fused_step_for(training) is None  # a model that trains keeps transformers' forward (dropout, grads)
    assert supported(_tiny()) is None
