"""How long does the base model want to talk? Its share of replies cut off at each token budget.

Builds the held-out prompts evaluation uses (the preset's test split, persona
cards, context window and memory line, up to ``--prompts`` of them), decodes
them once with the base policy as evaluation does (greedy, no repeated 4-gram,
``eval.precision``) with a budget of ``max(--budgets) + 1`` tokens, and prints,
per budget B, the share of replies that would be cut off at B (a reply of L
tokens ends inside B when L + 1 <= B, its end-of-turn token included: greedy
decoding does not depend on the budget), with the mean words a reply. With
``--instruction`` the system prompt's closing line ("Stay in character, keep
replies short, ...") is replaced, once per value, to see whether telling the
model to be brief moves the figure::

    .venv/bin/python bench/reply_budget.py                                       # demo, 64 prompts
    .venv/bin/python bench/reply_budget.py --budgets 48 64 80 96 128 \\
        --instruction "Stay in character and keep the user engaged. Reply in at most two sentences."

Lengths are counted by re-tokenising the decoded reply (the round trip may move
a count by a token). The demo's RL and evaluation budget is 64 tokens a turn;
``completions/clipped_ratio`` in the RL stage counts the same thing for the
last policy turn of each rollout.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def cut_off_share(lengths: list[int], budget: int) -> float:
    """Share of replies of ``lengths`` tokens (without their end token) that a ``budget`` cuts off."""
    return sum(n + 1 > budget for n in lengths) / max(1, len(lengths))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="demo", help="preset whose data, personas and evaluation settings to use")
    p.add_argument("--prompts", type=int, default=64, help="held-out prompts (test split)")
    p.add_argument("--budgets", type=int, nargs="+", default=[48, 64, 80, 96])
    p.add_argument("--instruction", action="append", default=[],
                   help="replacement for the system prompt's closing line (repeatable)")
    a = p.parse_args()

    import pandas as pd

    from convrl import models
    from convrl.config import load_config
    from convrl.data.personas import CLOSING_LINE as closing
    from convrl.data.personas import load_personas
    from convrl.data.prompts import build_prompts
    from convrl.rl.generation import Generator
    from convrl.stages.data import ingest_config

    cfg = load_config(a.config)
    rows = build_prompts(ingest_config(cfg).turns, load_personas(cfg.data.personas), "test", a.prompts,
                         cfg.rl.max_prompt_turns, cfg.eval.seed, token_budget=cfg.rl.prompt_token_budget)
    gen = Generator(models.resolve_policy(cfg.models.policy), dtype=cfg.eval.precision)
    budget = max(a.budgets) + 1
    table = []
    for line in [closing, *a.instruction]:
        convs = [[{**m, "content": m["content"].replace(closing, line)} if m["role"] == "system" else m
                  for m in r["prompt"]] for r in rows]
        t0 = time.time()
        replies = gen.generate(convs, max_new_tokens=budget, batch_size=cfg.eval.batch_size,
                               no_repeat_ngram_size=cfg.eval.no_repeat_ngram_size, progress=True, desc="replies")
        lengths = [len(gen.tok(r, add_special_tokens=False)["input_ids"]) for r in replies]
        row = {"closing line": line, "words": round(sum(len(r.split()) for r in replies) / len(replies), 1)}
        row.update({f"cut at {b}": round(cut_off_share(lengths, b), 2) for b in sorted(a.budgets)})
        row["seconds"] = round(time.time() - t0, 1)
        table.append(row)
        print(row, flush=True)
    print(f"\n{len(rows)} held-out prompts of `{a.config}`, base policy {cfg.models.policy}, greedy, "
          f"no repeated {cfg.eval.no_repeat_ngram_size}-gram\n")
    print(pd.DataFrame(table).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
