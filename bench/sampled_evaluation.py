"""Does a run's A/B verdict hold when replies are sampled, as `convrl serve` answers by default, not greedy?

Evaluation decodes greedily (as `convrl chat` does), while `convrl serve`
samples at ``serve.temperature`` (0.7) unless a request says otherwise. This
re-evaluates a finished pipeline run's candidate and baseline on the same
held-out prompts, heads and judges as its evaluate stage (rebuilt from the
run's own ingest and reward-model outputs by ``stages.evaluation.
evaluation_inputs``; the baseline is the current champion, else the base
model, as the stage picks it), decoding each prompt once per ``--seeds`` value
at ``--temperature`` (top-p 0.95, no repeated 4-gram, as the preset says), and
prints each metric's baseline and candidate means and the paired difference
with a 95% bootstrap CI (per prompt, averaged over the
draws). ``--temperature 0`` is evaluation's own greedy decoding: it reproduces
the evaluate stage's scores, which the tests check::

    .venv/bin/python bench/sampled_evaluation.py --run ~/.convrl/runs/<run-name> --temperature 0.7 --seeds 1 2
    .venv/bin/python bench/sampled_evaluation.py --run DIR --config demo --temperature 0   # the stage's figures

Takes about as long as the evaluate stage's decoding and scoring per seed
(about a minute for the demo's 96 prompts on 2 cores).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

METRICS = ["composite", "quality", "personality", "engagement", "relevance", "judge_personality", "judge_relevance",
           "judge_engagement", "judge_fluency", "judge_civility", "judge_composite", "words"]


def pipeline_root(run: Path) -> Path:
    """The kfp.local folder of a run (``~/.convrl/runs/<name>``, its ``pipeline_root`` or the pipeline folder)."""
    for cand in (run, *sorted(run.glob("*")), *sorted(run.glob("pipeline_root/*"))):
        if (cand / "rl-finetune" / "policy").exists() and (cand / "ingest" / "turns").exists():
            return cand
    raise SystemExit(f"{run}: no finished pipeline run here (no rl-finetune/policy and ingest/turns below it); "
                     "pass the run's folder, e.g. ~/.convrl/runs/<run-name>")


def evaluate_sampled(run: Path, cfg, temperature: float, seeds: list[int]):
    """One row per (draw, model, prompt): every head and judge, as the evaluate stage scores them."""
    import pandas as pd

    from convrl.eval.evaluate import evaluate_models
    from convrl.rl.artifact import PolicyArtifact
    from convrl.stages.evaluation import baseline_model, evaluation_inputs

    root, e = pipeline_root(run), cfg.eval
    reward_dir = str(root / "train-reward-models" / "reward_models")
    inputs = evaluation_inputs(cfg, pd.read_parquet(root / "ingest" / "turns"),
                               pd.read_parquet(root / "ingest" / "personas"), reward_dir)
    policy_dir = str(root / "rl-finetune" / "policy")
    dirs = {"candidate": str(PolicyArtifact.load(policy_dir).weights_dir(policy_dir)),
            "baseline": baseline_model(cfg)[0]}
    by_id = {p.persona_id: p for p in inputs.personas}
    frames = []
    for seed in seeds:
        scores = evaluate_models(dirs, inputs.prompts, inputs.scorer, by_id, e.max_new_tokens, e.batch_size, seed,
                                 judges=inputs.panel, no_repeat_ngram_size=e.no_repeat_ngram_size,
                                 precision=e.precision, temperature=temperature)
        scores["draw"] = seed
        frames.append(scores)
    return pd.concat(frames, ignore_index=True)


def summary(scores) -> list[dict]:
    """Per metric: baseline and candidate means, the paired difference (per prompt, over draws) and its 95% CI."""
    from convrl.eval.metrics import bootstrap_mean_ci

    rows = []
    for m in [c for c in METRICS if c in scores.columns]:
        per_prompt = scores.groupby(["model", "prompt_id"])[m].mean().unstack(0)
        diff = (per_prompt["candidate"] - per_prompt["baseline"]).to_numpy()
        lo, hi = bootstrap_mean_ci(diff)
        rows.append({"metric": m, "baseline": float(per_prompt["baseline"].mean()),
                     "candidate": float(per_prompt["candidate"].mean()), "diff": float(diff.mean()),
                     "lo": float(lo), "hi": float(hi)})
    return rows


def persona_rows(scores) -> list[dict]:
    """Per persona card: head, judge and words (baseline, candidate), and each strong trait's marker share."""
    from convrl.data.personas import PersonaError, load_persona
    from convrl.eval.judge_scorers import shows_trait

    rows = []
    for pid, part in scores.groupby("persona_id"):
        try:
            traits = [t for t, v in load_persona(pid).traits.items() if v >= 0.5 and t != "formality"]
        except PersonaError:  # a card that is not bundled: the scores still print, without marker shares
            traits = []
        row = {"persona": pid, "prompts": int(part.prompt_id.nunique())}
        for model in ("baseline", "candidate"):
            mine = part[part.model == model]
            for col in ("personality", "judge_personality", "words"):
                row[f"{col}/{model}"] = float(mine[col].mean())
            for t in traits:
                row[f"{t}/{model}"] = float(sum(shows_trait(r, t) for r in mine.response)) / max(1, len(mine))
        row["traits"] = traits
        rows.append(row)
    return rows


def _print_personas(rows: list[dict]) -> None:
    print("\n| persona | prompts | personality head | personality judge | words | strong traits shown (share) |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        pair = lambda c, f: f"{r[c + '/baseline']:{f}} -> {r[c + '/candidate']:{f}}"  # noqa: E731
        traits = ", ".join(f"{t} {pair(t, '.0%')}" for t in r["traits"]) or "n/a"
        print(f"| {r['persona']} | {r['prompts']} | {pair('personality', '.3f')} | {pair('judge_personality', '.3f')} "
              f"| {pair('words', '.1f')} | {traits} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", type=Path, help="a finished run's folder (~/.convrl/runs/<run-name>)")
    p.add_argument("--scores", type=Path, help="an evaluate stage's scores table: summarise it, no decoding")
    p.add_argument("--config", default="demo", help="the preset the run used")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="the run's config overrides")
    p.add_argument("--temperature", type=float, default=0.7, help="0 = greedy, as evaluation decodes")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2], help="one sampled draw per seed")
    a = p.parse_args(argv)
    if (a.run is None) == (a.scores is None):
        p.error("give --run (re-evaluate a run) or --scores (summarise an evaluate stage's table)")
    import pandas as pd

    from convrl.config import load_config

    if a.scores is not None:
        scores, name, how = pd.read_parquet(a.scores), str(a.scores), "the stage's own replies"
    else:
        scores = evaluate_sampled(a.run, load_config(a.config, a.set), a.temperature, a.seeds)
        name = a.run.name
        how = f"temperature {a.temperature:g}, seeds {' '.join(map(str, a.seeds))}" if a.temperature > 0 else "greedy"
    rows = summary(scores)
    print(f"{name}: {how}\n")
    print("| metric | baseline | candidate | diff [95% CI] |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['metric']} | {r['baseline']:.3f} | {r['candidate']:.3f} | "
              f"{r['diff']:+.4f} [{r['lo']:+.4f}, {r['hi']:+.4f}] |")
    _print_personas(persona_rows(scores))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
