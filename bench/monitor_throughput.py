"""How fast `convrl monitor` scores served traffic: turns per second for the reward heads + judges, and the
cost per trace of writing the scores as MLflow assessments (mlflow.genai.evaluate on a SQLite store).

    .venv/bin/python bench/monitor_throughput.py --turns 2000 --traces 200 [--encoder all-minilm-l6-v2]

Served turns are built from the chatterbot corpus (real replies, random sessions of 1-4 turns); the
numbers size a scheduled monitoring job: a day of N turns takes about N / (turns per second) to score.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import pandas as pd


def served_turns(n: int, seed: int) -> pd.DataFrame:
    from convrl.data.ingest import ingest

    turns = ingest(["chatterbot:english"]).turns
    pairs = []
    for _, g in turns.sort_values(["conversation_id", "turn_index"]).groupby("conversation_id"):
        texts, roles = g["text"].tolist(), g["role"].tolist()
        pairs += [(texts[i], texts[i + 1]) for i in range(len(texts) - 1)
                  if roles[i] == "user" and roles[i + 1] == "assistant"]
    rng = np.random.default_rng(seed)
    now = pd.Timestamp.now(tz="UTC")
    rows = []
    for i in range(n):
        user, reply = pairs[rng.integers(len(pairs))]
        rows.append({"trace_id": f"t{i}", "session_id": f"s{i // 3}", "timestamp": now - pd.Timedelta(minutes=i),
                     "variant": "champion", "model_version": "1", "persona": "empathetic_coach",
                     "messages": [{"role": "system", "content": "You are Sam."}, {"role": "user", "content": user}],
                     "reply": reply, "latency_s": 0.4, "completion_tokens": 20, "thumbs": None, "rating": None})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--turns", type=int, default=2000)
    ap.add_argument("--traces", type=int, default=200, help="traces written and assessed through MLflow")
    ap.add_argument("--encoder", default="all-minilm-l6-v2")
    ap.add_argument("--seed", type=int, default=13)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tempfile.mkdtemp()}/bench.db"

    from convrl import models
    from convrl.data.personas import load_persona
    from convrl.eval.judges import JudgePanel
    from convrl.monitoring.frames import normalise_turns
    from convrl.monitoring.scoring import score_turns
    from convrl.rewards.encoder import SentenceEncoder
    from convrl.rewards.heads import RewardScorer

    frame = normalise_turns(served_turns(args.turns, args.seed))
    scorer = RewardScorer(SentenceEncoder(models.resolve_encoder(args.encoder)))
    panel = JudgePanel()
    personas = {"empathetic_coach": load_persona("empathetic_coach")}
    score_turns(frame.head(64), scorer, panel, personas)  # warm-up: first-call allocations
    t0 = time.perf_counter()
    scored = score_turns(frame, scorer, panel, personas)
    secs = time.perf_counter() - t0
    print(f"scoring: {len(scored)} turns in {secs:.1f} s = {len(scored) / secs:.0f} turns/s "
          f"(reward heads on {args.encoder} + judges; composite mean {scored['composite'].mean():.3f})")

    from convrl.tracking import traces
    from convrl.tracking.monitoring import evaluate_traces, monitor_run

    sub = frame.head(args.traces)
    t0 = time.perf_counter()
    ids = [traces.log_turn("bench-serving", session_id=r.session_id, variant="champion", model_name="p",
                           model_version="1", persona="empathetic_coach", messages=r.messages, reply=r.reply,
                           latency_s=0.4, prompt_tokens=30, completion_tokens=20) for r in sub.itertuples()]
    write = time.perf_counter() - t0
    assessed = scored.head(args.traces).assign(trace_id=ids, timestamp=pd.Timestamp.now(tz="UTC")
                                               - pd.Timedelta(minutes=5))
    with monitor_run("bench-serving", "bench", {}) as run:
        t0 = time.perf_counter()
        m = evaluate_traces("bench-serving", assessed.set_index("trace_id"), ["composite", "judge_composite"],
                            run.run_id, assessed.groupby("session_id")[["composite"]].mean())
        ev = time.perf_counter() - t0
    print(f"assessments: {int(m['assessed'])} traces in {ev:.1f} s = {1000 * ev / m['assessed']:.0f} ms/trace "
          f"(2 per-trace + 1 session-level scorer; writing the traces took {1000 * write / len(ids):.0f} ms each)")


if __name__ == "__main__":
    main()
