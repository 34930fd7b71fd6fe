"""Prompt-prefix sharing for GRPO groups: run each distinct prompt once, not once per completion.

A GRPO step scores ``num_generations`` completions of the same prompt. TRL's
forward passes (policy log-probs with gradient, reference log-probs for the KL
term) and the rollout prefill run the full ``prompt + completion`` sequence for
every row, so a 200-token persona prompt is computed 8 times for 8 completions
of 64 tokens. Here the prompt goes through the model once per group, its KV
cache is repeated across the group, and only the completion tokens run per row.

The result is exact, not an approximation: the repeated cache is a
differentiable view of one prompt pass, so backward sums the group's gradients
into that pass, and RoPE attention depends only on relative positions, so
dropping the left padding does not change any score (up to float rounding).

    logps, entropy = shared_prefix_logps(model, input_ids, attention_mask, logits_to_keep)
    cache = prefill_shared(model, prompt_ids, prompt_mask)   # then model.generate(..., cache=cache)
"""

from __future__ import annotations

import torch


def backbone_of(model):
    """The decoder stack (no LM head) of a causal LM, a PEFT model or an accelerate-wrapped one."""
    m = getattr(model, "module", model)
    if hasattr(m, "get_base_model"):
        m = m.get_base_model()
    return getattr(m, m.base_model_prefix)


def prefix_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int):
    """Rows of a left-padded ``prompt + completion`` batch grouped by identical (unpadded) prompt.

    Returns ``[(row_indices, prompt_ids), ...]`` in first-seen order.
    """
    n_prompt = input_ids.size(1) - n_completion
    groups: dict[tuple, list[int]] = {}
    prompts: dict[tuple, torch.Tensor] = {}
    for i in range(input_ids.size(0)):
        p = input_ids[i, :n_prompt][attention_mask[i, :n_prompt].bool()]
        key = tuple(p.tolist())
        groups.setdefault(key, []).append(i)
        prompts.setdefault(key, p)
    return [(torch.tensor(rows, device=input_ids.device), prompts[k]) for k, rows in groups.items()]


def shares_prefixes(input_ids: torch.Tensor, attention_mask: torch.Tensor, n_completion: int) -> bool:
    return len(prefix_groups(input_ids, attention_mask, n_completion)) < input_ids.size(0)


def shared_prefix_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        compute_entropy: bool = False, autocast=None, groups=None):
    """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens, one prompt pass per group.

    ``model`` must carry TRL's fused LM head (``add_fused_lm_head``; GRPOTrainer
    adds it), so temperature scaling and the chunked log-softmax are TRL's own.
    Same shapes and semantics as ``GRPOTrainer._get_per_token_logps_and_entropies``.
    ``groups`` is ``prefix_groups(...)`` when the caller already has it.
    """
    from contextlib import nullcontext

    autocast = autocast or nullcontext
    backbone = backbone_of(model)
    B = input_ids.size(0)
    C = logits_to_keep
    logps = None
    entropies = None
    for rows, prompt in groups or prefix_groups(input_ids, attention_mask, C):
        G, Lp = rows.numel(), prompt.numel()
        completion = input_ids[rows, -C:]
        cmask = attention_mask[rows, -C:]
        # The last prompt token is re-fed with the completion: its hidden state predicts completion token 0.
        x = torch.cat([prompt[-1:].expand(G, 1), completion], dim=1)
        labels = x.masked_fill(torch.cat([torch.zeros_like(cmask[:, :1]), cmask], 1) == 0, -100)
        am = torch.cat([torch.ones(G, Lp, dtype=cmask.dtype, device=cmask.device), cmask], dim=1)
        pos = torch.arange(Lp - 1, Lp + C, device=x.device).expand(G, -1)
        with autocast():
            cache = None
            if Lp > 1:
                cache = backbone(input_ids=prompt[None, :-1], use_cache=True).cache
                cache.batch_repeat_interleave(G)
            out = model(input_ids=x, attention_mask=am, position_ids=pos, cache=cache, labels=labels,
                        fused_lm_head=True)
        lp = out.log_probs[:, -C:]
        if logps is None:
            logps = lp.new_zeros(B, C)
            entropies = lp.new_zeros(B, C) if compute_entropy else None
        # index_copy keeps the autograd graph of every group.
        logps = logps.index_copy(0, rows, lp)
        if compute_entropy:
            entropies = entropies.index_copy(0, rows, out.entropy[:, -C:])
    return logps, entropies


@torch.no_grad()
def prefill_shared(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor):
    """KV cache of all but the last token of a left-padded prompt batch, computed once per distinct prompt.

    Pass it to ``model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
    cache=cache)``: generation then starts at the last prompt token.
    Position ids follow ``generate``'s own convention for left padding.
    Returns ``None`` when no two rows share a prompt (nothing to gain).
    """
    keys: dict[tuple, int] = {}
    index = []
    for i in range(prompt_ids.size(0)):
        key = tuple(prompt_ids[i][prompt_mask[i].bool()].tolist())
        index.append(keys.setdefault(key, len(keys)))
    if len(keys) == prompt_ids.size(0) or prompt_ids.size(1) < 2:
        return None
    first = [index.index(u) for u in range(len(keys))]
    ids, mask = prompt_ids[first, :-1], prompt_mask[first, :-1]
    pos = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    cache = backbone_of(model)(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True).cache
    cache.batch_select_indices(torch.tensor(index, device=prompt_ids.device))
    return cache
