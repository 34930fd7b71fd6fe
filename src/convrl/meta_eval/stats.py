"""Meta-evaluation: how well does each reward head agree with human ratings?

Scores a JSONL of human-rated responses (format in :mod:`convrl.rewards.human_data`)
with every head of the composite reward, and reports Spearman and Pearson
correlations per head per rating with percentile-bootstrap 95% CIs::

    convrl meta-eval-data convai2 ../shared/data/convai2_human_eval convai2.jsonl --max-items 3000
    convrl meta-eval convai2.jsonl                      # a table per rating
    convrl meta-eval convai2.jsonl --json --no-fluency  # JSON, without the fluency LM (faster)
    convrl meta-eval rated.jsonl --reward-dir ~/.convrl/runs/<run>/...   # the heads a pipeline trained

How: items carrying a ``group`` (the dialogue) are resampled by group (cluster
bootstrap), because responses of one dialogue are not independent. A rating
that is constant within every group (ConvAI2's 1-5 dialogue score, the overall
satisfaction of a session) is a dialogue-level judgement: it is correlated with
the dialogue's mean head score, one point per dialogue (``level: dialogue``).
Other ratings are correlated per response (``level: response``). The table
also lists ``baseline:length`` (response length in words), the trivial
predictor every head should be compared with. With ``--reward-dir`` holding
learned heads, each is listed beside its untrained scorer (``<head>_untrained``);
measure them on data they were not trained on.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from scipy import stats

from convrl.rewards.human_data import CONVERTERS, RatedDataError, read_jsonl, write_jsonl

# ------------------------------------------------------------------ scoring

def build_scorer(reward_dir: str = "", encoder: str = "all-minilm-l6-v2", fluency_model: str = "",
                 learned: bool = True, precision: str = "auto"):
    """The scorer a pipeline trained (``reward_dir``), else the untrained default heads on ``encoder``."""
    from convrl import models
    from convrl.rewards.encoder import load_encoder
    from convrl.rewards.heads import FluencyScorer, RewardScorer

    if reward_dir:
        from convrl.stages.rewards import load_scorer

        return load_scorer(reward_dir, with_fluency=bool(fluency_model), learned=learned)
    fluency = FluencyScorer(models.resolve_policy(fluency_model)) if fluency_model else None
    return RewardScorer(load_encoder(models.resolve_encoder(encoder), precision=precision), None, fluency)


def score_items(scorer, items: list[dict], batch_size: int = 128, progress: bool = False) -> dict[str, np.ndarray]:
    """Every head (and composite, details, the length baseline) for every item."""
    from tqdm.auto import tqdm

    from convrl.rewards.environment import persona_from_sentences

    cards: dict[tuple, object] = {}
    cols: dict[str, list] = {}
    for i in tqdm(range(0, len(items), batch_size), desc="scoring", disable=not progress):
        chunk = items[i:i + batch_size]
        personas = []
        for it in chunk:
            key = tuple(it.get("persona") or ())
            if key not in cards:
                cards[key] = persona_from_sentences(list(key))
            personas.append(cards[key])
        batch = scorer.score([it["context"] for it in chunk], [it["response"] for it in chunk], personas)
        # Numeric details too: fluency, repetition, appropriateness, and <head>_untrained beside a learned head.
        named = {**batch.heads, "composite": batch.composite,
                 **{k: v for k, v in batch.details.items() if np.asarray(v).dtype.kind == "f"}}
        for k, v in named.items():
            cols.setdefault(k, []).append(np.asarray(v, dtype=np.float64))
    out = {k: np.concatenate(v) for k, v in cols.items()}
    out["baseline:length"] = np.array([len(it["response"].split()) for it in items], dtype=np.float64)
    return out


# ------------------------------------------------------------------ statistics

def _weighted_midranks(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Midranks of ``x`` in the sample that repeats item i ``w[b, i]`` times (one row per resample).

    Equal to ``rankdata`` of the expanded sample, without materialising it.
    """
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.flatnonzero(np.r_[True, xs[1:] != xs[:-1]])
    block_of = np.empty(len(x), dtype=np.int64)
    block_of[order] = np.cumsum(np.r_[True, xs[1:] != xs[:-1]]) - 1
    block_w = np.add.reduceat(w[:, order], starts, axis=1)
    before = np.cumsum(block_w, axis=1) - block_w
    mid = before + (block_w + 1) / 2
    return mid[:, block_of]


def _weighted_pearson(a: np.ndarray, b: np.ndarray, w: np.ndarray) -> np.ndarray:
    wsum = w.sum(1, keepdims=True)
    ma = (w * a).sum(1, keepdims=True) / wsum
    mb = (w * b).sum(1, keepdims=True) / wsum
    da, db = a - ma, b - mb
    cov = (w * da * db).sum(1)
    var = np.sqrt((w * da * da).sum(1) * (w * db * db).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(var > 0, cov / np.where(var > 0, var, 1), np.nan)


def bootstrap_weights(units: np.ndarray, n_bootstrap: int, seed: int) -> np.ndarray:
    """(n_bootstrap, n_items) counts: how often each item is drawn when whole units are resampled."""
    uniq, inv = np.unique(units, return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(uniq), np.full(len(uniq), 1 / len(uniq)), size=n_bootstrap)
    return draws[:, inv].astype(np.float64)


def correlate(score: np.ndarray, rating: np.ndarray, weights: np.ndarray, ci: float = 0.95) -> dict:
    """Point Spearman/Pearson and bootstrap percentile CIs (weights from ``bootstrap_weights``)."""
    out: dict = {"n": int(len(score))}
    if len(score) < 3 or np.ptp(score) == 0 or np.ptp(rating) == 0:
        return {**out, "spearman": None, "spearman_ci": [None, None], "pearson": None, "pearson_ci": [None, None],
                "note": "constant" if len(score) >= 3 else "too few items"}
    out["spearman"] = float(stats.spearmanr(score, rating).statistic)
    out["pearson"] = float(stats.pearsonr(score, rating).statistic)
    sp, pe = [], []
    for i in range(0, len(weights), 100):  # chunks keep memory flat on large files
        w = weights[i:i + 100]
        sp.append(_weighted_pearson(_weighted_midranks(score, w), _weighted_midranks(rating, w), w))
        pe.append(_weighted_pearson(score[None, :], rating[None, :], w))
    lo, hi = (1 - ci) / 2 * 100, (1 + ci) / 2 * 100
    for name, vals in (("spearman", np.concatenate(sp)), ("pearson", np.concatenate(pe))):
        vals = vals[np.isfinite(vals)]
        out[f"{name}_ci"] = [float(np.percentile(vals, lo)), float(np.percentile(vals, hi))] if len(vals) else [None, None]
    return out


def meta_evaluate(items: list[dict], scores: dict[str, np.ndarray], n_bootstrap: int = 1000,
                  seed: int = 13) -> dict:
    """Correlation rows for every (head, rating) pair; see the module docstring for levels."""
    groups = np.array([it.get("group") or f"item-{i}" for i, it in enumerate(items)])
    names = sorted({k for it in items for k in it["ratings"]})
    rows, summary = [], {}
    for r_i, name in enumerate(names):
        idx = np.array([i for i, it in enumerate(items) if name in it["ratings"]])
        rating = np.array([items[i]["ratings"][name] for i in idx])
        g = groups[idx]
        uniq, inv = np.unique(g, return_inverse=True)
        constant_in_groups = len(uniq) < len(idx) and all(
            np.ptp(rating[inv == k]) == 0 for k in range(len(uniq)))
        level = "dialogue" if constant_in_groups else "response"
        if level == "dialogue":
            count = np.bincount(inv)
            rating_u = np.bincount(inv, weights=rating) / count
            weights = bootstrap_weights(np.arange(len(uniq)), n_bootstrap, seed + r_i)
        else:
            weights = bootstrap_weights(g, n_bootstrap, seed + r_i)
        summary[name] = {"level": level, "items": int(len(idx)), "groups": int(len(uniq)),
                         "mean": float(rating.mean()), "std": float(rating.std())}
        for head, col in scores.items():
            s = col[idx]
            if level == "dialogue":
                row = correlate(np.bincount(inv, weights=s) / count, rating_u, weights)
            else:
                row = correlate(s, rating, weights)
            rows.append({"head": head, "rating": name, "level": level, **row})
    return {"n_items": len(items), "n_bootstrap": n_bootstrap, "ratings": summary, "rows": rows}


def format_table(result: dict) -> str:
    from tabulate import tabulate

    def f(x):
        return "  n/a" if x is None else f"{x:+.3f}"

    parts = []
    for name, info in result["ratings"].items():
        rows = [r for r in result["rows"] if r["rating"] == name]
        table = [[r["head"], r["n"], f(r["spearman"]), f"[{f(r['spearman_ci'][0])}, {f(r['spearman_ci'][1])}]",
                  f(r["pearson"]), f"[{f(r['pearson_ci'][0])}, {f(r['pearson_ci'][1])}]"] for r in rows]
        parts.append(f"rating '{name}' ({info['level']} level: {info['items']} responses in {info['groups']} "
                     f"groups, mean {info['mean']:.2f} sd {info['std']:.2f})\n"
                     + tabulate(table, headers=["head", "n", "spearman", "95% CI", "pearson", "95% CI"]))
    return "\n\n".join(parts) + f"\n\n{result['n_bootstrap']} bootstrap resamples (by group where items have one)."


# ------------------------------------------------------------------ CLI

def cmd_meta_eval(args) -> int:
    # Same offline defaults as the pipeline stages, without importing them (they pull in MLflow).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        items = read_jsonl(args.file, limit=args.limit)
    except RatedDataError as exc:
        print(f"convrl: error: {exc}", file=sys.stderr)
        return 2
    fluency = "" if args.no_fluency else args.fluency_model
    scorer = build_scorer(args.reward_dir, args.encoder, fluency, learned=not args.no_learned, precision=args.precision)
    scores = score_items(scorer, items, progress=not args.json)
    result = meta_evaluate(items, scores, args.n_bootstrap, args.seed)
    result["file"] = str(args.file)
    result["fluency_model"] = fluency or None
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def cmd_meta_eval_data(args) -> int:
    try:
        items, info = CONVERTERS[args.kind](args.source, max_items=args.max_items,
                                            context_messages=args.context_messages, seed=args.seed,
                                            per_dialogue=args.per_dialogue)
    except RatedDataError as exc:
        print(f"convrl: error: {exc}", file=sys.stderr)
        return 2
    write_jsonl(items, args.out)
    print(json.dumps({"out": str(args.out), **info}))
    return 0


def add_commands(subparsers) -> None:
    m = subparsers.add_parser("meta-eval", help="correlate every reward head with human ratings (JSONL)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("file", help="JSONL: {context, response, persona?, ratings, group?} per line")
    m.add_argument("--json", action="store_true", help="print the result as JSON")
    m.add_argument("--reward-dir", default="", help="reward models a pipeline run trained (default: untrained heads)")
    m.add_argument("--encoder", default="all-minilm-l6-v2")
    m.add_argument("--precision", default="auto", help="encoder precision without --reward-dir: auto, bf16, fp32")
    m.add_argument("--fluency-model", default="smollm2-135m-instruct", help="LM scoring fluency (quality head)")
    m.add_argument("--no-fluency", action="store_true", help="skip the fluency LM (fluency is then constant)")
    m.add_argument("--no-learned", action="store_true", help="with --reward-dir: the untrained heads only")
    m.add_argument("--limit", type=int, default=0, help="score only the first N items")
    m.add_argument("--n-bootstrap", type=int, default=1000)
    m.add_argument("--seed", type=int, default=13)
    m.set_defaults(fn=cmd_meta_eval)

    d = subparsers.add_parser("meta-eval-data", help="convert a human-rated data set to meta-eval JSONL")
    d.add_argument("kind", choices=sorted(CONVERTERS))
    d.add_argument("source", help="the data set folder (e.g. ../shared/data/convai2_human_eval)")
    d.add_argument("out", help="JSONL to write")
    d.add_argument("--max-items", type=int, default=0)
    d.add_argument("--context-messages", type=int, default=6)
    d.add_argument("--per-dialogue", type=int, default=0,
                   help="at most N responses per dialogue (spread evenly), so a capped file covers more dialogues")
    d.add_argument("--seed", type=int, default=13)
    d.set_defaults(fn=cmd_meta_eval_data)


def main(argv: list[str] | None = None) -> int:
    """``python -m convrl.meta_eval meta-eval FILE`` works before the CLI wires the subcommands in."""
    p = argparse.ArgumentParser(prog="convrl")
    add_commands(p.add_subparsers(dest="cmd", required=True))
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
