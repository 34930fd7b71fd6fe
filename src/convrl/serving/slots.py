"""Continuous batching on one model: a KV cache with one slot per running request, and shared prompt prefixes.

``SlotDecoder`` keeps up to ``slots`` requests in one preallocated KV buffer
(``[layers, slots, kv_heads, capacity, head_dim]``). A request joins between
two decode steps (its prompt is prefilled into a free slot, its first token
comes straight from that prefill) and leaves the moment it is done (the last
slot moves into the hole, so the running rows always fill slots ``0..n-1`` and
every decode step is one forward of the ``n`` rows, one new token each). Rows
are ragged: each has its own length, position ids and a 4D attention mask over
its own filled positions, so a row's logits are those of its unpadded
sequence whatever else runs beside it (tests compare greedy tokens with plain
``generate``).

Shared prefixes: most requests start with their persona's system prompt. The
KV of a request's system part (``anchor`` tokens) is kept per model in a small
LRU store; a later request copies the longest matching prefix into its slot
and prefills only the rest. Causal attention makes the KV of ``t[:k]`` exact
for any sequence that starts with ``t[:k]``, so a persona entry also serves
sessions whose system message adds context memory after the persona text.

Why not transformers' own continuous batching (``init_continuous_batching``,
``ContinuousBatchingManager``, paged attention; transformers 5.24): it runs
on a CPU with ``sdpa`` and shares prefix blocks, but a decode step of 8 rows
cost 3.9x a step of one row (423-458 ms vs 110-113 ms, SmolLM2-135M, 1 thread,
shared 2-core machine: ``bench/serve_decode_steps.py``), i.e. about 2x the
tokens/s at 8 rows, below the 3x target before any prefill. This slot cache
reuses the GQA-grouped eager attention of ``convrl.rl.decoding`` (no KV copies)
and keeps each step one dense batched forward.

    dec = SlotDecoder(model, slots=8)
    slot, logits = dec.add(prompt_ids, anchor=len(system_ids), row=my_state)   # logits of the first token
    logits = dec.step([next_token_of_row(r) for r in dec.rows])              # [n, vocab], one row per slot
    dec.remove(slot)                                                         # the last row moves into the hole
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers.cache_utils import Cache


class SlotCache(Cache):
    """KV buffers with a slot per request; each forward writes slots ``lo..hi`` at per-row positions.

    The decoder ``bind``s the rows, write positions and visible span before a
    forward; the attention layers then get views of the bound slots' first
    ``span`` positions (future and stale positions are masked out).
    """

    def __init__(self, num_layers: int, slots: int, capacity: int):
        super().__init__(layers=[])
        self.num_layers, self.slots, self.capacity = num_layers, slots, capacity
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.lo = self.hi = self.span = 0
        self.rows: torch.Tensor | None = None  # [n, 1] slot of each bound row
        self.write: torch.Tensor | None = None  # [n, q] cache position of each new token

    def bind(self, lo: int, hi: int, write: torch.Tensor, span: int) -> None:
        self.lo, self.hi, self.span = lo, hi, span
        self.rows = torch.arange(lo, hi, device=write.device)[:, None]
        self.write = write

    def update(self, key_states, value_states, layer_idx: int, *args, **kwargs):
        if self.keys is None:
            _, kv, _, d = key_states.shape
            # Zeros, not empty: masked positions get weight 0, and 0 * NaN garbage would still be NaN.
            self.keys = key_states.new_zeros(self.num_layers, self.slots, kv, self.capacity, d)
            self.values = value_states.new_zeros(self.num_layers, self.slots, kv, self.capacity,
                                                 value_states.shape[-1])
        keys, values = self.keys[layer_idx], self.values[layer_idx]
        # Advanced indices around a slice put their dims first: [n, q, kv, d].
        keys[self.rows, :, self.write] = key_states.transpose(1, 2)
        values[self.rows, :, self.write] = value_states.transpose(1, 2)
        return keys[self.lo:self.hi, :, :self.span], values[self.lo:self.hi, :, :self.span]

    def ensure(self, needed: int) -> None:
        """Grow every buffer (doubling, multiples of 64) so ``needed`` positions fit."""
        if needed <= self.capacity:
            return
        new = -(-max(needed, 2 * self.capacity) // 64) * 64
        if self.keys is not None:
            for name in ("keys", "values"):
                old = getattr(self, name)
                grown = old.new_zeros(*old.shape[:3], new, old.shape[-1])
                grown[..., :self.capacity, :] = old
                setattr(self, name, grown)
        self.capacity = new

    def move(self, src: int, dst: int, length: int) -> None:
        self.keys[:, dst, :, :length] = self.keys[:, src, :, :length]
        self.values[:, dst, :, :length] = self.values[:, src, :, :length]

    def snapshot(self, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.keys[:, slot, :, :length].clone(), self.values[:, slot, :, :length].clone()

    def load(self, slot: int, kv: tuple[torch.Tensor, torch.Tensor], length: int) -> None:
        self.keys[:, slot, :, :length] = kv[0][:, :, :length]
        self.values[:, slot, :, :length] = kv[1][:, :, :length]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.span

    def get_mask_sizes(self, query_length: int, layer_idx: int = 0) -> tuple[int, int]:
        return self.span, 0


class SlotDecoder:
    """Up to ``slots`` concurrent rows of one model; ``add`` / ``step`` / ``remove`` between forwards.

    ``prefix_entries`` system-prompt KVs are kept (least recently used dropped);
    an anchor shorter than ``min_prefix`` tokens is not worth an entry.
    """

    def __init__(self, model, slots: int, capacity: int = 512, prefix_entries: int = 8, min_prefix: int = 16):
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        cfg = model.config.get_text_config(decoder=True)
        self.max_positions = getattr(cfg, "max_position_embeddings", None) or 1 << 30
        self.cache = SlotCache(cfg.num_hidden_layers, slots, capacity)
        self.slots = slots
        self.lengths: list[int] = []  # tokens in each running row's cache, slot order
        self.rows: list = []          # the caller's per-row state, slot order
        self.prefixes: OrderedDict[tuple[int, ...], tuple] = OrderedDict()
        self.prefix_entries, self.min_prefix = prefix_entries, min_prefix
        self.prefill_tokens = 0   # prompt tokens run through the model
        self.reused_tokens = 0    # prompt tokens copied from a stored prefix instead
        self.steps = 0            # decode steps (one batched forward each)
        self.row_steps = 0        # rows over all decode steps (mean batch = row_steps / steps)

    @property
    def free(self) -> int:
        return self.slots - len(self.rows)

    @torch.inference_mode()
    def add(self, ids: list[int], anchor: int = 0, row=None) -> tuple[int, torch.Tensor]:
        """Prefill a new row into the next free slot; returns (slot, logits of its first new token [vocab]).

        ``anchor``: how many leading tokens are worth sharing with later rows
        (the system prompt); their KV is stored unless a stored prefix covers them.
        """
        if not ids:
            raise ValueError("a row needs at least one prompt token")
        if not self.free:
            raise RuntimeError(f"all {self.slots} slots are taken; remove a row first")
        slot = len(self.rows)
        self.rows.append(row)
        self.lengths.append(0)
        try:
            k = self._load_prefix(slot, ids)
            anchor = min(anchor, len(ids) - 1)
            if anchor >= self.min_prefix and anchor > k:
                self._forward(slot, slot + 1, torch.tensor([ids[k:anchor]]))
                self._store_prefix(tuple(ids[:anchor]), self.cache.snapshot(slot, anchor))
                k = anchor
            logits = self._forward(slot, slot + 1, torch.tensor([ids[k:]]))
        except BaseException:
            self.rows.pop()
            self.lengths.pop()
            raise
        return slot, logits[0]

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per running row (slot order); logits of each row's next token [n, vocab]."""
        if len(tokens) != len(self.rows):
            raise ValueError(f"step got {len(tokens)} tokens for {len(self.rows)} running rows")
        self.steps += 1
        self.row_steps += len(tokens)
        return self._forward(0, len(tokens), torch.tensor(tokens)[:, None])

    @torch.inference_mode()
    def remove(self, slot: int) -> None:
        """Free ``slot``; the last running row moves into it (its KV is copied, its state object too)."""
        last = len(self.rows) - 1
        if slot != last:
            self.cache.move(last, slot, self.lengths[last])
            self.rows[slot], self.lengths[slot] = self.rows[last], self.lengths[last]
        self.rows.pop()
        self.lengths.pop()

    def clear(self) -> None:
        self.rows.clear()
        self.lengths.clear()

    def room(self, slot: int) -> int:
        """Tokens row ``slot`` may still add before the model's position limit."""
        return self.max_positions - self.lengths[slot]

    def _forward(self, lo: int, hi: int, ids: torch.Tensor) -> torch.Tensor:
        """Run ``ids`` [n, q] for rows ``lo..hi`` after each row's cached tokens; logits at the last position."""
        q = ids.shape[1]
        start = torch.tensor(self.lengths[lo:hi], device=self.device)
        pos = start[:, None] + torch.arange(q, device=self.device)  # [n, q], also each token's cache position
        end = int(start.max()) + q
        self.cache.ensure(end)
        span = min(self.cache.capacity, -(-end // 32) * 32)
        # Each query sees its own row's positions up to itself; stale and future positions are masked.
        visible = torch.arange(span, device=self.device)[None, None, :] <= pos[:, :, None]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill_(~visible, torch.finfo(self.dtype).min)[:, None]
        self.cache.bind(lo, hi, pos, span)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask, position_ids=pos, cache=self.cache,
                         use_cache=True, logits_to_keep=1)
        for i in range(lo, hi):
            self.lengths[i] += q
        if q > 1:
            self.prefill_tokens += q * (hi - lo)
        return out.logits[:, -1]

    def _load_prefix(self, slot: int, ids: list[int]) -> int:
        """Copy the longest stored prefix of ``ids`` into ``slot`` (keeping >= 1 token to prefill); its length."""
        best, best_key = 0, None
        probe = torch.tensor(ids)
        for key in self.prefixes:
            n = min(len(key), len(ids) - 1)
            if n <= best:
                continue
            differ = (torch.tensor(key[:n]) != probe[:n]).nonzero()
            match = int(differ[0]) if len(differ) else n
            if match > best:
                best, best_key = match, key
        if best < self.min_prefix:
            return 0
        self.prefixes.move_to_end(best_key)
        self.cache.load(slot, self.prefixes[best_key], best)
        self.lengths[slot] = best
        self.reused_tokens += best
        return best

    def _store_prefix(self, key: tuple[int, ...], kv: tuple) -> None:
        self.prefixes[key] = kv
        self.prefixes.move_to_end(key)
        while len(self.prefixes) > self.prefix_entries:
            self.prefixes.popitem(last=False)
