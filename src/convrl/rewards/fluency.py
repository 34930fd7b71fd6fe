"""Fluency: the length-normalised log-likelihood of a reply under a frozen causal LM, in its conversation.

``FluencyScorer(model_dir).mean_logprob(contexts, responses)`` returns, per
reply, the mean log-probability of its tokens given the conversation it
answers: the context messages (persona system prompt included) rendered with
the model's chat template, as the policy saw them, cut to the last
``prefix_tokens`` tokens. That is exactly what the RL reference pass computes
for the KL term when the fluency LM is the policy's base model, so during
GRPO the trainer hands those log-probs over (``ReferenceLogprobs``) and the
LM does not run again (with ``rl.warmstart`` the reference is the
warm-started adapter's frozen copy: RL then reads that model's log-probs,
``bench/fluency_reference.py`` measures the difference). Elsewhere
(evaluation, meta-eval) the LM runs here, built for throughput:

* replies that share a context (the completions of one GRPO group) run the
  context once and reuse its KV cache for all of them;
* contexts that start alike (the persona card of every evaluation prompt of
  that persona, one conversation's earlier turns) run their common token
  prefix once, then each context's rest and its replies over that cache
  (``bench/eval_scoring.py``: the demo's evaluation scoring 65.4 -> 38.1 s for
  48 prompts x 2 replies, fp32, two threads, fluency equal to 1.2e-6);
* the vocabulary projection and log-softmax run on reply positions only
  (context positions need no logits);
* lone replies are batched left-padded, sorted by length to keep padding small.
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict

import numpy as np
import torch


EMPTY_REPLY = -10.0


class FluencyScorer:
    """Length-normalised log-likelihood of the reply under a frozen causal LM."""

    def __init__(self, model_dir: str, batch_size: int = 16, max_tokens: int = 256, dtype: torch.dtype | None = None,
                 prefix_tokens: int = 1024, share_prefix: bool = True, min_shared: int = 32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if dtype is None:
            from convrl.runtime import bf16_supported

            # A frozen scorer loses nothing that matters in bf16 and runs twice as fast where the CPU has bf16 units.
            dtype = torch.bfloat16 if bf16_supported() else torch.float32
        self.model_dir = model_dir
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()
        self.batch_size = batch_size
        self.max_tokens = max_tokens
        self.prefix_tokens = prefix_tokens
        self.share_prefix = share_prefix
        self.min_shared = min_shared
        self._prefixes: OrderedDict[str, list[int]] = OrderedDict()
        pad = self.tok.pad_token_id
        self.pad_id = pad if pad is not None else (self.tok.eos_token_id or 0)

    # ------------------------------------------------------------------ tokens
    def render(self, context) -> str:
        """The chat-templated context ending in the assistant's turn header (a bare string is one user message)."""
        messages = [{"role": "user", "content": context}] if isinstance(context, str) else list(context)
        if not messages:
            messages = [{"role": "user", "content": ""}]
        return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def prefix_ids(self, context) -> list[int]:
        return self._prefix_tokens(self.render(context))

    def _prefix_tokens(self, key: str) -> list[int]:
        if key not in self._prefixes:
            self._prefixes[key] = self.tok(key, add_special_tokens=False)["input_ids"][-self.prefix_tokens:]
            if len(self._prefixes) > 10_000:
                self._prefixes.popitem(last=False)
        return self._prefixes[key]

    def _reply_ids(self, response: str) -> list[int]:
        return self.tok(response, add_special_tokens=False)["input_ids"][: self.max_tokens]

    # ------------------------------------------------------------------ scoring
    @torch.inference_mode()
    def mean_logprob(self, contexts: list, responses: list[str]) -> np.ndarray:
        """Mean token log-prob of each reply given its context (message list, or a bare user string)."""
        out = np.full(len(responses), EMPTY_REPLY, dtype=np.float32)  # no likelihood: worst fluency
        keys = [self.render(c) for c in contexts]  # rendered once: the group key and the prefix text
        groups: dict[str, list[int]] = {}
        for i, k in enumerate(keys):
            groups.setdefault(k, []).append(i)
        lone = []
        for cluster, shared in self._clusters(list(groups)) if self.share_prefix else [(list(groups), 0)]:
            if shared:
                self._score_common(cluster, shared, groups, responses, out)
                continue
            for key in cluster:
                if self.share_prefix and len(groups[key]) > 1:
                    self._score_shared(self._prefix_tokens(key), groups[key], responses, out)
                else:
                    lone.extend(groups[key])
        if lone:
            self._score_lone(lone, keys, responses, out)
        return out

    def _clusters(self, keys: list[str]) -> list[tuple[list[str], int]]:
        """Contexts grouped by a common token prefix: ``(keys, shared tokens)``, shared 0 for a context alone.

        Sorted token lists put contexts with a common start next to each other (the persona system prompt of
        the evaluation's prompts, the first turns of one conversation's scored turns); a run of at least two
        that shares ``min_shared`` tokens runs them once. Each context keeps at least its last token outside
        the shared part: its logits predict the reply's first token.
        """
        if not keys:
            return []
        ids = {k: self._prefix_tokens(k) for k in keys}
        order = sorted(keys, key=lambda k: ids[k])
        out: list[tuple[list[str], int]] = []
        run, shared = [order[0]], 0
        for k in order[1:]:
            a, b = ids[run[0]], ids[k]
            lcp = min(len(os.path.commonprefix([a, b])), len(a) - 1, len(b) - 1)
            if lcp >= self.min_shared:
                # Sorted, the run's common prefix is its first and last members' one.
                run, shared = run + [k], lcp
            else:
                out.append((run, shared if len(run) > 1 else 0))
                run, shared = [k], 0
        out.append((run, shared if len(run) > 1 else 0))
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

    def _score_common(self, cluster: list[str], shared: int, groups: dict[str, list[int]], responses: list[str],
                      out: np.ndarray) -> None:
        # The common prefix runs once; each row is the rest of its context plus the reply, right-padded after
        # the cached prefix, and the vocabulary projection runs on the positions that predict reply tokens only.
        prefix = self._prefix_tokens(cluster[0])[:shared]
        cache = self.model(input_ids=torch.tensor([prefix]), use_cache=True).cache
        rows = []
        for key in cluster:
            rest = self._prefix_tokens(key)[shared:]
            rows += [(i, rest, r) for i in groups[key] if (r := self._reply_ids(responses[i]))]
        rows.sort(key=lambda row: len(row[1]) + len(row[2]))
        body, head = self.model.base_model, self.model.get_output_embeddings()
        for s in range(0, len(rows), self.batch_size):
            chunk = rows[s:s + self.batch_size]
            seqs = [rest + r for _, rest, r in chunk]
            width = max(len(x) for x in seqs)
            inp = torch.tensor([x + [self.pad_id] * (width - len(x)) for x in seqs])
            att = torch.tensor([[1] * (shared + len(x)) + [0] * (width - len(x)) for x in seqs])
            past = copy.deepcopy(cache)  # the forward pass appends to the cache; keep the prefix pristine
            past.batch_repeat_interleave(len(chunk))
            hidden = body(input_ids=inp, attention_mask=att, cache=past, use_cache=True).last_hidden_state
            row_ix = torch.tensor([j for j, (_, _, r) in enumerate(chunk) for _ in r])
            pos_ix = torch.tensor([len(rest) - 1 + t for _, rest, r in chunk for t in range(len(r))])
            lp = self._token_logprobs(head(hidden[row_ix, pos_ix]), inp[row_ix, pos_ix + 1])
            sums = torch.zeros(len(chunk), dtype=lp.dtype).index_add_(0, row_ix, lp)
            out[[i for i, _, _ in chunk]] = (sums / torch.tensor([len(r) for _, _, r in chunk])).numpy()

    def _score_lone(self, idx: list[int], keys: list[str], responses: list[str], out: np.ndarray) -> None:
        seqs = {}
        for i in idx:
            r = self._reply_ids(responses[i])
            if r:
                seqs[i] = (self._prefix_tokens(keys[i]), r)
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
    def mean_logprob_reference(self, contexts: list, responses: list[str]) -> np.ndarray:
        """The plain full-sequence computation, one reply at a time: what the fast paths must equal."""
        out = np.full(len(responses), EMPTY_REPLY, dtype=np.float32)
        for i, (u, r) in enumerate(zip(contexts, responses)):
            p, ids = self.prefix_ids(u), self._reply_ids(r)
            if not ids:
                continue
            inp = torch.tensor([p + ids])
            logits = self.model(input_ids=inp).logits[0, len(p) - 1:-1] if p else None
            if logits is None:
                continue
            out[i] = float(self._token_logprobs(logits, inp[0, len(p):]).mean())
        return out


class ReferenceLogprobs:
    """Per-token log-probs of the current batch's completions under the frozen base model, from the RL trainer.

    GRPO with ``beta > 0`` runs the base model over prompt + completion for the
    KL term anyway; when the fluency LM is that same base model, its
    temperature-1 log-probs are the fluency head's numbers. The trainer
    ``put``s them after its reference pass; the reward functions ``lookup`` the
    batch they are scoring. A lookup succeeds only for the same rows with the
    same token ids in the same order, so a stale or foreign batch never leaks
    into a reward: the fluency LM runs instead.
    """

    def __init__(self, special_ids=()):
        self.special = {int(i) for i in special_ids}
        self._ids: list[list[int]] | None = None
        self._logps: list[np.ndarray] | None = None
        self.hits = self.misses = 0

    def put(self, completion_ids: list[list[int]], logprobs: list[np.ndarray]) -> None:
        self._ids, self._logps = completion_ids, logprobs

    def lookup(self, completion_ids) -> list[np.ndarray] | None:
        ids = [list(map(int, c)) for c in completion_ids] if completion_ids is not None else None
        stored = self._ids
        if (ids is None or stored is None or len(ids) != len(stored)
                or any(s[:len(c)] != c for s, c in zip(stored, ids))):
            self.misses += 1
            return None
        self.hits += 1
        return [lp[:len(c)] for lp, c in zip(self._logps, ids)]

    def mean(self, ids, logps: np.ndarray, start: int = 0, end: int | None = None) -> float:
        """Mean log-prob of the ordinary (non-special) tokens in ``ids[start:end]``: one reply's fluency."""
        keep = [k for k in range(start, len(ids) if end is None else end) if int(ids[k]) not in self.special]
        return float(np.mean(logps[keep])) if keep else EMPTY_REPLY

    def reply_means(self, completion_ids, spans=None) -> np.ndarray | None:
        """Each reply's fluency for a batch, or None when it is not the batch handed over.

        One reply per completion, or with ``spans`` (per completion, a list of
        ``[start, end)`` token spans, e.g. the turns of a multi-turn rollout)
        one per span, flattened in order.
        """
        logps = self.lookup(completion_ids)
        if logps is None:
            return None
        spans = spans if spans is not None else [[(0, None)]] * len(logps)
        return np.array([self.mean(ids, lp, *span) for ids, lp, row in zip(completion_ids, logps, spans)
                         for span in row], dtype=np.float32)
