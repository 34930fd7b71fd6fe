"""Decoding speed of each CPU lever in ``convrl.rl.decoding`` / ``convrl.rl.packed_linear``, one after another.

Rows x new tokens after a shared prompt (a rollout group), bf16, the
rollout decoder (``CachedDecoder``), greedy; each configuration decodes
``--repeats`` times, interleaved, and the median is printed with the prefill
time and whether its tokens equal the first configuration's:

* ``transformers-sdpa``: transformers' own SDPA attention and ``DynamicCache``;
* ``transformers-eager``: transformers' eager attention and ``DynamicCache``;
* ``fused-attention``: convrl's attention (fused SDPA with grouped KV heads over the filled part of a
  preallocated cache);
* ``fused+packed``: that plus bf16 linears prepacked for oneDNN (what evaluation and self-play use);
* ``fused+packed+step``: that plus one-token steps through ``convrl.rl.fused_step`` (q/k/v and gate/up as one
  GEMM each, no per-layer bookkeeping; what rollouts and the simulated user use).

    .venv/bin/python bench/decode_levers.py --rows 8 --prompt 250 --new 64 --repeats 3
    .venv/bin/python bench/decode_levers.py --dtype fp32     # a CPU without bf16 units
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8)
    p.add_argument("--prompt", type=int, default=250, help="shared prompt tokens")
    p.add_argument("--new", type=int, default=64, help="new tokens per row")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--policy", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16",
                   help="fp32: what a CPU without bf16 units decodes in (packing then changes nothing)")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM

    from convrl import models
    from convrl.rl.conversation_decoder import CachedDecoder
    from convrl.rl.decoding import gqa_attention
    from convrl.rl.packed_linear import pack_linears

    torch.set_num_threads(args.threads)
    path = models.resolve_policy(args.policy)
    configs = {"transformers-sdpa": ("sdpa", False, False), "transformers-eager": ("eager", False, False),
               "fused-attention": (gqa_attention(), False, False), "fused+packed": (gqa_attention(), True, False),
               "fused+packed+step": (gqa_attention(), True, True)}
    loaded, step = {}, {}
    for name, (attn, pack, fused) in configs.items():
        dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=attn).eval()
        if pack:
            pack_linears(m)
        loaded[name], step[name] = m, fused
    g = torch.Generator().manual_seed(0)
    vocab = loaded["fused+packed"].config.vocab_size
    prompt = torch.randint(100, vocab, (args.prompt,), generator=g).tolist()
    # Rows differ from their last prompt token on, as a group's rollouts do after the first sampled token.
    rows = [prompt + [100 + i] for i in range(args.rows)]

    def run(model, fused):
        dec = CachedDecoder(model, 0, [-1], capacity_hint=args.prompt + 8, fused=fused)
        t0 = time.perf_counter()
        dec.prefill(rows, groups=[list(range(args.rows))])
        dec.generate(1)
        t1 = time.perf_counter()
        out = dec.generate(args.new)
        return t1 - t0, time.perf_counter() - t1, out

    for name, m in loaded.items():
        run(m, step[name])  # warm-up (and the fused step's weights)
    times = {n: [] for n in loaded}
    tokens = {}
    for _ in range(args.repeats):
        for name, m in loaded.items():
            pre, dec, out = run(m, step[name])
            times[name].append((pre, dec))
            tokens[name] = out
    first = next(iter(tokens))
    result = {}
    base = statistics.median(d for _, d in times[first])
    print(f"{args.rows} rows x {args.new} tokens after {args.prompt} shared prompt tokens, {args.dtype}, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"{'configuration':20} {'prefill s':>9} {'decode s':>9} {'speed-up':>8}  same tokens as {first}")
    for name in loaded:
        pre = statistics.median(p for p, _ in times[name])
        dec = statistics.median(d for _, d in times[name])
        same = sum(a == b for a, b in zip(tokens[name], tokens[first]))
        result[name] = {"prefill_s": pre, "decode_s": dec, "same_rows": same}
        print(f"{name:20} {pre:9.3f} {dec:9.3f} {base / dec:7.2f}x  {same}/{args.rows} rows")
    return result


if __name__ == "__main__":
    main()
