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
