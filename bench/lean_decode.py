"""Decoding steps through transformers' forward vs convrl's lean forward (``rl.lean_forward``), same cache.

SmolLM2-135M, fp32 (this CPU has no bf16 units), random-token prompts, a fixed
number of greedy tokens (no EOS), ``CachedDecoder`` with ``lean=False`` and
``lean=True`` alternating, twice each; then evaluation's ``Generator.generate``
(greedy, no repeated 4-gram, as evaluate decodes) through transformers'
``generate`` and through the cached decoder. Shapes: an RL rollout turn (8 rows
= 2 prompts x 4 after ~300-token prompts), evaluation (32 rows), self-play (2 rows)::

    .venv/bin/python bench/lean_decode.py                 # two threads, as the pipeline runs
    .venv/bin/python bench/lean_decode.py --threads 1 --tokens 32
"""
import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import AutoModelForCausalLM  # noqa: E402

from convrl import models  # noqa: E402
from convrl.rl import generation  # noqa: E402
from convrl.rl.conversation_decoder import CachedDecoder  # noqa: E402
from convrl.rl.decoding import gqa_attention  # noqa: E402

ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--tokens", type=int, default=48, help="tokens decoded per row")
ap.add_argument("--prompt-tokens", type=int, default=300)
args = ap.parse_args()
torch.set_num_threads(args.threads)
path = models.resolve_policy("smollm2-135m-instruct")
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=gqa_attention()).eval()
g = torch.Generator().manual_seed(0)
V = model.config.vocab_size


def decode(rows: int, group: int, lean: bool) -> tuple[float, list[list[int]]]:
    prompts = []
    for _ in range(rows // group):
        p = torch.randint(100, V, (args.prompt_tokens,), generator=g).tolist()
        prompts += [p] * group
    dec = CachedDecoder(model, 0, eos_ids=[], capacity_hint=args.prompt_tokens + args.tokens, lean=lean)
    assert dec.lean is lean
    dec.prefill(prompts, [list(range(i, i + group)) for i in range(0, rows, group)])
    t0 = time.perf_counter()
    out = dec.generate(args.tokens)
    return (time.perf_counter() - t0) / args.tokens, out


print(f"SmolLM2-135M fp32, {args.threads} thread(s), {args.prompt_tokens}-token prompts, {args.tokens} tokens a row")
for rows, group, what in ((8, 4, "RL rollout turn"), (32, 1, "evaluation batch"), (2, 1, "self-play")):
    times = {False: [], True: []}
    for _ in range(2):
        for lean in (False, True):
            g.manual_seed(rows)  # the same prompts for both forwards
            dt, out = decode(rows, group, lean)
            times[lean].append(dt)
    hf, lean = min(times[False]), min(times[True])
    print(f"{what:17s} {rows:2d} rows: transformers {hf * 1000:6.1f} ms/step, lean {lean * 1000:6.1f} ms/step "
          f"({hf / lean:.2f}x; all runs: {[round(t * 1000, 1) for t in times[False]]} vs "
          f"{[round(t * 1000, 1) for t in times[True]]})", flush=True)

# Evaluation as evaluate runs it: Generator.generate, greedy with the n-gram ban, batch 32.
gen = generation.Generator(path)
convs = [[{"role": "user", "content": f"Day {i}: my sister visits and I want to plan something she would love. "
                                      "She likes hiking, old films and Thai food. Any ideas?"}] for i in range(32)]
kw = dict(max_new_tokens=args.tokens, batch_size=32, no_repeat_ngram_size=4)
t = {}
for name, plain in (("generate", False), ("cached", True), ("generate", False), ("cached", True)):
    generation_plain = generation._plain_decoding
    if not plain:
        generation._plain_decoding = lambda config: False
    t0 = time.perf_counter()
    replies = gen.generate(convs, **kw)
    t.setdefault(name, []).append(time.perf_counter() - t0)
    generation._plain_decoding = generation_plain
    t.setdefault(name + "_replies", replies)
same = sum(a == b for a, b in zip(t["generate_replies"], t["cached_replies"]))
print(f"Generator.generate, 32 prompts, greedy + 4-gram ban: transformers generate {min(t['generate']):.1f} s, "
      f"cached decoder {min(t['cached']):.1f} s ({min(t['generate']) / min(t['cached']):.2f}x); "
      f"identical replies {same}/32")
