"""One-token decoding steps of Llama-architecture models without transformers' per-step machinery (CPU inference).

``CachedDecoder`` spends almost all of a rollout in one-token steps. Through
transformers' forward a step of SmolLM2-135M for 9 rows took 41-42 ms on a
2-core AMD EPYC (bf16, prepacked linears, fused attention); profiled, the
matmuls are about 17 ms of it (they stream every weight once), attention 7 ms,
and the rest the model's per-layer bookkeeping (mask building, seven separate
projection calls, dtype casts, views) around them. ``FusedStep`` runs the same layers with the query/key/value
projections as one GEMM and the gate/up projections as another (weights
concatenated and, in bf16, prepacked for oneDNN once per weight change), and
computes RMSNorm, RoPE, attention and the residuals with the ops and dtypes
transformers uses, so the numbers are those of the model's own forward up to
the GEMMs' rounding: logits within float rounding in fp32 and the same tokens
in bf16 in tests, and the demo's three RL seeds reproduced every figure. 32-33
ms per step for those 9 rows; ``bench/decode_levers.py --rows 9 --prompt 250
--new 96``: 4.79 -> 3.80 s, 1.26x, median of 3, the same AMD. Evaluation keeps
transformers' ``generate``: under it this step gave bit-identical logits but
saved little at evaluation's batches (1.1x at 8 rows, none at 16-32;
``docs/learning-log.md``).

Weights are read from the model on every call, and the fused copies are rebuilt
when a source weight changed (its tensor's version counter), so the rollout
copy's per-step LoRA refresh keeps working. Only for inference models on a CPU
whose every layer is the plain Llama block (``supported`` says why not)::

    step = FusedStep(model)                          # after pack_linears(model)
    logits = step(ids, positions, cache, slot_mask)  # ids/positions [b]; cache: decoding.preallocated_cache
"""

from __future__ import annotations

import weakref

import torch
from torch import nn

# Architectures whose decoder layer is exactly Llama's: pre-RMSNorm (weight * normalised, fp32 inside), q/k/v/o
# projections (Qwen2: with q/k/v biases), RoPE on q and k, SiLU-gated MLP. Others fall back to the model's forward.
_LLAMA_LIKE = ("llama", "qwen2")


def supported(model) -> str | None:
    """None when ``FusedStep`` can run ``model``; otherwise why not (the caller keeps transformers' forward)."""
    cfg = model.config
    if cfg.model_type not in _LLAMA_LIKE:
        return f"model type {cfg.model_type!r} is not one of {_LLAMA_LIKE}"
    if next(model.parameters()).device.type != "cpu":
        return "not on a CPU"
    if getattr(cfg, "hidden_act", None) != "silu":
        return f"activation {cfg.hidden_act!r}, not silu"
    rotary = getattr(model.model, "rotary_emb", None)
    if rotary is None or getattr(rotary, "attention_scaling", 1.0) != 1.0:
        return "RoPE with attention scaling"
    for layer in model.model.layers:
        attn = layer.self_attn
        extra = {n for n, _ in attn.named_children()} - {"q_proj", "k_proj", "v_proj", "o_proj"}
        if extra or getattr(layer, "attention_type", "full_attention") != "full_attention":
            return f"attention with {sorted(extra) or 'sliding windows'}"
    return None


def _rms(x: torch.Tensor, norm) -> torch.Tensor:
    # LlamaRMSNorm's own sequence of ops, so the rounding is the same.
    xf = x.to(torch.float32)
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * xf.to(x.dtype)


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    h = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., h:], x[..., :h]), dim=-1) * sin


class _Fused:
    """Several projections of one input as one linear: concatenated weights (prepacked in bf16), rebuilt on change."""

    def __init__(self, linears: list[nn.Linear]):
        self.linears = linears
        self.version = None
        self.weight = self.bias = None
        self.packed = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        version = tuple((id(m.weight), m.weight._version) for m in self.linears)
        if version != self.version:
            self._build()
            self.version = version
        if self.packed:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        return nn.functional.linear(x, self.weight, self.bias)

    @torch.no_grad()
    def _build(self) -> None:
        from convrl.rl.packed_linear import packing_supported

        w = torch.cat([m.weight.detach() for m in self.linears])
        biases = [m.bias for m in self.linears]
        self.bias = None if all(b is None for b in biases) else torch.cat([
            b.detach() if b is not None else w.new_zeros(m.out_features) for b, m in zip(biases, self.linears)])
        self.packed = packing_supported(w.dtype, w.device)
        self.weight = torch.ops.mkldnn._reorder_linear_weight(w, 8) if self.packed else w


class FusedStep:
    """One new token per row through a Llama-architecture model over a preallocated KV cache; logits of that token."""

    def __init__(self, model):
        reason = supported(model)
        if reason is not None:
            raise ValueError(f"FusedStep cannot run this model: {reason}")
        cfg = model.config
        self._model = weakref.ref(model)  # the per-model registry below is keyed weakly on the model
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.intermediate = cfg.intermediate_size
        self.qkv = [_Fused([layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj])
                    for layer in model.model.layers]
        self.gate_up = [_Fused([layer.mlp.gate_proj, layer.mlp.up_proj]) for layer in model.model.layers]

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, positions: torch.Tensor, cache, slot_mask: torch.Tensor) -> torch.Tensor:
        """Logits [b, vocab] after feeding ``ids`` [b] at ``positions`` [b]; ``slot_mask`` [b, slots] includes the new
        slot. Rows past ``b`` in the cache (stopped rows, ``CachedDecoder._compact``) are left alone."""
        model = self._model()
        m = model.model
        b, H, KV, D = ids.shape[0], self.heads, self.kv_heads, self.head_dim
        x = m.embed_tokens(ids)
        cos, sin = m.rotary_emb(x, positions[:, None])  # [b, 1, D] in x's dtype, as the model computes them
        mask = slot_mask.bool()[:, None, None, :]
        for i, layer in enumerate(m.layers):
            y = self.qkv[i](_rms(x, layer.input_layernorm))
            q = _rotate(y[:, :H * D].view(b, H, D), cos, sin)
            k = _rotate(y[:, H * D:(H + KV) * D].view(b, KV, D), cos, sin)
            keys, values = cache.layers[i].update(k[:, :, None], y[:, (H + KV) * D:].view(b, KV, 1, D))
            # The query heads of each KV head as its "query positions" (decoding.py's one-token attention).
            a = nn.functional.scaled_dot_product_attention(q.view(b, KV, H // KV, D), keys, values, attn_mask=mask,
                                                           scale=layer.self_attn.scaling)
            x = x + layer.self_attn.o_proj(a.reshape(b, H * D))
            g = self.gate_up[i](_rms(x, layer.post_attention_layernorm))
            x = x + layer.mlp.down_proj(nn.functional.silu(g[:, :self.intermediate]) * g[:, self.intermediate:])
        return model.lm_head(_rms(x, m.norm))


# One FusedStep per live model, so a frozen model (the simulated user) builds its fused weights once, not once per
# rollout; kept beside the model rather than on it, as the packed weights cannot be pickled or deep-copied.
_STEPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fused_step_for(model) -> FusedStep | None:
    """The model's ``FusedStep``, or None where it does not apply (training mode, ``supported`` says no)."""
    if model.training:
        return None
    if model not in _STEPS:
        _STEPS[model] = FusedStep(model) if supported(model) is None else None
    return _STEPS[model]
