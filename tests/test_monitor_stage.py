"""`convrl monitor` against a real SQLite store: traces in, alerts out (log, webhook, version tag, rollback),
scores as MLflow assessments through mlflow.genai.evaluate, plots and tables in the monitoring run."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import pandas as pd
import pytest

from convrl import registry, tracking
from convrl.config import load_config

EXP = "monitor-stage-test"
NAME = "convrl-policy"
GOOD = ["That sounds really hard. What happened after you got the news?",
        "Congratulations, that is wonderful! How are you going to celebrate?",
        "Let's sort it out together: which step fails first when you try again?"]
BAD = ["", "ok ok ok ok ok ok ok ok ok ok ok ok", "."]


class Hook(BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def webhook():
    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/alerts"
    server.shutdown()


@pytest.fixture(scope="module")
def versions(mlflow_store, tiny_policy_dir):
    from convrl.tracking.pyfunc import HFDirModel

    parent = tracking.start_pipeline_run(EXP, "p", {}, {})
    with tracking.stage_run(parent, "rl_finetune", EXP) as run:
        uris = [run.log_pyfunc(f"policy{i}", HFDirModel(), {"hf_dir": tiny_policy_dir}) for i in range(2)]
    v1, _ = registry.register_candidate(uris[0], NAME, "run-1", {})
    registry.promote(NAME, v1, "first")
    v2, _ = registry.register_candidate(uris[1], NAME, "run-2", {})
    registry.promote(NAME, v2, "offline A/B said so")
    return v1, v2


@pytest.fixture(scope="module")
def served(versions):
    """A week of good traffic on v2, then a day in which its replies degrade and ratings fall."""
    from convrl.tracking import traces

    _, v2 = versions
    now = time.time()
    for s in range(12):
        bad = s >= 6
        hours_ago = 2 + s if bad else 30 + 20 * s
        msgs = [{"role": "user", "content": "I got some news today and need to talk."}]
        for k in range(2):
            reply = (BAD if bad else GOOD)[(s + k) % 3]
            tid = traces.log_turn(EXP, session_id=f"s{s}", variant="champion", model_name=NAME, model_version=v2,
                                  persona="empathetic_coach", messages=msgs, reply=reply, latency_s=0.2,
                                  prompt_tokens=15, completion_tokens=10, timestamp=now - 3600 * hours_ago + k)
            traces.log_feedback(tid, rating=(1 + s % 2) if bad else (4 + s % 2), thumbs=not bad)
            msgs = msgs + [{"role": "assistant", "content": reply}, {"role": "user", "content": "And then?"}]
    return pd.Timestamp(now, unit="s", tz="UTC")


def test_monitor_alerts_tags_posts_assesses_and_rolls_back(served, versions, webhook, tmp_path):
    from convrl.stages.monitoring import monitor_stage

    v1, v2 = versions
    cfg = load_config("tiny", [f"monitor.experiment={EXP}", "monitor.min_sessions=4", f"monitor.webhook={webhook}",
                               "monitor.rollback=true", "ab.n_bootstrap=500"])
    summary = monitor_stage(cfg, now=served + pd.Timedelta(minutes=1), out_dir=str(tmp_path))
    assert summary["turns"] == 24 and summary["sessions"] == 12
    kinds = {(a["kind"], a["metric"], a["scope"]) for a in summary["alerts"]}
    assert ("satisfaction_drop", "rating", v2) in kinds and ("empty_rise", "empty", v2) in kinds
    assert ("quality_drop", "composite", v2) in kinds and ("quality_drop", "judge_composite", "all") in kinds

    assert Hook.received and len(Hook.received[-1]["alerts"]) == len(summary["alerts"])
    tags = tracking.version_info(NAME, v2)["tags"]
    assert "satisfaction_drop" in tags["convrl.monitor.alert"] and tags["convrl.monitor.alert_detail"]
    assert summary["rollback"]["done"] and summary["rollback"]["champion"] == v1
    assert tracking.alias_version(NAME, registry.CHAMPION) == v1
    assert tracking.version_info(NAME, v2)["tags"]["convrl.rolled_back"].startswith("monitor: ")

    assert summary["genai_evaluate"].startswith("assessed 24 traces"), summary["genai_evaluate"]
    from convrl.tracking import traces

    first = traces.search_turns(EXP).sort_values("timestamp").groupby("session_id").head(1)
    names = {a.name for a in tracking.client().get_trace(first["trace_id"].iloc[0]).info.assessments}
    assert {"composite", "judge_composite", "gap", "rating", "thumbs"} <= names
    # Session-level scorers put the session's means on its first trace.
    assert {"session_composite", "session_judge_composite", "session_empty"} <= names

    run = tracking.get_run(summary["run_id"])
    assert run.data.metrics["monitor/alerts"] == len(summary["alerts"])
    arts = {f.path for f in tracking.client().list_artifacts(summary["run_id"], "monitoring")}
    assert {"monitoring/daily.png", "monitoring/daily.json", "monitoring/window_comparison.json"} <= arts
    assert (tmp_path / "daily.csv").exists() and json.loads((tmp_path / "summary.json").read_text())["turns"] == 24

    # The champion is v1 now, whose traffic raised nothing: a second pass must not roll back again.
    again = monitor_stage(load_config("tiny", [f"monitor.experiment={EXP}", "monitor.min_sessions=4",
                                               "monitor.rollback=true"]), now=served + pd.Timedelta(minutes=2))
    assert not again["rollback"]["done"] and tracking.alias_version(NAME, registry.CHAMPION) == v1
    # Overlapping passes do not stack assessments on the same traces.
    assert again["genai_evaluate"] == "all 24 traces were assessed by an earlier pass"


def test_monitor_cli_exit_code_and_empty_store(served, capsys):
    from convrl.cli import main

    code = main(["monitor", "--config", "tiny", f"monitor.experiment={EXP}", "monitor.min_sessions=4",
                 "monitor.genai_evaluate=false"])
    out = capsys.readouterr().out
    assert code == 3 and "ALERT [satisfaction_drop]" in out
    code = main(["monitor", "--config", "tiny", "monitor.experiment=nothing-served-here"])
    assert code == 0 and "monitored 0 served turns" in capsys.readouterr().out
