"""Static batching with one left-padded ``generate`` call: the fallback for models the slot decoder cannot run.

``convrl.serving.slots`` needs full attention in every layer (one mask for all
layers); a model with sliding-window layers (``decoding.supports_preallocated``
is false) is served here instead: a batch of requests taken together, decoded
by ``model.generate`` with each row's own sampling settings (``RowSampler``),
its own token limit and cancellation (``RowStop``), and each row's text
streamed as it is decoded (``RowStreamer``, which answers a finished row at
once). A request that arrives mid-batch waits for the next batch.

    generate_static(generator, rows, max_prompt_tokens=2048, sampler=RowSampler(...))
"""

from __future__ import annotations

import copy

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer


class RowStop(StoppingCriteria):
    """Ends each row at its own token limit, or as soon as its request is cancelled."""

    def __init__(self, prompt_len: int, rows: list):
        self.prompt_len = prompt_len
        self.limits = torch.tensor([r.req.max_new_tokens for r in rows])
        self.rows = rows

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        done = (input_ids.shape[1] - self.prompt_len) >= self.limits
        gone = torch.tensor([r.req.cancelled.is_set() for r in self.rows])
        return (done | gone).to(input_ids.device)


class RowStreamer(BaseStreamer):
    """Hands each row's new token to its ``RowState`` (which streams the text and answers when the row ends)."""

    def __init__(self, rows: list):
        self.rows = rows
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt ids
            self.prompt_seen = True
            return
        for row, token in zip(self.rows, value.reshape(-1).tolist()):
            if not row.finish:
                row.push(token)

    def end(self) -> None:
        pass


@torch.inference_mode()
def generate_static(gen, rows: list, max_prompt_tokens: int, sampler, no_repeat_ngram_size: int = 0) -> None:
    """Decode ``rows`` (``batching.RowState``, prompts in ``row.req.messages``) in one ``generate`` call."""
    tok, model = gen.tok, gen.model
    texts = [tok.apply_chat_template(r.req.messages, tokenize=False, add_generation_prompt=True) for r in rows]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True,
              max_length=max_prompt_tokens).to(gen.device)
    for row, n in zip(rows, enc["attention_mask"].sum(dim=1).tolist()):
        row.prompt_tokens, row.batch_size = int(n), len(rows)
    prompt_len = enc["input_ids"].shape[1]
    max_new = max(r.req.max_new_tokens for r in rows)
    config = copy.deepcopy(model.generation_config)
    # Sampling happens in the RowSampler; generate() itself decodes greedily over its output.
    config.update(do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                  temperature=None, top_p=None, top_k=None, min_p=None, no_repeat_ngram_size=no_repeat_ngram_size or None)
    # transformers' default cache: these models have sliding-window layers, which need its rolling one.
    model.generate(**enc, generation_config=config, logits_processor=[sampler],
                   stopping_criteria=StoppingCriteriaList([RowStop(prompt_len, rows)]), streamer=RowStreamer(rows))
    for row in rows:  # rows generate() stopped without a streamed reason (cancelled mid-step)
        row.complete("cancelled" if row.req.cancelled.is_set() else "length")
