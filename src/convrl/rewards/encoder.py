"""Sentence encoder shared by every reward head: mean-pooled, L2-normalised embeddings.

One instance serves all heads, batches its inputs and caches embeddings of
texts it has seen (contexts repeat across the completions of a GRPO group), so
the RL hot path pays for each distinct text once. ``precision="auto"`` runs
the encoder in bf16 where the CPU/GPU has bf16 units (1.7x faster on this
machine's AVX512-BF16 cores; embeddings keep cosine > 0.9999 with fp32).

    enc = SentenceEncoder(models.resolve_encoder("all-minilm-l6-v2"))
    enc.encode(["hello there", "how are you?"])   # (2, 384), unit norm
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch


class SentenceEncoder:
    def __init__(self, model_dir: str, max_length: int = 128, batch_size: int = 64, cache_size: int = 50_000,
                 precision: str = "fp32"):
        from transformers import AutoModel, AutoTokenizer

        if precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"encoder precision must be auto, bf16 or fp32, got {precision!r}")
        if precision == "auto":
            from convrl.runtime import bf16_supported

            precision = "bf16" if bf16_supported() else "fp32"
        self.precision = precision
        self.model_dir = model_dir
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model = AutoModel.from_pretrained(model_dir, dtype=dtype).eval()
        self.max_length = max_length
        self.batch_size = batch_size
        self.dim = int(self.model.config.hidden_size)
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_size = cache_size

    @torch.inference_mode()
    def _encode_uncached(self, texts: list[str]) -> np.ndarray:
        out = []
        # Sorting by length keeps padding small inside each batch.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        for i in range(0, len(order), self.batch_size):
            idx = order[i:i + self.batch_size]
            batch = self.tokenizer([texts[j] or " " for j in idx], padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state.float()  # pool in fp32 whatever the model dtype
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-6)
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            out.append((idx, pooled.float().numpy()))
        result = np.zeros((len(texts), self.dim), dtype=np.float32)
        for idx, emb in out:
            result[idx] = emb
        return result

    def encode(self, texts: list[str]) -> np.ndarray:
        """Unit-norm embeddings of ``texts`` (rows in order); each distinct text is encoded at most once.

        The cache is least-recently-used: a hit moves to the back, and the rows of
        this call are gathered before any eviction, so a call holding more distinct
        texts than ``cache_size`` still gets every row.
        """
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        rows: dict[str, np.ndarray] = {}
        missing = []
        for t in dict.fromkeys(texts):
            e = self._cache.get(t)
            if e is None:
                missing.append(t)
            else:
                self._cache.move_to_end(t)
                rows[t] = e
        if missing:
            for t, e in zip(missing, self._encode_uncached(missing)):
                rows[t] = e
                self._cache[t] = e
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return np.stack([rows[t] for t in texts])

    def clear_cache(self) -> None:
        self._cache.clear()


_SHARED: dict[tuple, SentenceEncoder] = {}


def load_encoder(model_dir: str, max_length: int = 128, batch_size: int = 64, precision: str = "fp32") -> SentenceEncoder:
    """One shared instance per (model, settings) in a process: meta-eval, benches and tests reuse its cache."""
    key = (str(model_dir), max_length, batch_size, precision)
    if key not in _SHARED:
        _SHARED[key] = SentenceEncoder(model_dir, max_length=max_length, batch_size=batch_size, precision=precision)
    return _SHARED[key]
