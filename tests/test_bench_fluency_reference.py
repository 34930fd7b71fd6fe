"""bench/fluency_reference.py scores a run's saved greedy replies under the base model and the warm-started one."""

from __future__ import annotations

import json
import re

from tests.benches import run_bench


def test_fluency_reference_bench_compares_base_and_warm_started(tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from convrl import models

    pol = tmp_path / "run" / "pipeline_root" / "p1" / "rl-finetune" / "policy"
    pol.mkdir(parents=True)
    prompts = [[{"role": "system", "content": f"You are persona {i}."}, {"role": "user", "content": f"hi number {i}"}]
               for i in range(9)]
    (pol / "base_greedy_95.json").write_text(json.dumps({"prompts": prompts,
                                                         "replies": [f"hello there {i}" for i in range(9)]}))
    torch.manual_seed(0)
    m = AutoModelForCausalLM.from_pretrained(models.resolve_policy("tiny-llama"))
    peft = get_peft_model(m, LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft.save_pretrained(str(pol / "warmstart"))
    out = run_bench("fluency_reference", "--home", str(tmp_path / "run"), "--policy", "tiny-llama", "--threads", "1")
    rows = re.findall(r"^(as replied|other prompt|both)\s+n=(\d+): mean log-prob base (-?\d+\.\d+), warm-started "
                      r"(-?\d+\.\d+), Spearman (-?\d+\.\d+|nan)", out.stdout, re.M)
    assert [(r[0], r[1]) for r in rows] == [("as replied", "9"), ("other prompt", "9"), ("both", "18")], out.stdout
    # A non-zero adapter moves the log-probs: the two models are not the same LM.
    assert any(r[2] != r[3] for r in rows), out.stdout
