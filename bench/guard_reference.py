"""Would a per-prompt reference steady the personality guard? Measured on a finished demo run, offline.

The guard (``convrl.rl.guard``) compares each step's rollout personality with a floor per persona. With one prompt
a step, most of that signal's spread may come from the prompt, not the policy. The warm-start already decodes the
base model's greedy reply to every RL prompt, so those replies could serve as a per-prompt reference. This script
rebuilds the run's 48 prompts (``training_inputs``), takes the same greedy replies (``base_greedy_replies``: the run's
saved ones where it kept them, else decoded here), scores their personality,
maps each step to its prompt (TRL's ``RepeatSampler`` for ``rl.seed``) and prints how much of the
per-step rollout personality (MLflow ``rewards/personality/mean``) the reference explains::

    .venv/bin/python bench/guard_reference.py --home RUN_HOME --seed 13    # a bench/learning_evidence.py --home
"""

from __future__ import annotations

import argparse
import glob
import os
import sqlite3
import tempfile

import numpy as np


def step_prompts(n_prompts: int, seed: int) -> list[int]:
    """The prompt index of each step (1 prompt a step), from the sampler GRPOTrainer trains with: TRL's
    ``RepeatSampler``, seeded with the run's seed (the trainer repeats each index ``num_generations`` times)."""
    from trl.trainer.utils import RepeatSampler

    return list(RepeatSampler(data_source=range(n_prompts), mini_repeat_count=1, batch_size=1, repeat_count=1,
                              shuffle=True, seed=seed))


def reference_stats(ref: np.ndarray, rollout: np.ndarray) -> dict:
    """How much of each step's rollout score (``rollout``) its prompt's reference (``ref``, same order) explains:
    the correlation, and the spread and quarter means before and after subtracting the fitted reference."""
    x, y = np.asarray(ref, dtype=np.float64), np.asarray(rollout, dtype=np.float64)
    b = float(np.cov(x, y)[0, 1] / x.var(ddof=1))
    resid = y - b * (x - x.mean())
    q = max(1, len(y) // 4)
    return {"steps": len(y), "corr": float(np.corrcoef(x, y)[0, 1]), "scale": b, "sd_raw": float(y.std()),
            "sd_residual": float(resid.std()), "raw_first_last_quarter": [float(y[:q].mean()), float(y[-q:].mean())],
            "residual_first_last_quarter": [float(resid[:q].mean()), float(resid[-q:].mean())]}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", required=True, help="the --home of a bench/learning_evidence.py run (one seed)")
    p.add_argument("--seed", type=int, required=True, help="its rl.seed")
    p.add_argument("--config", default="demo")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from convrl import models
    from convrl.config.loader import load_config
    from convrl.rl.warmstart import base_greedy_replies
    from convrl.stages.distributed_train import training_inputs

    roots = glob.glob(f"{args.home}/runs/*seed{args.seed}/pipeline_root/*/")
    if not roots:
        raise SystemExit(f"no run of seed {args.seed} under {args.home}/runs")
    root = roots[0]
    cfg = load_config(args.config, [f"rl.seed={args.seed}"])
    inp = training_inputs(cfg, root + "ingest/turns", root + "ingest/personas",
                          root + "train-reward-models/reward_models")
    convs = [q["prompt"] for q in inp.prompts]
    budget = cfg.rl.warmstart.max_tokens
    saved = glob.glob(f"{root}**/base_greedy_{budget}.json", recursive=True)
    replies = base_greedy_replies(cfg.rl, models.resolve_policy(cfg.models.policy), inp.prompts,
                                  os.path.dirname(saved[0]) if saved else tempfile.mkdtemp(), budget)
    cards = [inp.personas_by_id.get(q.get("persona_id")) for q in inp.prompts]
    ref = np.asarray(inp.scorer.score(convs, replies, cards).heads["personality"], dtype=np.float64)
    perm = step_prompts(len(convs), args.seed)
    db = sqlite3.connect(f"{args.home}/mlflow.db")
    # The RL stage run inside this seed's pipeline run (a --home may hold several seeds).
    start, end = db.execute("select start_time, coalesce(end_time, 1e18) from runs where name like ? "
                            "order by start_time desc", (f"%seed{args.seed}",)).fetchone()
    run = db.execute("select run_uuid from runs where name='rl_finetune' and start_time between ? and ?",
                     (start, end)).fetchone()[0]
    roll = dict(db.execute("select step, value from metrics where run_uuid=? and key='rewards/personality/mean'",
                           (run,)).fetchall())
    steps = sorted(roll)
    out = reference_stats(np.array([ref[perm[s - 1]] for s in steps]), np.array([roll[s] for s in steps]))
    out.update(reference_mean=float(ref.mean()), reference_words=float(np.mean([len(t.split()) for t in replies])))
    raw, res = out["raw_first_last_quarter"], out["residual_first_last_quarter"]
    print(f"{len(steps)} steps, seed {args.seed}: corr(reference, rollout personality) {out['corr']:+.2f}; per-step "
          f"sd {out['sd_raw']:.3f} raw, {out['sd_residual']:.3f} after the reference (x{out['scale']:.2f})")
    print(f"first / last quarter: raw {raw[0]:.3f} / {raw[1]:.3f}, after the reference {res[0]:.3f} / {res[1]:.3f}")
    return out


if __name__ == "__main__":
    main()
