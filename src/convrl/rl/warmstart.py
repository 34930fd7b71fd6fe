"""Ending warm-start: a short SFT of the LoRA adapter on the base model's own replies, cut at a sentence end.

The demo's base policy (SmolLM2-135M-Instruct) rarely stops on its own: about
70% of its replies run past a 64-token turn (``bench/reply_budget.py``), and
rewarding the ending inside RL bought shorter replies with the persona
(README "Does it learn?"). So before RL the adapter learns, by supervised
fine-tuning with TRL's ``SFTTrainer``, to end where the model itself would
have ended a sentence: the base model answers the RL prompts as ``convrl chat``
decodes (greedy, no repeated n-gram, ``rl.warmstart.max_tokens`` tokens),
each reply is cut at its last sentence end, and the adapter is trained on
those (prompt, reply + end-of-turn) pairs, the loss on the reply only. RL then
continues the same adapter; TRL keeps a frozen copy of it as the KL reference
(the usual RLHF reference: the policy RL starts from).

The adapter is saved under ``<out>/warmstart``; a rerun of the stage (resume)
loads it instead of training again::

    model, tok, peft_config = load_policy(cfg.rl, base_dir)
    model, summary = warm_start(cfg.rl, base_dir, model, tok, peft_config, prompts, out_dir)
    # GRPOTrainer(model=model, peft_config=None, ...) continues the adapter
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

# A sentence ends at . ! ? (or an ellipsis), optionally followed by closing quotes/brackets, then space or the end.
_SENTENCE_END = re.compile(r"(?:[.!?]|\u2026)[\"'\u201d\u2019)\]]*(?=\s|$)")
ADAPTER_DIR = "warmstart"
SUMMARY = "warmstart.json"


def cut_at_sentence_end(text: str, min_words: int = 1) -> str | None:
    """``text`` up to its last sentence end, or None when it has none or keeps fewer than ``min_words`` words."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text)]
    if not ends:
        return None
    cut = text[:ends[-1]].strip()
    return cut if len(cut.split()) >= min_words else None


def warm_start_examples(prompts: list[list[dict]], replies: list[str], min_words: int) -> list[dict]:
    """TRL conversational prompt-completion rows for the replies that keep a whole sentence once cut."""
    rows = []
    for prompt, reply in zip(prompts, replies):
        cut = cut_at_sentence_end(reply, min_words)
        if cut is not None:
            rows.append({"prompt": prompt, "completion": [{"role": "assistant", "content": cut}]})
    return rows


def best_of(prompts: list[list[dict]], candidates: list[list[str]], min_words: int, score) -> list[str]:
    """Per prompt, the candidate that scores best (``score(contexts, replies, rows) -> array``) once cut at its
    last sentence end; the greedy reply (first) when none ends a sentence, for ``warm_start_examples`` to drop."""
    flat = [(i, cut) for i, cands in enumerate(candidates) for c in cands
            if (cut := cut_at_sentence_end(c, min_words)) is not None]
    best = [cands[0] for cands in candidates]
    if not flat:
        return best
    scores = score([prompts[i] for i, _ in flat], [c for _, c in flat], [i for i, _ in flat])
    top: dict[int, float] = {}
    for (i, cut), s in zip(flat, scores):
        if i not in top or s > top[i]:
            top[i], best[i] = float(s), cut
    return best


def sft_args(rl, out_dir: Path, n_examples: int):
    from trl import SFTConfig

    from convrl.runtime import resolve_precision
    import torch

    ws = rl.warmstart
    return SFTConfig(
        output_dir=str(out_dir / "warmstart_trainer"), num_train_epochs=ws.epochs,
        per_device_train_batch_size=min(ws.batch_size, max(1, n_examples)), learning_rate=ws.learning_rate,
        lr_scheduler_type="constant", warmup_steps=0, logging_steps=1, save_strategy="no", report_to="none",
        seed=rl.seed, use_cpu=not torch.cuda.is_available(), bf16=resolve_precision(rl.precision) == "bf16",
        # Checkpointing recomputes the forward in backward: slower, and a 135M model needs no memory saved.
        activation_checkpointing=False, completion_only_loss=True, max_length=rl.prompt_token_budget + ws.max_tokens,
        dataloader_num_workers=0, disable_tqdm=False)


def sft_trainer(rl, model, tok, peft_config, rows: list[dict], out: Path):
    """TRL's SFTTrainer on the prompt-completion ``rows``: loss on each reply and its end-of-turn token only."""
    from datasets import Dataset
    from trl import SFTTrainer

    return SFTTrainer(model=model, args=sft_args(rl, out, len(rows)), train_dataset=Dataset.from_list(rows),
                      processing_class=tok, peft_config=peft_config)


def base_greedy_replies(rl, base_dir: str, prompts: list[dict], out_dir: str | Path, max_tokens: int,
                        gen=None) -> list[str]:
    """The base model's replies to ``prompts`` as ``convrl chat`` decodes (greedy, the chat n-gram ban), saved
    under ``<out>/base_greedy_<max_tokens>.json`` and read back from there by a rerun (resume) or a second user
    (the warm-start's targets, the guard's greedy-probe references)."""
    from convrl.config.eval import CHAT_NO_REPEAT_NGRAM

    conversations = [p["prompt"] for p in prompts]
    saved = Path(out_dir) / f"base_greedy_{max_tokens}.json"
    if saved.exists():
        cached = json.loads(saved.read_text())
        if cached.get("prompts") == conversations:
            return list(cached["replies"])
    if gen is None:
        from convrl.rl.generation import Generator

        gen = Generator(base_dir, dtype=rl.precision)
    replies = gen.generate(conversations, max_new_tokens=max_tokens, batch_size=32,
                           no_repeat_ngram_size=CHAT_NO_REPEAT_NGRAM, progress=True, desc="base greedy replies")
    saved.parent.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps({"prompts": conversations, "replies": replies}))
    return replies


def warm_start(rl, base_dir: str, model, tok, peft_config, prompts: list[dict], out_dir: str | Path,
               scorer=None, personas_by_id: dict | None = None):
    """(PEFT model whose adapter ends its turns, summary dict); loads ``<out>/warmstart`` when a run saved it.

    With ``rl.warmstart.candidates > 1`` the ``scorer`` (a ``RewardScorer``) picks each prompt's best reply by the
    composite reward in its persona (``personas_by_id``).
    """
    from peft import PeftModel

    out = Path(out_dir)
    saved = out / ADAPTER_DIR
    if (saved / "adapter_config.json").exists() and (out / SUMMARY).exists():
        summary = json.loads((out / SUMMARY).read_text())
        summary["loaded"] = True
        return PeftModel.from_pretrained(model, str(saved), is_trainable=True), summary

    from convrl.rl.generation import Generator

    ws = rl.warmstart
    t0 = time.time()
    conversations = [p["prompt"] for p in prompts]
    gen = Generator(base_dir, dtype=rl.precision)
    replies = base_greedy_replies(rl, base_dir, prompts, out, ws.max_tokens, gen)
    picked = {}
    if ws.candidates > 1:
        if scorer is None:
            raise ValueError("rl.warmstart.candidates > 1 picks replies by the composite reward: pass the scorer")
        sampled = [gen.generate(conversations, max_new_tokens=ws.max_tokens, batch_size=32, do_sample=True,
                                temperature=rl.temperature, seed=rl.seed + 1000 * k, progress=True,
                                desc=f"warm-start samples {k}/{ws.candidates - 1}")
                   for k in range(1, ws.candidates)]
        by_id = personas_by_id or {}

        def composite(contexts, texts, idx):
            return scorer.score(contexts, texts, [by_id.get(prompts[i].get("persona_id")) for i in idx]).composite

        greedy = replies
        replies = best_of(conversations, [list(c) for c in zip(greedy, *sampled)], ws.min_words, composite)
        picked = {"picked_sampled": sum(r != cut_at_sentence_end(g, ws.min_words) for r, g in zip(replies, greedy))}
    del gen
    rows = warm_start_examples(conversations, replies, ws.min_words)
    if not rows:
        raise ValueError(f"rl.warmstart: none of the base model's {len(replies)} replies to the RL prompts ended "
                         f"a sentence within {ws.max_tokens} tokens; raise rl.warmstart.max_tokens or turn "
                         "rl.warmstart.enabled off")
    generate_s = time.time() - t0
    padding_side = tok.padding_side
    tok.padding_side = "right"  # the SFT collator pads after the completion
    try:
        trainer = sft_trainer(rl, model, tok, peft_config, rows, out)
        result = trainer.train()
    finally:
        tok.padding_side = padding_side
    peft_model = trainer.model
    peft_model.save_pretrained(str(saved))
    summary = {"examples": len(rows), "replies": len(replies), "steps": trainer.state.global_step,
               "train_loss": float(result.training_loss), "generate_seconds": round(generate_s, 1),
               "seconds": round(time.time() - t0, 1), "max_tokens": ws.max_tokens, "candidates": ws.candidates,
               **picked,
               "words_per_reply": round(sum(len(r["completion"][0]["content"].split()) for r in rows) / len(rows), 1),
               "samples": [r["completion"][0]["content"] for r in rows[:8]]}
    (out / SUMMARY).write_text(json.dumps(summary, indent=2))
    summary["loaded"] = False
    return peft_model, summary
