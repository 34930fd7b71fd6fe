"""Dynamic batching: concurrent chat requests decoded together in one ``generate`` call.

Requests arrive on the server's event loop and are queued per model variant; one
worker thread takes the variant whose oldest request has waited longest, waits
up to ``max_wait_ms`` (counted from that request's arrival or the end of the
previous batch, whichever is later) for up to ``max_batch_size`` requests of
the same variant, and
decodes them in one left-padded ``generate`` call on the model that
:class:`convrl.rl.generation.Generator` loaded (same attention kernel and
preallocated KV cache as evaluation). Each row keeps its own settings: a
logits processor samples every row with its own temperature and top-p (0 =
greedy), and a stopping criterion ends every row at its own ``max_tokens`` or
when its client went away. A streamer hands each row's new text to its request
as soon as it is decoded (streaming responses, time to first token)::

    engine = BatchEngine({"champion": Generator(model_dir)}, max_batch_size=8, max_wait_ms=15)
    engine.start()
    req = GenRequest(messages=[{"role": "user", "content": "hi"}], max_new_tokens=32, temperature=0.7)
    result = engine.submit("champion", req).result()     # GenResult(text, tokens, ttft_s, ...)
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch
from transformers.generation.stopping_criteria import StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

log = logging.getLogger("convrl.serve")


@dataclass
class GenRequest:
    messages: list[dict]
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    on_text: Callable[[str], None] | None = None  # called on the worker thread with each new piece of text
    cancelled: threading.Event = field(default_factory=threading.Event)
    submitted: float = field(default_factory=time.monotonic)
    first_token: float | None = None
    future: Future = field(default_factory=Future)


@dataclass
class GenResult:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" (end of turn), "length" (max_tokens) or "cancelled"
    ttft_s: float
    latency_s: float
    queued_s: float
    batch_size: int


class RowSampler:
    """Logits processor: per-row temperature and top-p sampling (temperature 0 = greedy).

    Draws by inverse CDF over the sorted distribution (one uniform per row), then
    leaves only the drawn token finite so greedy decoding picks it.
    """

    def __init__(self, temperatures: list[float], top_ps: list[float], seed: int):
        self.temperature = torch.tensor(temperatures, dtype=torch.float32)
        self.top_p = torch.tensor(top_ps, dtype=torch.float32)
        self.greedy = self.temperature <= 0
        self.rng = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        scores = scores.float()
        pick = scores.argmax(-1)
        if not bool(self.greedy.all()):
            probs = torch.softmax(scores / self.temperature.clamp(min=1e-4)[:, None], dim=-1)
            order = None
            if bool((self.top_p < 1).any()):  # sorting 49k logits per row costs as much as a small GEMM: only for top-p
                probs, order = probs.sort(dim=-1, descending=True)
                # Nucleus: drop tokens once the mass before them already reaches top_p (the first always stays).
                probs = probs.masked_fill(probs.cumsum(-1) - probs >= self.top_p[:, None], 0.0)
            cdf = probs.cumsum(-1)
            u = torch.rand(cdf.size(0), 1, generator=self.rng) * cdf[:, -1:]
            j = torch.searchsorted(cdf, u).clamp(max=cdf.size(-1) - 1)
            drawn = (order.gather(1, j) if order is not None else j).squeeze(1)
            pick = torch.where(self.greedy, pick, drawn)
        return torch.full_like(scores, float("-inf")).scatter_(1, pick[:, None], 0.0)


class RowStop(StoppingCriteria):
    """Ends each row at its own token limit, or as soon as its request is cancelled."""

    def __init__(self, prompt_len: int, limits: list[int], requests: list[GenRequest]):
        self.prompt_len = prompt_len
        self.limits = torch.tensor(limits)
        self.requests = requests

    def __call__(self, input_ids: torch.Tensor, scores, **kwargs) -> torch.BoolTensor:
        done = (input_ids.shape[1] - self.prompt_len) >= self.limits
        gone = torch.tensor([r.cancelled.is_set() for r in self.requests])
        return (done | gone).to(input_ids.device)


class RowStreamer(BaseStreamer):
    """Collects each row's tokens as ``generate`` produces them and streams the new text of each row."""

    def __init__(self, tokenizer, requests: list[GenRequest], eos_ids: set[int], prompt_tokens: list[int],
                 started: float):
        self.tok = tokenizer
        self.requests = requests
        self.eos = eos_ids
        self.prompt_tokens = prompt_tokens
        self.started = started
        self.ids: list[list[int]] = [[] for _ in requests]
        self.sent = [""] * len(requests)
        self.finish = [""] * len(requests)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() first hands over the prompt ids
            self.prompt_seen = True
            return
        now = time.monotonic()
        for i, token in enumerate(value.reshape(-1).tolist()):
            req = self.requests[i]
            if self.finish[i]:
                continue
            if req.first_token is None:
                req.first_token = now
            if token in self.eos:
                self.complete(i, "stop")
                continue
            self.ids[i].append(token)
            self._emit(i)
            if len(self.ids[i]) >= req.max_new_tokens:
                self.complete(i, "length")
            elif req.cancelled.is_set():
                self.complete(i, "cancelled")

    def _emit(self, i: int) -> None:
        text = self.tok.decode(self.ids[i], skip_special_tokens=True).lstrip()
        if text.endswith("\ufffd"):  # half of a multi-byte character: wait for the rest
            return
        delta = text[len(self.sent[i]):]
        if delta and self.requests[i].on_text is not None:
            self.requests[i].on_text(delta)
        self.sent[i] = text

    def end(self) -> None:
        pass

    def complete(self, i: int, reason: str) -> None:
        """A finished row answers its request now, not when the slowest row of the batch is done."""
        if self.finish[i]:
            return
        self.finish[i] = reason
        req, now = self.requests[i], time.monotonic()
        req.future.set_result(GenResult(
            text=self.tok.decode(self.ids[i], skip_special_tokens=True).strip(),
            prompt_tokens=self.prompt_tokens[i], completion_tokens=len(self.ids[i]) + (reason == "stop"),
            finish_reason=reason, ttft_s=(req.first_token or now) - req.submitted, latency_s=now - req.submitted,
            queued_s=self.started - req.submitted, batch_size=len(self.requests)))


class BatchEngine:
    """One worker thread decoding queued requests in batches, one variant (model) per batch."""

    def __init__(self, generators: dict, max_batch_size: int = 8, max_wait_ms: float = 15.0,
                 max_prompt_tokens: int = 2048, seed: int = 0):
        self.generators = generators
        for g in generators.values():
            g.tok.truncation_side = "left"  # a prompt over the limit loses its oldest text, never the newest turn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_prompt_tokens = max_prompt_tokens
        self.queues: dict[str, deque[GenRequest]] = {name: deque() for name in generators}
        self.cond = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.batches = 0
        self.rows = 0
        self.free_since = 0.0
        self._seed = seed or int(time.time())

    def start(self) -> None:
        self.running = True
        self.thread = threading.Thread(target=self._loop, name="convrl-batcher", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        with self.cond:
            self.running = False
            self.cond.notify_all()
        if self.thread is not None:
            self.thread.join(timeout=30)

    def submit(self, variant: str, req: GenRequest) -> Future:
        if variant not in self.queues:
            raise KeyError(f"no model loaded for variant {variant!r}")
        with self.cond:
            self.queues[variant].append(req)
            self.cond.notify_all()
        return req.future

    def pending(self) -> int:
        with self.cond:
            return sum(len(q) for q in self.queues.values())

    def _next_batch(self) -> tuple[str, list[GenRequest]] | None:
        with self.cond:
            while self.running and not any(self.queues.values()):
                self.cond.wait()
            if not self.running:
                return None
            variant = min((v for v, q in self.queues.items() if q), key=lambda v: self.queues[v][0].submitted)
            queue = self.queues[variant]
            # Wait from the later of the oldest arrival and the end of the last batch: closed-loop clients whose
            # rows finished last resubmit right after a batch ends, and a batch that left them out would split
            # the sessions into ever smaller batches.
            deadline = max(queue[0].submitted, self.free_since) + self.max_wait
            while self.running and len(queue) < self.max_batch_size and time.monotonic() < deadline:
                self.cond.wait(timeout=max(0.0, deadline - time.monotonic()))
            batch = [queue.popleft() for _ in range(min(self.max_batch_size, len(queue)))]
        return variant, batch

    def _loop(self) -> None:
        while True:
            nxt = self._next_batch()
            if nxt is None:
                return
            variant, batch = nxt
            live = [r for r in batch if not r.cancelled.is_set()]
            for r in batch:
                if r.cancelled.is_set():
                    r.future.set_exception(RuntimeError("request cancelled before decoding"))
            if not live:
                continue
            try:
                self._generate(self.generators[variant], live)
            except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the server
                log.exception("generation failed for a batch of %d on %s", len(live), variant)
                for r in live:
                    if not r.future.done():
                        r.future.set_exception(exc)
            self.free_since = time.monotonic()

    @torch.inference_mode()
    def _generate(self, gen, batch: list[GenRequest]) -> None:
        from convrl.rl.decoding import preallocated_cache

        started = time.monotonic()
        tok, model = gen.tok, gen.model
        texts = [tok.apply_chat_template(r.messages, tokenize=False, add_generation_prompt=True) for r in batch]
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False, truncation=True,
                  max_length=self.max_prompt_tokens)
        prompt_len = enc["input_ids"].shape[1]
        max_new = max(r.max_new_tokens for r in batch)
        config = copy.deepcopy(model.generation_config)
        # Sampling happens in RowSampler; generate() itself decodes greedily over its output.
        config.update(do_sample=False, max_new_tokens=max_new, pad_token_id=tok.pad_token_id,
                      temperature=None, top_p=None, top_k=None, min_p=None)
        eos = config.eos_token_id if config.eos_token_id is not None else tok.eos_token_id
        streamer = RowStreamer(tok, batch, set(eos if isinstance(eos, list) else [eos]),
                               [int(n) for n in enc["attention_mask"].sum(dim=1).tolist()], started)
        self._seed += 1
        sampler = RowSampler([r.temperature for r in batch], [r.top_p for r in batch], self._seed)
        stop = StoppingCriteriaList([RowStop(prompt_len, [r.max_new_tokens for r in batch], batch)])
        cache = preallocated_cache(model.config, prompt_len + max_new)
        model.generate(**enc, generation_config=config, logits_processor=[sampler], stopping_criteria=stop,
                       streamer=streamer, cache=cache)
        self.batches += 1
        self.rows += len(batch)
        for i, r in enumerate(batch):  # rows generate() stopped without a streamed reason (cancelled mid-step)
            streamer.complete(i, "cancelled" if r.cancelled.is_set() else "length")
