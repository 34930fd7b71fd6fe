"""The RL step's speed levers must not change what is computed.

Prompt-prefix sharing (one prompt pass per GRPO group) must give the same
per-token log-probs, entropies and LoRA gradients as TRL's full-sequence pass,
and the same greedy rollouts; the inverse-CDF sampler must draw from the same
distribution as ``generate(do_sample=True)`` with the same warpers.
"""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="module")
def peft_tiny():
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from convrl import models

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(models.resolve_policy("tiny-llama"), dtype=torch.float32)
    add_fused_lm_head(m, temperature=0.9, outputs=("log_probs", "entropy"))
    # Non-zero LoRA B so the adapter changes the outputs and receives gradient through the shared prompt.
    return get_peft_model(m, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))


def grouped_batch(vocab: int, C: int = 6):
    """Left-padded prompts (two distinct, interleaved) + right-padded completions of varying length."""
    g = torch.Generator().manual_seed(1)
    p1, p2 = torch.randint(5, vocab, (7,), generator=g), torch.randint(5, vocab, (5,), generator=g)
    ids, masks = [], []
    for p in (p1, p1, p2, p1, p2, p2):
        c = torch.randint(5, vocab, (C,), generator=g)
        n = int(torch.randint(2, C + 1, (1,), generator=g))
        pad = 7 - len(p)
        ids.append(torch.cat([torch.zeros(pad, dtype=torch.long), p, c]))
        masks.append(torch.cat([torch.zeros(pad), torch.ones(len(p) + n), torch.zeros(C - n)]).long())
    return torch.stack(ids), torch.stack(masks), C


def test_prefix_groups_find_shared_prompts():
    from convrl.rl.prefix import prefix_groups, shares_prefixes

    ids, am, C = grouped_batch(1000)
    groups = prefix_groups(ids, am, C)
    assert [g[0].tolist() for g in groups] == [[0, 1, 3], [2, 4, 5]]
    assert [len(g[1]) for g in groups] == [7, 5]
    assert shares_prefixes(ids, am, C)
    assert not shares_prefixes(ids[[0, 2]], am[[0, 2]], C)


@pytest.mark.parametrize("head", ["trl-fused", "plain"])
def test_shared_prefix_logps_and_grads_match_full_pass(peft_tiny, head):
    from convrl.rl.prefix import shared_prefix_logps

    ids, am, C = grouped_batch(peft_tiny.config.vocab_size)
    labels = ids.masked_fill(am == 0, -100)
    labels[:, :-C] = -100
    mask = am[:, -C:].bool()

    def grads(loss):
        peft_tiny.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in peft_tiny.named_parameters() if p.requires_grad}

    full = peft_tiny(input_ids=ids, attention_mask=am, labels=labels, fused_lm_head=True)
    ref_lp, ref_ent = full.log_probs[:, -C:], full.entropy[:, -C:]
    g_full = grads((ref_lp * mask).sum())
    # "plain": the LM head as ordinary autograd ops (temperature given) instead of TRL's chunked kernel.
    lp, ent = shared_prefix_logps(peft_tiny, ids, am, C, compute_entropy=True,
                                  temperature=0.9 if head == "plain" else None)
    g_shared = grads((lp * mask).sum())
    assert torch.allclose(lp[mask], ref_lp.detach()[mask], atol=1e-5)
    assert torch.allclose(ent[mask], ref_ent.detach()[mask], atol=1e-5)
    assert g_full.keys() == g_shared.keys() and g_full
    for name in g_full:
        assert torch.allclose(g_shared[name], g_full[name], rtol=1e-4, atol=1e-6), name


def test_shared_prefill_generates_the_same_tokens(peft_tiny):
    from convrl.rl.prefix import prefill_shared

    ids, am, C = grouped_batch(peft_tiny.config.vocab_size)
    pid, pmask = ids[:, :-C], am[:, :-C]
    with torch.no_grad():
        cache = prefill_shared(peft_tiny, pid, pmask)
        assert cache is not None and cache.get_seq_length() == pid.size(1) - 1
        shared = peft_tiny.generate(input_ids=pid, attention_mask=pmask, max_new_tokens=8, do_sample=False,
                                    cache=cache)
        plain = peft_tiny.generate(input_ids=pid, attention_mask=pmask, max_new_tokens=8, do_sample=False)
    assert torch.equal(shared, plain)


def test_inverse_cdf_sampler_matches_warped_distribution():
    from transformers import GenerationConfig
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopPLogitsWarper

    from convrl.rl.generation import sampling_setup

    config, processors = sampling_setup(GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9))
    assert config.do_sample is False and len(processors) == 1
    torch.manual_seed(0)
    logits = torch.randn(1, 20) * 2
    ids = torch.zeros(4000, 1, dtype=torch.long)
    out = processors[0](ids, logits.expand(4000, -1).clone())
    assert torch.isfinite(out).sum(1).eq(1).all()  # exactly one token left for greedy decoding
    freq = torch.bincount(out.argmax(-1), minlength=20).float() / 4000
    expected = torch.softmax(TopPLogitsWarper(0.9)(ids[:1], TemperatureLogitsWarper(0.7)(ids[:1], logits.clone())), -1)[0]
    assert (freq - expected).abs().max() < 0.03
    assert freq[expected == 0].sum() == 0  # top-p cut tokens are never drawn
    greedy = GenerationConfig(do_sample=False)
    assert sampling_setup(greedy) == (greedy, [])


@pytest.fixture(scope="module")
def tiny_pair():
    """The tiny GQA llama (4 query heads, 2 KV heads) with eager attention and with convrl's grouped attention."""
    from transformers import AutoModelForCausalLM

    from convrl import models
    from convrl.rl.decoding import gqa_attention

    path = models.resolve_policy("tiny-llama")
    eager = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    gqa = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=gqa_attention()).eval()
    assert gqa.config.num_key_value_heads < gqa.config.num_attention_heads
    return eager, gqa


def test_gqa_attention_matches_eager_with_and_without_padding(tiny_pair):
    eager, gqa = tiny_pair
    ids, am, _ = grouped_batch(eager.config.vocab_size)
    with torch.no_grad():
        for mask in (am, None):  # left-padded batch; and no mask at all (causal only)
            a = eager(input_ids=ids, attention_mask=mask).logits
            b = gqa(input_ids=ids, attention_mask=mask).logits
            keep = (am.bool() if mask is not None else torch.ones_like(am, dtype=torch.bool))
            assert torch.allclose(a[keep], b[keep], atol=1e-5)


def test_preallocated_cache_decodes_like_a_full_forward(tiny_pair):
    from convrl.rl.decoding import preallocated_cache

    _, gqa = tiny_pair
    ids, am, _ = grouped_batch(gqa.config.vocab_size)
    am = torch.ones_like(am)
    with torch.no_grad():
        full = gqa(input_ids=ids, attention_mask=am).logits
        cache = preallocated_cache(gqa.config, ids.size(1) + 2)
        step = [gqa(input_ids=ids[:, :8], attention_mask=am[:, :8], cache=cache, use_cache=True).logits]
        for t in range(8, ids.size(1)):  # one token at a time, as generate does
            step.append(gqa(input_ids=ids[:, t:t + 1], attention_mask=am[:, :t + 1], cache=cache,
                            use_cache=True).logits)
        assert cache.get_seq_length() == ids.size(1)
        assert torch.allclose(torch.cat(step, 1), full, atol=1e-5)
        with pytest.raises(RuntimeError, match="max_new_tokens"):
            gqa(input_ids=ids[:, :3], cache=cache, use_cache=True)


def test_rollout_levers_together_generate_the_plain_greedy_tokens(tiny_pair):
    """Shared prefill into a preallocated cache + grouped attention == eager generate with its own cache."""
    from convrl.rl.decoding import preallocated_cache
    from convrl.rl.prefix import prefill_shared

    eager, gqa = tiny_pair
    ids, am, C = grouped_batch(eager.config.vocab_size)
    pid, pmask = ids[:, :-C], am[:, :-C]
    with torch.no_grad():
        cache = prefill_shared(gqa, pid, pmask, preallocated_cache(gqa.config, pid.size(1) + 8))
        assert type(cache.layers[0]).__name__ == "PreallocatedLayer"
        fast = gqa.generate(input_ids=pid, attention_mask=pmask, max_new_tokens=8, min_new_tokens=8,
                            do_sample=False, cache=cache)
        plain = eager.generate(input_ids=pid, attention_mask=pmask, max_new_tokens=8, min_new_tokens=8,
                               do_sample=False)
    assert torch.equal(fast, plain)


def test_sliding_window_models_keep_the_default_cache():
    from transformers import LlamaConfig, MistralConfig

    from convrl.rl.decoding import preallocated_cache

    assert preallocated_cache(MistralConfig(num_hidden_layers=1, sliding_window=16), 32) is None
    assert preallocated_cache(LlamaConfig(num_hidden_layers=2), 32) is not None


def test_bf16_frozen_base_computes_what_autocast_computes_and_exports_fp32(tiny_policy_dir):
    """Frozen base projections stored in bf16: same autocast forward, and the export merges into fp32 weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from convrl.rl.grpo import frozen_linears_to_bf16, merged_policy

    ref = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32).eval()
    m = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32).eval()
    assert frozen_linears_to_bf16(m) > 0
    assert m.get_input_embeddings().weight.dtype == torch.float32  # embeddings / tied head keep fp32
    ids = torch.randint(5, m.config.vocab_size, (2, 9))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(ref(input_ids=ids).logits, m(input_ids=ids).logits)
    torch.manual_seed(0)
    peft_m = get_peft_model(m, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    assert all(p.dtype == torch.float32 for n, p in peft_m.named_parameters() if "lora_" in n)
    merged = merged_policy(peft_m, tiny_policy_dir)
    q = peft_m.get_base_model().model.layers[0].self_attn.q_proj
    want = ref.model.layers[0].self_attn.q_proj.weight + q.get_delta_weight("default")
    got = merged.model.layers[0].self_attn.q_proj.weight
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-7)


# Peaked rows (14.0) take the top-256 tier at every top_p; flatter rows take the top-4,096 tier at top_p 0.5 and
# transformers' warper at 0.95 (row 1 always).
@pytest.mark.parametrize("spread", [14.0, 5.0, 0.0])
def test_top_p_from_top_k_keeps_what_transformers_keeps(spread):
    from transformers.generation.logits_process import TopPLogitsWarper

    from convrl.rl.generation import TopPFromTopK

    torch.manual_seed(0)
    scores = torch.randn(6, 49152) * 2
    scores[:, :40] += spread
    scores[1, :] = torch.randperm(49152) * 1e-6  # nearly uniform, no ties (tie order is either's own): fallback only
    for top_p, keep_min in ((0.95, 1), (0.5, 1), (1e-6, 3)):
        want = TopPLogitsWarper(top_p, min_tokens_to_keep=keep_min)(None, scores.clone())
        got = TopPFromTopK(top_p, min_tokens_to_keep=keep_min)(None, scores.clone())
        assert torch.equal(torch.isfinite(got), torch.isfinite(want)), (top_p, keep_min)
        assert torch.equal(got[torch.isfinite(got)], want[torch.isfinite(want)])
        if top_p == 1e-6:
            assert torch.isfinite(got).sum(1).eq(3).all()


def test_scoring_only_the_policys_tokens_changes_nothing_the_loss_reads(peft_tiny):
    """Multi-turn completions are mostly a simulated user's turns; the passes score only the policy's tokens."""
    from convrl.rl.prefix import shared_prefix_logps, shared_prefix_ref_logps

    ids, am, C = grouped_batch(peft_tiny.config.vocab_size)
    scored = torch.zeros(ids.size(0), C, dtype=torch.bool)
    scored[:, ::2] = True  # every other completion token is the policy's, the rest the "user's"
    read = scored & am[:, -C:].bool()

    def grads(loss):
        peft_tiny.zero_grad()
        loss.backward()
        return {n: p.grad.clone() for n, p in peft_tiny.named_parameters() if p.requires_grad}

    lp_all, ent_all = shared_prefix_logps(peft_tiny, ids, am, C, compute_entropy=True, temperature=0.9)
    g_all = grads((lp_all * read).sum())
    lp, ent = shared_prefix_logps(peft_tiny, ids, am, C, compute_entropy=True, temperature=0.9, scored=scored)
    g = grads((lp * read).sum())
    assert torch.allclose(lp[read], lp_all.detach()[read], atol=1e-5)
    assert torch.allclose(ent[read], ent_all[read], atol=1e-5)
    assert (lp[~read] == 0).all() and (ent[~read] == 0).all()
    assert (lp_all.detach()[~scored & am[:, -C:].bool()] != 0).all()  # those were scored before
    for name in g_all:
        assert torch.allclose(g[name], g_all[name], rtol=1e-4, atol=1e-6), name
    with torch.no_grad():
        scaled_all, plain_all = shared_prefix_ref_logps(peft_tiny, ids, am, C, temperature=0.9)
        scaled, plain = shared_prefix_ref_logps(peft_tiny, ids, am, C, temperature=0.9, scored=scored)
    assert torch.allclose(scaled[read], scaled_all[read], atol=1e-5) and torch.allclose(plain[read], plain_all[read],
                                                                                       atol=1e-5)
    assert (scaled[~read] == 0).all() and (plain[~read] == 0).all()
    assert torch.allclose(scaled_all[read], lp_all.detach()[read], atol=1e-5)


@pytest.mark.parametrize("precision", ["fp32", "bf16-autocast"])
def test_blockwise_label_logps_match_plain_autograd(precision, monkeypatch):
    """rl.lm_head works a block of positions at a time (and recomputes logits on backward): same numbers."""
    from contextlib import nullcontext

    from convrl.rl import lm_head

    cpu = torch.device("cpu")
    for vocab in (49_152, 151_936):  # SmolLM2's and Qwen2.5's: a block's fp32 logits stay under glibc's 32 MB
        rows = lm_head._block_rows(vocab, cpu)
        assert 8 <= rows <= lm_head.BLOCK and rows * vocab * 4 <= 32 << 20
    monkeypatch.setattr(lm_head, "BLOCK", 16)  # 50 positions: three full blocks and a partial one
    torch.manual_seed(0)
    N, H, V = 50, 24, 300
    h = torch.randn(N, H, requires_grad=True)
    w = (0.3 * torch.randn(V, H)).requires_grad_()
    b = torch.randn(V, requires_grad=True)
    labels, g = torch.randint(0, V, (N,)), torch.randn(N)
    bf16 = precision != "fp32"

    def ctx():
        return torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext()

    with ctx():
        z = (h @ w.T)
        z = (z + b.to(z.dtype)).float() / 0.9
        want = z.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(z, -1)
        want_ent = -(torch.log_softmax(z, -1).exp() * torch.log_softmax(z, -1)).sum(-1)
    want_grads = torch.autograd.grad((want * g).sum(), (h, w, b))
    with ctx():
        lp, ent = lm_head.label_logps(h, w, labels, 0.9, entropy=True, bias=b)
    grads = torch.autograd.grad((lp * g).sum(), (h, w, b))
    tol = dict(rtol=2e-2, atol=2e-2) if bf16 else dict(rtol=1e-5, atol=1e-5)
    assert torch.allclose(lp, want, **tol) and torch.allclose(ent, want_ent.detach(), **tol)
    for got, ref in zip(grads, want_grads):
        assert torch.allclose(got, ref, **tol)
    with ctx(), torch.no_grad():
        scaled, plain = lm_head.label_logps_at_two_temperatures(h, w, labels, 0.9, bias=b)
        z1 = (h @ w.T)
        z1 = (z1 + b.to(z1.dtype)).float()
    assert torch.allclose(scaled, want, **tol)
    assert torch.allclose(plain, z1.gather(-1, labels[:, None]).squeeze(-1) - torch.logsumexp(z1, -1), **tol)


@pytest.mark.parametrize("autocast_bf16", [False, True])
def test_policy_pass_starts_from_the_reference_pass_below_the_adapters(monkeypatch, autocast_bf16):
    """With LoRA on the top layer only, the policy pass reads the reference pass's hidden states entering that layer
    (``BottomStash``) instead of running the frozen layers again: the same log-probs and LoRA gradients, bit for bit;
    other inputs, or no reference pass, run the whole stack."""
    from contextlib import nullcontext

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from convrl import models
    from convrl.rl import prefix

    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(models.resolve_policy("tiny-llama"), dtype=torch.float32)
    model = get_peft_model(m, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], layers_to_transform=[1],
                                         init_lora_weights=False))
    assert prefix.BottomStash.depth(prefix.backbone_of(model)) == 1
    ids, am, C = grouped_batch(model.config.vocab_size)
    mask = am[:, -C:].bool()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if autocast_bf16 else nullcontext
    used = []
    real = prefix._top_from_stash
    monkeypatch.setattr(prefix, "_top_from_stash", lambda *a: (used.append(1), real(*a))[1])

    def policy_pass():
        model.zero_grad()
        lp, _ = prefix.shared_prefix_logps(model, ids, am, C, temperature=0.9, autocast=autocast)
        (lp * mask).sum().backward()
        return lp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    prefix.BottomStash.capture(prefix.backbone_of(model), 1)  # an empty stash: nothing to start from
    full, g_full = policy_pass()
    assert not used
    prefix.shared_prefix_ref_logps(model, ids, am, C, 0.9, autocast=autocast)
    stashed, g_stashed = policy_pass()
    assert len(used) == 2  # both prompt groups started at layer 1
    assert torch.equal(stashed, full)
    assert g_full.keys() == g_stashed.keys() and g_full
    assert all(torch.equal(g_stashed[n], g_full[n]) for n in g_full)
    policy_pass()  # the stash is spent: the next pass over the same batch runs every layer
    assert len(used) == 2
    # TRL shuffles the batch between the two passes: rows are matched by content, and a group's rows are computed
    # in the policy pass's own order.
    perm = torch.tensor([4, 2, 0, 5, 1, 3])
    prefix.shared_prefix_ref_logps(model, ids, am, C, 0.9, autocast=autocast)
    model.zero_grad()
    shuffled, _ = prefix.shared_prefix_logps(model, ids[perm], am[perm], C, temperature=0.9, autocast=autocast)
    assert len(used) == 4 and torch.equal(shuffled, full[perm])
    prefix.shared_prefix_ref_logps(model, ids, am, C, 0.9, autocast=autocast)
    other = am.clone()
    other[0, -1] = 1 - other[0, -1]
    model.zero_grad()
    prefix.shared_prefix_logps(model, ids, other, C, temperature=0.9, autocast=autocast)
    assert len(used) == 5  # the group whose mask changed ran every layer; the other started from the stash
