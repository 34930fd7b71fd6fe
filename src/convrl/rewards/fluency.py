"""Fluency: the length-normalised log-likelihood of a reply under a frozen causal LM.

``FluencyScorer(model_dir).mean_logprob(user_texts, responses)`` returns, per
reply, the mean log-probability of its tokens given a short chat prefix (the
last user message in the model's chat template). It is the costliest part of
the composite reward, so the batched path is built for the RL hot path:

* replies that share a prefix (the completions of one GRPO group) run the
  prefix once and reuse its KV cache for all of them;
* the vocabulary projection and log-softmax run on reply positions only
  (prefix positions need no logits);
* lone replies are batched left-padded, sorted by length to keep padding small.
"""

from __future__ import annotations

import copy
from collections import OrderedDict

import numpy as np
import torch


class FluencyScorer:
    """Length-normalised log-likelihood of the reply under a frozen causal LM."""

    def __init__(self, model_dir: str, batch_size: int = 16, max_tokens: int = 256, dtype: torch.dtype | None = None,
                 prefix_tokens: int = 64, share_prefix: bool = True):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype is None:
            from convrl.rl.grpo import bf16_supported

            # A frozen scorer loses nothing that matters in bf16 and runs twice as fast where the CPU has bf16 units.
            dtype = torch.bfloat16 if bf16_supported() else torch.float32
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.prefix_tokens = prefix_tokens
        self.share_prefix = share_prefix
        self._prefixes: OrderedDict[str, list[int]] = OrderedDict()
        pad = self.tok.pad_token_id
        self.pad_id = pad if pad is not None else (self.tok.eos_token_id or 0)

    # ------------------------------------------------------------------ tokens
    def prefix_ids(self, user_text: str) -> list[int]:
        if user_text not in self._prefixes:
            prefix = self.tok.apply_chat_template([{"role": "user", "content": user_text[-500:]}],
                                                  tokenize=False, add_generation_prompt=True)
            self._prefixes[user_text] = self.tok(prefix, add_special_tokens=False)["input_ids"][-self.prefix_tokens:]
            if len(self._prefixes) > 10_000:
                self._prefixes.popitem(last=False)
        return self._prefixes[user_text]

    def _reply_ids(self, response: str) -> list[int]:
        return self.tok(response, add_special_tokens=False)["input_ids"][: self.max_tokens]

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def mean_logprob(self, user_texts: list[str], responses: list[str]) -> np.ndarray:
        out = np.full(len(responses), -10.0, dtype=np.float32)  # an empty reply has no likelihood: worst fluency
        groups: dict[str, list[int]] = {}
        for i, u in enumerate(user_texts):
            groups.setdefault(u, []).append(i)
        lone = []
        for u, idx in groups.items():
            if self.share_prefix and len(idx) > 1:
                self._score_shared(self.prefix_ids(u), idx, responses, out)
            else:
                lone.extend(idx)
        if lone:
            self._score_lone(lone, user_texts, responses, out)
        return out

    def _token_logprobs(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(logits.float(), -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)

    def _score_shared(self, p_ids: list[int], idx: list[int], responses: list[str], out: np.ndarray) -> None:
        pre = self.model(input_ids=torch.tensor([p_ids]), use_cache=True)
        first_logit = pre.logits[:, -1:]  # predicts each reply's first token
        cache = pre.cache
        r_ids = {i: self._reply_ids(responses[i]) for i in idx}
        todo = sorted((i for i in idx if r_ids[i]), key=lambda i: len(r_ids[i]))
        for s in range(0, len(todo), self.batch_size):
            chunk = todo[s:s + self.batch_size]
            width = max(len(r_ids[i]) for i in chunk)
            inp = torch.tensor([r_ids[i] + [self.pad_id] * (width - len(r_ids[i])) for i in chunk])
            mask = torch.tensor([[1] * len(r_ids[i]) + [0] * (width - len(r_ids[i])) for i in chunk])
            past = copy.deepcopy(cache)  # the forward pass appends to the cache; keep the prefix pristine
            past.batch_repeat_interleave(len(chunk))
            att = torch.cat([torch.ones(len(chunk), len(p_ids), dtype=mask.dtype), mask], 1)
            logits = self.model(input_ids=inp, attention_mask=att, cache=past, use_cache=True).logits
            logits = torch.cat([first_logit.expand(len(chunk), -1, -1), logits[:, :-1]], 1)
            lp = self._token_logprobs(logits, inp)
            m = mask.float()
            out[chunk] = ((lp * m).sum(1) / m.sum(1)).numpy()

    def _score_lone(self, idx: list[int], user_texts: list[str], responses: list[str], out: np.ndarray) -> None:
        seqs = {}
        for i in idx:
            r = self._reply_ids(responses[i])
            if r:
                seqs[i] = (self.prefix_ids(user_texts[i]), r)
        todo = sorted(seqs, key=lambda i: len(seqs[i][0]) + len(seqs[i][1]))
        for s in range(0, len(todo), self.batch_size):
            chunk = todo[s:s + self.batch_size]
            full = [seqs[i][0] + seqs[i][1] for i in chunk]
            width = max(len(x) for x in full)
            # Left padding lines every reply up at the end, so logits are needed for the last positions only.
            inp = torch.tensor([[self.pad_id] * (width - len(x)) + x for x in full])
            att = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in full])
            pos = (att.cumsum(1) - 1).clamp(min=0)
            keep = max(len(seqs[i][1]) for i in chunk) + 1
            logits = self.model(input_ids=inp, attention_mask=att, position_ids=pos, logits_to_keep=keep).logits
            lp = self._token_logprobs(logits[:, :-1], inp[:, -(keep - 1):])
            m = torch.tensor([[0] * (keep - 1 - len(seqs[i][1])) + [1] * len(seqs[i][1]) for i in chunk]).float()
            out[chunk] = ((lp * m).sum(1) / m.sum(1)).numpy()

    @torch.inference_mode()
    def mean_logprob_reference(self, user_texts: list[str], responses: list[str]) -> np.ndarray:
        """The plain full-sequence computation, one reply at a time: what the fast paths must equal."""
        out = np.full(len(responses), -10.0, dtype=np.float32)
        for i, (u, r) in enumerate(zip(user_texts, responses)):
            p, ids = self.prefix_ids(u), self._reply_ids(r)
            if not ids:
                continue
            inp = torch.tensor([p + ids])
            logits = self.model(input_ids=inp).logits[0, len(p) - 1:-1] if p else None
            if logits is None:
                continue
            out[i] = float(self._token_logprobs(logits, inp[0, len(p):]).mean())
        return out
