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


def _group_inputs(input_ids, attention_mask, C, groups):
    """Per group: (rows, prompt ids, fed ids, labels, attention mask, position ids)."""
    for rows, prompt in groups:
        G, Lp = rows.numel(), prompt.numel()
        completion = input_ids[rows, -C:]
        cmask = attention_mask[rows, -C:]
        # The last prompt token is re-fed with the completion: its hidden state predicts completion token 0.
        x = torch.cat([prompt[-1:].expand(G, 1), completion], dim=1)
        labels = x.masked_fill(torch.cat([torch.zeros_like(cmask[:, :1]), cmask], 1) == 0, -100)
        am = torch.cat([torch.ones(G, Lp, dtype=cmask.dtype, device=cmask.device), cmask], dim=1)
        pos = torch.arange(Lp - 1, Lp + C, device=x.device).expand(G, -1)
        yield rows, prompt, x, labels, am, pos


def _prompt_cache(backbone, prompt_ids, G):
    """KV cache of ``prompt_ids`` (all but the re-fed last token), repeated for the group's G rows."""
    if prompt_ids.numel() < 1:
        return None
    cache = backbone(input_ids=prompt_ids[None], use_cache=True).cache
    cache.batch_repeat_interleave(G)
    return cache


# Above this many logits per group (fp32, 1 GiB), the LM head goes through TRL's chunked kernel instead. The demo's
# two-turn groups (8 rows x ~230 tokens x 49,152) hold 91M: at the former 64M they took the chunked kernel, whose
# forward and backward took 1.4 + 3.3 s against 1.3 + 2.4 s as plain ops, at a lower peak RSS (5.4 vs 5.8 GB; SmolLM2
# LoRA, bf16 autocast, 2 cores).
FULL_LOGITS_LIMIT = 256 * 2**20


def _label_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-prob of each next-token label (``labels[:, 1:]``, -100 = none -> 0) under ``logits`` [G, C, V]."""
    target = labels[:, 1:]
    picked = logits.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (picked - torch.logsumexp(logits, -1)) * (target != -100)


def _head_logps(head, hidden, labels, temperature: float, compute_entropy: bool):
    """Log-probs of ``labels[:, 1:]`` (and entropies) from ``hidden`` [G, C+1, H], plain autograd through the head.

    TRL's chunked LM-head kernel never materialises the logits, which matters
    for big vocabularies on GPUs; on a CPU its backward recomputes every tile
    and accumulates the gradient GEMMs in fp32 (half of a GRPO step's backward
    on SmolLM2-135M). When a group's logits fit in memory, one bf16 GEMM each
    way (fp32 accumulation inside, one rounding of the result, as for any
    autocast linear layer) is the same computation, faster.
    """
    logits = head(hidden[:, :-1]).float() / temperature
    lp = _label_logps(logits, labels)
    entropy = None
    if compute_entropy:
        with torch.no_grad():
            logp = torch.log_softmax(logits, -1)
            entropy = -(logp.exp() * logp).sum(-1) * (labels[:, 1:] != -100)
    return lp, entropy


def shared_prefix_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        compute_entropy: bool = False, autocast=None, groups=None, temperature: float | None = None):
    """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens, one prompt pass per group.

    Same shapes and semantics as ``GRPOTrainer._get_per_token_logps_and_entropies``.
    With ``temperature`` and a plain LM head (``plain_lm_head``) the head runs
    as ordinary autograd ops (``_head_logps``) when a group's logits fit under
    ``FULL_LOGITS_LIMIT``; otherwise ``model`` must carry TRL's fused LM head
    (``add_fused_lm_head``; GRPOTrainer adds it), which applies its own
    temperature. ``groups`` is ``prefix_groups(...)`` when the caller has it.
    """
    from contextlib import nullcontext

    autocast = autocast or nullcontext
    backbone = backbone_of(model)
    head = getattr(model, "module", model).get_output_embeddings()
    groups = groups or prefix_groups(input_ids, attention_mask, logits_to_keep)
    C = logits_to_keep
    plain = temperature is not None and plain_lm_head(getattr(model, "module", model).config)
    logps = entropies = None
    for rows, prompt, x, labels, am, pos in _group_inputs(input_ids, attention_mask, C, groups):
        with autocast():
            cache = _prompt_cache(backbone, prompt[:-1], rows.numel())
            if plain and rows.numel() * C * head.weight.size(0) <= FULL_LOGITS_LIMIT:
                hidden = backbone(input_ids=x, attention_mask=am, position_ids=pos, cache=cache).last_hidden_state
                lp, ent = _head_logps(head, hidden, labels, temperature, compute_entropy)
            else:
                out = model(input_ids=x, attention_mask=am, position_ids=pos, cache=cache, labels=labels,
                            fused_lm_head=True)
                lp, ent = out.log_probs[:, -C:], (out.entropy[:, -C:] if compute_entropy else None)
        if logps is None:
            logps = lp.new_zeros(input_ids.size(0), C)
            entropies = lp.new_zeros(input_ids.size(0), C) if compute_entropy else None
        # index_copy keeps the autograd graph of every group.
        logps = logps.index_copy(0, rows, lp)
        if compute_entropy:
            entropies = entropies.index_copy(0, rows, ent)
    return logps, entropies


def plain_lm_head(config) -> bool:
    """Logits are ``hidden @ W.T`` (no soft-capping or scaling), so ``shared_prefix_ref_logps`` may compute them."""
    cfg = config.get_text_config()
    return all(getattr(cfg, k, None) is None for k in ("final_logit_softcapping", "logit_scale", "output_multiplier",
                                                      "lm_head_multiplier", "logits_scaling"))


@torch.no_grad()
def shared_prefix_ref_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                            temperature: float, autocast=None, groups=None):
    """(log-probs at ``temperature``, log-probs at temperature 1) of the last ``logits_to_keep`` tokens.

    The reference pass of GRPO: the first is what the KL term needs (what
    ``shared_prefix_logps`` returns), the second is the plain likelihood under
    the same frozen model, i.e. the fluency head's input. One backbone pass,
    one LM-head projection, no gradient. Needs ``plain_lm_head(config)``.
    """
    from contextlib import nullcontext

    autocast = autocast or nullcontext
    backbone = backbone_of(model)
    head = (getattr(model, "module", model)).get_output_embeddings()
    groups = groups or prefix_groups(input_ids, attention_mask, logits_to_keep)
    C = logits_to_keep
    scaled = input_ids.new_zeros(input_ids.size(0), C, dtype=torch.float32)
    plain = torch.zeros_like(scaled)
    for rows, prompt, x, labels, am, pos in _group_inputs(input_ids, attention_mask, C, groups):
        with autocast():
            cache = _prompt_cache(backbone, prompt[:-1], rows.numel())
            hidden = backbone(input_ids=x, attention_mask=am, position_ids=pos, cache=cache).last_hidden_state
            # Rows in blocks whose (rows, C, vocab) logits stay under FULL_LOGITS_LIMIT.
            step = max(1, FULL_LOGITS_LIMIT // max(1, C * head.weight.size(0)))
            for j in range(0, rows.numel(), step):
                logits = head(hidden[j:j + step, :C]).float()
                plain[rows[j:j + step]] = _label_logps(logits, labels[j:j + step])
                scaled[rows[j:j + step]] = _label_logps(logits.div_(temperature), labels[j:j + step])
    return scaled, plain


@torch.no_grad()
def prefill_shared(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, cache=None):
    """KV cache of all but the last token of a left-padded prompt batch, computed once per distinct prompt.

    Pass it to ``model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
    cache=cache)``: generation then starts at the last prompt token.
    Position ids follow ``generate``'s own convention for left padding.
    An empty ``cache`` (e.g. ``decoding.preallocated_cache``) is filled instead
    of a new ``DynamicCache``. Returns ``None`` when no two rows share a prompt
    (nothing to gain; ``cache`` is left empty).
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
    cache = backbone_of(model)(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
                               cache=cache).cache
    cache.batch_select_indices(torch.tensor(index, device=prompt_ids.device))
    return cache
