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

When the adapters sit on the top layers only (``rl.lora.top_layers``), the
layers below them are the same frozen weights in the reference pass and in
the policy pass, so they compute the same hidden states twice. The reference
pass keeps the hidden states entering the lowest adapted layer
(``BottomStash``), and the policy pass of the same batch starts there: the
same numbers, about half its forward.
"""

from __future__ import annotations

import weakref

import torch

from convrl.rl.lm_head import label_logps, label_logps_at_two_temperatures


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


def _group_inputs(input_ids, attention_mask, C, groups, scored=None):
    """Per group: (rows, prompt ids, fed ids, labels, attention mask, position ids).

    ``scored`` ([rows, C] bool, optional): completion tokens whose log-prob is
    read (e.g. the policy's own tokens of a multi-turn rollout); the others get
    label -100 but are still attended to.
    """
    for rows, prompt in groups:
        G, Lp = rows.numel(), prompt.numel()
        completion = input_ids[rows, -C:]
        cmask = attention_mask[rows, -C:]
        # The last prompt token is re-fed with the completion: its hidden state predicts completion token 0.
        x = torch.cat([prompt[-1:].expand(G, 1), completion], dim=1)
        read = cmask if scored is None else cmask * scored[rows].to(cmask.dtype)
        labels = x.masked_fill(torch.cat([torch.zeros_like(read[:, :1]), read], 1) == 0, -100)
        am = torch.cat([torch.ones(G, Lp, dtype=cmask.dtype, device=cmask.device), cmask], dim=1)
        pos = torch.arange(Lp - 1, Lp + C, device=x.device).expand(G, -1)
        yield rows, prompt, x, labels, am, pos


class BottomStash:
    """The reference pass's hidden states entering the lowest adapted layer, per prompt group, for the policy pass.

    Only for Llama-like decoder stacks (``embed -> layers -> norm`` with a shared ``rotary_emb``): the policy
    pass then runs the top layers itself, as the model's forward would (``_run_top``). A group is taken only when
    the policy pass sees exactly the reference pass's inputs; with ``rl.mask_truncated_completions`` the reference
    pass attends to cut-off rows the policy pass masks, so such groups run the whole stack.
    """

    _by_backbone: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()

    @staticmethod
    def depth(backbone) -> int:
        """Index of the lowest decoder layer with an adapter or a trainable weight; 0 when nothing below it is
        frozen or the stack is not Llama-like (nothing to stash)."""
        if not all(hasattr(backbone, a) for a in ("layers", "norm", "rotary_emb", "get_input_embeddings")):
            return 0
        if any(p.requires_grad for p in backbone.get_input_embeddings().parameters()):
            return 0
        for i, layer in enumerate(backbone.layers):
            if any(p.requires_grad or "lora_" in n for n, p in layer.named_parameters()):
                return i
        return 0

    @classmethod
    def capture(cls, backbone, k: int) -> "_Capture":
        """A context manager recording the inputs of layer ``k`` while open, into a new stash for ``backbone``."""
        entries: list[dict] = []
        cls._by_backbone[backbone] = entries
        return _Capture(backbone.layers[k], k, entries)

    @classmethod
    def take(cls, backbone, prompt, x, am, pos) -> dict | None:
        """The stashed entry of these inputs (removed from the stash) with its rows in this call's order, or None.

        TRL shuffles a generation batch between the reference pass and the loss, so the rows of a group arrive
        in another order: each is matched to a stashed row with the same tokens and mask.
        """
        entries = cls._by_backbone.get(backbone) or []
        for i, e in enumerate(entries):
            if e["x"].shape != x.shape or not torch.equal(e["prompt"], prompt) or not torch.equal(e["pos"], pos):
                continue
            order = _match_rows(torch.cat([x, am], 1), torch.cat([e["x"], e["am"]], 1))
            if order is not None:
                entries.pop(i)
                return {**e, "h_x": e["h_x"][order], "am": e["am"][order]}
        return None


class _Capture:
    """Records what enters one decoder layer; ``add`` files a group's prompt and completion passes as one entry."""

    def __init__(self, layer, k: int, entries: list[dict]):
        self.layer, self.k, self.entries, self.seen = layer, k, entries, []

    def _hook(self, module, args, kwargs):
        self.seen.append((args[0] if args else kwargs["hidden_states"]).detach())

    def __enter__(self):
        self.handle = self.layer.register_forward_pre_hook(self._hook, with_kwargs=True)
        return self

    def add(self, prompt, x, am, pos) -> None:
        # the group's prompt pass (absent for a one-token prompt), then its completion pass
        h_prompt = self.seen[0] if len(self.seen) == 2 else None
        self.entries.append({"k": self.k, "prompt": prompt, "x": x, "am": am, "pos": pos, "h_prompt": h_prompt,
                             "h_x": self.seen[-1]})
        self.seen.clear()

    def __exit__(self, *exc):
        self.handle.remove()


def _match_rows(rows: torch.Tensor, stashed: torch.Tensor) -> torch.Tensor | None:
    """Indices into ``stashed`` giving ``rows`` (each stashed row used once), or None when some row has no match."""
    free = list(range(stashed.size(0)))
    order = []
    for r in rows:
        j = next((j for j in free if torch.equal(stashed[j], r)), None)
        if j is None:
            return None
        free.remove(j)
        order.append(j)
    return torch.tensor(order, device=rows.device)


def _run_top(backbone, k: int, hidden, attention_mask, position_ids, cache):
    """Layers ``k..`` and the final norm of a Llama-like stack from the hidden states entering layer ``k``: the
    loop of the model's own forward, with the mask sized against layer ``k``'s cache (the layers below hold none)."""
    from transformers.masking_utils import create_causal_mask

    mask = create_causal_mask(config=backbone.config, inputs_embeds=hidden, attention_mask=attention_mask,
                              cache=cache, position_ids=position_ids, layer_idx=k)
    embeddings = backbone.rotary_emb(hidden, position_ids=position_ids)
    for layer in backbone.layers[k:backbone.config.num_hidden_layers]:
        hidden = layer(hidden, attention_mask=mask, position_embeddings=embeddings, position_ids=position_ids,
                       cache=cache, use_cache=cache is not None)
    return backbone.norm(hidden)


def _top_from_stash(backbone, entry: dict, G: int):
    """The policy pass of one group from a stashed entry: the top layers over the prompt (their cache), then over
    the completions."""
    from transformers import DynamicCache

    k, cache = entry["k"], None
    if entry["h_prompt"] is not None:
        cache = DynamicCache(config=backbone.config)
        n = entry["h_prompt"].size(1)
        _run_top(backbone, k, entry["h_prompt"], None, torch.arange(n, device=entry["x"].device)[None], cache)
        cache.batch_repeat_interleave(G)
    return _run_top(backbone, k, entry["h_x"], entry["am"], entry["pos"], cache)


def _prompt_cache(backbone, prompt_ids, G):
    """KV cache of ``prompt_ids`` (all but the re-fed last token), repeated for the group's G rows."""
    if prompt_ids.numel() < 1:
        return None
    cache = backbone(input_ids=prompt_ids[None], use_cache=True).cache
    cache.batch_repeat_interleave(G)
    return cache


def _head_logps(head, hidden, labels, temperature: float, compute_entropy: bool):
    """Log-probs of ``labels[:, 1:]`` (and entropies) from ``hidden`` [G, C+1, H], through the head in blocks.

    TRL's chunked LM-head kernel never materialises the logits, which matters
    for big vocabularies on GPUs; on a CPU its backward recomputes every tile
    and accumulates the gradient GEMMs in fp32 (half of a GRPO step's backward
    on SmolLM2-135M). ``lm_head.label_logps`` also works a block at a time, with
    autocast's bf16 GEMMs (fp32 accumulation inside, one rounding of the result).

    The head runs only at positions with a label (not padding, not tokens the
    loss never reads such as a simulated user's turns): on a CPU the
    vocabulary-wide passes over the logits cost as much as the GEMM. Other
    positions get 0.
    """
    target = labels[:, 1:]
    idx = (target != -100).nonzero(as_tuple=True)
    lp, ent = label_logps(hidden[:, :-1][idx], head.weight, target[idx], temperature, compute_entropy,
                          head.bias)
    # index_put (not in place) keeps the graph from the scored positions to the [G, C] result.
    zeros = torch.zeros(target.shape, dtype=lp.dtype, device=lp.device)
    return zeros.index_put(idx, lp), (zeros.index_put(idx, ent) if compute_entropy else None)


def shared_prefix_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        compute_entropy: bool = False, autocast=None, groups=None, temperature: float | None = None,
                        scored: torch.Tensor | None = None):
    """Per-token log-probs (and entropies) of the last ``logits_to_keep`` tokens, one prompt pass per group.

    Same shapes and semantics as ``GRPOTrainer._get_per_token_logps_and_entropies``.
    With ``temperature`` and a plain LM head (``plain_lm_head``) the head runs
    block by block over the scored positions (``_head_logps``); otherwise
    ``model`` must carry TRL's fused LM head (``add_fused_lm_head``;
    GRPOTrainer adds it), which applies its own temperature. ``groups`` is
    ``prefix_groups(...)`` when the caller has it.
    ``scored`` ([B, logits_to_keep] bool): on the plain-head path only these
    completion tokens get log-probs (and entropies); the rest are 0.
    """
    from contextlib import nullcontext

    autocast = autocast or nullcontext
    backbone = backbone_of(model)
    head = getattr(model, "module", model).get_output_embeddings()
    groups = groups or prefix_groups(input_ids, attention_mask, logits_to_keep)
    C = logits_to_keep
    plain = temperature is not None and plain_lm_head(getattr(model, "module", model).config)
    logps = entropies = None
    scored = scored if plain else None
    for rows, prompt, x, labels, am, pos in _group_inputs(input_ids, attention_mask, C, groups, scored):
        with autocast():
            stashed = BottomStash.take(backbone, prompt, x, am, pos) if plain else None
            if stashed is not None:
                hidden = _top_from_stash(backbone, stashed, rows.numel())
                lp, ent = _head_logps(head, hidden, labels, temperature, compute_entropy)
            elif plain:
                cache = _prompt_cache(backbone, prompt[:-1], rows.numel())
                hidden = backbone(input_ids=x, attention_mask=am, position_ids=pos, cache=cache).last_hidden_state
                lp, ent = _head_logps(head, hidden, labels, temperature, compute_entropy)
            else:
                cache = _prompt_cache(backbone, prompt[:-1], rows.numel())
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
                            temperature: float, autocast=None, groups=None, scored: torch.Tensor | None = None):
    """(log-probs at ``temperature``, log-probs at temperature 1) of the last ``logits_to_keep`` tokens.

    The reference pass of GRPO: the first is what the KL term needs (what
    ``shared_prefix_logps`` returns), the second is the plain likelihood under
    the same frozen model, i.e. the fluency head's input. One backbone pass,
    one LM-head projection, no gradient. Needs ``plain_lm_head(config)``.
    ``scored`` as for ``shared_prefix_logps``: other tokens get 0 in both.
    With adapters on the top layers only, each group's hidden states entering the lowest adapted layer are kept
    (``BottomStash``) for the policy pass over the same inputs.
    """
    from contextlib import nullcontext

    autocast = autocast or nullcontext
    backbone = backbone_of(model)
    head = (getattr(model, "module", model)).get_output_embeddings()
    groups = groups or prefix_groups(input_ids, attention_mask, logits_to_keep)
    C = logits_to_keep
    scaled = input_ids.new_zeros(input_ids.size(0), C, dtype=torch.float32)
    plain = torch.zeros_like(scaled)
    k = BottomStash.depth(backbone)
    capture = BottomStash.capture(backbone, k) if k > 0 else nullcontext()
    with capture:
        for rows, prompt, x, labels, am, pos in _group_inputs(input_ids, attention_mask, C, groups, scored):
            with autocast():
                cache = _prompt_cache(backbone, prompt[:-1], rows.numel())
                hidden = backbone(input_ids=x, attention_mask=am, position_ids=pos, cache=cache).last_hidden_state
                target = labels[:, 1:]
                r, c = (target != -100).nonzero(as_tuple=True)  # only the positions with a label (see _head_logps)
                scaled[rows[r], c], plain[rows[r], c] = label_logps_at_two_temperatures(
                    hidden[r, c], head.weight, target[r, c], temperature, head.bias)
            if k > 0:
                capture.add(prompt, x, am, pos)
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
