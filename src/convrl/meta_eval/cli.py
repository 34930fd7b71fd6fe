"""``convrl meta-eval``: how well the reward heads and judges agree with human ratings.

::

    convrl meta-eval ../shared/data                      # every rated set: heads, composite, judges, baselines
    convrl meta-eval ../shared/data --reward-dir DIR     # the heads a pipeline run trained (and its judges)
    convrl meta-eval ../shared/data --log-mlflow convrl-meta-eval --out meta_eval_out
    convrl meta-eval-data convai2 ../shared/data/convai2_human_eval convai2.jsonl --max-items 3000
    convrl meta-eval convai2.jsonl                      # one JSONL file: a table per rating
    convrl meta-eval convai2.jsonl --json --no-fluency  # JSON, without the fluency LM (faster)

With a folder, see :mod:`convrl.meta_eval.suite` for what is scored and held
out; with a file, every head is correlated with every rating of the file (see
:mod:`convrl.meta_eval.stats` for levels and CIs). ``baseline:length`` (reply
length in words) is the trivial predictor every head should beat; with
``--reward-dir`` holding learned heads each is listed beside its untrained
scorer (``<head>_untrained``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from convrl.meta_eval.scoring import build_scorer, score_items
from convrl.meta_eval.stats import format_table, meta_evaluate
from convrl.rewards.human_data import CONVERTERS, RatedDataError, read_jsonl, write_jsonl


def suite_judges(args, scorer):
    """The judges folder mode adds: the evaluate panel, safety, dialogue-level and (optional) LLM judges."""
    from convrl.meta_eval.suite import SuiteJudges

    judges = SuiteJudges()
    if not args.no_judges:
        from convrl.eval.judges import JudgePanel

        judges.panel = JudgePanel()
    bundle = None
    if args.reward_dir:
        from convrl.rewards.bundle import RewardBundle

        bundle = RewardBundle.load(args.reward_dir)
        judges.safety = bundle.safety(args.reward_dir)
        judges.dialogue = bundle.dialogue(args.reward_dir)
        judges.calibrated_weights = dict(bundle.calibrated_weights)
    if judges.safety is None and (Path(args.file) / "toxichat").is_dir():
        from convrl.rewards.safety import train_safety_judge

        judges.safety, _ = train_safety_judge(Path(args.file) / "toxichat")  # trains on train; scored on test
    if args.llm_judge:
        from convrl import models
        from convrl.rewards.llm_judge import LLMJudge

        judges.llm = LLMJudge(models.resolve_policy(args.llm_judge), tuple(args.llm_qualities.split(",")))
    return judges


def log_to_mlflow(experiment: str, result: dict, table: str) -> str:
    """One MLflow run: every (set, rating, scorer) Spearman as a metric, the table and full result as artifacts."""
    import pandas as pd

    from convrl import tracking

    run_id = tracking.start_pipeline_run(experiment, "meta-eval", {"root": result["root"],
                                         "reward_dir": result.get("reward_dir"),
                                         "fluency_model": result.get("fluency_model")}, {"convrl.kind": "meta-eval"})
    run = tracking.StageRun(run_id, run_id)
    rows = [{"set": name, **r} for name, res in result["sets"].items() for r in res["rows"]]
    run.log_metrics({f"{r['set']}.{r['rating']}.{r['head']}".replace(":", "_"): r["spearman"] for r in rows
                     if r.get("spearman") is not None})
    run.log_text(table, "meta_eval/table.md")
    run.log_dict(result, "meta_eval/result.json")
    run.log_table(pd.DataFrame(rows).astype({"spearman_ci": str, "pearson_ci": str}), "meta_eval/rows.json")
    tracking.finish_pipeline_run(run_id, ok=True)
    return run_id


def cmd_suite(args) -> int:
    from convrl.meta_eval.suite import SuiteLimits, run_suite, summary_markdown

    fluency = "" if args.no_fluency else args.fluency_model
    scorer = build_scorer(args.reward_dir, args.encoder, fluency, learned=not args.no_learned, precision=args.precision)
    limits = SuiteLimits(per_dialogue=args.turns_per_dialogue, max_dialogues=args.max_dialogues,
                         max_dialogue_items=args.max_dialogue_items, max_pairs=args.max_pairs, seed=args.seed)
    try:
        result = run_suite(args.file, scorer, suite_judges(args, scorer), limits, args.n_bootstrap,
                           progress=not args.json)
    except (FileNotFoundError, RatedDataError) as exc:
        print(f"convrl: error: {exc}", file=sys.stderr)
        return 2
    result.update({"reward_dir": args.reward_dir or None, "fluency_model": fluency or None})
    table = summary_markdown(result)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps(result, indent=2))
        (out / "table.md").write_text(table + "\n")
    if args.log_mlflow:
        from convrl import tracking

        run_id = log_to_mlflow(args.log_mlflow, result, table)
        print(f"logged to MLflow run {run_id}", file=sys.stderr)
    print(json.dumps(result, indent=2) if args.json else table)
    return 0

def cmd_meta_eval(args) -> int:
    # Same offline defaults as the pipeline stages, without importing them (they pull in MLflow).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if Path(args.file).is_dir():
        return cmd_suite(args)
    try:
        items = read_jsonl(args.file, limit=args.limit)
    except RatedDataError as exc:
        print(f"convrl: error: {exc}", file=sys.stderr)
        return 2
    fluency = "" if args.no_fluency else args.fluency_model
    scorer = build_scorer(args.reward_dir, args.encoder, fluency, learned=not args.no_learned, precision=args.precision)
    scores = score_items(scorer, items, progress=not args.json)
    from convrl.meta_eval.suite import CONTRASTS

    result = meta_evaluate(items, scores, args.n_bootstrap, args.seed, contrasts=CONTRASTS)
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
    m.add_argument("file", help="JSONL: {context, response, persona?, ratings, group?} per line; or a folder of "
                   "rated sets (e.g. ../shared/data): every set at once, with judges and baselines")
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
    m.add_argument("--llm-judge", default="", help="also score with this causal LM as a G-Eval-style judge")
    m.add_argument("--llm-qualities", default="overall,engaging", help="qualities the LLM judge rates")
    m.add_argument("--no-judges", action="store_true", help="folder mode: skip the held-out judge panel")
    m.add_argument("--max-pairs", type=int, default=500, help="folder mode: HH-RLHF pairs to score")
    m.add_argument("--max-dialogues", type=int, default=100,
                   help="folder mode: held-out dialogues per dialogue set (ConvAI2, user satisfaction); every "
                        "assistant turn of each is scored, about 10 per dialogue")
    m.add_argument("--max-dialogue-items", type=int, default=0,
                   help="folder mode: and at most this many of their rated turns (0 = no cap)")
    m.add_argument("--turns-per-dialogue", type=int, default=0,
                   help="folder mode: rated turns scored per dialogue, spread evenly (0 = every one)")
    m.add_argument("--out", default="", help="folder mode: write result.json and table.md here")
    m.add_argument("--log-mlflow", default="", metavar="EXPERIMENT",
                   help="folder mode: log the table and every row to this MLflow experiment")
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
