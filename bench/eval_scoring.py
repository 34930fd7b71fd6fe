"""Scoring the evaluation's replies: model by model vs all models in one pass (``evaluate_models``).

The evaluate stage scores the candidate's and the baseline's replies to the same
held-out prompts. Scored in one call, the fluency LM (the quality head's
likelihood term, the most expensive part of scoring) runs each prompt's context
once for both replies; scored model by model it runs every context twice. Since
the common-prefix path, the persona card that starts every context of a persona
runs once for all of them too (``per_context`` is the way before it). This
prints the wall time of the three ways on the demo preset's models and prompts,
and the largest differences between their scores (float rounding only)::

    OMP_NUM_THREADS=2 .venv/bin/python bench/eval_scoring.py             # demo: 96 prompts, SmolLM2-135M
    .venv/bin/python bench/eval_scoring.py --join 3     # ~50-token replies, as the policy writes
    .venv/bin/python bench/eval_scoring.py --prompts 32 --repeats 3

Measured here: 102.5 s -> 86.6 s (15%) with corpus-length replies on one thread of a loaded machine,
96.2 s -> 84.4 s (12%) with ``--join 3`` on two idle threads; fluency differs by at most 3e-6.

The two "models'" replies are real replies from the corpus (the held-out turn
that answers the prompt, and the turn of another prompt), so their lengths are
those of conversation turns; no generation runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="demo")
    p.add_argument("--prompts", type=int, default=0, help="held-out prompts (default: the preset's eval.num_prompts)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--join", type=int, default=1,
                   help="each reply joins this many corpus turns (3 gives ~50-token replies, like the policy's)")
    a = p.parse_args()

    import numpy as np

    from convrl.config import load_config
    from convrl.data.ingest import ingest
    from convrl.data.personas import load_personas, prompt_personas, personas_table
    from convrl.data.prompts import build_prompts
    from convrl.eval.evaluate import score_responses
    from convrl.rewards.encoder import SentenceEncoder
    from convrl.rewards.fluency import FluencyScorer
    from convrl.rewards.heads import RewardScorer
    from convrl import models

    cfg = load_config(a.config)
    n = a.prompts or cfg.eval.num_prompts
    data = ingest(cfg.data.sources, seed=cfg.data.seed, max_conversations=cfg.data.max_conversations)
    personas = prompt_personas(personas_table(load_personas(cfg.data.personas)), cfg.data.personas,
                               cfg.data.prompt_personas)
    by_id = {q.persona_id: q for q in personas}
    prompts = build_prompts(data.turns, personas, "test", n, cfg.rl.max_prompt_turns, cfg.eval.seed,
                            token_budget=cfg.rl.prompt_token_budget)
    turns = [q.get("reference") or q["prompt"][-1]["content"] for q in prompts]
    replies_a = [" ".join(turns[(i + j) % n] for j in range(a.join)) for i in range(n)]
    replies_b = replies_a[1:] + replies_a[:1]
    scorer = RewardScorer(SentenceEncoder(models.resolve_encoder(cfg.models.encoder)), None,
                          FluencyScorer(models.resolve_policy(cfg.models.policy)))

    def separate():
        return [score_responses(scorer, prompts, r, by_id) for r in (replies_a, replies_b)]

    def joint():
        return score_responses(scorer, prompts * 2, replies_a + replies_b, by_id)

    def per_context():
        # Before the common-prefix path: each context (persona card included) runs once for its two replies.
        scorer.fluency.min_shared = 10 ** 9
        try:
            return joint()
        finally:
            scorer.fluency.min_shared = shared

    shared = scorer.fluency.min_shared
    joint()  # warm-up: encoder cache, allocator, tokenizer
    times: dict[str, list[float]] = {"separate": [], "per_context": [], "joint": []}
    for _ in range(a.repeats):
        for name, fn in (("separate", separate), ("per_context", per_context), ("joint", joint)):
            scorer.encoder.clear_cache()  # both ways encode from scratch
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    sep = np.concatenate([o["fluency"].to_numpy() for o in separate()])
    med = {k: statistics.median(v) for k, v in times.items()}
    one = joint()["fluency"].to_numpy()
    result = {"prompts": n, "replies": 2 * n, "join": a.join,
              "threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
              **{f"{k}_s": [round(t, 2) for t in v] for k, v in times.items()},
              "saving": round(1 - med["joint"] / med["separate"], 3),
              "saving_vs_per_context": round(1 - med["joint"] / med["per_context"], 3),
              "max_fluency_diff": float(np.abs(sep - one).max()),
              "max_fluency_diff_per_context": float(np.abs(per_context()["fluency"].to_numpy() - one).max())}
    print("RESULT " + json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
