"""The ending warm-start (rl.warmstart): SFT on the base model's replies cut at a sentence end, then RL on it.

A tiny random policy never ends a sentence, so the tests hand the warm-start
the replies "the base model gave" (``Generator.generate`` patched) and check
what matters: the cut, that the adapter learns to end there (the end-of-turn
token gets likelier right after the cut reply), that GRPO continues that
adapter with a frozen copy of it as the KL reference (which also feeds the
fluency head), and that a rerun loads the saved adapter instead of training again.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from convrl.config import ConfigError, RLConfig, load_config
from convrl.config.rl import WarmStartSection
from convrl.rl import warmstart
from convrl.rl.generation import Generator

REPLIES = ["I'm sorry to hear that. Tell me more about what happened and how",
           "That sounds wonderful! What did you enjoy most? I would love to",
           "no sentence end here at all",
           "Ok."]


def test_cut_at_sentence_end():
    cut = warmstart.cut_at_sentence_end
    assert cut("Hello there. How are you doing to", 1) == "Hello there."
    assert cut("Great! Really? I think so", 1) == "Great! Really?"
    assert cut('She said "go." and then', 1) == 'She said "go."'
    assert cut("Version 2.5 is out and", 1) is None  # a decimal point does not end a sentence
    assert cut("It was fine... I guess", 1) == "It was fine..."
    assert cut("Ok. and then", 2) is None            # too short once cut
    assert cut("", 1) is None


def test_examples_keep_only_replies_with_a_whole_sentence():
    prompts = [[{"role": "user", "content": f"q{i}"}] for i in range(len(REPLIES))]
    rows = warmstart.warm_start_examples(prompts, REPLIES, min_words=3)
    assert [r["completion"][0]["content"] for r in rows] == [
        "I'm sorry to hear that.", "That sounds wonderful! What did you enjoy most?"]
    assert rows[0]["prompt"] == prompts[0] and rows[0]["completion"][0]["role"] == "assistant"


def test_config_checks():
    with pytest.raises(ConfigError, match="rl.warmstart"):
        RLConfig(algorithm="dpo", warmstart=WarmStartSection(enabled=True)).validate()
    with pytest.raises(ConfigError, match="max_tokens"):
        load_config("tiny", ["rl.warmstart.enabled=true", "rl.warmstart.max_tokens=2"])
    assert load_config("tiny", ["rl.warmstart.enabled=true"]).rl.warmstart.epochs == 1.0


@pytest.fixture
def replies(monkeypatch):
    calls = []

    def fake(self, conversations, **kw):
        calls.append(kw)
        return [REPLIES[i % len(REPLIES)] for i in range(len(conversations))]

    monkeypatch.setattr(Generator, "generate", fake)
    return calls


def test_warm_start_learns_to_end_and_is_loaded_on_rerun(ingested, personas, tiny_policy_dir, tmp_path, replies,
                                                         monkeypatch, one_thread):
    from convrl.data.prompts import build_prompts
    from convrl.rl.grpo import load_policy

    prompts = build_prompts(ingested.turns, personas, "train", 8, 4, seed=1)
    rl = RLConfig(precision="fp32", warmstart=WarmStartSection(enabled=True, epochs=6, learning_rate=0.02,
                                                                 batch_size=4, min_words=3, max_tokens=16))
    model, tok, peft = load_policy(rl, tiny_policy_dir)
    model, summary = warmstart.warm_start(rl, tiny_policy_dir, model, tok, peft, prompts, tmp_path)
    assert replies[0]["max_new_tokens"] == 16 and replies[0]["no_repeat_ngram_size"] == 4  # as convrl chat decodes
    assert summary["examples"] == 4 and summary["replies"] == 8 and summary["steps"] == 6  # 2 of 4 replies cut
    assert np.isfinite(summary["train_loss"]) and not summary["loaded"]
    assert tok.padding_side == "left"  # restored for GRPO's left-padded rollouts
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # trained: LoRA's B starts at zero
    saved = json.loads((tmp_path / warmstart.SUMMARY).read_text())
    assert saved["samples"][0] == "I'm sorry to hear that."
    # A rerun (resumed stage) loads the adapter: no generation, no training, the same weights.
    monkeypatch.setattr(Generator, "generate", lambda *a, **k: pytest.fail("generated again"))
    model2, tok2, peft2 = load_policy(rl, tiny_policy_dir)
    model2, summary2 = warmstart.warm_start(rl, tiny_policy_dir, model2, tok2, peft2, prompts, tmp_path)
    assert summary2["loaded"] and summary2["examples"] == 4
    assert any(p.requires_grad for n, p in model2.named_parameters() if "lora_" in n)  # RL trains it on
    loaded = dict(model2.named_parameters())
    assert all(torch.equal(p, loaded[n]) for n, p in model.named_parameters() if "lora_" in n)


def test_sft_learns_the_cut_reply_and_its_end_of_turn_only(ingested, personas, tiny_policy_dir, tmp_path):
    """The loss covers exactly the cut reply and the end-of-turn token after it: that is what teaches ending."""
    from convrl.data.prompts import build_prompts
    from convrl.rl.grpo import load_policy

    prompts = [p["prompt"] for p in build_prompts(ingested.turns, personas, "train", 2, 4, seed=1)]
    rows = warmstart.warm_start_examples(prompts, REPLIES[:2], min_words=3)
    rl = RLConfig(precision="fp32", warmstart=WarmStartSection(enabled=True))
    model, tok, peft = load_policy(rl, tiny_policy_dir)
    tok.padding_side = "right"
    trainer = warmstart.sft_trainer(rl, model, tok, peft, rows, tmp_path)
    for row, cut in zip(trainer.train_dataset, ["I'm sorry to hear that.", "That sounds wonderful! What did you enjoy most?"]):
        ids, mask = np.array(row["input_ids"]), np.array(row["labels"]) != -100
        assert tok.decode(ids[mask]).strip() == cut + "<|im_end|>"
        assert tok.decode(ids[~mask]).startswith("<|im_start|>system")  # the prompt: context, no loss


def test_no_usable_reply_is_a_clear_error(ingested, personas, tiny_policy_dir, tmp_path, monkeypatch):
    from convrl.data.prompts import build_prompts
    from convrl.rl.grpo import load_policy

    monkeypatch.setattr(Generator, "generate", lambda self, c, **kw: ["no end"] * len(c))
    rl = RLConfig(precision="fp32", warmstart=WarmStartSection(enabled=True))
    model, tok, peft = load_policy(rl, tiny_policy_dir)
    with pytest.raises(ValueError, match="max_tokens"):
        warmstart.warm_start(rl, tiny_policy_dir, model, tok, peft,
                             build_prompts(ingested.turns, personas, "train", 2, 4, seed=1), tmp_path)


def test_grpo_continues_the_warm_started_adapter_against_it(ingested, personas, tiny_encoder, tiny_policy_dir,
                                                           tmp_path, replies, monkeypatch, one_thread):
    """GRPO trains the warm-started adapter; the KL reference (and the fluency head) read its frozen copy."""
    from transformers import AutoModelForCausalLM

    from tests.test_rl_reference_fluency import spy_reference_pass

    from convrl.rl.grpo import train_grpo

    scorer, prompts, funcs, weights, seen, lm_calls = spy_reference_pass(monkeypatch, ingested, personas,
                                                                         tiny_encoder, tiny_policy_dir)
    rl = RLConfig(max_steps=2, num_generations=2, prompts_per_step=2, max_completion_length=8, save_steps=10,
                  precision="fp32", learning_rate=0.05, mask_truncated_completions=False,
                  warmstart=WarmStartSection(enabled=True, epochs=2, learning_rate=0.02, batch_size=2, min_words=3))
    res = train_grpo(rl, tiny_policy_dir, prompts, funcs, weights, tmp_path, scorer=scorer)
    assert res.steps == 2 and res.warmstart["examples"] == 2 and len(seen) == 2
    assert lm_calls == []  # the reference pass (the warm-started adapter's frozen copy) fed the fluency head
    # That reference is base + warm-start adapter: neither the plain base nor the policy RL moved on.
    from peft import PeftModel

    ref = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32),
                                    str(tmp_path / warmstart.ADAPTER_DIR)).eval()
    base = AutoModelForCausalLM.from_pretrained(tiny_policy_dir, dtype=torch.float32).eval()
    ids, am, C, plain = seen[-1]
    m = am[:, -C:].bool()
    with torch.no_grad():
        for model, close in ((ref, True), (base, False)):
            logits = model(input_ids=ids, attention_mask=am).logits[:, -C - 1:-1]
            want = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, -C:, None]).squeeze(-1)
            assert torch.allclose(plain[m], want[m], atol=1e-4) == close
    # The exported policy is the RL-trained adapter merged, not the warm-start alone.
    policy = AutoModelForCausalLM.from_pretrained(res.policy_dir, dtype=torch.float32).state_dict()
    merged_ws = ref.merge_and_unload().state_dict()
    assert any(not torch.equal(v, policy[k]) for k, v in merged_ws.items() if k in policy)


def test_best_of_picks_the_best_scoring_reply_that_ends_a_sentence():
    prompts = [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}], [{"role": "user", "content": "c"}]]
    candidates = [["Short one. and", "A much longer reply here. Another sentence ends. trailing"],
                  ["Greedy reply ends.", "tiny."],
                  ["no end", "none here either"]]
    calls = []

    def by_words(contexts, texts, idx):
        calls.append(list(idx))
        return np.array([len(t.split()) for t in texts], dtype=float)

    best = warmstart.best_of(prompts, candidates, 2, by_words)
    assert best == ["A much longer reply here. Another sentence ends.", "Greedy reply ends.", "no end"]
    assert calls == [[0, 0, 1]]  # one scoring call; "tiny." is too short once cut, prompt 2 has nothing to score
    # The greedy reply stands for a prompt with no candidate that ends: warm_start_examples then drops it.
    assert len(warmstart.warm_start_examples(prompts, best, 2)) == 2


def test_warm_start_with_candidates_trains_on_the_scorer_s_pick(ingested, personas, tiny_policy_dir, tmp_path,
                                                                 monkeypatch, one_thread):
    from convrl.data.prompts import build_prompts
    from convrl.rewards.heads import ScoreBatch
    from convrl.rl.grpo import load_policy

    def fake(self, conversations, do_sample=False, **kw):
        text = "Sampled reply that is longer. Yes it is. and" if do_sample else "Greedy reply here. and"
        return [text] * len(conversations)

    monkeypatch.setattr(Generator, "generate", fake)
    seen_personas = []

    class Scorer:
        def score(self, contexts, texts, personas):
            seen_personas.extend(personas)
            s = np.array([len(t) for t in texts], dtype=float)
            return ScoreBatch({}, s, {})

    prompts = build_prompts(ingested.turns, personas, "train", 4, 4, seed=1)
    by_id = {p.persona_id: p for p in personas}
    rl = RLConfig(precision="fp32", warmstart=WarmStartSection(enabled=True, candidates=3, min_words=2, batch_size=4))
    model, tok, peft = load_policy(rl, tiny_policy_dir)
    with pytest.raises(ValueError, match="scorer"):
        warmstart.warm_start(rl, tiny_policy_dir, model, tok, peft, prompts, tmp_path)
    model, tok, peft = load_policy(rl, tiny_policy_dir)
    _, summary = warmstart.warm_start(rl, tiny_policy_dir, model, tok, peft, prompts, tmp_path, Scorer(), by_id)
    assert summary["candidates"] == 3 and summary["picked_sampled"] == 4 and summary["examples"] == 4
    assert summary["samples"][0] == "Sampled reply that is longer. Yes it is."
    assert seen_personas and all(p is by_id[q["persona_id"]] for p, q in zip(seen_personas[::3], prompts))
