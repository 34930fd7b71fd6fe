"""Decode-step cost at 1 and 8 concurrent rows: the serving slot decoder vs transformers' continuous batching.

Why ``convrl.serving.slots`` exists: what a decode step of 8 running rows
costs against a step of one row decides how much continuous batching can gain
(tokens/s at 8 rows = 8 x step(1) / step(8)). Both decoders run the same
requests (a ~230-token persona-style prompt, greedy, no EOS) on
SmolLM2-135M-Instruct with one torch thread; a step is timed as
(time for 40 new tokens - time for 8 new tokens) / 32, so prefill drops out.

    .venv/bin/python bench/serve_decode_steps.py                  # both
    .venv/bin/python bench/serve_decode_steps.py --only slots     # just the serving decoder

Prints one JSON object. The machine may be shared: compare the ratios, which
come from the same run.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

SYSTEM = ("You are a calm, warm and patient expert who listens carefully, asks one question at a time and "
          "answers briefly. ") * 8


def prompts(tok, n: int) -> list[list[int]]:
    return [tok.apply_chat_template([{"role": "system", "content": SYSTEM},
                                     {"role": "user", "content": f"Question {i}: how do I relax after work?"}],
                                    add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
            for i in range(n)]


def slot_decoder_run(model, ps: list[list[int]], new_tokens: int) -> float:
    from convrl.serving.slots import SlotDecoder

    dec = SlotDecoder(model, slots=len(ps))
    last = {}
    for i, p in enumerate(ps):
        _, logits = dec.add(p, row=i)
        last[i] = int(logits.argmax())
    t0 = time.perf_counter()  # decode steps only: prefill is timed by neither side's difference
    for _ in range(new_tokens - 1):
        logits = dec.step([last[r] for r in dec.rows])
        for r, row_logits in zip(dec.rows, logits):
            last[r] = int(row_logits.argmax())
    return time.perf_counter() - t0


def cb_manager(model, tok):
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    gc = GenerationConfig(max_new_tokens=8, do_sample=False, eos_token_id=-1, pad_token_id=tok.pad_token_id)
    cbc = ContinuousBatchingConfig(num_blocks=64, page_size=64, max_batch_tokens=512, max_requests_per_batch=8,
                                   auto_switch_to_flash=False)
    mgr = model.init_continuous_batching(generation_config=gc, continuous_batching_config=cbc)
    mgr.start()
    return mgr


def cb_run(mgr, ps: list[list[int]], new_tokens: int) -> float:
    t0 = time.perf_counter()
    for p in ps:
        mgr.add_request(p, max_new_tokens=new_tokens)
    finished = 0
    while finished < len(ps):
        result = mgr.get_result(timeout=600)
        if result is None:
            raise SystemExit("transformers' continuous batching returned nothing for 600 s")
        finished += result.is_finished()
    return time.perf_counter() - t0


def step_ms(run, rows: list[list[int]]) -> float:
    run(rows, 4)  # warm-up (and, for transformers, its prefix blocks)
    return (run(rows, 40) - run(rows, 8)) / 32 * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", choices=["slots", "transformers"], default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from transformers import AutoModelForCausalLM

    from convrl import models
    from convrl.rl.generation import Generator

    path = models.resolve_policy(args.model)
    out: dict = {"model": args.model, "threads": args.threads}
    if args.only in (None, "slots"):
        gen = Generator(path)  # the serving model: fused grouped attention, packed bf16 linears on a CPU
        ps = prompts(gen.tok, 8)
        with torch.inference_mode():
            one, eight = (step_ms(lambda r, n: slot_decoder_run(gen.model, r, n), ps[:k]) for k in (1, 8))
        out["slots"] = {"prompt_tokens": len(ps[0]), "step_ms_1_row": round(one, 1), "step_ms_8_rows": round(eight, 1),
                        "tokens_per_s_8_vs_1": round(8 * one / eight, 2)}
    if args.only in (None, "transformers"):
        gen = Generator(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="sdpa").eval()
        mgr = cb_manager(model, gen.tok)
        try:
            ps = prompts(gen.tok, 8)
            one, eight = (step_ms(lambda r, n: cb_run(mgr, r, n), ps[:k]) for k in (1, 8))
        finally:
            mgr.stop()
        out["transformers_continuous_batching"] = {"step_ms_1_row": round(one, 1), "step_ms_8_rows": round(eight, 1),
                                                   "tokens_per_s_8_vs_1": round(8 * one / eight, 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
