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

Shared prefixes: most requests start with their persona's system prompt, and
a session's next turn starts with its previous turn. The KV of a request's
system part (``anchor`` tokens) and of every finished row (prompt and reply)
is kept per model in an LRU store under a memory budget; a new request copies
the longest matching prefix into its slot and prefills only the rest. Causal
attention makes the KV of ``t[:k]`` exact for any sequence that starts with
``t[:k]``, so a persona entry also serves sessions whose system message adds
context memory after the persona text.

Why not transformers' own continuous batching (``init_continuous_batching``,
``ContinuousBatchingManager``, paged attention; transformers 5.24): it runs on
a CPU with ``sdpa`` and shares prefix blocks, but its decode step of 8 rows
cost 3.1x its step of one row (321.9 vs 103.6 ms: 2.58x the tokens/s at 8
rows), against 2.0x here (194.9 vs 95.3 ms: 3.91x), SmolLM2-135M-Instruct,
one torch thread, same run of ``bench/serve_decode_steps.py`` on the shared
2-core machine (load average 4.4-4.8). The 3x serving target needs the
latter. This slot cache reuses the fused grouped attention of
``convrl.rl.decoding`` (no KV copies) and keeps each step one dense forward.

    dec = SlotDecoder(model, slots=8)
    slot, logits = dec.add(prompt_ids, anchor=len(system_ids), row=my_state)   # logits of the first token
    firsts = dec.add_rows([(ids, anchor, state), ...])      # several joiners, one forward: [(state, logits)]
    logits = dec.step([next_token_of_row(r) for r in dec.rows])              # [n, vocab], one row per slot
    dec.remove(slot, keep=True)               # the last row moves into the hole; this one's KV is kept for reuse
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from transformers.cache_utils import Cache


PREFILL_TOKENS = 2048  # most (padded) tokens in one prefill forward of several joining rows


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


class PrefixStore:
    """KV of token prefixes for reuse, least recently used dropped beyond ``budget_bytes``.

    ``match`` finds the longest common prefix with any entry: the KV of an
    entry's first ``k`` tokens is exact for every sequence starting with them.
    An entry that is a prefix of a new one is dropped (the new one covers it).
    """

    def __init__(self, budget_bytes: int, min_tokens: int):
        self.budget, self.min_tokens = budget_bytes, min_tokens
        self.entries: OrderedDict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = OrderedDict()
        self.bytes = 0

    def match(self, ids: list[int], limit: int) -> tuple[int, tuple | None]:
        """(matched tokens <= ``limit``, (keys, values)) of the best entry; (0, None) below ``min_tokens``."""
        best, best_key = 0, None
        probe = torch.tensor(ids[:limit])
        for key, (key_ids, _, _) in self.entries.items():
            n = min(len(key), limit)
            if n <= best:
                continue
            differ = (key_ids[:n] != probe[:n]).nonzero()
            match = int(differ[0]) if len(differ) else n
            if match > best:
                best, best_key = match, key
        if best < self.min_tokens:
            return 0, None
        self.entries.move_to_end(best_key)
        return best, self.entries[best_key][1:]

    def add(self, key: tuple[int, ...], kv: tuple[torch.Tensor, torch.Tensor]) -> None:
        if len(key) < self.min_tokens or any(k[:len(key)] == key for k in self.entries):
            return  # an entry already covers it
        for k in [k for k in self.entries if key[:len(k)] == k]:
            self._drop(k)
        self.entries[key] = (torch.tensor(key), *kv)
        self.bytes += kv[0].nbytes + kv[1].nbytes
        while self.bytes > self.budget and len(self.entries) > 1:
            self._drop(next(iter(self.entries)))

    def _drop(self, key) -> None:
        _, k, v = self.entries.pop(key)
        self.bytes -= k.nbytes + v.nbytes


class SlotDecoder:
    """Up to ``slots`` concurrent rows of one model; ``add`` / ``step`` / ``remove`` between forwards.

    Stored prefixes (``PrefixStore``, ``prefix_mb`` of KV): the system part of
    a request (``anchor`` tokens) when no entry covers it yet, and each row that
    ends normally (``remove(slot, keep=True)``: prompt and reply), so a
    session's next turn prefills only what was added since.
    """

    def __init__(self, model, slots: int, capacity: int = 512, prefix_mb: float = 256, min_prefix: int = 16):
        self.model = model
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        cfg = model.config.get_text_config(decoder=True)
        self.max_positions = getattr(cfg, "max_position_embeddings", None) or 1 << 30
        self.cache = SlotCache(cfg.num_hidden_layers, slots, capacity)
        self.slots = slots
        self.fed: list[list[int]] = []  # the tokens in each running row's cache, slot order
        self.rows: list = []            # the caller's per-row state, slot order
        self.prefixes = PrefixStore(int(prefix_mb * 2**20), min_prefix)
        self.prefill_tokens = 0   # prompt tokens run through the model
        self.reused_tokens = 0    # prompt tokens copied from a stored prefix instead
        self.steps = 0            # decode steps (one batched forward each)
        self.row_steps = 0        # rows over all decode steps (mean batch = row_steps / steps)

    @property
    def free(self) -> int:
        return self.slots - len(self.rows)

    def add(self, ids: list[int], anchor: int = 0, row=None) -> tuple[int, torch.Tensor]:
        """Prefill one new row into the next free slot: (slot, logits of its first new token [vocab])."""
        slot = len(self.rows)
        return slot, self.add_rows([(ids, anchor, row)])[0][1]

    @torch.inference_mode()
    def add_rows(self, joining: list[tuple[list[int], int, object]]) -> list[tuple[object, torch.Tensor]]:
        """Prefill new rows ``(prompt ids, anchor, row state)`` into free slots, in one forward where it pays.

        Each row starts after the longest stored prefix of its prompt. ``anchor``:
        how many leading tokens are worth sharing with later rows (the system
        prompt); unless a stored prefix covers them, they are prefilled first and
        stored, so the next row of the same persona copies them. Returns
        ``(row state, logits of its first new token [vocab])`` per row, in slot order.
        """
        if any(not ids for ids, _, _ in joining):
            raise ValueError("a row needs at least one prompt token")
        if len(joining) > self.free:
            raise RuntimeError(f"{len(joining)} rows for {self.free} free slots; remove rows first")
        first = len(self.rows)
        try:
            rest = []
            for ids, anchor, row in sorted(joining, key=lambda j: len(j[0])):  # similar lengths side by side
                self.rows.append(row)
                self.fed.append([])
                rest.append(ids[self._start_from_prefix(len(self.rows) - 1, ids, anchor):])
            out, lo = [], first
            while lo < len(self.rows):
                # Rows whose remainders differ at most 2x share a forward (left-padded to the longest), up to
                # PREFILL_TOKENS padded tokens (attention weights grow with rows x width x span).
                hi, shortest, longest = lo + 1, len(rest[lo - first]), len(rest[lo - first])
                while hi < len(self.rows):
                    n = len(rest[hi - first])
                    if max(longest, n) > 2 * min(shortest, n) or (hi - lo + 1) * max(longest, n) > PREFILL_TOKENS:
                        break
                    shortest, longest, hi = min(shortest, n), max(longest, n), hi + 1
                out += list(zip(self.rows[lo:hi], self._forward(lo, hi, rest[lo - first:hi - first])))
                lo = hi
        except BaseException:
            del self.rows[first:], self.fed[first:]
            raise
        return out

    def _start_from_prefix(self, slot: int, ids: list[int], anchor: int) -> int:
        """Fill ``slot`` with the stored prefix of ``ids`` (and store its anchor part if new); tokens cached."""
        k, kv = self.prefixes.match(ids, len(ids) - 1)  # >= 1 token left to prefill: it gives the logits
        if kv is not None:
            self.cache.load(slot, kv, k)
            self.fed[slot] = list(ids[:k])
            self.reused_tokens += k
        anchor = min(anchor, len(ids) - 1)
        if anchor >= self.prefixes.min_tokens and anchor > k:
            self._forward(slot, slot + 1, [ids[k:anchor]])
            self.prefixes.add(tuple(ids[:anchor]), self.cache.snapshot(slot, anchor))
            k = anchor
        return k

    @torch.inference_mode()
    def step(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token per running row (slot order); logits of each row's next token [n, vocab]."""
        if len(tokens) != len(self.rows):
            raise ValueError(f"step got {len(tokens)} tokens for {len(self.rows)} running rows")
        self.steps += 1
        self.row_steps += len(tokens)
        return self._forward(0, len(tokens), [[t] for t in tokens])

    @torch.inference_mode()
    def remove(self, slot: int, keep: bool = False) -> None:
        """Free ``slot`` (``keep``: store its KV for a later turn); the last running row moves into it."""
        if keep:
            self.prefixes.add(tuple(self.fed[slot]), self.cache.snapshot(slot, len(self.fed[slot])))
        last = len(self.rows) - 1
        if slot != last:
            self.cache.move(last, slot, len(self.fed[last]))
            self.rows[slot], self.fed[slot] = self.rows[last], self.fed[last]
        self.rows.pop()
        self.fed.pop()

    def clear(self) -> None:
        self.rows.clear()
        self.fed.clear()

    def room(self, slot: int) -> int:
        """Tokens row ``slot`` may still add before the model's position limit."""
        return self.max_positions - len(self.fed[slot])

    def _forward(self, lo: int, hi: int, blocks: list[list[int]]) -> torch.Tensor:
        """Run each row ``lo..hi``'s block of new tokens after its cached ones; logits at each block's end [n, vocab].

        Ragged blocks are left-padded to one width; a row's real tokens go to the
        cache positions after its cached ones (position = cache index, no gaps)
        and its pads to scratch positions after them, which no real query sees.
        """
        q = max(len(b) for b in blocks)
        pad = torch.tensor([q - len(b) for b in blocks], device=self.device)[:, None]
        ids = torch.tensor([[0] * (q - len(b)) + b for b in blocks], device=self.device)
        start = torch.tensor([len(f) for f in self.fed[lo:hi]], device=self.device)[:, None]
        col = torch.arange(q, device=self.device)[None, :]
        pos = torch.where(col >= pad, start + col - pad, start + q - pad + col)  # [n, q]: RoPE and cache position
        end = int(start.max()) + q
        self.cache.ensure(end)
        span = min(self.cache.capacity, -(-end // 32) * 32)
        # Each query sees its own row's positions up to itself; stale, scratch and future positions are masked.
        visible = torch.arange(span, device=self.device)[None, None, :] <= pos[:, :, None]
        mask = torch.zeros(visible.shape, dtype=self.dtype, device=self.device)
        mask = mask.masked_fill_(~visible, torch.finfo(self.dtype).min)[:, None]
        self.cache.bind(lo, hi, pos, span)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, cache=self.cache, use_cache=True,
                         logits_to_keep=1)
        for f, block in zip(self.fed[lo:hi], blocks):
            f.extend(block)
        if q > 1:
            self.prefill_tokens += sum(len(b) for b in blocks)
        return out.logits[:, -1]
