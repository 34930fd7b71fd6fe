"""Batched chat generation with a causal LM checkpoint (evaluation and ``convrl chat``).

Prompts are chat message lists; left padding lets one ``generate`` call serve a
whole batch. Seeds make sampling reproducible so two models compared in
evaluation see the same randomness.

Chat decoding (``convrl chat``, ``convrl serve``, the MLflow pyfunc, evaluation
and self-play, the same for every model compared) bans repeating any
``convrl.config.eval.CHAT_NO_REPEAT_NGRAM``-token n-gram of the conversation
(transformers' ``no_repeat_ngram_size``). Greedy small models otherwise copy their own earlier
turns: on the demo's seed-13 candidate and its base over 6 ten-turn self-play
conversations, 72% / 89% of turns near-copied an earlier one; with the ban 0% /
0%, and self-play coherence, user following, engagement and fact recall rose for
both (``bench/selfplay_decoding.py``, README "Does it learn?")::

    Generator(model_dir).generate(conversations, max_new_tokens=64, no_repeat_ngram_size=CHAT_NO_REPEAT_NGRAM)
"""

from __future__ import annotations

import copy

import torch
from tqdm.auto import tqdm



def decode_dtype(precision: str) -> torch.dtype:
    """The weights' dtype for decoding at ``precision`` (auto: bf16 where the CPU/GPU has bf16 units, else fp32).

    Greedy decoding is memory-bound at evaluation's batch sizes, so bf16 weights halve the bytes each step
    reads: 2.2x faster on a 2-core AMX CPU (``bench/decode_precision.py``: 32 prompts x 32 tokens, SmolLM2-135M,
    one thread, beside three RL runs: fp32 17.7 and 17.2 s, bf16 8.4 and 7.7 s).
    """
    from convrl.runtime import resolve_precision

    return torch.bfloat16 if resolve_precision(precision) == "bf16" else torch.float32


class Generator:
    """A chat model for batched replies; ``fast=False`` uses transformers' defaults (benchmark baselines)."""

    def __init__(self, model_dir: str, dtype: torch.dtype | str = torch.float32, fast: bool = True):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        dtype = decode_dtype(dtype) if isinstance(dtype, str) else dtype

        self.model_dir = model_dir
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        from convrl.rl.decoding import gqa_attention

        # Fused grouped attention over a preallocated cache + prepacked bf16 linears (bench/decode_levers.py).
        self.fast = fast
        attn = gqa_attention() if fast and not torch.cuda.is_available() else None
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype, attn_implementation=attn).eval()
        # Evaluation, self-play and the simulated user run where training runs: on the GPU when there is one.
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device)
        if fast:
            from convrl.rl.packed_linear import pack_linears

            pack_linears(self.model)  # bf16 on a CPU: same tokens, matmuls from prepacked weights

    @torch.inference_mode()
    def generate(self, conversations: list[list[dict]], max_new_tokens: int = 48, batch_size: int = 8,
                 do_sample: bool = False, temperature: float = 0.7, seed: int = 0,
                 progress: bool = False, desc: str = "generate", no_repeat_ngram_size: int = 0) -> list[str]:
        """Replies to ``conversations``; ``no_repeat_ngram_size`` > 0 bans repeating an n-gram of prompt or reply."""
        from convrl.rl.decoding import preallocated_cache

        outputs: list[str] = [""] * len(conversations)
        # Whether each reply stopped on an end-of-turn token (False: cut at max_new_tokens), for the last call.
        self.last_ended = [False] * len(conversations)
        order = sorted(range(len(conversations)), key=lambda i: -sum(len(m["content"]) for m in conversations[i]))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for b, idx in enumerate(tqdm(batches, desc=desc, disable=not progress)):
            texts = [self.tok.apply_chat_template(conversations[i], tokenize=False, add_generation_prompt=True)
                     for i in idx]
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                           truncation=True, max_length=1024).to(self.device)
            torch.manual_seed(seed + b)
            # The checkpoint's own generation config (EOS ids etc.) with this call's settings on top.
            config = copy.deepcopy(self.model.generation_config)
            config.update(do_sample=do_sample, max_new_tokens=max_new_tokens, pad_token_id=self.tok.pad_token_id,
                          no_repeat_ngram_size=no_repeat_ngram_size or None)
            if do_sample:
                config.update(temperature=temperature, top_p=0.95)
            if self.fast:
                config, processors = sampling_setup(config)
                cache = (preallocated_cache(self.model.config, enc["input_ids"].shape[1] + max_new_tokens)
                         if self.device.type == "cpu" else None)
                out = self.model.generate(**enc, generation_config=config, logits_processor=processors, cache=cache)
            else:
                out = self.model.generate(**enc, generation_config=config)
            eos = config.eos_token_id  # what generate stops on (None: it never stops early)
            eos = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
            for j, i in enumerate(idx):
                reply = out[j, enc["input_ids"].shape[1]:]
                outputs[i] = self.tok.decode(reply, skip_special_tokens=True).strip()
                self.last_ended[i] = bool(eos & set(reply.tolist()))
        return outputs


class InverseCDFSampler:
    """Logits processor that draws the next token itself, by inverse-CDF sampling, for greedy ``generate``.

    ``generate(do_sample=True)`` draws with ``torch.multinomial``, which on a CPU
    costs ~6 ms per call for a 49k vocabulary and 8 rows (an exponential random
    number per vocabulary entry): 12% of a rollout. One uniform per row and a
    cumulative sum draw from the same distribution in ~0.3 ms. The sampler
    applies the config's own warpers (temperature, top-k, top-p, min-p, i.e.
    what ``do_sample`` would apply), samples, and leaves only the drawn token
    finite, so ``do_sample=False`` decoding picks it. Use ``sampling_setup``.
    """

    def __init__(self, generation_config, generator: torch.Generator | None = None):
        from transformers.generation.logits_process import (LogitsProcessorList, MinPLogitsWarper,
                                                            TemperatureLogitsWarper, TopKLogitsWarper)

        gc = generation_config
        self.generator = generator  # its own random stream (e.g. the simulated user's), else torch's global one
        self.warpers = LogitsProcessorList()
        if gc.temperature is not None and gc.temperature != 1.0:
            self.warpers.append(TemperatureLogitsWarper(gc.temperature))
        if gc.top_k:
            self.warpers.append(TopKLogitsWarper(gc.top_k))
        if gc.top_p is not None and gc.top_p < 1.0:
            self.warpers.append(TopPFromTopK(gc.top_p))
        if gc.min_p:
            self.warpers.append(MinPLogitsWarper(gc.min_p))

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = self.warpers(input_ids, scores)
        cdf = torch.softmax(scores.float(), dim=-1).cumsum(-1)
        if self.generator is None:
            u = torch.rand(cdf.size(0), 1, device=cdf.device)
        else:
            u = torch.rand(cdf.size(0), 1, generator=self.generator, device=self.generator.device).to(cdf.device)
        u = u * cdf[:, -1:]
        token = torch.searchsorted(cdf, u).clamp(max=cdf.size(-1) - 1)
        return torch.full_like(scores, float("-inf")).scatter_(1, token, 0.0)


class TopPFromTopK:
    """``TopPLogitsWarper``'s nucleus filter, computed from each row's top-k tokens when they hold ``top_p`` of the mass.

    transformers sorts the whole vocabulary of every row: 12-17 ms per call for
    8 rows x 49k on 2 cores, a fifth of the simulated user's turn. The nucleus
    lies inside the top-k whenever those k tokens hold ``top_p`` of the
    probability (the top 256 did for 97% of the simulated user's rows at
    temperature 0.8, the top 4,096 for all); a ``topk`` and a ``logsumexp`` take
    ~1.2 ms. Rows the tiers do not cover take transformers' own warper. Same
    kept set and values as ``TopPLogitsWarper`` (tests compare both), except
    where tokens tie exactly at the boundary: each keeps its own tie order.
    """

    TIERS = (256, 4096)

    def __init__(self, top_p: float, min_tokens_to_keep: int = 1, filter_value: float = -float("inf")):
        from transformers.generation.logits_process import TopPLogitsWarper

        self.top_p, self.min_keep, self.filter_value = float(top_p), max(1, min_tokens_to_keep), filter_value
        self.full = TopPLogitsWarper(top_p, filter_value=filter_value, min_tokens_to_keep=min_tokens_to_keep)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = torch.full_like(scores, self.filter_value)
        lse = torch.logsumexp(scores.float(), -1, keepdim=True)
        todo = torch.arange(scores.size(0), device=scores.device)
        for k in self.TIERS:
            if k >= scores.size(-1) or not todo.numel():
                break
            vals, idx = scores[todo].topk(k, dim=-1)
            probs = (vals.float() - lse[todo]).exp()
            # Tokens beyond the top k are all cut iff the mass outside it is at most 1 - top_p.
            covered = probs.sum(-1) >= self.top_p
            # A token survives iff the mass of the tokens ranked above it is below top_p (transformers' rule,
            # "cumulative mass from the bottom > 1 - top_p", read from the top).
            keep = (probs.cumsum(-1) - probs) < self.top_p
            keep[:, :self.min_keep] = True
            rows = covered.nonzero().flatten()
            out[todo[rows]] = out[todo[rows]].scatter(1, idx[rows], vals[rows].masked_fill(~keep[rows],
                                                                                         self.filter_value))
            todo = todo[~covered]
        if todo.numel():
            out[todo] = self.full(input_ids[todo] if input_ids is not None else None, scores[todo])
        return out


def sampling_setup(generation_config, generator: torch.Generator | None = None):
    """(greedy config, [sampler]) that sample like ``generation_config`` but faster on a CPU; unchanged if greedy."""
    if not generation_config.do_sample or (generation_config.num_beams or 1) > 1:
        return generation_config, []
    sampler = InverseCDFSampler(generation_config, generator)
    greedy = copy.deepcopy(generation_config)
    greedy.do_sample = False
    greedy.temperature, greedy.top_k, greedy.top_p, greedy.min_p = None, None, None, None
    return greedy, [sampler]
