"""Load test of ``convrl serve`` on loopback: throughput with batching, latency, TTFT, nothing lost.

Starts ``convrl serve`` in a subprocess (the demo model, SmolLM2-135M-Instruct,
provisioned by ``convrl provision``; champion only) over a throw-away SQLite
MLflow store, then drives it with the official ``openai`` client from threads,
each thread one multi-turn session (full history sent each turn, OpenAI style;
half the sessions stream):

1. 8 conversations of ``--turns`` turns, one at a time (one-at-a-time serving),
2. the same 8 conversations at once, 8 concurrent sessions (ratio of completion
   tokens/s and requests/s against phase 1, each over the wall time until its
   last reply: the batching speed-up; each phase's first messages carry their
   own tag, so the server's prefix store cannot replay phase 1's prompts in
   phase 2, while the persona prompt and a session's earlier turn are reused
   in both),
3. 16 concurrent sessions for ``--load-s`` seconds (120), every turn followed
   by a thumbs/rating feedback POST: errors, p50/p95 latency and time to first
   token (client-side, streamed sessions), then, once the server's trace
   writer has drained, the turns and feedback found in MLflow against those the
   clients got a 200 for (lost = sent - found).

    .venv/bin/python bench/serve_load.py                      # the full run
    .venv/bin/python bench/serve_load.py --load-s 30 --seed 2 --max-tokens 32
    .venv/bin/python bench/serve_load.py --temperature 0     # greedy: phases 1 and 2 write the same replies

Prints one JSON summary at the end. The machine is shared with other work, so
absolute figures are noisy; the ratio comes from phases of the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

OPENERS = [
    "Hi! I had a rough day at work and could use a chat.", "What's a good way to relax in the evening?",
    "I just adopted a puppy, any tips?", "Can you recommend a book for a long train ride?",
    "I'm nervous about a job interview tomorrow.", "My name is Sam and I love hiking. Where should I go?",
    "How do I stay motivated to exercise?", "I can't decide what to cook tonight.",
    "Tell me something that would cheer me up.", "I'm learning to play the guitar, it's hard!",
]
FOLLOW_UPS = ["Why do you say that?", "That's interesting, tell me more.", "Hmm, I'm not sure that works for me.",
              "Thanks! What else?", "Can you make it shorter?", "Do you remember what I told you earlier?"]


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.latency, self.ttft, self.tokens, self.ids = [], [], 0, []
        self.errors: list[str] = []
        self.feedback_ok = 0

    def ok(self, latency, ttft, tokens, turn_id):
        with self.lock:
            self.latency.append(latency)
            if ttft is not None:
                self.ttft.append(ttft)
            self.tokens += tokens
            self.ids.append(turn_id)

    def error(self, msg):
        with self.lock:
            self.errors.append(msg[:200])


def session(url: str, idx: int, stop_at: float, stats: Stats, args, feedback: bool,
            conversations: int | None = None, tag: str = ""):
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="loopback", max_retries=0, timeout=900)
    done = 0
    while time.time() < stop_at and (conversations is None or done < conversations):
        # Conversation k has the same messages in every phase, so phases 1 and 2 do the same work.
        k = idx * (conversations or 1000) + done
        done += 1
        rng = random.Random(args.seed * 100003 + k)
        stream = k % 2 == 1
        sid = f"bench-{idx}-{k}-{time.time_ns()}"
        # The phase's tag makes each phase's prompts its own: the server keeps finished turns' KV for reuse, and
        # phase 2 must not find phase 1's identical prompts there (the persona prompt is shared either way).
        history = [{"role": "user", "content": f"[{tag}{k}] {rng.choice(OPENERS)}"}]
        for _ in range(args.turns):
            if time.time() >= stop_at:
                return
            t0 = time.perf_counter()
            ttft, text, tokens, turn_id = None, "", 0, ""
            try:
                kw = dict(model="convrl-policy", messages=history, max_tokens=args.max_tokens,
                          extra_headers={"X-Session-Id": sid})
                if args.temperature is not None:
                    kw["temperature"] = args.temperature
                if stream:
                    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True},
                                                                **kw):
                        turn_id = chunk.id
                        if chunk.choices and chunk.choices[0].delta.content:
                            ttft = ttft if ttft is not None else time.perf_counter() - t0
                            text += chunk.choices[0].delta.content
                        if chunk.usage:
                            tokens = chunk.usage.completion_tokens
                else:
                    resp = client.chat.completions.create(**kw)
                    text, tokens, turn_id = resp.choices[0].message.content, resp.usage.completion_tokens, resp.id
            except Exception as exc:  # noqa: BLE001 - every failure is a counted error
                stats.error(f"{type(exc).__name__}: {exc}")
                continue
            stats.ok(time.perf_counter() - t0, ttft, tokens, turn_id)
            if feedback:
                body = {"id": turn_id, "thumbs": rng.random() < 0.7, "rating": rng.randint(1, 5)}
                r = requests.post(url + "/v1/feedback", json=body, timeout=60)
                if r.status_code == 202:
                    with stats.lock:
                        stats.feedback_ok += 1
                else:
                    stats.error(f"feedback {r.status_code}: {r.text[:120]}")
            history += [{"role": "assistant", "content": text}, {"role": "user", "content": rng.choice(FOLLOW_UPS)}]


def phase(url: str, n: int, args, seconds: float = 1e9, conversations: int | None = None,
          feedback: bool = False, tag: str = "") -> tuple[Stats, float]:
    """``n`` concurrent sessions, each for ``seconds`` or ``conversations`` conversations of ``--turns`` turns;
    the wall time runs until the last request in flight has finished."""
    stats = Stats()
    stop_at = time.time() + seconds
    threads = [threading.Thread(target=session, args=(url, i, stop_at, stats, args, feedback, conversations, tag))
               for i in range(n)]
    t0 = time.time()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return stats, time.time() - t0


def summary(stats: Stats, wall: float) -> dict:
    return {"requests": len(stats.latency), "errors": len(stats.errors), "wall_s": round(wall, 1),
            "requests_per_s": round(len(stats.latency) / wall, 3), "tokens_per_s": round(stats.tokens / wall, 2),
            "completion_tokens": stats.tokens,
            "latency_p50_s": round(pct(stats.latency, 0.5), 3), "latency_p95_s": round(pct(stats.latency, 0.95), 3),
            "ttft_p50_s": round(pct(stats.ttft, 0.5), 3), "ttft_p95_s": round(pct(stats.ttft, 0.95), 3)}


def wait_ready(url: str, proc, timeout: float = 300) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode}")
        try:
            if requests.get(url + "/healthz", timeout=2).ok:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.5)
    raise SystemExit("server did not come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--load-s", type=float, default=120.0, help="seconds of the 16-session load phase")
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--turns", type=int, default=2, help="turns per conversation (a new session each)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--temperature", type=float, default=None,
                    help="sampling temperature of every request (default: the server's, 0.7); 0 = greedy, so "
                         "phases 1 and 2 generate the same replies and their ratio compares the same work")
    ap.add_argument("--port", type=int, default=8765)
    ap.add_argument("--threads", type=int, default=1, help="torch threads of the server (1 on a shared box)")
    ap.add_argument("--max-wait-ms", type=float, default=100.0,
                    help="serve.max_wait_ms (static batching only, i.e. sliding-window models; continuous "
                         "batching never waits)")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="serve-bench-"))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}", "HF_HUB_OFFLINE": "1",
           "OMP_NUM_THREADS": str(args.threads)}
    overrides = [f"serve.champion={args.model}", "serve.challenger=none", f"serve.port={args.port}",
                 f"serve.max_batch_size={args.sessions}", "serve.experiment=serve-bench",
                 f"serve.journal={work / 'journal.jsonl'}", f"serve.seed={args.seed}",
                 f"serve.threads={args.threads}", f"serve.max_wait_ms={args.max_wait_ms}"]
    code = ("import sys; from convrl.config import load_config; from convrl.serving.server import serve; "
            "serve(load_config('demo', sys.argv[1:]), log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code, *overrides], env=env)
    url = f"http://127.0.0.1:{args.port}"
    try:
        wait_ready(url, proc)
        warm, _ = phase(url, 2, args, conversations=1, tag="w")  # warm-up: first-call allocations, caches
        # The same work both ways: 8 conversations, one at a time, then 8 at once.
        seq, seq_wall = phase(url, 1, args, conversations=8, tag="a")
        par, par_wall = phase(url, 8, args, conversations=1, tag="b")
        load, load_wall = phase(url, args.sessions, args, seconds=args.load_s, feedback=True, tag="c")
        t0 = time.time()
        while time.time() - t0 < 600:
            traces_state = requests.get(url + "/healthz", timeout=10).json()["traces"]
            if traces_state["pending"] == 0:
                break
            time.sleep(1)
        health = requests.get(url + "/healthz", timeout=10).json()
    finally:
        proc.terminate()
        proc.wait(timeout=120)

    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    from convrl.tracking import traces

    turns = traces.search_turns("serve-bench")
    found = set(turns.turn_id)
    load_turns = [i for i in load.ids if i]
    with_feedback = turns[turns.turn_id.isin(load_turns) & turns.rating.notna()]
    s_seq, s_par, s_load = summary(seq, seq_wall), summary(par, par_wall), summary(load, load_wall)
    out = {
        "model": args.model, "seed": args.seed, "temperature": args.temperature, "max_tokens": args.max_tokens,
        "max_wait_ms": args.max_wait_ms,
        "one_at_a_time": s_seq, "concurrent_8": s_par, f"concurrent_{args.sessions}": s_load,
        "speedup_8_vs_1_tokens_per_s": round(s_par["tokens_per_s"] / max(s_seq["tokens_per_s"], 1e-9), 2),
        "speedup_8_vs_1_requests_per_s": round(s_par["requests_per_s"] / max(s_seq["requests_per_s"], 1e-9), 2),
        "load_errors": load.errors[:5], "server_mean_batch_size": health["mean_batch_size"],
        "server_prefill_tokens": health.get("prefill_tokens"),
        "server_prefix_tokens_reused": health.get("prefix_tokens_reused"),
        "traces_lost": len([i for i in warm.ids + seq.ids + par.ids + load.ids if i and i not in found]),
        "turns_served": len(warm.ids) + len(seq.ids) + len(par.ids) + len(load.ids), "turns_in_mlflow": len(found),
        "feedback_sent": load.feedback_ok, "feedback_in_mlflow": int(len(with_feedback)),
        "feedback_lost": load.feedback_ok - int(len(with_feedback)), "trace_writer": health["traces"],
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
