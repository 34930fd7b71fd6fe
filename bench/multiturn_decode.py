"""Policy turns of a 2-turn rollout: per-turn generate from scratch vs CachedDecoder (KV cache carried across turns).

SmolLM2-135M bf16 with convrl's CPU decoding in both (GQA attention, preallocated cache, shared group prefill);
greedy, fixed 48 tokens a turn, 8 rows (2 prompts x 4), a synthetic 30-token user turn in between, one thread.
Isolates the rl.speed.carry_kv_cache lever; bench/rl_step_throughput.py --turns 2 measures whole steps::

    OMP_NUM_THREADS=1 .venv/bin/python bench/multiturn_decode.py
"""
import time

import torch
torch.set_num_threads(1)
from transformers import AutoModelForCausalLM, AutoTokenizer
from convrl import models
from convrl.rl.decoding import gqa_attention, preallocated_cache
from convrl.rl.prefix import prefill_shared
from convrl.rl.conversation_decoder import CachedDecoder
base = models.resolve_policy("smollm2-135m-instruct")
tok = AutoTokenizer.from_pretrained(base)
m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16, attn_implementation=gqa_attention()).eval()
g = torch.Generator().manual_seed(0)
V = m.config.vocab_size
p1, p2 = torch.randint(100, V, (300,), generator=g).tolist(), torch.randint(100, V, (280,), generator=g).tolist()
prompts = [p1] * 4 + [p2] * 4
user = [torch.randint(100, V, (30,), generator=g).tolist() for _ in range(8)]
N = 48
def scratch():
    outs = []
    seqs = [list(p) for p in prompts]
    for t in range(2):
        ids = torch.full((8, max(map(len, seqs))), tok.pad_token_id); mask = torch.zeros_like(ids)
        for i, s in enumerate(seqs):
            ids[i, -len(s):] = torch.tensor(s); mask[i, -len(s):] = 1
        with torch.inference_mode():
            cache = preallocated_cache(m.config, ids.size(1) + N)
            shared = prefill_shared(m, ids, mask, cache)
            out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=N, min_new_tokens=N, do_sample=False,
                             cache=shared if shared is not None else cache, pad_token_id=tok.pad_token_id)
        gen = out[:, ids.size(1):].tolist()
        seqs = [s + g_ + u for s, g_, u in zip(seqs, gen, user)]
        outs.append(gen)
    return outs
def cached():
    dec = CachedDecoder(m, tok.pad_token_id, eos_ids=[-1])
    dec.prefill(prompts, [[0,1,2,3],[4,5,6,7]])
    a = dec.generate(N); dec.extend(user); b = dec.generate(N)
    return [a, b]
for name, fn in (("per-turn generate", scratch), ("cached decoder", cached), ("per-turn generate", scratch), ("cached decoder", cached)):
    t0 = time.perf_counter(); out = fn(); dt = time.perf_counter() - t0
    print(f"{name:18s} {dt:6.1f} s for 2 turns x 8 rows x {N} tokens = {2*8*N/dt:6.1f} tok/s", flush=True)
