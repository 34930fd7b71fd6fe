"""bench/serve_load.py runs end to end on a tiny model: every phase served, nothing lost, the summary complete."""

from __future__ import annotations

import json
import socket

import pytest

from tests.benches import run_bench


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_load_bench_reports_every_phase_and_loses_nothing():
    out = run_bench("serve_load", "--model", "tiny-llama", "--load-s", "4", "--sessions", "4", "--max-tokens", "8",
                    "--temperature", "0", "--port", str(_free_port()))
    report = json.loads(out.stdout[out.stdout.index("{"):])
    assert report["temperature"] == 0.0
    # Phases 1 and 2 are the same 8 two-turn conversations: 16 replies each, none failed.
    for phase in ("one_at_a_time", "concurrent_8"):
        assert report[phase]["requests"] == 16 and report[phase]["errors"] == 0
        assert 0 < report[phase]["completion_tokens"] <= 16 * 8
    assert report["concurrent_4"]["requests"] > 0 and report["load_errors"] == []
    assert report["speedup_8_vs_1_tokens_per_s"] > 0 and report["speedup_8_vs_1_requests_per_s"] > 0
    # Every served turn became a trace and every feedback POST reached MLflow.
    assert report["traces_lost"] == 0 and report["turns_in_mlflow"] == report["turns_served"]
    assert report["feedback_sent"] == report["concurrent_4"]["requests"]
    assert report["feedback_lost"] == 0
