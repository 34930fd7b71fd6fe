"""Self-play under different decodings: how much of the looping is the decoding, for a candidate and its base.

Runs the evaluation's ten-turn self-play (``convrl.eval.selfplay``: persona
system prompt, the context manager's window and memory line, a simulated user
with recall probes and a scripted topic change) for a trained policy and the
base model, once per ``--ngram`` value (0 = plain greedy, N = greedy with no
repeated N-token n-gram of the conversation, what ``convrl chat``, ``convrl
serve`` and evaluation use), and prints per model and decoding the self-play
metrics the report shows: repeated turns, coherence, persona consistency, user
following, engagement, fact recall, degenerate turns, words per turn::

    .venv/bin/python bench/selfplay_decoding.py --candidate RUN_DIR/pipeline_root/*/rl-finetune/policy/policy
    .venv/bin/python bench/selfplay_decoding.py --candidate models:/convrl-policy@champion --ngram 0 3 4 5

Both models meet the same simulated users with the same seeds; the judges are
the held-out ones trained on the bundled chatterbot corpus (what the demo's
evaluation trains them on).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

COLUMNS = ("self_repetition", "coherence", "persona_consistency", "user_following", "engagement", "fact_recall",
           "degenerate_rate")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidate", required=True, help="policy checkpoint dir or models:/ URI")
    p.add_argument("--base", default="smollm2-135m-instruct", help="base model (also the simulated user)")
    p.add_argument("--config", default="demo", help="preset whose persona cards and self-play settings to use")
    p.add_argument("--conversations", type=int, default=6)
    p.add_argument("--ngram", type=int, nargs="+", default=[0, 4], help="no_repeat_ngram_size values (0 = off)")
    a = p.parse_args()

    import pandas as pd

    from convrl import models
    from convrl.cli import resolve_chat_model
    from convrl.config import load_config
    from convrl.data.personas import load_personas
    from convrl.eval.judges import JudgePanel
    from convrl.eval.selfplay import SelfPlaySettings, selfplay_metrics, simulate
    from convrl.rl.generation import Generator

    cfg = load_config(a.config)
    sp = cfg.eval.selfplay
    personas = load_personas(cfg.data.personas)
    panel = JudgePanel()
    base_dir = models.resolve_policy(a.base)
    user = Generator(base_dir)
    policies = {"base": user, "candidate": Generator(resolve_chat_model(a.candidate))}
    rows = []
    for n in a.ngram:
        for name, gen in policies.items():
            t0 = time.time()
            settings = SelfPlaySettings(conversations=a.conversations, turns=sp.turns, max_new_tokens=sp.max_new_tokens,
                                        context_turns=sp.context_turns, seed=cfg.eval.seed,
                                        recall_probes=sp.recall_probes, no_repeat_ngram_size=n)
            tr = simulate(gen, user, personas, settings)
            tr.insert(0, "model", name)
            _, per_conv = selfplay_metrics(tr, {q.persona_id: q for q in personas}, panel)
            row = {"model": name, "no_repeat_ngram": n, **per_conv[list(COLUMNS)].mean().round(3).to_dict(),
                   "words": round(float(tr[tr["role"] == "assistant"]["text"].str.split().str.len().mean()), 1),
                   "seconds": round(time.time() - t0, 1)}
            rows.append(row)
            print(row, flush=True)
    print()
    print(pd.DataFrame(rows).to_markdown(index=False))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
