"""Label log-probs (and entropies) through the LM head, a block of positions at a time, forward and backward.

The policy and reference passes of a GRPO step need, per scored token, its
log-prob ``logit[label] - logsumexp(logits)``. Computed on the whole
``[positions, vocab]`` logits at once, every intermediate (bf16 logits, their
fp32 copy, logsumexp's temporaries, the backward's gradient) is a fresh
100-500 MB tensor; glibc maps each one anew (it serves nothing above 32 MB
from its heap), and faulting the pages in costs more than the arithmetic on
them. On a 2-core AMD EPYC, ``torch.logsumexp`` over 1,200 x 49,152 fp32 logits
took 103 ms whole and 44 ms in blocks of 128 rows; a fresh fp32 copy of the
bf16 logits 69 ms (timed alone; ``bench/rl_step_throughput.py`` times the passes).

``label_logps`` computes blocks of up to ``BLOCK`` positions, whose logits stay
under that 32 MB (fewer positions for bigger vocabularies), so every block
reuses the same heap pages; the backward pass
recomputes each block's logits (one more bf16 GEMM over the head) instead of
keeping them. The arithmetic is autocast's: the GEMM in the compute dtype with
its result rounded to it, then fp32 for the softmax. ``tests/test_rl_speed.py``
compares log-probs, entropies and gradients with plain autograd ops.

    lp, ent = label_logps(hidden[idx], lm_head.weight, labels[idx], temperature=0.9, entropy=True)
"""

from __future__ import annotations

import torch

# 128 x 49,152 fp32 logits are 25 MB: under glibc's largest mmap threshold (32 MB), so blocks reuse heap pages.
BLOCK = 128
_CPU_BLOCK_BYTES = 24 << 20


def _block_rows(vocab: int, device: torch.device) -> int:
    """Positions per block: at most ``BLOCK``, fewer for big vocabularies on a CPU (Qwen's 151,936: 41)."""
    if device.type != "cpu":
        return BLOCK * 8  # no page faults to avoid on an accelerator: fewer, larger GEMMs
    return max(8, min(BLOCK, _CPU_BLOCK_BYTES // (4 * vocab)))


def _compute_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    kind = hidden.device.type
    return torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else weight.dtype


def _block_logits(h, w, bias, temperature):
    z = h.to(w.dtype) @ w.T
    if bias is not None:
        z = z + bias.to(z.dtype)
    z = z.float()
    return z.div_(temperature) if temperature != 1.0 else z


class _LabelLogps(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, labels, temperature, want_entropy, dtype):
        w = weight.to(dtype)
        lp = hidden.new_empty(labels.shape, dtype=torch.float32)
        lse = torch.empty_like(lp)
        ent = torch.empty_like(lp) if want_entropy else None
        B = _block_rows(weight.size(0), hidden.device)
        for i in range(0, labels.numel(), B):
            z = _block_logits(hidden[i:i + B], w, bias, temperature)
            lse[i:i + B] = m = torch.logsumexp(z, -1)
            lp[i:i + B] = z.gather(-1, labels[i:i + B, None]).squeeze(-1) - m
            if want_entropy:
                # H = lse - sum(p * z): two passes over the block instead of log_softmax's several.
                p = (z - m[:, None]).exp_()
                ent[i:i + B] = m - p.mul_(z).sum(-1)
        ctx.save_for_backward(hidden, weight, bias, labels, lse)
        ctx.temperature, ctx.dtype = temperature, dtype
        if ent is not None:
            ctx.mark_non_differentiable(ent)
        return lp, ent

    @staticmethod
    def backward(ctx, g_lp, _g_ent):
        hidden, weight, bias, labels, lse = ctx.saved_tensors
        T, dtype = ctx.temperature, ctx.dtype
        w = weight.to(dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        g_h = torch.empty_like(hidden) if need_h else None
        g_w = torch.zeros_like(weight, dtype=torch.float32) if need_w else None
        g_b = torch.zeros_like(bias, dtype=torch.float32) if need_b else None
        B = _block_rows(weight.size(0), hidden.device)
        for i in range(0, labels.numel(), B):
            h = hidden[i:i + B]
            z = _block_logits(h, w, bias, T)
            g = g_lp[i:i + B]
            # d lp / d z = onehot(label) - softmax(z), times the incoming gradient, through the 1/T scaling.
            gz = (z - lse[i:i + B, None]).exp_().mul_(-g[:, None])
            gz.scatter_add_(-1, labels[i:i + B, None], g[:, None])
            if T != 1.0:
                gz.div_(T)
            gz = gz.to(dtype)
            if need_h:
                g_h[i:i + B] = (gz @ w).to(hidden.dtype)
            if need_w:
                g_w += (gz.T @ h.to(dtype)).float()
            if need_b:
                g_b += gz.float().sum(0)
        return (g_h, g_w.to(weight.dtype) if need_w else None, g_b.to(bias.dtype) if need_b else None,
                None, None, None, None)


def label_logps(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                entropy: bool = False, bias: torch.Tensor | None = None):
    """(log-prob of each label, entropy or None) for ``hidden`` [N, H] under the head ``weight`` [V, H].

    Differentiable in ``hidden`` (and ``weight``/``bias`` when they require
    grad); the entropy is returned without gradient, as TRL logs it.
    """
    return _LabelLogps.apply(hidden, weight, bias, labels, float(temperature), bool(entropy),
                             _compute_dtype(hidden, weight))


@torch.no_grad()
def label_logps_at_two_temperatures(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                                    temperature: float, bias: torch.Tensor | None = None):
    """(log-probs at ``temperature``, log-probs at temperature 1) of each label: one GEMM per block for both."""
    w = weight.to(_compute_dtype(hidden, weight))
    scaled = hidden.new_empty(labels.shape, dtype=torch.float32)
    plain = torch.empty_like(scaled)
    B = _block_rows(weight.size(0), hidden.device)
    for i in range(0, labels.numel(), B):
        z = _block_logits(hidden[i:i + B], w, bias, 1.0)
        t = labels[i:i + B, None]
        plain[i:i + B] = z.gather(-1, t).squeeze(-1) - torch.logsumexp(z, -1)
        z.div_(temperature)
        scaled[i:i + B] = z.gather(-1, t).squeeze(-1) - torch.logsumexp(z, -1)
    return scaled, plain
