"""Prepacked linears (``convrl.rl.packed_linear``; bf16, and fp32 where it pays) and fused attention over the filled
cache (``rl.decoding``)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
from torch import nn

from convrl.rl import packed_linear
from convrl.rl.packed_linear import PackedLinear, pack_linears, packing_supported

needs_packing = pytest.mark.skipif(not packing_supported(torch.bfloat16),
                                   reason="this CPU/PyTorch build has no oneDNN bf16 kernels; nothing is packed")
# Each packed dtype; fp32 is packed on AMD CPUs only (packed_linear.fp32_packing_pays), bf16 where oneDNN has bf16.
DTYPES = [pytest.param(torch.bfloat16, id="bf16", marks=needs_packing),
          pytest.param(torch.float32, id="fp32", marks=pytest.mark.skipif(
              not packing_supported(torch.float32), reason="fp32 linears are not packed on this CPU (not AMD)"))]
# Equal up to one rounding step of the dtype (oneDNN picks its kernel by shape).
TOL = {torch.bfloat16: 8e-3, torch.float32: 1e-5}


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_linear_computes_what_linear_computes_at_decoding_sizes(dtype):
    torch.manual_seed(0)
    lin = nn.Linear(96, 160, bias=True).to(dtype)
    ref = nn.Linear(96, 160, bias=True).to(dtype)
    ref.load_state_dict(lin.state_dict())
    assert pack_linears(nn.Sequential(lin)) == 1 and type(lin) is PackedLinear
    with torch.no_grad():
        for shape in ((1, 96), (8, 1, 96), (4, 37, 96)):
            x = torch.randn(*shape, dtype=dtype)
            torch.testing.assert_close(lin(x), ref(x), rtol=TOL[dtype], atol=TOL[dtype])
    assert set(lin.state_dict()) == {"weight", "bias"}  # checkpoints and load_state_dict are unchanged


@pytest.mark.parametrize("dtype", DTYPES)
def test_a_changed_weight_is_repacked(dtype):
    torch.manual_seed(1)
    lin = nn.Linear(64, 64, bias=False).to(dtype)
    pack_linears(nn.Sequential(lin))
    assert type(lin) is PackedLinear
    x = torch.randn(8, 64, dtype=dtype)
    with torch.no_grad():
        before = lin(x)
        lin.weight.copy_(lin.weight * 2)                       # in place, as RolloutModel's LoRA refresh does
        torch.testing.assert_close(lin(x), before * 2, rtol=1e-2, atol=1e-2)
        lin.load_state_dict({"weight": torch.zeros(64, 64, dtype=dtype)})
        assert lin(x).abs().max() == 0
        lin.weight = nn.Parameter(torch.eye(64, dtype=dtype))  # a new tensor (tie_weights)
        torch.testing.assert_close(lin(x), x)
        twin = copy.deepcopy(lin)  # the opaque packed tensor is not copied; the copy packs its own
        twin.weight.mul_(3)
        torch.testing.assert_close(twin(x), x * 3)
        torch.testing.assert_close(lin(x), x)
        assert type(pickle.loads(pickle.dumps(lin))) is PackedLinear


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_falls_back_to_the_differentiable_op(dtype):
    lin = nn.Linear(16, 8).to(dtype)
    pack_linears(nn.Sequential(lin))
    x = torch.randn(4, 16, dtype=dtype, requires_grad=True)
    lin(x).float().sum().backward()
    assert x.grad is not None and lin.weight.grad is not None


def test_fp32_is_packed_on_amd_cpus_only_unless_told(monkeypatch):
    monkeypatch.delenv(packed_linear.FP32_ENV, raising=False)
    monkeypatch.setattr(packed_linear.platform, "machine", lambda: "x86_64")
    for vendor, packed in (("AuthenticAMD", True), ("GenuineIntel", False), ("", False)):
        monkeypatch.setattr(packed_linear, "cpu_vendor", lambda v=vendor: v)
        assert packed_linear.fp32_packing_pays() is packed, vendor
    monkeypatch.setattr(packed_linear.platform, "machine", lambda: "arm64")
    monkeypatch.setattr(packed_linear, "cpu_vendor", lambda: "AuthenticAMD")
    assert not packed_linear.fp32_packing_pays()
    monkeypatch.setenv(packed_linear.FP32_ENV, "1")
    assert packed_linear.fp32_packing_pays()
    monkeypatch.setenv(packed_linear.FP32_ENV, "0")
    model = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    assert pack_linears(model) == 0 and all(type(m) is nn.Linear for m in model)
    assert not packing_supported(torch.float32) and not packing_supported(torch.bfloat16, "cuda")
    assert not packing_supported(torch.float16)


@pytest.mark.parametrize("dtype", DTYPES)
def test_packed_policy_decodes_the_greedy_tokens_of_the_plain_one(tiny_policy_dir, dtype):
    """The whole rollout stack: packed linears + fused attention over the filled cache == plain eager."""
    from transformers import AutoModelForCausalLM

    from convrl.rl.conversation_decoder import CachedDecoder
    from convrl.rl.decoding import gqa_attention

    plain = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=dtype, attn_implementation="eager").eval()
    fast = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=dtype,
                                                attn_implementation=gqa_attention()).eval()
    assert pack_linears(fast) == sum(isinstance(m, nn.Linear) for m in fast.modules())
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(5, plain.config.vocab_size, (n,), generator=g).tolist() for n in (9, 9, 5, 12)]
    dec = CachedDecoder(fast, 0, [-1], capacity_hint=8)  # grows while decoding; no EOS so rows run 6 tokens
    dec.prefill(prompts, groups=[[0, 1], [2], [3]])
    got = dec.generate(6)
    with torch.no_grad():
        for p, out in zip(prompts, got):
            ids = torch.tensor([p])
            ref = plain.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=6,
                                 min_new_tokens=6, do_sample=False, pad_token_id=0)
            assert out == ref[0, len(p):].tolist()


@pytest.mark.parametrize("dtype", DTYPES)
def test_rollout_copy_follows_the_adapter(tiny_policy_dir, dtype):
    """RolloutModel packs its copy; after a LoRA update and a step change it computes the merged policy."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from convrl.rl.rollout_model import RolloutModel

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32),
                                LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    copy = RolloutModel(dtype, "cpu")
    ids = torch.randint(5, 200, (2, 10), generator=torch.Generator().manual_seed(0))
    first = copy.sync(peft_model, step=0)
    assert any(type(m) is PackedLinear for m in first.modules())
    with torch.no_grad():
        before = first(input_ids=ids).logits
        for m in peft_model.modules():
            if hasattr(m, "lora_B") and "default" in m.lora_B:
                m.lora_B["default"].weight.normal_(0, 0.5)
        after = copy.sync(peft_model, step=1)(input_ids=ids).logits
        peft_model.merge_adapter()
        merged = peft_model.get_base_model().to(dtype)(input_ids=ids).logits
    assert (after.float() - before.float()).abs().max() > 0.05  # the update shows
    tol = 0.05 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(after.float(), merged.float(), rtol=tol, atol=tol)
