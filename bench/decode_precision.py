"""Evaluation decoding in fp32 vs bf16 weights (``eval.precision``): seconds per batch and whether replies agree.

Greedy chat decoding as evaluation and ``convrl chat`` run it (``convrl.rl.generation.Generator``, no repeated
4-gram), the two precisions alternated ``--rounds`` times so that load on the machine hits both alike. On a CPU
without bf16 units ``auto`` is fp32 and bf16 is slow; with AMX bf16 halves the bytes of weights each decoding
step reads::

    .venv/bin/python bench/decode_precision.py                      # SmolLM2-135M, 32 prompts x 32 tokens, 1 thread
    .venv/bin/python bench/decode_precision.py --prompts 96 --tokens 64 --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from convrl import models
from convrl.rl.generation import Generator
from convrl.runtime import bf16_supported

TOPICS = ["my boss yelled at me", "we won the match", "my cat is sick", "I start a new job on Monday",
          "I can't sleep", "my sister is visiting", "the train was late again", "I passed my exam"]


def prompts(n: int) -> list[list[dict]]:
    return [[{"role": "system", "content": "You are a kind, upbeat assistant who loves hiking and good coffee."},
             {"role": "user", "content": f"Hi! Today {TOPICS[i % len(TOPICS)]} (day {i}). What do you think?"}]
            for i in range(n)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct", help="policy name or directory")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    model_dir = models.resolve_policy(args.model)
    convs = prompts(args.prompts)
    seconds: dict[str, list[float]] = {"fp32": [], "bf16": []}
    replies: dict[str, list[str]] = {}
    for _ in range(args.rounds):
        for precision in ("fp32", "bf16"):
            gen = Generator(model_dir, dtype=precision)
            t0 = time.perf_counter()
            replies[precision] = gen.generate(convs, max_new_tokens=args.tokens, batch_size=args.prompts,
                                              no_repeat_ngram_size=4)
            seconds[precision].append(time.perf_counter() - t0)
    same = sum(a == b for a, b in zip(replies["fp32"], replies["bf16"]))
    print(f"bf16 units: {bf16_supported()}; {args.prompts} prompts x {args.tokens} tokens, {args.threads} thread(s)")
    for precision, secs in seconds.items():
        print(f"{precision}: " + ", ".join(f"{s:.1f} s" for s in secs))
    ratio = sum(seconds["fp32"]) / sum(seconds["bf16"])
    print(f"bf16 speed-up {ratio:.2f}x; identical replies {same}/{len(convs)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
