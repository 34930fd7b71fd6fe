"""Bench scripts in tests: import one as a module (to call its functions), or run it as a user would."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def load_bench(name: str):
    """``bench/<name>.py`` as a fresh module object."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_bench(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``bench/<name>.py args`` from the repository root, offline and on one thread; its stdout/stderr captured.

    Fails the calling test with the script's stderr when it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, str(BENCH / f"{name}.py"), *args], capture_output=True, text=True,
                         env=env, timeout=timeout, cwd=BENCH.parent)
    assert out.returncode == 0, out.stderr[-3000:]
    return out
