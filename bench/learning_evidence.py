"""Does RL make the model talk better, on every seed? Runs the demo pipeline per seed and prints the evidence.

Each seed is one full ``convrl run`` (ingest -> rewards -> RL -> evaluation ->
A/B) with ``rl.seed`` set, its own registry model name (so the baseline is
always the base model, never a champion an earlier seed promoted) and its own
MLflow experiment. Per seed it prints the held-out composite-reward and
held-out judge-composite differences (candidate - base) with their 95% CIs,
the A/B decision, guardrails whose CI lies wholly below 0 and strict guardrails
broken (``ab.strict_guardrails``: new insults to the user), the RL stage's
completion clipping at the end, self-play repetition and fact recall, and the
pipeline's wall time::

    .venv/bin/python bench/learning_evidence.py --seeds 3                  # rl.seed = 13, 1, 2
    .venv/bin/python bench/learning_evidence.py --seed-list 13 --set rl.multi_objective_aggregation=normalize_then_sum
    .venv/bin/python bench/learning_evidence.py --seeds 3 --markdown evidence.md   # the README's table

Runs go to the current ``CONVRL_HOME`` (runs/evidence-*); pass ``--home`` for
a scratch one. Every seed evaluates the base model on the same prompts, so
the evaluation cache (``eval.cache``) would hand seeds after the first the
base model's replies; it is off here (``--eval-cache`` turns it on), so each
seed's minutes are those of a fresh pipeline. Exit status 0 when every seed's
judge composite improved with a CI above 0, no guardrail was
significantly worse and no strict guardrail broke, else 1.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

DEFAULT_SEEDS = (13, 1, 2)  # 13 is the demo's default rl.seed


def run_seed(preset: str, seed: int, overrides: list[str], tag: str, env: dict) -> dict:
    """One pipeline run; the decision record and parent-run metrics it left."""
    name = f"evidence-{tag}-seed{seed}"
    cmd = [sys.executable, "-m", "convrl.cli", "run", "--config", preset, "--run-name", name,
           f"rl.seed={seed}", f"registry.model_name=convrl-evidence-{tag}-seed{seed}",
           f"tracking.experiment=convrl-evidence-{tag}", *overrides]
    t0 = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    minutes = (time.time() - t0) / 60
    home = Path(env.get("CONVRL_HOME") or _default_home())
    decision = _find_decision(home / "runs" / name)
    if decision is None:
        raise RuntimeError(f"seed {seed}: no A/B decision found (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n"
                           f"{proc.stderr[-3000:]}")
    return {"seed": seed, "minutes": minutes, "exit": proc.returncode, "decision": decision,
            "metrics": _parent_metrics(env, f"convrl-evidence-{tag}", name)}


def _default_home() -> str:
    from convrl.home import convrl_home

    return str(convrl_home())


def _find_decision(root: Path) -> dict | None:
    for p in sorted(root.rglob("*"), key=lambda p: p.stat().st_mtime, reverse=True) if root.exists() else []:
        if p.is_file() and p.stat().st_size < 2_000_000:
            try:
                data = json.loads(p.read_text())
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(data, dict) and "outcome" in data and "metrics" in data:
                return data
    return None


def _parent_metrics(env: dict, experiment: str, run_name: str) -> dict:
    """The parent run's metrics (RL summary, evaluation, self-play), read from MLflow in a child process."""
    code = ("import json,mlflow;from convrl import tracking;mlflow.set_tracking_uri(tracking.tracking_uri());"
            f"r=mlflow.search_runs(experiment_names=[{experiment!r}],filter_string=\"tags.mlflow.runName='{run_name}'\","
            "output_format='list');print('METRICS '+json.dumps(dict(r[0].data.metrics) if r else {}))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout
    line = next((x for x in out.splitlines() if x.startswith("METRICS ")), "METRICS {}")
    return json.loads(line[8:])


def summarize_seed(r: dict) -> dict:
    d, m = r["decision"], r["metrics"]
    metrics = d.get("metrics", {})
    comp, judge = metrics.get("composite", {}), metrics.get("judge_composite", {})
    worse = sorted(k for k, v in metrics.items() if k != "composite" and isinstance(v, dict)
                   and v.get("ci_high", 0.0) < 0)
    # A strict guardrail (ab.strict_guardrails: the civility judge) breaks on new violations, not on a CI.
    worse += sorted(f"{k} (strict)" for k, v in metrics.items() if isinstance(v, dict) and v.get("strict")
                    and v.get("guardrail_broken") and k not in worse)
    return {"seed": r["seed"], "minutes": r["minutes"], "decision": d.get("outcome"),
            "composite": (comp.get("mean_diff"), comp.get("ci_low"), comp.get("ci_high")),
            "judge_composite": (judge.get("mean_diff"), judge.get("ci_low"), judge.get("ci_high")),
            "significantly_worse": worse,
            "clipped_ratio_last": m.get("rl/clipped_ratio_last_quarter"),
            # Multi-turn runs: each earlier policy turn's share (the figure above is the last turn's, as TRL reads it).
            "clipped_earlier_turns": [m[k] for k in sorted(
                (k for k in m if re.fullmatch(r"rl/clipped_ratio_turn\d+_last_quarter", k)),
                key=lambda k: int(re.search(r"\d+", k).group()))][:-1],
            "cut_off": (m.get("baseline_cut_off"), m.get("candidate_cut_off")),  # held-out replies, greedy as chat
            # Held-out replies the personality judge finds contradicting the card (or breaking character): how a
            # persona traded for relevance or claimed unasked ("I'm not a dog") shows up.
            "contradictions": (m.get("baseline_contradictions"), m.get("candidate_contradictions")),
            "selfplay_repeat": (m.get("baseline_selfplay_self_repetition"), m.get("candidate_selfplay_self_repetition")),
            "fact_recall": (m.get("baseline_selfplay_fact_recall"), m.get("candidate_selfplay_fact_recall"))}


def cpu_description(cpuinfo: str | None = None) -> str:
    """The CPU and its bf16 units, e.g. "AMD EPYC, AVX512-BF16": a run's figures hold for one CPU (bf16 kernels
    round differently from one to the next, so the same seed trains a different policy) and its minutes too."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return platform.processor() or platform.machine() or "unknown CPU"
    fields = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in cpuinfo.splitlines() if ":" in line)}
    flags = set(fields.get("flags", "").split())
    units = [label for flag, label in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX")) if flag in flags]
    # Family / model / stepping: hosts that share a marketing name ("Intel(R) Xeon(R) Processor") differ in them.
    ident = ", ".join(f"{k} {fields[k]}" for k in ("cpu family", "model", "stepping") if k in fields)
    name = fields.get('model name', platform.machine() or 'unknown CPU') + (f" ({ident})" if ident else "")
    return f"{name}, {'/'.join(units) or 'no bf16 units'}"


def _ci(t) -> str:
    d, lo, hi = t
    return "n/a" if d is None else f"{d:+.4f} [{lo:+.4f}, {hi:+.4f}]"


def _pair(t, pct: bool = True) -> str:
    b, c = t
    f = (lambda x: f"{100 * x:.0f}%") if pct else (lambda x: f"{x:.3f}")
    return "n/a" if b is None or c is None else f"{f(b)} -> {f(c)}"


def table(rows: list[dict]) -> str:
    lines = ["| rl.seed | composite diff [95% CI] | judge composite diff [95% CI] | decision | guardrails worse "
             "| clipped (last quarter) | held-out replies cut off | persona contradicted | self-play repeated turns "
             "| fact recall | minutes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in rows:
        clipped = "n/a" if s["clipped_ratio_last"] is None else f"{s['clipped_ratio_last']:.2f}"
        if s["clipped_ratio_last"] is not None and s.get("clipped_earlier_turns"):
            clipped += f" (turn {', '.join(f'{k}: {v:.2f}' for k, v in enumerate(s['clipped_earlier_turns'], 1))})"
        lines.append(f"| {s['seed']} | {_ci(s['composite'])} | {_ci(s['judge_composite'])} | {s['decision']} | "
                     f"{', '.join(s['significantly_worse']) or 'none'} | {clipped} | {_pair(s['cut_off'])} | "
                     f"{_pair(s['contradictions'])} | "
                     f"{_pair(s['selfplay_repeat'])} | "
                     f"{_pair(s['fact_recall'])} | {s['minutes']:.1f} |")
    return "\n".join(lines)


def held(s: dict) -> bool:
    lo = s["judge_composite"][1]
    return lo is not None and lo > 0 and not s["significantly_worse"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3, help="how many of the seeds 13, 1, 2, 3, ... to run")
    p.add_argument("--seed-list", type=int, nargs="*", help="explicit rl.seed values (overrides --seeds)")
    p.add_argument("--config", default="demo")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    p.add_argument("--tag", default="", help="names this batch of runs (default: a timestamp)")
    p.add_argument("--home", default="", help="CONVRL_HOME for the runs (default: the current one)")
    p.add_argument("--markdown", default="", help="also write the table to this file")
    p.add_argument("--eval-cache", action="store_true",
                   help="let seeds reuse the base model's evaluation replies (faster; minutes no longer a fresh run's)")
    a = p.parse_args(argv)
    if not a.eval_cache:
        a.set = ["eval.cache=false", *a.set]
    seeds = a.seed_list or list(DEFAULT_SEEDS[:a.seeds]) + list(range(3, 3 + max(0, a.seeds - len(DEFAULT_SEEDS))))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if a.home:
        env["CONVRL_HOME"] = a.home
    tag = a.tag or time.strftime("%Y%m%d-%H%M%S")
    rows = []
    for seed in seeds:
        s = summarize_seed(run_seed(a.config, seed, a.set, tag, env))
        rows.append(s)
        print(f"seed {seed}: composite {_ci(s['composite'])}, judge composite {_ci(s['judge_composite'])}, "
              f"decision {s['decision']}, worse: {', '.join(s['significantly_worse']) or 'none'}, "
              f"{s['minutes']:.1f} min", flush=True)
    text = (f"`bench/learning_evidence.py --config {a.config} --seed-list {' '.join(map(str, seeds))}"
            + "".join(f" --set {x}" for x in a.set) + f"` ({os.cpu_count()} CPU cores: {cpu_description()})\n\n"
            + table(rows))
    print(text)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    return 0 if all(held(s) for s in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
