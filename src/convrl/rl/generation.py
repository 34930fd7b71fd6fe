"""Batched chat generation with a causal LM checkpoint (evaluation and ``convrl chat``).

Prompts are chat message lists; left padding lets one ``generate`` call serve a
whole batch. Seeds make sampling reproducible so two models compared in
evaluation see the same randomness.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


class Generator:
    def __init__(self, model_dir: str, dtype: torch.dtype = torch.float32):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_dir = model_dir
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.tok.padding_side = "left"
        if self.tok.pad_token is None:
            self.tok.pad_token = self.tok.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()

    @torch.inference_mode()
    def generate(self, conversations: list[list[dict]], max_new_tokens: int = 48, batch_size: int = 8,
                 do_sample: bool = False, temperature: float = 0.7, seed: int = 0,
                 progress: bool = False, desc: str = "generate") -> list[str]:
        outputs: list[str] = [""] * len(conversations)
        order = sorted(range(len(conversations)), key=lambda i: -sum(len(m["content"]) for m in conversations[i]))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        for b, idx in enumerate(tqdm(batches, desc=desc, disable=not progress)):
            texts = [self.tok.apply_chat_template(conversations[i], tokenize=False, add_generation_prompt=True)
                     for i in idx]
            enc = self.tok(texts, return_tensors="pt", padding=True, add_special_tokens=False,
                           truncation=True, max_length=1024)
            torch.manual_seed(seed + b)
            kwargs = {"do_sample": do_sample, "max_new_tokens": max_new_tokens,
                      "pad_token_id": self.tok.pad_token_id}
            if do_sample:
                kwargs.update(temperature=temperature, top_p=0.95)
            out = self.model.generate(**enc, **kwargs)
            for j, i in enumerate(idx):
                outputs[i] = self.tok.decode(out[j, enc["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        return outputs
