"""How much the evaluation cache saves: the evaluate stage of a finished run, twice, against an empty cache.

The first pass decodes both models and fills the cache; the second finds every
decoding there (the situation of a retraining run whose champion did not
change, or of a failed evaluate step run again) and only scores. Both passes
must give the same scores table; the script fails otherwise. MLflow and the
cache go to a scratch ``CONVRL_HOME`` (``--home``), so the run's own store is
not touched::

    .venv/bin/python bench/eval_cache.py ~/.convrl/runs/<run-name> --home /tmp/evalcache

Prints the stage's minutes and ``timing/eval_*`` phases per pass.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path


def _one(root: Path, pattern: str) -> str:
    found = sorted(root.glob(pattern))
    if not found:
        raise SystemExit(f"{root}: nothing matches {pattern}; pass a finished `convrl run` folder (runs/<name>)")
    return str(found[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished run: ~/.convrl/runs/<run-name> (config.yaml + pipeline_root/)")
    p.add_argument("--home", required=True, help="scratch CONVRL_HOME for MLflow and the cache (must hold no cache yet)")
    a = p.parse_args(argv)
    run = Path(a.run_dir)
    home = Path(a.home)
    if (home / "cache").exists():
        raise SystemExit(f"{home}/cache exists: pass an empty --home so the first pass starts cold")
    os.environ["CONVRL_HOME"] = str(home)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    models = Path.home() / ".convrl" / "models"
    home.mkdir(parents=True, exist_ok=True)
    if not (home / "models").exists() and models.exists():
        (home / "models").symlink_to(models)  # the provisioned models, not a second copy

    from dataclasses import replace

    import pandas as pd

    from convrl import tracking
    from convrl.config import load_config
    from convrl.rl.artifact import PolicyArtifact
    from convrl.stages.evaluation import evaluate_stage

    cfg = load_config(str(run / "config.yaml"))
    root = run / "pipeline_root"
    # The run's LoggedModel lives in its own MLflow store; the copy here points at the same weights without it.
    policy_src = _one(root, "*/rl-finetune/policy")
    art = PolicyArtifact.load(policy_src)
    policy_dir = home / "policy"
    policy_dir.mkdir(exist_ok=True)
    if not (policy_dir / art.policy_subdir).exists():
        (policy_dir / art.policy_subdir).symlink_to(art.weights_dir(policy_src).resolve())
    replace(art, logged_model="").save(policy_dir)
    inputs = (_one(root, "*/ingest/turns"), _one(root, "*/ingest/personas"),
              _one(root, "*/train-reward-models/reward_models"), str(policy_dir))
    tables = []
    for label in ("cold (decodes, fills the cache)", "warm (every decoding from the cache)"):
        parent = tracking.start_pipeline_run(cfg.tracking.experiment, f"eval-cache {label.split()[0]}", {}, {})
        out = home / label.split()[0]
        t0 = time.perf_counter()
        evaluate_stage(cfg, parent, *inputs, str(out / "scores.parquet"), str(out / "report"))
        minutes = (time.perf_counter() - t0) / 60
        stage = [r for r in tracking.stage_runs(parent) if r.data.tags.get(tracking.STAGE_TAG) == "evaluate"][0]
        phases = ", ".join(f"{k.split('/')[1]} {v:.0f} s" for k, v in sorted(stage.data.metrics.items())
                           if k.startswith("timing/eval_"))
        print(f"{label}: {minutes:.2f} min ({phases}); cache hits: {stage.data.tags['convrl.eval_cache_hits']}",
              flush=True)
        tables.append(pd.read_parquet(out / "scores.parquet"))
    pd.testing.assert_frame_equal(tables[1], tables[0])
    print("scores identical in both passes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
