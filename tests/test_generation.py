"""Chat decoding (``convrl.rl.generation``): the no-repeat-n-gram rule evaluation, chat and serving share."""

from __future__ import annotations

import pytest
import torch

from convrl.config.eval import CHAT_NO_REPEAT_NGRAM
from convrl.rl.generation import Generator


def test_chat_decoding_default_is_shared_by_eval_serve_and_chat():
    from convrl.cli import build_parser
    from convrl.config import load_config

    cfg = load_config("demo")
    assert CHAT_NO_REPEAT_NGRAM == 4
    assert cfg.eval.no_repeat_ngram_size == cfg.serve.no_repeat_ngram_size == CHAT_NO_REPEAT_NGRAM
    assert build_parser().parse_args(["chat"]).no_repeat_ngram_size == CHAT_NO_REPEAT_NGRAM


def _reply_repeats(ids: list[int], start: int, n: int) -> bool:
    """Some n-gram ending in the reply (``ids[start:]``) already occurred earlier in ``ids``."""
    seen = {tuple(ids[i:i + n]) for i in range(max(0, start - n + 1))}
    for j in range(max(start, n - 1), len(ids)):
        gram = tuple(ids[j - n + 1:j + 1])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def test_generator_bans_repeated_ngrams_of_the_conversation(tmp_path):
    """Generator passes the ban to transformers: replies are generate's own with ``no_repeat_ngram_size``.

    Bigrams over a model that mostly speaks eight tokens, so its plain greedy replies surely repeat one."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from convrl import models

    tok_dir = models.resolve_policy("tiny-llama")
    tok = AutoTokenizer.from_pretrained(tok_dir)
    torch.manual_seed(0)
    cfg = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               initializer_range=0.5, max_position_embeddings=512)
    model = AutoModelForCausalLM.from_config(cfg)
    model.generation_config.eos_token_id = None  # no early ends: every reply runs its whole budget
    with torch.no_grad():  # eight tokens dominate the output layer, so plain greedy replies soon loop among them
        model.lm_head.weight[1000:1008] *= 100
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    gen = Generator(str(tmp_path))
    convs = [[{"role": "user", "content": f"Tell me about day {i}. I like tea, I like tea."}] for i in range(3)]
    banned = gen.generate(convs, max_new_tokens=48, batch_size=3, no_repeat_ngram_size=2)
    looped = 0
    for conv, reply in zip(convs, banned):
        ids = tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        kw = dict(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                  max_new_tokens=48, do_sample=False, pad_token_id=tok.pad_token_id or 0)
        plain = model.generate(**kw)[0].tolist()
        own = model.generate(**kw, no_repeat_ngram_size=2)[0].tolist()
        looped += _reply_repeats(plain, len(ids), 2)
        assert not _reply_repeats(own, len(ids), 2)
        assert reply == tok.decode(own[len(ids):], skip_special_tokens=True).strip()
    assert looped  # without the ban these greedy replies repeat, so the test sees the ban at work


def test_generator_says_which_replies_ended_and_which_were_cut(tiny_policy_dir):
    """``last_ended``: an end-of-turn token within the budget, or cut at max_new_tokens (evaluation's cut_off)."""
    gen = Generator(tiny_policy_dir, dtype=torch.float32)
    gen.model.generation_config.eos_token_id = None  # never stops: every reply is cut
    convs = [[{"role": "user", "content": "Tell me about tea."}], [{"role": "user", "content": "Hi there!"}]]
    gen.generate(convs, max_new_tokens=6, batch_size=2)
    assert gen.last_ended == [False, False]
    # The first token the model says to the first conversation becomes its end-of-turn token: that reply ends.
    enc = gen.tok.apply_chat_template(convs[0], add_generation_prompt=True, return_tensors="pt", return_dict=True)
    first = int(gen.model(**enc).logits[0, -1].argmax())
    gen.model.generation_config.eos_token_id = first
    gen.generate(convs, max_new_tokens=6, batch_size=1)
    assert gen.last_ended[0] is True and len(gen.last_ended) == 2


def test_decode_dtype_follows_the_precision_and_the_hardware(tiny_policy_dir):
    from convrl.rl.generation import decode_dtype
    from convrl.runtime import bf16_supported

    assert decode_dtype("bf16") == torch.bfloat16 and decode_dtype("fp32") == torch.float32
    assert decode_dtype("auto") == (torch.bfloat16 if bf16_supported() else torch.float32)
    assert Generator(tiny_policy_dir, dtype="bf16").model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="precision"):
        decode_dtype("fp8")


@pytest.mark.parametrize("do_sample", [False, True])
def test_generator_decodes_on_the_cached_decoder_as_generate_would(tiny_policy_dir, monkeypatch, do_sample):
    """Greedy and sampled replies on ``CachedDecoder`` (fused one-token steps, finished rows leaving the batch) are
    transformers' generate's own, with the n-gram ban, the same seeds and ragged prompts."""
    from convrl.rl import generation

    gen = Generator(tiny_policy_dir, dtype=torch.float32)
    convs = [[{"role": "user", "content": f"Tell me about day {i}." + " I like tea." * i}] for i in range(5)]
    kw = dict(max_new_tokens=12, batch_size=5, no_repeat_ngram_size=3, do_sample=do_sample, seed=4)
    calls = []
    real = Generator._decode_cached
    monkeypatch.setattr(Generator, "_decode_cached", lambda self, *a: (calls.append(1), real(self, *a))[1])
    cached, cached_ended = gen.generate(convs, **kw), list(gen.last_ended)
    assert calls
    monkeypatch.setattr(generation, "cached_decoding_ok", lambda config: False)
    assert gen.generate(convs, **kw) == cached and gen.last_ended == cached_ended
    assert len(calls) == 1


def test_cached_decoding_leaves_other_generation_settings_to_generate():
    from transformers import GenerationConfig

    from convrl.rl.generation import cached_decoding_ok, sampling_setup

    assert cached_decoding_ok(GenerationConfig(eos_token_id=2, max_new_tokens=8, no_repeat_ngram_size=4))
    assert cached_decoding_ok(sampling_setup(GenerationConfig(do_sample=True, temperature=0.7, top_p=0.9))[0])
    assert not cached_decoding_ok(GenerationConfig(repetition_penalty=1.2))
    assert not cached_decoding_ok(GenerationConfig(num_beams=2))
    assert not cached_decoding_ok(GenerationConfig(do_sample=True))  # sampling goes through sampling_setup first


def test_shared_prefix_groups_join_rows_that_share_enough_leading_tokens():
    from convrl.rl.conversation_decoder import shared_prefix_groups

    a = list(range(20))
    rows = [a + [99], [1, 2, 3], a + [7, 8], a[:10] + [5] * 12, [1, 2, 3, 4]]
    assert shared_prefix_groups(rows, min_shared=3) == [[0, 2, 3], [1, 4]]
    assert shared_prefix_groups(rows) == [[0, 2], [1], [3], [4]]


def test_cached_decoding_prefills_a_shared_system_prompt_once_with_generates_replies(tiny_policy_dir, monkeypatch):
    """Prompts of one persona share its system prompt: the cached decoder prefills it once per batch (one group per
    persona) and the replies stay transformers' generate's."""
    from convrl.rl import generation
    from convrl.rl.conversation_decoder import CachedDecoder

    gen = Generator(tiny_policy_dir, dtype=torch.float32)
    card = "You are Ada, a calm expert who answers briefly and kindly. " * 3
    convs = [[{"role": "system", "content": card if i % 2 else card.upper()},
              {"role": "user", "content": f"Question {i}: what now?" + " Really." * i}] for i in range(6)]
    seen = []
    real_prefill = CachedDecoder.prefill
    monkeypatch.setattr(CachedDecoder, "prefill", lambda self, rows, groups=None: (
        seen.append(groups), real_prefill(self, rows, groups))[1])
    kw = dict(max_new_tokens=10, batch_size=6, no_repeat_ngram_size=3)
    cached = gen.generate(convs, **kw)
    assert len(seen) == 1 and sorted(len(g) for g in seen[0]) == [3, 3]  # two personas, each prefilled once
    monkeypatch.setattr(generation, "cached_decoding_ok", lambda config: False)
    assert gen.generate(convs, **kw) == cached
