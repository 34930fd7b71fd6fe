"""Batched decoding that keeps each conversation's KV cache across turns (multi-turn rollouts, self-play).

``model.generate`` starts from scratch on every call: in a multi-turn rollout,
turn t+1 would prefill the prompt, every earlier turn and the user's reply
again. ``CachedDecoder`` keeps one cache for a batch of conversations and only
ever feeds tokens it has not seen: the prompt once (once per group of rows that
share it, the longest common prefix of the group), then per turn the new user
tokens and the generated ones. Rows are ragged: a block of new tokens is left
padded inside the block, padding slots are masked out of attention for good,
and each row carries its own position counter, so a row's logits are those of
its unpadded sequence (RoPE depends only on relative positions; tests compare
against full-sequence forwards).

    dec = CachedDecoder(model, pad_id, eos_ids)
    dec.prefill(prompt_token_lists, groups=[[0, 1, 2, 3], [4, 5, 6, 7]])
    turn1 = dec.generate(48, processors)            # token lists, each ending with EOS unless cut
    dec.extend([glue_and_user_tokens(row) for row in ...])
    turn2 = dec.generate(48, processors)

Sampling goes through ``processors`` (``rl.generation.sampling_setup``): the
last one leaves only the drawn token finite, so decoding takes the argmax.
Rows that stopped leave the forward passes once a quarter of the batch has
(``_compact``: the rows still decoding move to the front of the cache);
``bench/decode_compaction.py`` times it.
"""

from __future__ import annotations

import torch


class CachedDecoder:
    """One KV cache for a batch of conversations; ``prefill`` once, then ``generate`` / ``extend`` per turn."""

    def __init__(self, model, pad_id: int, eos_ids, capacity_hint: int = 256, compact: bool = True,
                 fused: bool = True):
        from convrl.rl.decoding import preallocated_cache
        from convrl.rl.fused_step import fused_step_for

        self.model, self.pad_id = model, int(pad_id)
        self.eos = torch.tensor(sorted({int(e) for e in eos_ids}), dtype=torch.long)
        self.device = next(model.parameters()).device
        # A preallocated buffer (grown on demand) on CPUs; transformers' DynamicCache elsewhere.
        self.cache = preallocated_cache(model.config, capacity_hint) if self.device.type == "cpu" else None
        if self.cache is None:
            from transformers import DynamicCache

            self.cache = DynamicCache(config=model.config)
        self.slot_mask: torch.Tensor | None = None  # [B, slots]: which cache slots hold real tokens
        self.pos: torch.Tensor | None = None        # [B]: real tokens per row so far (the next position id)
        self.pending: list[list[int]] = []          # sampled, not yet fed (the last token of a turn)
        self.fed: list[list[int]] = []              # every token each row's cache holds, in order
        self.prefill_tokens = 0                     # tokens run through the model outside decoding (for stats)
        # Stopped rows leave the forward passes, and one-token steps take the fused path, only where every cache
        # layer is a preallocated buffer (it fills a sub-batch's rows in place; FusedStep writes it directly).
        preallocated = all(hasattr(layer, "capacity") for layer in self.cache.layers)
        self._can_compact = compact and preallocated
        self.compactions = 0                        # times stopped rows were moved out of the decoding batch
        # One-token steps skip transformers' per-layer bookkeeping where the model is a plain Llama-style stack
        # (rl.fused_step: 41-42 -> 32-33 ms a step for 9 rows of SmolLM2-135M, the same tokens).
        self._fused = fused_step_for(model) if fused and preallocated else None

    @property
    def rows(self) -> int:
        return len(self.fed)

    def tokens(self, i: int) -> list[int]:
        """Row ``i``'s whole sequence so far (fed and pending)."""
        return self.fed[i] + self.pending[i]

    @torch.inference_mode()
    def prefill(self, token_lists: list[list[int]], groups: list[list[int]] | None = None) -> None:
        """Start every row; each group's longest common prefix is computed once and shared by its rows."""
        if any(len(t) < 1 for t in token_lists):
            raise ValueError("every row needs at least one token to start decoding from")
        n = len(token_lists)
        groups = groups or [[i] for i in range(n)]
        if sorted(i for g in groups for i in g) != list(range(n)):
            raise ValueError("groups must cover every row exactly once")
        heads, owner = [], [0] * n
        for gi, g in enumerate(groups):
            k = _common_prefix([token_lists[i] for i in g])
            k = min(k, min(len(token_lists[i]) for i in g) - 1)  # each row keeps >= 1 token to produce logits
            heads.append(token_lists[g[0]][:k])
            for i in g:
                owner[i] = gi
        self.fed, self.pending = [[] for _ in range(len(groups))], [[] for _ in range(len(groups))]
        self.slot_mask = torch.zeros(len(groups), 0, dtype=torch.long, device=self.device)
        self.pos = torch.zeros(len(groups), dtype=torch.long, device=self.device)
        if max(len(h) for h in heads) > 0:
            self._feed(heads)
        index = torch.tensor(owner, device=self.device)
        self.cache.batch_select_indices(index)
        self.slot_mask, self.pos = self.slot_mask[index], self.pos[index]
        self.fed = [list(self.fed[owner[i]]) for i in range(n)]
        self.pending = [list(token_lists[i][len(heads[owner[i]]):]) for i in range(n)]

    def extend(self, new_tokens: list[list[int]]) -> None:
        """Queue tokens after each row's sequence (user turn, template glue); fed with the next ``generate``."""
        if len(new_tokens) != self.rows:
            raise ValueError(f"extend got {len(new_tokens)} rows for a batch of {self.rows}")
        for p, t in zip(self.pending, new_tokens):
            p.extend(int(x) for x in t)

    @torch.inference_mode()
    def generate(self, max_new_tokens: int, processors=(), active: list[bool] | None = None,
                 greedy: list[bool] | None = None, greedy_processors=()) -> list[list[int]]:
        """Decode up to ``max_new_tokens`` per row, stopping a row at its first EOS (kept in its tokens).

        ``active`` rows generate; the others only take in their pending tokens.
        ``greedy`` rows take the argmax of their logits after ``greedy_processors``
        (e.g. a no-repeat n-gram ban) instead of ``processors``' draw: a greedy
        probe decoded beside sampled rows, as evaluation would decode it.
        Returns the generated ids per row (empty for inactive rows).
        """
        if any(not p for p in self.pending):
            raise ValueError("every row needs a pending token (prefill or extend first)")
        active = [True] * self.rows if active is None else list(active)
        logits = self._feed(self.pending)
        self.pending = [[] for _ in range(self.rows)]
        out: list[list[int]] = [[] for _ in range(self.rows)]
        done = torch.tensor([not a for a in active], device=self.device)
        eos = self.eos.to(self.device)
        # Processors see each row's ids so far (a repetition penalty would need them; the sampler does not).
        history = [torch.tensor(self.fed[i], dtype=torch.long, device=self.device) for i in range(self.rows)]
        probe = [i for i, g in enumerate(greedy or []) if g]
        # Rows that stopped drop out of the forward passes (``_compact``): ``order[j]`` is the row the cache holds at
        # position j, and only the first ``k`` positions decode. Sampling still sees every row in the caller's order,
        # so each row draws the random numbers it would draw without compaction.
        order, k = list(range(self.rows)), self.rows
        try:
            for step in range(max_new_tokens):
                raw = scores = logits.float()
                if processors:
                    ids = _left_pad(history, self.pad_id, self.device)
                    for proc in processors:
                        scores = proc(ids, scores)
                token = scores.argmax(-1)
                if probe:
                    token[probe] = self._greedy([history[i] for i in probe], raw[probe], greedy_processors)
                token = torch.where(done, torch.full_like(token, self.pad_id), token)
                for i in torch.nonzero(~done).flatten().tolist():
                    out[i].append(int(token[i]))
                done = done | torch.isin(token, eos)
                if bool(done.all()) or step == max_new_tokens - 1:
                    break
                stopped, tokens = done.tolist(), token.tolist()
                order, k = self._compact(order, k, stopped)
                # A row that just drew EOS keeps it pending (fed with the next block); finished rows feed masked pads.
                sub = self._feed([[tokens[r]] for r in order[:k]], real=[not stopped[r] for r in order[:k]])
                if k == self.rows:  # nothing dropped yet: the cache is in the caller's order
                    logits = sub
                else:
                    logits = logits.clone()
                    logits[order[:k]] = sub
                history = [torch.cat([h, token[i:i + 1]]) for i, h in enumerate(history)]
        finally:
            if order != sorted(order):
                self.select(sorted(range(self.rows), key=order.__getitem__))  # back to the caller's row order
        for i, o in enumerate(out):
            if o:
                # The last sampled token is not in the cache yet: it goes in with the next block.
                self.pending[i] = [o[-1]]
        return out

    def _compact(self, order: list[int], k: int, stopped: list[bool]) -> tuple[list[int], int]:
        """Move the rows still decoding to the front of the cache once enough have stopped; returns (order, k).

        A decoding step reads every weight once whatever the batch, but attention, norms and activations grow with
        the rows, and a stopped row still ran through all of them as a masked pad. Reordering copies the cache once,
        so it waits until a quarter of the decoding rows (at least two) have stopped.
        """
        if not self._can_compact:
            return order, k
        live = [r for r in order[:k] if not stopped[r]]
        if not live or k - len(live) < max(2, k // 4):
            return order, k
        new = live + [r for r in order if stopped[r]]  # every row not decoding any more has stopped
        pos = {r: j for j, r in enumerate(order)}
        self.select([pos[r] for r in new])
        self.compactions += 1
        return new, len(live)

    def _greedy(self, history: list[torch.Tensor], scores: torch.Tensor, processors) -> torch.Tensor:
        if processors:
            ids = _left_pad(history, self.pad_id, self.device)
            for proc in processors:
                scores = proc(ids, scores)
        return scores.argmax(-1)

    def select(self, rows: list[int]) -> None:
        """Keep only ``rows`` (in that order): their caches, positions and tokens; the others are dropped."""
        if not rows or any(not 0 <= r < self.rows for r in rows):
            raise ValueError(f"select needs row indices in [0, {self.rows}), got {rows}")
        index = torch.tensor(rows, device=self.device)
        self.cache.batch_select_indices(index)
        self.slot_mask, self.pos = self.slot_mask[index], self.pos[index]
        self.fed = [self.fed[r] for r in rows]
        self.pending = [self.pending[r] for r in rows]

    def _feed(self, blocks: list[list[int]], real: list[bool] | None = None) -> torch.Tensor:
        """Run one left-padded block of new tokens per row through the model; logits at each row's last token.

        ``blocks`` may cover only the first rows of the cache (``_compact``): the others get masked slots.
        """
        n, width = len(blocks), max(1, max(len(b) for b in blocks))
        ids = torch.full((n, width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(self.rows, width, dtype=torch.long)
        for i, b in enumerate(blocks):
            if b and (real is None or real[i]):
                ids[i, width - len(b):] = torch.tensor(b)
                mask[i, width - len(b):] = 1
                self.fed[i].extend(b)
        ids, mask = ids.to(self.device), mask.to(self.device)
        self._ensure_capacity(self.slot_mask.size(1) + width)
        positions = (self.pos[:n, None] + mask[:n].cumsum(-1) - 1).clamp(min=0)
        self.slot_mask = torch.cat([self.slot_mask, mask], dim=1)
        self.pos = self.pos + mask.sum(-1)
        if width > 1:
            self.prefill_tokens += int(mask.sum())
        elif self._fused is not None:
            return self._fused(ids[:, 0], positions[:, 0], self.cache, self.slot_mask[:n])
        out = self.model(input_ids=ids, attention_mask=self.slot_mask[:n], position_ids=positions, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        return out.logits[:, -1]

    def _ensure_capacity(self, needed: int) -> None:
        """Grow preallocated cache buffers (doubling) so ``needed`` slots fit; a no-op for other caches."""
        for layer in self.cache.layers:
            cap = getattr(layer, "capacity", None)
            if cap is None or cap >= needed:
                continue
            new_cap = max(needed, 2 * cap)
            if layer.is_initialized:
                for name in ("keys", "values"):
                    old = getattr(layer, name)
                    grown = old.new_zeros(*old.shape[:2], new_cap, old.shape[-1])
                    grown[:, :, :cap] = old
                    setattr(layer, name, grown)
            layer.capacity = new_cap


def _common_prefix(seqs: list[list[int]]) -> int:
    first = seqs[0]
    k = len(first)
    for s in seqs[1:]:
        k = min(k, len(s))
        for j in range(k):
            if s[j] != first[j]:
                k = j
                break
    return k


def _left_pad(rows: list[torch.Tensor], pad_id: int, device) -> torch.Tensor:
    width = max(1, max(len(r) for r in rows))
    out = torch.full((len(rows), width), pad_id, dtype=torch.long, device=device)
    for i, r in enumerate(rows):
        if len(r):
            out[i, width - len(r):] = r
    return out
