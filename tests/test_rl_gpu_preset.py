"""The gpu preset and bench/gpu_smoke.py, checked on a CPU: config, trainer arguments, the smoke script's path."""

from __future__ import annotations

import pytest

from tests.benches import load_bench


def test_gpu_preset_is_a_bigger_policy_in_bf16_on_the_multi_turn_path(tmp_path, monkeypatch):
    import torch

    from convrl.config import load_config
    from convrl.rl import grpo
    from convrl.rl.grpo import grpo_args

    cfg = load_config("gpu")
    assert "/" in cfg.models.policy and "Instruct" in cfg.models.policy  # a hub id
    assert cfg.rl.precision == "bf16" and cfg.rl.turns >= 2 and cfg.rl.speed.vllm
    # On a CUDA node with vLLM installed TRL generates with vLLM, colocated; without vLLM convrl's own rollouts.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    for installed in (True, False):
        monkeypatch.setattr(grpo, "vllm_installed", lambda i=installed: i)
        kwargs = {}
        monkeypatch.setattr("trl.GRPOConfig", lambda **kw: kwargs.update(kw) or kw)
        grpo_args(cfg.rl, tmp_path)
        assert kwargs["bf16"] and kwargs["use_cpu"] is False
        assert kwargs.get("use_vllm", False) is installed and kwargs.get("vllm_mode", "colocate") == "colocate"
    cfg.rl.speed.vllm = False
    kwargs.clear()
    grpo_args(cfg.rl, tmp_path)
    assert "use_vllm" not in kwargs


def _load_smoke():
    return load_bench("gpu_smoke")


def test_gpu_smoke_refuses_a_cpu_unless_asked(monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA device"):
        _load_smoke().main(["--config", "tiny"])


def test_gpu_smoke_runs_its_path_on_the_tiny_preset(tmp_path, capsys, monkeypatch):
    import json
    import tempfile

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "smoke.json"
    assert _load_smoke().main(["--config", "tiny", "--allow-cpu", "--steps", "1", "--eval-prompts", "2",
                               "--set", "rl.precision=fp32", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["steps"] == 1 and r["turns"] == 2 and r["policy_tokens_per_s"] > 0
    assert r["eval_replies"] == 4 and set(r["composite"]) == {"candidate", "baseline"}
    assert "timing/policy_decode_s" in r["timing"] and "timing/user_decode_s" in r["timing"]
    assert "generated policy tokens/s" in capsys.readouterr().out
    # The trained policy went with its temporary folder (torch may leave its own cache folders there).
    assert not list(scratch.glob("convrl-gpu-smoke-*"))
