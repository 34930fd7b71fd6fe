"""Composite-reward throughput: batched, cached ``RewardScorer.score`` vs each head one response at a time.

The workload is the RL hot path: GRPO batches of ``--prompts`` prompts x
``--generations`` completions, each completion exactly ``--tokens`` policy
tokens (64), each prompt a 3-turn context (user, assistant, user) from the
bundled chatterbot corpus with a persona card. Both modes use the same models
(MiniLM encoder, an emotion head of the real shape, SmolLM2-135M fluency LM
unless ``--no-fluency``) at the same precision:

* ``batched``:  ``scorer.score(batch)``: one encoder pass over the batch's
  distinct texts shared by all heads, fluency LM batched with the prompt's KV
  cache shared by its completions. The encoder cache is cleared before every
  batch, so caching helps only within a batch (contexts repeat G times).
* ``per-head``: for every response, for every head, ``scorer.score_head`` on
  that one response with an empty cache (what scoring heads independently,
  one reply at a time, costs).
* ``rl-hot-path`` and ``per-head-rl`` (``--rl-hot-path``): the two modes
  above as they run inside GRPO, where each reply's fluency log-probs are
  handed over by the KL reference pass (``rewards.fluency.ReferenceLogprobs``),
  which GRPO runs anyway because ``rl.beta > 0`` is enforced. Here those
  log-probs are computed untimed before the clock starts; in training they come
  out of the reference forward. Both modes get them, so their ratio is what
  sharing, batching and caching buy on the hot path.

The fluency term conditions on the whole context (persona system prompt and
turns), so in ``per-head`` every reply runs its context through the LM, while
``batched`` runs each context once per group.

Each mode runs in its own subprocess so peak RSS is per mode; a warm-up call is
not timed. Both modes use the same thread count (``--threads``, 1 by default).
Run (one benchmark at a time on a shared machine)::

    .venv/bin/python bench/reward_throughput.py                 # with the fluency LM
    .venv/bin/python bench/reward_throughput.py --no-fluency    # encoder heads only
    .venv/bin/python bench/reward_throughput.py --rl-hot-path   # + the scorer as GRPO runs it

Prints responses/s per mode, the speed-up, and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def workload(n_prompts: int, generations: int, tokens: int, seed: int = 0):
    """GRPO-shaped batches: contexts repeat across a prompt's completions, responses are exactly ``tokens`` long."""
    from transformers import AutoTokenizer

    from convrl import models
    from convrl.data.ingest import ingest
    from convrl.data.personas import load_personas

    rng = random.Random(seed)
    texts = [t for t in ingest(["chatterbot:english"]).turns["text"].tolist() if len(t.split()) >= 3]
    tok = AutoTokenizer.from_pretrained(models.resolve_policy("smollm2-135m-instruct"))
    personas = load_personas(["empathetic_coach", "cheerful_guide", "calm_expert"])
    contexts, responses, cards = [], [], []
    for p in range(n_prompts):
        ctx = [{"role": "system", "content": personas[p % 3].system_prompt()},
               {"role": "user", "content": rng.choice(texts)}, {"role": "assistant", "content": rng.choice(texts)},
               {"role": "user", "content": rng.choice(texts)}]
        for _ in range(generations):
            ids: list[int] = []
            while len(ids) < tokens:
                ids += tok(" " + rng.choice(texts), add_special_tokens=False)["input_ids"]
            responses.append(tok.decode(ids[:tokens]))
            contexts.append(ctx)
            cards.append(personas[p % 3])
    return contexts, responses, cards


def build_scorer(fluency: bool, precision: str):
    import torch

    from convrl import models
    from convrl.rewards.emotion import EMOTIONS, EmotionClassifier, EmotionHead
    from convrl.rewards.encoder import SentenceEncoder
    from convrl.rewards.heads import FluencyScorer, RewardScorer

    enc = SentenceEncoder(models.resolve_encoder("all-minilm-l6-v2"), precision=precision)
    torch.manual_seed(0)
    # An untrained head of the pipeline's shape costs exactly what the trained one does.
    emotion = EmotionClassifier(enc, EmotionHead(enc.dim, len(EMOTIONS), 128), EMOTIONS, 128)
    flu = FluencyScorer(models.resolve_policy("smollm2-135m-instruct")) if fluency else None
    return RewardScorer(enc, emotion, flu)


def run_mode(mode: str, a) -> dict:
    import torch

    from convrl.rewards.heads import HEADS

    if a.threads:
        torch.set_num_threads(a.threads)
    contexts, responses, personas = workload(a.prompts * a.batches, a.generations, a.tokens)
    scorer = build_scorer(not a.no_fluency, a.precision)
    bs = a.prompts * a.generations
    scorer.score(contexts[:2], ["warm-up reply", "another"], personas[:2])
    handed = [None] * len(responses)
    if mode in ("rl-hot-path", "per-head-rl") and scorer.fluency is not None:
        handed = scorer.fluency.mean_logprob(contexts, responses)  # what the reference pass hands over
    if mode in ("batched", "rl-hot-path"):
        n = len(responses)
        t0 = time.perf_counter()
        for i in range(0, n, bs):
            scorer.encoder.clear_cache()
            scorer.score(contexts[i:i + bs], responses[i:i + bs], personas[i:i + bs],
                         None if handed[0] is None else handed[i:i + bs])
        secs = time.perf_counter() - t0
    else:
        n = min(len(responses), a.per_head_responses)
        # Spread the measured responses over prompts so contexts differ as they would one at a time.
        pick = list(range(0, len(responses), max(1, len(responses) // n)))[:n]
        t0 = time.perf_counter()
        for i in pick:
            for head in HEADS:
                scorer.encoder.clear_cache()
                scorer.score_head(head, [contexts[i]], [responses[i]], [personas[i]],
                                  None if handed[i] is None else handed[i:i + 1])
        secs = time.perf_counter() - t0
        n = len(pick)
    return {"mode": mode, "responses": n, "seconds": secs, "responses_per_s": n / secs,
            "threads": torch.get_num_threads(), "encoder_precision": scorer.encoder.precision,
            "fluency": scorer.fluency is not None,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", type=int, default=8, help="prompts per GRPO batch")
    p.add_argument("--generations", type=int, default=8, help="completions per prompt")
    p.add_argument("--tokens", type=int, default=64, help="policy tokens per response")
    p.add_argument("--batches", type=int, default=2, help="batches timed in the batched mode")
    p.add_argument("--per-head-responses", type=int, default=64, help="responses timed in the per-head mode")
    p.add_argument("--no-fluency", action="store_true", help="leave the fluency LM out of the quality head")
    p.add_argument("--precision", default="auto", help="encoder precision: auto, bf16, fp32")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in both modes (0 = torch's default). On a shared 2-core machine 2 OpenMP "
                        "threads stall on every small op while other jobs hold a core (batch-1 encodes 20x slower), "
                        "which would flatter the batched mode; 1 thread keeps the comparison fair and stable")
    p.add_argument("--rl-hot-path", action="store_true",
                   help="also time the scorer as GRPO runs it: fluency log-probs from the KL reference pass")
    p.add_argument("--only", default="", help="run one mode in this process (batched, per-head, rl-hot-path)")
    p.add_argument("--json", default="", help="also write the results here")
    a = p.parse_args()
    if a.only:
        print("RESULT " + json.dumps(run_mode(a.only, a)), flush=True)
        return
    results = []
    for mode in ("per-head", "batched", *(["per-head-rl", "rl-hot-path"] if a.rl_hot_path else [])):
        args = [x for x in sys.argv[1:] if x != "--rl-hot-path"]
        proc = subprocess.run([sys.executable, __file__, "--only", mode, *args], capture_output=True, text=True)
        line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
        if line is None:
            sys.exit(f"{mode} failed:\n{proc.stderr[-4000:]}")
        results.append(json.loads(line[7:]))
    naive, ours = results[:2]
    print(f"composite reward, {a.prompts} prompts x {a.generations} completions x {a.tokens} tokens, 3-turn contexts, "
          f"fluency LM {'off' if a.no_fluency else 'SmolLM2-135M'}, encoder {ours['encoder_precision']}, "
          f"{ours['threads']} threads on {os.cpu_count()} cores")
    for r in results:
        print(f"  {r['mode']:11s} {r['responses_per_s']:8.2f} responses/s  ({r['responses']} responses in "
              f"{r['seconds']:.1f} s)  peak RSS {r['peak_rss_mb']:.0f} MB")
    print(f"  speed-up batched / per-head: {ours['responses_per_s'] / naive['responses_per_s']:.1f}x")
    if len(results) > 2:
        print(f"  speed-up rl-hot-path / per-head-rl: "
              f"{results[3]['responses_per_s'] / results[2]['responses_per_s']:.1f}x "
              "(both with fluency log-probs from the KL reference pass, as in GRPO)")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(results, fh, indent=2)


if __name__ == "__main__":
    main()
