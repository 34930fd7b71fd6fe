"""Chat decoding (``Generator.generate``: evaluation, self-play, ``convrl chat``) through transformers' generate vs
``CachedDecoder``, on the demo preset's held-out prompts.

Both ways decode the same batches greedily with the chat n-gram ban, bf16
where the CPU has bf16 units: transformers' ``generate`` over a preallocated
cache with prepacked linears (the way before), and ``CachedDecoder`` with
one-token steps through ``rl.fused_step`` and finished replies leaving the
batch. Rounds alternate the two so that load on the machine hits both alike;
it prints each way's seconds, the speed-up, how many replies are identical and
how many were cut at the token budget::

    .venv/bin/python bench/chat_decoding.py                  # demo: 96 prompts x 96 tokens, batches of 32, 2 threads
    .venv/bin/python bench/chat_decoding.py --prompts 32 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="demo")
    ap.add_argument("--model", default="", help="policy name or directory (default: the preset's)")
    ap.add_argument("--prompts", type=int, default=0, help="held-out prompts (default: the preset's eval.num_prompts)")
    ap.add_argument("--tokens", type=int, default=0, help="new tokens at most (default: the preset's eval budget)")
    ap.add_argument("--batch", type=int, default=0, help="batch size (default: the preset's eval.batch_size)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from convrl import models
    from convrl.config import load_config
    from convrl.data.ingest import ingest
    from convrl.data.personas import load_personas, personas_table, prompt_personas
    from convrl.data.prompts import build_prompts
    from convrl.rl import generation

    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    n = args.prompts or cfg.eval.num_prompts
    tokens, batch = args.tokens or cfg.eval.max_new_tokens, args.batch or cfg.eval.batch_size
    data = ingest(cfg.data.sources, seed=cfg.data.seed, max_conversations=cfg.data.max_conversations)
    personas = prompt_personas(personas_table(load_personas(cfg.data.personas)), cfg.data.personas,
                               cfg.data.prompt_personas)
    convs = [p["prompt"] for p in build_prompts(data.turns, personas, "test", n, cfg.rl.max_prompt_turns,
                                                 cfg.eval.seed, token_budget=cfg.rl.prompt_token_budget)]
    gen = generation.Generator(models.resolve_policy(args.model or cfg.models.policy), dtype=cfg.eval.precision)
    real_ok = generation.cached_decoding_ok
    ways = {"generate": lambda config: False, "cached": real_ok}
    seconds = {w: [] for w in ways}
    replies, cut = {}, {}
    gen.generate(convs[:2], max_new_tokens=4, batch_size=2)  # warm-up (and the fused step's weights)
    try:
        for _ in range(args.rounds):
            for way, ok in ways.items():
                generation.cached_decoding_ok = ok
                t0 = time.perf_counter()
                replies[way] = gen.generate(convs, max_new_tokens=tokens, batch_size=batch, no_repeat_ngram_size=4)
                seconds[way].append(time.perf_counter() - t0)
                cut[way] = sum(not e for e in gen.last_ended)
    finally:
        generation.cached_decoding_ok = real_ok
    same = sum(a == b for a, b in zip(replies["generate"], replies["cached"]))
    print(f"{len(convs)} prompts x <= {tokens} tokens, batches of {batch}, {gen.model.dtype}, {args.threads} threads")
    for way, secs in seconds.items():
        print(f"{way:9} " + ", ".join(f"{s:.1f} s" for s in secs) + f"   cut at the budget: {cut[way]}")
    speedup = sum(seconds["generate"]) / sum(seconds["cached"])
    print(f"speed-up {speedup:.2f}x; identical replies {same}/{len(convs)}")
    return {"seconds": seconds, "speedup": speedup, "same": same, "cut": cut}


if __name__ == "__main__":
    main()
