"""Continuous batching in ``convrl serve``: the slot decoder against plain ``generate``, joining, prefixes, cancelling.

Tiny random Llamas with large weights (so greedy tokens vary and a wrong cache
or position shows up as different tokens), SmolLM2's tokenizer and chat template.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import pytest
import torch


def _llama(seed: int = 0, arch: str = "llama", **kw):
    from transformers import AutoConfig, AutoModelForCausalLM

    from convrl.rl.decoding import gqa_attention

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(arch, vocab_size=kw.pop("vocab_size", 1000), hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               initializer_range=0.5, max_position_embeddings=1024, **kw)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    model.set_attn_implementation(gqa_attention())  # what Generator loads on a CPU
    return model


def _greedy(model, ids: list[int], n: int) -> list[int]:
    out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0)
    return out[0, len(ids):].tolist()


def test_rows_joining_at_different_steps_match_generate():
    from convrl.serving.slots import SlotDecoder

    model = _llama()
    g = torch.Generator().manual_seed(1)
    system = torch.randint(5, 1000, (40,), generator=g).tolist()
    prompts = [system + torch.randint(5, 1000, (k,), generator=g).tolist() for k in (5, 12, 8, 30)]
    prompts.append(torch.randint(5, 1000, (20,), generator=g).tolist())  # no shared prefix
    joins = {0: 0, 1: 3, 2: 3, 3: 6, 4: 9}  # decode step at which each row joins
    want = {i: 12 + 2 * i for i in joins}     # rows leave at different steps too
    # 3 slots for 5 rows: later rows join when earlier ones leave; capacity 32 grows on the way.
    dec = SlotDecoder(model, slots=3, capacity=32)
    out: dict[int, list[int]] = {}
    waiting = sorted(joins, key=joins.get)
    for step in range(200):
        joining = []
        while waiting and joins[waiting[0]] <= step and len(joining) < dec.free:
            i = waiting.pop(0)
            joining.append((prompts[i], 40 if i < 4 else 0, i))
        if joining:  # rows 1 and 2 join together: one left-padded forward of their remainders (12 and 8)
            before = dec.prefill_tokens
            for i, logits in dec.add_rows(joining):
                out[i] = [int(logits.argmax())]
            # Row 0 prefills the system prompt (and stores it); rows 1-3 copy it and prefill only the rest.
            assert dec.prefill_tokens - before == sum(len(p) - 40 * (i in (1, 2, 3)) for p, _, i in joining)
        if not dec.rows and not waiting:
            break
        if dec.rows:
            logits = dec.step([out[r][-1] for r in dec.rows])
            for r, row_logits in zip(list(dec.rows), logits):
                out[r].append(int(row_logits.argmax()))
            for r in [r for r in dec.rows if len(out[r]) >= want[r]]:
                dec.remove(dec.rows.index(r))
    for i, p in enumerate(prompts):
        assert out[i] == _greedy(model, p, want[i]), f"row {i} differs from generate"
    assert dec.reused_tokens == 3 * 40  # rows 1-3 copied row 0's system prefix instead of prefilling it
    assert dec.cache.capacity > 32


def test_a_stored_prefix_serves_a_longer_system_message():
    """A persona entry is exact for a session whose system message goes on after the persona text."""
    from convrl.serving.slots import SlotDecoder

    model = _llama(seed=3)
    g = torch.Generator().manual_seed(4)
    persona = torch.randint(5, 1000, (24,), generator=g).tolist()
    first = persona + torch.randint(5, 1000, (6,), generator=g).tolist()
    with_memory = persona + torch.randint(5, 1000, (15,), generator=g).tolist()
    dec = SlotDecoder(model, slots=2)
    dec.add(first, anchor=24, row="a")
    _, logits = dec.add(with_memory, anchor=len(with_memory) - 3, row="b")
    assert dec.reused_tokens == 24
    tokens = [int(logits.argmax())]
    for _ in range(7):
        tokens.append(int(dec.step([0, tokens[-1]])[1].argmax()))
    assert tokens == _greedy(model, with_memory, 8)


def test_a_finished_turn_serves_the_next_turn_of_its_session():
    from convrl.serving.slots import PrefixStore, SlotDecoder

    model = _llama(seed=5)
    g = torch.Generator().manual_seed(6)
    turn1 = torch.randint(5, 1000, (30,), generator=g).tolist()
    dec = SlotDecoder(model, slots=2)
    _, logits = dec.add(turn1, row="t1")
    reply = [int(logits.argmax())]
    for _ in range(9):
        reply.append(int(dec.step([reply[-1]])[0].argmax()))
    dec.remove(0, keep=True)  # the cache holds turn1 + reply[:-1] (the last token was never fed)
    turn2 = turn1 + reply + torch.randint(5, 1000, (7,), generator=g).tolist()
    before = dec.reused_tokens
    _, logits = dec.add(turn2, row="t2")
    assert dec.reused_tokens - before == len(turn1) + len(reply) - 1
    tokens = [int(logits.argmax())]
    for _ in range(5):
        tokens.append(int(dec.step([tokens[-1]])[0].argmax()))
    assert tokens == _greedy(model, turn2, 6)
    # The store: a longer entry replaces its own prefixes; the least recently used go beyond the budget.
    kv = (torch.zeros(2, 1, 1, 100, 4), torch.zeros(2, 1, 1, 100, 4))  # 6400 bytes
    store = PrefixStore(budget_bytes=20_000, min_tokens=4)
    store.add(tuple(range(20)), kv)
    store.add(tuple(range(40)), kv)
    assert list(store.entries) == [tuple(range(40))]
    store.add(tuple(range(30)), kv)  # covered by the 40-token entry
    for start in (100, 200, 300):
        store.add(tuple(range(start, start + 20)), kv)
    assert tuple(range(40)) not in store.entries and len(store.entries) == 3 and store.bytes <= 20_000
    assert store.match(list(range(200, 230)), limit=29)[0] == 20
    assert store.match([1, 2, 3], limit=2) == (0, None)


def _chat_generator(seed: int = 0, **kw):
    """A Generator-like (tok, model, device) over SmolLM2's tokenizer and a tiny random model."""
    from transformers import AutoTokenizer

    from convrl import models

    tok = AutoTokenizer.from_pretrained(models.resolve_policy("tiny-llama"))
    tok.padding_side = "left"
    model = _llama(seed, vocab_size=len(tok), **kw)
    model.generation_config.eos_token_id = []  # random weights: no early ends, rows run to their limits
    return SimpleNamespace(tok=tok, model=model, device=torch.device("cpu"))


def _conversation(i: int, persona: str = "You are Ada, a calm and patient coach. Keep replies short.") -> list[dict]:
    return [{"role": "system", "content": persona}, {"role": "user", "content": f"Hello number {i}, how are you?"}]


@pytest.fixture()
def engine():
    from convrl.serving.batching import BatchEngine

    gen = _chat_generator()
    eng = BatchEngine({"champion": gen}, max_batch_size=4, seed=1)
    eng.start()
    yield eng, gen
    eng.stop()


def test_engine_greedy_replies_match_generate_and_share_the_persona_prefix(engine):
    from convrl.serving.batching import GenRequest

    eng, gen = engine
    persona = "You are Ada, a calm and patient coach. Keep replies short."
    convs = [_conversation(i, persona) for i in range(6)]
    convs[5][0]["content"] += "\nEarlier: the user likes chess."  # context memory after the persona text
    pieces: dict[int, list[str]] = {i: [] for i in range(6)}
    reqs = [GenRequest(messages=c, max_new_tokens=5 + i, temperature=0.0, prefix=persona,
                       on_text=pieces[i].append) for i, c in enumerate(convs)]
    results = [eng.submit("champion", r).result(timeout=120) for r in reqs]
    for i, (c, res) in enumerate(zip(convs, results)):
        ids = gen.tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert res.text == gen.tok.decode(_greedy(gen.model, ids, 5 + i), skip_special_tokens=True).strip()
        assert res.finish_reason == "length" and res.completion_tokens == 5 + i and res.prompt_tokens == len(ids)
        assert "".join(pieces[i]).strip() == res.text  # streamed pieces add up to the reply
    assert eng.prefix_stats()["prefix_tokens_reused"] >= 5 * 15  # 6 requests, 6 max on 4 slots: one persona prefill
    assert eng.requests == 6 and eng.running_rows() == 0


def test_a_row_joining_mid_batch_answers_before_the_batch_and_cancelled_rows_stop(engine):
    from convrl.serving.batching import GenRequest

    eng, _ = engine
    long = [GenRequest(messages=_conversation(i), max_new_tokens=900, temperature=0.7) for i in range(3)]
    futures = [eng.submit("champion", r) for r in long]
    deadline = time.time() + 60
    while not all(r.first_token for r in long) and time.time() < deadline:
        time.sleep(0.005)
    late = GenRequest(messages=_conversation(9), max_new_tokens=3, temperature=0.0)
    res = eng.submit("champion", late).result(timeout=60)
    assert res.completion_tokens == 3 and res.batch_size == 4  # decoded beside the running rows...
    assert not any(f.done() for f in futures)                 # ...and answered while they still run
    assert res.ttft_s < min(time.monotonic() - r.submitted for r in long)
    for r in long:
        r.cancelled.set()
    for f in futures:
        out = f.result(timeout=60)
        assert out.finish_reason == "cancelled" and 0 < out.completion_tokens < 900
    # A request cancelled while queued never decodes.
    gone = GenRequest(messages=_conversation(10), max_new_tokens=4)
    gone.cancelled.set()
    with pytest.raises(RuntimeError, match="cancelled before decoding"):
        eng.submit("champion", gone).result(timeout=60)
    assert eng.running_rows() == 0


def test_sliding_window_models_are_batched_statically():
    from convrl.serving.batching import BatchEngine, GenRequest

    gen = _chat_generator(seed=2, arch="mistral", sliding_window=16)
    eng = BatchEngine({"champion": gen}, max_batch_size=4, max_wait_ms=200, seed=1)
    assert not eng.decoders  # the slot cache has one mask for every layer: no sliding windows
    eng.start()
    try:
        convs = [_conversation(i) for i in range(3)]  # prompts of one length: left padding would shift the window
        futures = [eng.submit("champion", GenRequest(messages=c, max_new_tokens=6, temperature=0.0)) for c in convs]
        results = [f.result(timeout=120) for f in futures]
    finally:
        eng.stop()
    assert eng.batches == 1 and {r.batch_size for r in results} == {3}
    for c, res in zip(convs, results):
        ids = gen.tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        assert res.text == gen.tok.decode(_greedy(gen.model, ids, 6), skip_special_tokens=True).strip()


@pytest.mark.parametrize("arch,kw", [("llama", {}), ("mistral", {"sliding_window": 16})])
def test_no_repeat_ngram_rows_decode_as_generate_with_the_ban(arch, kw):
    """Continuous and static rows with ``no_repeat_ngram_size`` give transformers' own banned-n-gram greedy reply."""
    from convrl.serving.batching import BatchEngine, GenRequest
    from tests.test_generation import _reply_repeats

    gen = _chat_generator(seed=3, arch=arch, **kw)
    with torch.no_grad():  # eight tokens dominate the output layer, so plain greedy replies soon loop among them
        gen.model.lm_head.weight[1000:1008] *= 100
    eng = BatchEngine({"champion": gen}, max_batch_size=4, max_wait_ms=200, seed=1, no_repeat_ngram_size=3)
    assert bool(eng.decoders) == (arch == "llama")
    eng.start()
    try:
        convs = [_conversation(i) for i in range(3)]
        results = [f.result(timeout=120) for f in
                   [eng.submit("champion", GenRequest(messages=c, max_new_tokens=40, temperature=0.0)) for c in convs]]
    finally:
        eng.stop()
    looped = 0
    for c, res in zip(convs, results):
        ids = gen.tok.apply_chat_template(c, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        plain = _greedy(gen.model, ids, 40)
        looped += _reply_repeats(ids + plain, len(ids), 3)
        out = gen.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0,
                                 no_repeat_ngram_size=3)[0, len(ids):].tolist()
        assert not _reply_repeats(ids + out, len(ids), 3)
        assert res.text == gen.tok.decode(out, skip_special_tokens=True).strip()
    assert looped  # without the ban these greedy replies do repeat, so the ban is what the test sees
