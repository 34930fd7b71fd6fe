"""Evaluate a policy against a baseline on the same held-out prompts.

Both models answer the same persona-conditioned prompts from the test split
with the same decoding settings (greedy, so reruns are identical); every reply
is scored by every reward head. The result is one row per (model, prompt)::

    scores = evaluate_models({"candidate": dir1, "baseline": dir2}, prompts, scorer, personas_by_id)
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from convrl.rewards.heads import HEADS
from convrl.rl.generation import Generator

METRICS = ("composite",) + HEADS


def score_responses(scorer, prompts: list[dict], responses: list[str], personas_by_id: dict) -> pd.DataFrame:
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
    return df


def evaluate_models(model_dirs: dict[str, str], prompts: list[dict], scorer, personas_by_id: dict,
                    max_new_tokens: int, batch_size: int, seed: int) -> pd.DataFrame:
    frames = []
    for name, model_dir in model_dirs.items():
        gen = Generator(model_dir)
        responses = gen.generate([p["prompt"] for p in prompts], max_new_tokens=max_new_tokens,
                                 batch_size=batch_size, do_sample=False, seed=seed, progress=True,
                                 desc=f"generate ({name})")
        del gen
        df = score_responses(scorer, prompts, responses, personas_by_id)
        df.insert(0, "model", name)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def distinct_n(texts: list[str], n: int) -> float:
    grams, total = set(), 0
    for t in texts:
        w = t.lower().split()
        g = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        grams.update(g)
        total += len(g)
    return len(grams) / total if total else 0.0


def summarize(scores: pd.DataFrame) -> dict[str, float]:
    out: dict[str, float] = {}
    for model, grp in scores.groupby("model"):
        for m in METRICS + ("fluency", "repetition", "appropriateness", "words"):
            out[f"{model}/{m}"] = float(grp[m].mean())
        out[f"{model}/distinct_2"] = distinct_n(grp["response"].tolist(), 2)
        out[f"{model}/empty_rate"] = float((grp["response"].str.strip() == "").mean())
    return out


def per_persona(scores: pd.DataFrame) -> pd.DataFrame:
    return scores.pivot_table(index="persona_id", columns="model", values="composite", aggfunc="mean")


def bootstrap_mean_ci(x: np.ndarray, n: int = 2000, seed: int = 0, conf: float = 0.95) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    if len(x) == 0:
        return float("nan"), float("nan")
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(1)
    return float(np.quantile(means, (1 - conf) / 2)), float(np.quantile(means, 1 - (1 - conf) / 2))
