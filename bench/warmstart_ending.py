"""Does the ending warm-start (``rl.warmstart``) teach the policy to end its turns? Cut-off shares before and after.

Runs the warm-start as the RL stage would (the preset's RL prompts from the
train split, ``rl.seed``; the base model's replies cut at their last sentence
end; TRL's SFTTrainer on the LoRA adapter), merges the adapter, then decodes
the held-out prompts evaluation uses with the base and the warm-started model,
twice each: as evaluation and ``convrl chat`` decode (greedy, no repeated
4-gram) and as RL samples rollouts (``rl.temperature``, no ban). It prints the
share of replies cut off at the RL budget (``rl.max_completion_length``; a
reply of L tokens ends inside B when L + 1 <= B) and the mean words a reply,
with the warm-start's own time::

    .venv/bin/python bench/warmstart_ending.py                         # demo, 64 held-out prompts
    .venv/bin/python bench/warmstart_ending.py --set rl.warmstart.max_tokens=40 --set rl.warmstart.epochs=2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from reply_budget import cut_off_share  # noqa: E402 - bench/ is the script's directory


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="demo", help="preset whose data, personas and RL settings to use")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts (test split)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    a = p.parse_args()

    import pandas as pd

    from convrl import models
    from convrl.config import load_config
    from convrl.data.personas import load_personas
    from convrl.data.prompts import build_prompts
    from convrl.rl.generation import Generator
    from convrl.rl.grpo import load_policy, merged_policy
    from convrl.rl.warmstart import warm_start
    from convrl.stages.data import ingest_config

    cfg = load_config(a.config, ["rl.warmstart.enabled=true", *a.set])
    rl = cfg.rl
    turns, personas = ingest_config(cfg).turns, load_personas(cfg.data.personas)
    train = build_prompts(turns, personas, "train", rl.max_steps * rl.prompts_per_step, rl.max_prompt_turns, rl.seed,
                          token_budget=rl.prompt_token_budget)
    held_out = [r["prompt"] for r in build_prompts(turns, personas, "test", a.prompts, rl.max_prompt_turns,
                                                   cfg.eval.seed, token_budget=rl.prompt_token_budget)]
    base = models.resolve_policy(cfg.models.policy)
    budget = rl.max_completion_length
    with tempfile.TemporaryDirectory() as tmp:
        model, tok, peft_config = load_policy(rl, base)
        t0 = time.time()
        model, summary = warm_start(rl, base, model, tok, peft_config, train, tmp)
        seconds = time.time() - t0
        warm_dir = os.path.join(tmp, "merged")
        merged_policy(model, base).save_pretrained(warm_dir)
        tok.save_pretrained(warm_dir)
        table = []
        for name, model_dir in (("base", base), ("warm-started", warm_dir)):
            gen = Generator(model_dir, dtype=cfg.eval.precision)
            for mode, kw in (("greedy, no repeated 4-gram", dict(no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size)),
                             (f"sampled, temperature {rl.temperature}", dict(do_sample=True, temperature=rl.temperature,
                                                                             seed=rl.seed))):
                replies = gen.generate(held_out, max_new_tokens=budget + 1, batch_size=cfg.eval.batch_size,
                                       progress=True, desc=f"{name}, {mode}", **kw)
                lengths = [len(gen.tok(r, add_special_tokens=False)["input_ids"]) for r in replies]
                table.append({"model": name, "decoding": mode, f"cut at {budget}": round(cut_off_share(lengths, budget), 2),
                              "words": round(sum(len(r.split()) for r in replies) / len(replies), 1)})
                print(table[-1], flush=True)
    print(f"\nwarm-start: {summary['examples']} examples of {summary['replies']} RL prompts ({rl.warmstart.max_tokens}-token "
          f"replies cut at a sentence end, {summary['words_per_reply']} words), {summary['steps']} SFT steps, "
          f"loss {summary['train_loss']:.3f}, {seconds:.0f} s (generation {summary['generate_seconds']:.0f} s)")
    print(f"{len(held_out)} held-out prompts of `{a.config}`, base policy {cfg.models.policy}\n")
    print(pd.DataFrame(table).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
