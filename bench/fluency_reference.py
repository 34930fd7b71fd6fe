"""The quality head's fluency term under the base model vs under the warm-started reference RL's KL pass runs.

Inside GRPO the fluency log-probs come from the KL reference pass
(``rewards.fluency.ReferenceLogprobs``). With ``rl.warmstart`` on (the demo)
that pass runs the frozen copy of the warm-started adapter, not the bare base
model that evaluation and ``convrl meta-eval`` score fluency with. This
measures how far the two apart are on a finished run: the base model's greedy
replies to the RL prompts (``base_greedy_<tokens>.json`` in the RL output), as
they are and each paired with another prompt (a less fitting reply, as sampled
rollouts often are), scored by both models; it prints the mean log-probs,
their Spearman correlation and the fluency term RL pays (``clip((lp + 6) /
2.5, 0, 1)``, ``rewards.heads``).

    .venv/bin/python bench/fluency_reference.py --home DIR/runs/<run name>   # a bench/learning_evidence.py run
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import tempfile

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--home", required=True, help="a pipeline run's folder holding pipeline_root/*/rl-finetune")
    p.add_argument("--policy", default="smollm2-135m-instruct")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)

    import numpy as np
    import torch
    from peft import PeftModel
    from scipy.stats import spearmanr
    from transformers import AutoModelForCausalLM

    from convrl import models
    from convrl.rewards.fluency import FluencyScorer

    torch.set_num_threads(args.threads)
    found = sorted(glob.glob(os.path.join(args.home, "pipeline_root", "*", "rl-finetune", "policy")))
    pol = found[-1] if found else ""
    greedy = sorted(glob.glob(os.path.join(pol, "base_greedy_*.json")))
    if not greedy or not os.path.exists(os.path.join(pol, "warmstart", "adapter_config.json")):
        raise SystemExit(f"no RL output with base_greedy_*.json and a warmstart adapter under {args.home}")
    base = models.resolve_policy(args.policy)
    with open(greedy[0]) as f:
        saved = json.load(f)
    prompts, replies = saved["prompts"], saved["replies"]
    n = len(prompts)
    contexts = prompts + [prompts[(i + 7) % n] for i in range(n)]
    responses = replies + replies
    with tempfile.TemporaryDirectory() as merged:
        m = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        PeftModel.from_pretrained(m, os.path.join(pol, "warmstart")).merge_and_unload().save_pretrained(merged)
        for f in os.listdir(base):
            if f.startswith("tokenizer") or f.endswith(".jinja") or f == "generation_config.json":
                shutil.copy(os.path.join(base, f), merged)
        a = FluencyScorer(base).mean_logprob(contexts, responses)
        b = FluencyScorer(merged).mean_logprob(contexts, responses)

    def term(lp):
        return np.clip((lp + 6.0) / 2.5, 0, 1)

    result = {}
    for name, sl in (("as replied", slice(0, n)), ("other prompt", slice(n, 2 * n)), ("both", slice(0, 2 * n))):
        x, y = a[sl], b[sl]
        diff = np.abs(term(x) - term(y))
        result[name] = {"n": len(x), "base_lp": float(x.mean()), "warm_lp": float(y.mean()),
                        "spearman": float(spearmanr(x, y)[0]), "term_abs_diff": float(diff.mean())}
        print(f"{name:12} n={len(x)}: mean log-prob base {x.mean():.3f}, warm-started {y.mean():.3f}, Spearman "
              f"{result[name]['spearman']:.3f}; fluency term {term(x).mean():.3f} vs {term(y).mean():.3f}, "
              f"mean |diff| {diff.mean():.3f}, max {diff.max():.3f}")
    return result


if __name__ == "__main__":
    main()
