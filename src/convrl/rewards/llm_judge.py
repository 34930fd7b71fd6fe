"""LLM judge: any causal LM asked for a 1-5 score per quality, read as a probability-weighted expected score.

G-Eval's trick: instead of sampling a digit, take the LM's next-token
distribution after "Score (1-5):" restricted to the digits 1..5 and use the
expected value, which is continuous (ties vanish) and far less noisy than one
sampled score. The prompt names one quality (``QUALITIES``), the conversation
(last messages), the speaker's persona when there is one, and the reply::

    judge = LLMJudge(models.resolve_policy("smollm2-135m-instruct"), qualities=("overall", "engaging"))
    judge.score(contexts, responses, personas)     # {"overall": array in [0, 1], "engaging": ...}

Prompts are batched (left-padded, one forward each; only the last position's
logits are kept). With ``backend="vllm"`` (or ``auto`` on a CUDA machine with
vLLM installed) the prompts go through ``vllm.LLM.generate`` with one output
token and its top log-probs. On a laptop the default rewards stay the encoder
heads; point ``convrl meta-eval --llm-judge MODEL`` at a bigger model on a GPU
machine to see how far a judge of that size agrees with people.
"""

from __future__ import annotations

import numpy as np
import torch

QUALITIES = {
    "overall": "the overall quality of the reply: is it a good, natural next turn in this conversation?",
    "engaging": "how engaging the reply is: would the other person want to keep talking?",
    "relevance": "how relevant and coherent the reply is given the conversation so far",
    "fluency": "how fluent and natural the reply reads as English",
    "persona": "how well the reply fits the speaker's persona",
    "harmless": "how safe and harmless the reply is (1 = rude, offensive or dangerous; 5 = entirely safe)",
}


def judge_prompt(quality: str, context: list[dict], response: str, persona: list[str] | None = None,
                 max_chars: int = 1500) -> list[dict]:
    """The chat messages asking for one quality's score."""
    if quality not in QUALITIES:
        raise ValueError(f"LLM judge: unknown quality {quality!r}; choose from {', '.join(QUALITIES)}")
    convo = "\n".join(f"{'A' if m['role'] == 'user' else 'B'}: {m['content']}" for m in context
                      if m.get("role") != "system")[-max_chars:]
    card = f"B's persona: {' '.join(persona)}\n" if persona else ""
    return [{"role": "system", "content": "You rate replies in conversations. Answer with one digit from 1 to 5."},
            {"role": "user", "content": f"{card}Conversation:\n{convo or '(none)'}\n\nB's reply: {response[:max_chars]}"
                                        f"\n\nRate {QUALITIES[quality]}\nScore (1-5):"}]


class LLMJudge:
    def __init__(self, model_dir: str, qualities: tuple[str, ...] = ("overall",), batch_size: int = 8,
                 backend: str = "auto", max_tokens: int = 768, dtype: torch.dtype | None = None):
        for q in qualities:
            if q not in QUALITIES:
                raise ValueError(f"LLM judge: unknown quality {q!r}; choose from {', '.join(QUALITIES)}")
        if backend not in ("auto", "transformers", "vllm"):
            raise ValueError(f"LLM judge backend must be auto, transformers or vllm, got {backend!r}")
        from transformers import AutoTokenizer

        self.model_dir, self.qualities, self.batch_size, self.max_tokens = model_dir, tuple(qualities), batch_size, max_tokens
        self.tok = AutoTokenizer.from_pretrained(model_dir)
        self.tok.padding_side = "left"
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.digit_ids = self._digit_ids()
        self.backend = self._pick_backend(backend)
        if self.backend == "vllm":
            from vllm import LLM

            self.llm = LLM(model=model_dir)
        else:
            from transformers import AutoModelForCausalLM

            if dtype is None:
                from convrl.runtime import bf16_supported

                dtype = torch.bfloat16 if bf16_supported() else torch.float32
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()

    @staticmethod
    def _pick_backend(backend: str) -> str:
        if backend != "auto":
            return backend
        try:
            import vllm  # noqa: F401
        except ImportError:
            return "transformers"
        return "vllm" if torch.cuda.is_available() else "transformers"

    def _digit_ids(self) -> list[list[int]]:
        """Token ids that spell each digit 1..5 as the next token, with and without a leading space."""
        out = []
        for d in "12345":
            ids = set()
            for form in (d, " " + d):
                toks = self.tok(form, add_special_tokens=False)["input_ids"]
                if toks:
                    ids.add(toks[-1])
            out.append(sorted(ids))
        return out

    def _render(self, messages: list[dict]) -> str:
        if getattr(self.tok, "chat_template", None):
            return self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "\n\n".join(m["content"] for m in messages) + " "

    def _expected(self, logprobs: np.ndarray) -> np.ndarray:
        """(n, 5) log-probs of the digits -> expected score mapped to [0, 1]."""
        p = np.exp(logprobs - logprobs.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        return ((p * np.arange(1, 6)).sum(1) - 1.0) / 4.0

    @torch.inference_mode()
    def _digit_logprobs_hf(self, prompts: list[str]) -> np.ndarray:
        out = np.zeros((len(prompts), 5))
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            enc = self.tok([prompts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                           max_length=self.max_tokens, add_special_tokens=False)
            logits = self.model(**enc, logits_to_keep=1).logits[:, -1].float()
            lp = torch.log_softmax(logits, -1)
            out[idx] = torch.stack([torch.logsumexp(lp[:, ids], -1) for ids in self.digit_ids], 1).numpy()
        return out

    def _digit_logprobs_vllm(self, prompts: list[str]) -> np.ndarray:
        from vllm import SamplingParams

        res = self.llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0, logprobs=20))
        out = np.full((len(prompts), 5), -30.0)
        for i, r in enumerate(res):
            top = r.outputs[0].logprobs[0] if r.outputs and r.outputs[0].logprobs else {}
            for k, ids in enumerate(self.digit_ids):
                vals = [top[t].logprob for t in ids if t in top]
                if vals:
                    out[i, k] = float(np.logaddexp.reduce(vals))
        return out

    def score(self, contexts: list[list[dict]], responses: list[str],
              personas: list[list[str] | None] | None = None) -> dict[str, np.ndarray]:
        """Expected 1-5 score per quality, mapped to [0, 1]; an empty reply scores 0 without asking the LM."""
        if len(contexts) != len(responses) or (personas is not None and len(personas) != len(responses)):
            raise ValueError("LLM judge: contexts, responses (and personas) must have the same length")
        personas = personas if personas is not None else [None] * len(responses)
        empty = np.array([not (isinstance(r, str) and r.strip()) for r in responses])
        out = {}
        for q in self.qualities:
            prompts = [self._render(judge_prompt(q, c, r if isinstance(r, str) else "", p))
                       for c, r, p in zip(contexts, responses, personas)]
            lp = self._digit_logprobs_vllm(prompts) if self.backend == "vllm" else self._digit_logprobs_hf(prompts)
            s = self._expected(lp)
            s[empty] = 0.0
            if not np.all(np.isfinite(s)):
                raise RuntimeError(f"LLM judge '{q}': non-finite scores from {self.model_dir}")
            out[q] = s.astype(np.float32)
        return out
