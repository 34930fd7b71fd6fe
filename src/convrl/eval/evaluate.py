"""Evaluate a policy against a baseline on the same held-out prompts.

Both models answer the same persona-conditioned prompts from the test split
with the same decoding settings (greedy, so reruns are identical, and no
repeated n-gram of ``no_repeat_ngram_size`` tokens, as ``convrl chat``); every reply
is scored by every reward head and, given a ``JudgePanel``, by the held-out
judges (``judge_*`` columns). The result is one row per (model, prompt)::

    scores = evaluate_models({"candidate": dir1, "baseline": dir2}, prompts, scorer, personas_by_id,
                             max_new_tokens=48, batch_size=8, seed=13, judges=JudgePanel())

Statistics over that table live in ``convrl.eval.metrics``.
"""

from __future__ import annotations

import time

import pandas as pd

from convrl.eval.metrics import METRICS, bootstrap_mean_ci, distinct_n, per_persona, summarize  # noqa: F401
from convrl.eval.reply_cache import ReplyCache
from convrl.rewards.heads import HEADS
from convrl.rl.generation import Generator


def score_responses(scorer, prompts: list[dict], responses: list[str], personas_by_id: dict,
                    judges=None) -> pd.DataFrame:
    contexts = [p["prompt"] for p in prompts]
    personas = [personas_by_id.get(p["persona_id"]) for p in prompts]
    batch = scorer.score(contexts, responses, personas)
    df = pd.DataFrame({"prompt_id": [f"p{i:04d}" for i in range(len(prompts))],
                       "persona_id": [p["persona_id"] for p in prompts],
                       "user_emotion": batch.details["user_emotion"],
                       "context": [p["prompt"][-1]["content"] for p in prompts],
                       "response": responses, "composite": batch.composite})
    for h in HEADS:
        df[h] = batch.heads[h]
    for k in ("fluency", "repetition", "appropriateness"):
        df[k] = batch.details[k]
    df["words"] = [len(r.split()) for r in responses]
    if judges is not None:
        judged = judges.score([p["prompt"] for p in prompts], responses, personas)
        df = pd.concat([df, judged.set_index(df.index)], axis=1)
    return df


def evaluate_models(model_dirs: dict[str, str], prompts: list[dict], scorer, personas_by_id: dict,
                    max_new_tokens: int, batch_size: int, seed: int, judges=None,
                    no_repeat_ngram_size: int = 0, timings: dict | None = None,
                    cache: ReplyCache | None = None, precision: str = "fp32",
                    temperature: float = 0.0) -> pd.DataFrame:
    """Every model answers ``prompts``; one row per (model, prompt) with every head's and judge's score.

    ``timings``, when given, receives ``generate_s`` (all models' decoding) and ``score_s`` (heads and judges).
    ``precision`` (bf16, fp32 or auto) is the dtype every model decodes in. ``temperature`` 0 decodes greedily
    (evaluation's way, as ``convrl chat``); above 0 replies are sampled (top-p 0.95), seeded by ``seed``.
    ``cache`` (``convrl.eval.reply_cache``) returns a model's replies when its weights, the prompts, the
    decoding settings and code are those of an earlier evaluation; the scores are always computed.
    """
    from convrl.runtime import resolve_precision

    timings = {} if timings is None else timings
    cache = cache or ReplyCache(None)
    precision = resolve_precision(precision)  # the cache keys on what ran, not on "auto"
    start = time.perf_counter()
    responses: list[str] = []
    conversations = [p["prompt"] for p in prompts]
    decoding = {"max_new_tokens": max_new_tokens, "batch_size": batch_size, "do_sample": temperature > 0,
                "seed": seed, "no_repeat_ngram_size": no_repeat_ngram_size}
    if temperature > 0:
        decoding["temperature"] = temperature
    settings = {"conversations": conversations, **decoding, "precision": precision}
    ended: list[bool] = []
    for name, model_dir in model_dirs.items():
        hit = cache.lookup("replies", model_dir, settings)
        if not (isinstance(hit, dict) and {"replies", "ended"} <= set(hit)):  # entries before cut-off counts: a miss
            gen = Generator(model_dir, dtype=precision)
            hit = {"replies": gen.generate(conversations, progress=True, desc=f"generate ({name})", **decoding),
                   "ended": list(gen.last_ended)}
            del gen
            cache.store("replies", model_dir, settings, hit)
        responses += hit["replies"]
        ended += hit["ended"]
    timings["generate_s"] = time.perf_counter() - start
    k = len(model_dirs)
    # One scoring call over every model's replies. The models answer the same prompts, so the fluency
    # LM runs each context once for all of them (its shared-prefix path): 12-15% less scoring time on the
    # demo's 96 prompts than model by model (bench/eval_scoring.py, 1-2 threads), and each persona card once for
    # all of that persona's prompts (22% less than model by model, 42% less than per context). The relevance judge's
    # IDF is fitted on its batch, so judging the models together keeps the yardstick the same for all.
    start = time.perf_counter()
    scores = score_responses(scorer, prompts * k, responses, personas_by_id, judges=judges)
    timings["score_s"] = time.perf_counter() - start
    scores["prompt_id"] = [f"p{i:04d}" for i in range(len(prompts))] * k
    # Cut at max_new_tokens rather than ended: users of convrl chat see these replies stop mid-sentence.
    scores["cut_off"] = [0.0 if e else 1.0 for e in ended]
    scores.insert(0, "model", [name for name in model_dirs for _ in prompts])
    return scores
