"""Decoding with and without dropping stopped rows from the batch (``CachedDecoder(compact=...)``), as RL rolls out.

A rollout group decodes until its longest row ends; rows that drew EOS used
to run through every layer as masked pads until then. With compaction the
rows still decoding move to the front of the cache (one reorder once a quarter
of them stopped) and only they run. This decodes what the demo's RL step
decodes for its policy turns: one persona prompt (a bundled card and a user
message) x 8 rows sampled at the rollouts' temperature plus one greedy probe
row, a turn of up to ``--new`` tokens, a fixed user reply, a second turn
(the probe row dropped after turn 1, as in RL); both modes with the same
sampler seed, interleaved, ``--repeats`` times. It prints each prompt's turn
lengths, both modes' total and median seconds, how often the batch was
compacted and whether both modes drew the same tokens.

    .venv/bin/python bench/decode_compaction.py --repeats 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MESSAGES = [
    "I've had a rough week at work and I can't stop thinking about it.",
    "Can you help me plan a weekend trip with my kids?",
    "My code keeps crashing when I load big files. Any idea why?",
    "I just got the job I wanted!!",
    "Honestly I'm furious, the delivery was late again.",
]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, default=8, help="sampled rows (plus one greedy probe row)")
    p.add_argument("--new", type=int, default=96, help="tokens per policy turn at most")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--policy", default="smollm2-135m-instruct")
    args = p.parse_args(argv)

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    from convrl import models
    from convrl.data.personas import bundled_persona_names, load_persona
    from convrl.rl.conversation_decoder import CachedDecoder
    from convrl.rl.decoding import gqa_attention
    from convrl.rl.generation import sampling_setup
    from convrl.rl.packed_linear import pack_linears

    torch.set_num_threads(args.threads)
    path = models.resolve_policy(args.policy)
    tok = AutoTokenizer.from_pretrained(path)
    m = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation=gqa_attention()).eval()
    pack_linears(m)
    eos = m.generation_config.eos_token_id
    eos = eos if isinstance(eos, list) else [eos]
    personas = [load_persona(n) for n in bundled_persona_names()]
    user = tok("Thanks. What would you do first?", add_special_tokens=False)["input_ids"]
    n = args.rows + 1

    def group(k):
        persona = personas[k % len(personas)]
        msgs = [{"role": "system", "content": persona.system_prompt()}, {"role": "user", "content": MESSAGES[k]}]
        text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        ids = tok(text, add_special_tokens=False)["input_ids"]
        return [list(ids) for _ in range(n)]

    def turn_glue():
        text = tok.apply_chat_template([{"role": "user", "content": "USERMARK"}], tokenize=False,
                                       add_generation_prompt=True)
        return tok(text.replace("USERMARK", tok.decode(user)), add_special_tokens=False)["input_ids"]

    second = turn_glue()

    def run(k, compact):
        cfg = GenerationConfig(do_sample=True, temperature=0.9, top_p=1.0)
        _, sampler = sampling_setup(cfg, torch.Generator().manual_seed(k))
        dec = CachedDecoder(m, tok.pad_token_id, eos, compact=compact)
        dec.prefill(group(k), [list(range(n))])
        t0 = time.perf_counter()
        t1 = dec.generate(args.new, sampler, greedy=[False] * args.rows + [True])
        dec.select(list(range(args.rows)))  # the probe row answers turn 1 only, as in RL
        dec.extend([second] * args.rows)
        t2 = dec.generate(args.new, sampler)
        return time.perf_counter() - t0, dec.compactions, (t1, t2)

    run(0, True)  # warm-up
    times = {True: [], False: []}
    same, tokens, lengths, compactions = 0, 0, [], 0
    for r in range(args.repeats):
        for k in range(len(MESSAGES)):
            res = {c: run(k, c) for c in (False, True)}
            for c, (s, _, _) in res.items():
                times[c].append(s)
            same += int(res[True][2] == res[False][2])
            tokens += sum(len(x) for t in res[True][2] for x in t)
            compactions += res[True][1]
            if r == 0:
                lengths.append([[len(x) for x in t] for t in res[True][2]])
    plain, comp = sum(times[False]), sum(times[True])
    print(f"{len(MESSAGES)} prompts x {n} rows ({args.rows} sampled at 0.9 + 1 greedy) x 2 turns of <= {args.new} "
          f"tokens, bf16, {args.threads} threads, {args.repeats} repeats")
    for k, ls in enumerate(lengths):
        print(f"  prompt {k}: turn lengths {ls[0]} / {ls[1]}")
    print(f"without compaction {plain:7.2f} s   with {comp:7.2f} s   speed-up {plain / comp:.2f}x   "
          f"median per prompt {statistics.median(times[False]):.2f} vs {statistics.median(times[True]):.2f} s")
    print(f"same tokens in both modes: {same}/{args.repeats * len(MESSAGES)} runs ({tokens} tokens decoded per mode, "
          f"{compactions} compactions)")
    return {"plain_s": plain, "compact_s": comp, "same_runs": same, "compactions": compactions}


if __name__ == "__main__":
    main()
