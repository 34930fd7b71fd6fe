"""Continuous batching: concurrent chat requests decoded together, joining and leaving between decode steps.

Requests arrive on the server's event loop and are queued per model variant.
One worker thread runs every variant's ``convrl.serving.slots.SlotDecoder``
(on the model :class:`convrl.rl.generation.Generator` loaded: same attention
kernel as evaluation): before each decode step, queued requests take the free
slots (up to ``max_batch_size`` rows per variant), their prompts are
prefilled after the longest stored prefix of the same variant (the persona's
system prompt, ``GenRequest.prefix``, is computed once per variant and
persona) and their first token is sampled at once; then one forward decodes
one token for every running row, and a row that is done answers its request
and frees its slot for the next one. Each row keeps its own settings:
temperature and top-p (0 = greedy) in ``sample_rows``, ``max_tokens``, and
cancellation when its client goes away; each row's new text goes to its
request as soon as it is decoded (streaming, time to first token). No row
repeats an n-gram of ``no_repeat_ngram_size`` tokens of its prompt and reply
(decoded as ``convrl chat`` and evaluation decode).

Models with sliding-window layers cannot use the slot cache; their requests
are batched statically (``convrl.serving.static_batch``: one ``generate`` call
per batch, waiting up to ``max_wait_ms`` for the batch to fill)::

    engine = BatchEngine({"champion": Generator(model_dir)}, max_batch_size=8)
    engine.start()
    req = GenRequest(messages=[{"role": "user", "content": "hi"}], max_new_tokens=32, temperature=0.7)
    result = engine.submit("champion", req).result()     # GenResult(text, tokens, ttft_s, ...)
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

import torch

from convrl.serving.slots import SlotDecoder

log = logging.getLogger("convrl.serve")


@dataclass
class GenRequest:
    messages: list[dict]
    max_new_tokens: int = 64
    temperature: float = 0.7
    top_p: float = 1.0
    on_text: Callable[[str], None] | None = None  # called on the worker thread with each new piece of text
    prefix: str = ""  # start of the system message many requests share (the persona prompt): its KV is reused
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
    batch_size: int  # the most rows decoded together while this one ran


def sample_rows(scores: torch.Tensor, temperature: torch.Tensor, top_p: torch.Tensor,
                rng: torch.Generator) -> torch.Tensor:
    """One token per row of ``scores`` [n, vocab]: each row at its own temperature and top-p (0 = greedy).

    Draws by inverse CDF over the (sorted, for top-p) distribution: one uniform per row.
    """
    scores = scores.float()
    pick = scores.argmax(-1)
    greedy = temperature <= 0
    if bool(greedy.all()):
        return pick
    probs = torch.softmax(scores / temperature.clamp(min=1e-4)[:, None], dim=-1)
    order = None
    if bool((top_p < 1).any()):  # sorting 49k logits per row costs as much as a small GEMM: only for top-p
        probs, order = probs.sort(dim=-1, descending=True)
        # Nucleus: drop tokens once the mass before them already reaches top_p (the first always stays).
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p[:, None], 0.0)
    cdf = probs.cumsum(-1)
    u = torch.rand(cdf.size(0), 1, generator=rng).to(cdf.device) * cdf[:, -1:]
    j = torch.searchsorted(cdf, u).clamp(max=cdf.size(-1) - 1)
    drawn = (order.gather(1, j) if order is not None else j).squeeze(1)
    return torch.where(greedy, pick, drawn)


class RowSampler:
    """``sample_rows`` as a logits processor for ``generate``: leaves only the drawn token finite."""

    def __init__(self, temperatures: list[float], top_ps: list[float], seed: int):
        self.temperature = torch.tensor(temperatures, dtype=torch.float32)
        self.top_p = torch.tensor(top_ps, dtype=torch.float32)
        self.rng = torch.Generator().manual_seed(seed)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        pick = sample_rows(scores, self.temperature.to(scores.device), self.top_p.to(scores.device), self.rng)
        return torch.full_like(scores, float("-inf")).scatter_(1, pick[:, None], 0.0)


class RowState:
    """One request while it decodes: its tokens, the text streamed so far, and its answer once done."""

    def __init__(self, tok, req: GenRequest, eos: set[int], started: float, prompt_tokens: int = 0,
                 prompt_ids: list[int] | None = None):
        self.tok, self.req, self.eos, self.started = tok, req, eos, started
        self.prompt_tokens = prompt_tokens
        self.prompt_ids = list(prompt_ids or [])
        self.ids: list[int] = []
        self.sent = ""
        self.finish = ""
        self.next_token = -1  # sampled, not yet fed to the model
        self.batch_size = 1

    def push(self, token: int) -> bool:
        """Take the row's next token (stream its text); True once the row is done and its request answered."""
        req = self.req
        if req.first_token is None:
            req.first_token = time.monotonic()
        if token in self.eos:
            return self.complete("stop")
        self.ids.append(token)
        self.next_token = token
        text = self.tok.decode(self.ids, skip_special_tokens=True).lstrip()
        if not text.endswith("\ufffd"):  # else half of a multi-byte character: wait for the rest
            if text[len(self.sent):] and req.on_text is not None:
                req.on_text(text[len(self.sent):])
            self.sent = text
        if len(self.ids) >= req.max_new_tokens:
            return self.complete("length")
        if req.cancelled.is_set():
            return self.complete("cancelled")
        return False

    def complete(self, reason: str) -> bool:
        """Answer the request now (a finished row never waits for the others); later calls do nothing."""
        if self.finish:
            return True
        self.finish = reason
        req, now = self.req, time.monotonic()
        req.future.set_result(GenResult(
            text=self.tok.decode(self.ids, skip_special_tokens=True).strip(), prompt_tokens=self.prompt_tokens,
            completion_tokens=len(self.ids) + (reason == "stop"), finish_reason=reason,
            ttft_s=(req.first_token or now) - req.submitted, latency_s=now - req.submitted,
            queued_s=self.started - req.submitted, batch_size=self.batch_size))
        return True


class BatchEngine:
    """One worker thread running every variant's continuous batch (or static batches where it must)."""

    def __init__(self, generators: dict, max_batch_size: int = 8, max_wait_ms: float = 15.0,
                 max_prompt_tokens: int = 2048, seed: int = 0, prefix_mb: float = 256, no_repeat_ngram_size: int = 0):
        from convrl.rl.decoding import supports_preallocated

        self.generators = generators
        for g in generators.values():
            g.tok.truncation_side = "left"  # a prompt over the limit loses its oldest text, never the newest turn
        self.max_batch_size = max_batch_size
        self.max_wait = max_wait_ms / 1000.0
        self.max_prompt_tokens = max_prompt_tokens
        self.no_repeat_ngram_size = no_repeat_ngram_size
        self.decoders = {name: SlotDecoder(g.model, max_batch_size, prefix_mb=prefix_mb)
                         for name, g in generators.items() if supports_preallocated(g.model.config)}
        self.eos = {name: self._eos_ids(g) for name, g in generators.items()}
        self.queues: dict[str, deque[GenRequest]] = {name: deque() for name in generators}
        self.cond = threading.Condition()
        self.running = False
        self.thread: threading.Thread | None = None
        self.batches = 0   # batched forwards that decoded (decode steps; one per static generate call)
        self.rows = 0      # rows over those forwards: mean batch size = rows / batches
        self.requests = 0  # requests that started decoding
        self.free_since = 0.0
        self._seed = seed or int(time.time())
        self.rng = torch.Generator().manual_seed(self._seed)

    @staticmethod
    def _eos_ids(gen) -> set[int]:
        eos = gen.model.generation_config.eos_token_id
        eos = gen.tok.eos_token_id if eos is None else eos
        return set(eos if isinstance(eos, list) else [eos])

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

    def running_rows(self) -> int:
        return sum(len(d.rows) for d in self.decoders.values())

    def prefix_stats(self) -> dict:
        """Prompt tokens prefilled vs copied from a stored prefix, over every variant."""
        return {"prefill_tokens": sum(d.prefill_tokens for d in self.decoders.values()),
                "prefix_tokens_reused": sum(d.reused_tokens for d in self.decoders.values())}

    def _take(self) -> dict[str, list[GenRequest]] | None:
        """Requests to start now, per variant (as many as have free slots); waits while there is nothing to do."""
        with self.cond:
            while self.running and not any(self.queues.values()) and not self.running_rows():
                self.cond.wait()
            if not self.running:
                return None
            work = {}
            for variant, queue in self.queues.items():
                if not queue:
                    continue
                dec = self.decoders.get(variant)
                if dec is None:
                    self._fill_static(queue)
                room = dec.free if dec is not None else self.max_batch_size
                work[variant] = [queue.popleft() for _ in range(min(room, len(queue)))]
            return work

    def _fill_static(self, queue: deque) -> None:
        # Wait from the later of the oldest arrival and the end of the last batch: closed-loop clients whose rows
        # finished last resubmit right after a batch ends, and a batch that left them out would split the sessions
        # into ever smaller batches. Never while continuous rows are running (they would stall).
        deadline = max(queue[0].submitted, self.free_since) + self.max_wait
        while (self.running and len(queue) < self.max_batch_size and time.monotonic() < deadline
               and not self.running_rows()):
            self.cond.wait(timeout=max(0.0, deadline - time.monotonic()))

    def _loop(self) -> None:
        while (work := self._take()) is not None:
            for variant, reqs in work.items():
                live = [r for r in reqs if not r.cancelled.is_set()]
                for r in reqs:
                    if r.cancelled.is_set():
                        r.future.set_exception(RuntimeError("request cancelled before decoding"))
                if variant in self.decoders and live:
                    self._admit(variant, live)
                elif live:
                    self._static(variant, live)
            for variant, dec in self.decoders.items():
                if dec.rows:
                    self._step(variant, dec)
        for dec in self.decoders.values():  # stopping: answer what still runs
            for row in dec.rows:
                row.complete("cancelled")
            dec.clear()

    def _encode(self, tok, req: GenRequest) -> tuple[list[int], int]:
        """(prompt ids, how many leading ids are worth sharing: the persona prefix, else the system message)."""
        text = tok.apply_chat_template(req.messages, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False, truncation=True, max_length=self.max_prompt_tokens)["input_ids"]
        system = req.messages[0] if req.messages and req.messages[0]["role"] == "system" else None
        if system is None:
            return ids, 0
        content = req.prefix if req.prefix and system["content"].startswith(req.prefix) else system["content"]
        head = tok.apply_chat_template([{"role": "system", "content": content}], tokenize=False)
        head_ids = tok(head, add_special_tokens=False)["input_ids"]
        # The head ends with the template's end-of-message; where the real message goes on, they part ways.
        anchor = next((i for i, (a, b) in enumerate(zip(ids, head_ids)) if a != b), min(len(ids), len(head_ids)))
        return ids, anchor

    def _sample(self, rows: list[RowState], logits: torch.Tensor) -> list[int]:
        if self.no_repeat_ngram_size > 0:
            from transformers.generation.logits_process import NoRepeatNGramLogitsProcessor

            # Row by row: rows are ragged, and left padding would add n-grams of pad tokens.
            ban = NoRepeatNGramLogitsProcessor(self.no_repeat_ngram_size)
            logits = torch.cat([ban(torch.tensor([row.prompt_ids + row.ids]), logits[i:i + 1].clone())
                                for i, row in enumerate(rows)])
        temperature = torch.tensor([r.req.temperature for r in rows], dtype=torch.float32, device=logits.device)
        top_p = torch.tensor([r.req.top_p for r in rows], dtype=torch.float32, device=logits.device)
        return sample_rows(logits, temperature, top_p, self.rng).tolist()

    def _admit(self, variant: str, reqs: list[GenRequest]) -> None:
        """Prefill ``reqs`` into free slots (one forward where it pays) and sample their first tokens."""
        gen, dec = self.generators[variant], self.decoders[variant]
        joining = []
        for req in reqs:
            try:
                ids, anchor = self._encode(gen.tok, req)
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the server
                log.exception("could not encode a request on %s", variant)
                req.future.set_exception(exc)
                continue
            joining.append((ids, anchor, RowState(gen.tok, req, self.eos[variant], time.monotonic(), len(ids),
                                                    prompt_ids=ids)))
        if not joining:
            return
        try:
            firsts = dec.add_rows(joining)
        except Exception as exc:  # noqa: BLE001 - a failed prefill fails its requests, not the server
            log.exception("prefill failed for %d requests on %s", len(joining), variant)
            for _, _, row in joining:
                row.req.future.set_exception(exc)
            return
        self.requests += len(firsts)
        rows = [row for row, _ in firsts]
        for row, token in zip(rows, self._sample(rows, torch.stack([logits for _, logits in firsts]))):
            row.batch_size = len(dec.rows)
            self._advance(dec, row, token)

    def _step(self, variant: str, dec: SlotDecoder) -> None:
        """One decode step of every running row of ``variant``; finished rows answer and leave."""
        for row in [r for r in dec.rows if r.req.cancelled.is_set()]:  # the client went away: stop its row now
            row.complete("cancelled")
            dec.remove(dec.rows.index(row))
        rows = list(dec.rows)
        if not rows:
            return
        try:
            logits = dec.step([r.next_token for r in rows])
            tokens = self._sample(rows, logits)
        except Exception as exc:  # noqa: BLE001 - one bad step fails its rows, not the server
            log.exception("decode step failed for %d rows on %s", len(rows), variant)
            for row in rows:
                row.req.future.set_exception(exc)
            dec.clear()
            return
        self.batches += 1
        self.rows += len(rows)
        for row, token in zip(rows, tokens):
            row.batch_size = max(row.batch_size, len(rows))
            self._advance(dec, row, token)

    @staticmethod
    def _advance(dec: SlotDecoder, row: RowState, token: int) -> None:
        """Give ``row`` its next token; a row that is done (or out of positions) answers and frees its slot."""
        slot = dec.rows.index(row)
        try:
            done = row.push(token) or dec.room(slot) < 1
        except Exception as exc:  # noqa: BLE001 - e.g. a streaming callback failed: that row ends, not the batch
            log.exception("a row failed while streaming")
            row.finish = "error"
            row.req.future.set_exception(exc)
            done = True
        if done:
            row.complete("length")
            # A finished reply's KV serves the session's next turn (its prompt starts with this one's text).
            dec.remove(slot, keep=row.finish in ("stop", "length"))

    def _static(self, variant: str, live: list[GenRequest]) -> None:
        from convrl.serving.static_batch import generate_static

        started = time.monotonic()
        rows = [RowState(self.generators[variant].tok, r, self.eos[variant], started) for r in live]
        self._seed += 1
        try:
            generate_static(self.generators[variant], rows, self.max_prompt_tokens,
                            RowSampler([r.temperature for r in live], [r.top_p for r in live], self._seed),
                            no_repeat_ngram_size=self.no_repeat_ngram_size)
            self.batches += 1
            self.rows += len(rows)
            self.requests += len(rows)
        except Exception as exc:  # noqa: BLE001 - one bad batch must not stop the server
            log.exception("generation failed for a batch of %d on %s", len(live), variant)
            for r in live:
                if not r.future.done():
                    r.future.set_exception(exc)
        self.free_since = time.monotonic()
