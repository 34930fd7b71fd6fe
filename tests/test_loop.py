"""The whole loop on the tiny preset: serve -> chat with the `openai` client -> feedback (and an arena choice)
-> monitor -> `mlflow-traces:` ingest -> a retraining pipeline run (kfp.local) that trains on it."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import requests

from convrl import tracking
from tests.serve_support import live_server, tiny_serve_config

openai = pytest.importorskip("openai")
EXP = "loop-serving"
USERS = [["I just got a new puppy!", "She chewed my shoes though."],
         ["Work was exhausting today.", "My boss keeps adding tasks."],
         ["Can you help me plan a trip?", "I like mountains more than beaches."],
         ["I failed my driving test.", "I was so nervous at the roundabout."],
         ["What should I cook tonight?", "Something with mushrooms maybe."],
         ["I can't sleep lately.", "My mind keeps racing at night."]]


@pytest.mark.slow
def test_serve_feedback_monitor_ingest_retrain(mlflow_store, tiny_policy_dir, tmp_path, capsys):
    from convrl.cli import main
    from convrl.config import load_config
    from convrl.stages.monitoring import monitor_stage
    from convrl.tracking import traces

    cfg = tiny_serve_config(tiny_policy_dir, tmp_path, f"serve.experiment={EXP}")
    with live_server(cfg) as (url, server):
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused-on-loopback", max_retries=0)
        served = []
        for s, messages in enumerate(USERS):
            for k, text in enumerate(messages):
                # The server keeps each session's history: a client sends only its new message.
                resp = client.chat.completions.create(
                    model="convrl-policy", messages=[{"role": "user", "content": text}], max_tokens=8,
                    extra_headers={"X-Session-Id": f"loop-{s}"})
                served.append(resp.id)
                fb = {"id": resp.id, "thumbs": s % 2 == 0} if k == 0 else {"id": resp.id, "rating": 1 + s % 5}
                assert requests.post(url + "/v1/feedback", json=fb, timeout=30).status_code == 202
        turn = requests.post(url + "/arena/api/turn", json={"arena_id": "loop-arena", "message": "Say something kind."},
                             timeout=60).json()
        assert requests.post(url + "/arena/api/choice", json={"arena_id": "loop-arena", "turn": turn["turn"],
                                                              "choice": "a"}, timeout=30).json()["recorded"]
        assert server.writer.flush(120)

    turns = traces.search_turns(EXP)
    api = turns[turns["source"] == "api"]
    assert sorted(api["turn_id"]) == sorted(served)
    assert api["thumbs"].notna().sum() == len(USERS) and api["rating"].notna().sum() == len(USERS)
    assert len(traces.search_preferences(EXP)) == 1

    # Monitor: everything is in the current window, so no baseline and no alert, but every turn is scored
    # and the scores land on the traces as assessments.
    mon = monitor_stage(load_config("tiny", [f"monitor.experiment={EXP}", "monitor.min_sessions=2"]),
                        now=pd.Timestamp.now(tz="UTC") + pd.Timedelta(minutes=1))
    assert mon["turns"] == len(turns) and mon["alerts"] == []
    assert mon["genai_evaluate"].startswith(f"assessed {len(turns)} traces"), mon["genai_evaluate"]
    names = {a.name for a in tracking.client().get_trace(api["trace_id"].iloc[0]).info.assessments}
    assert {"composite", "judge_composite", "thumbs"} <= names

    # Retrain on the served conversations next to the bundled corpus, through the real pipeline.
    # The override is built the way the KFP UI's data_sources parameter is, so a scheduled run takes the same.
    from convrl.pipelines.parameters import ui_overrides

    spec = f"mlflow-traces:{EXP}?split=source"
    rc = main(["run", "--config", "tiny", "--run-name", "loop-retrain",
               *ui_overrides(data_sources=f"{spec}, chatterbot:english")])  # first: data.max_conversations caps in order
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    parent = tracking.client().search_runs([tracking.experiment_id("convrl-tiny")],
                                           filter_string="attributes.run_name = 'loop-retrain'")[0]
    stages = {r.data.tags[tracking.STAGE_TAG]: r for r in tracking.stage_runs(parent.info.run_id)}
    assert all(r.info.status == "FINISHED" for r in stages.values()), {k: r.info.status for k, r in stages.items()}
    card = json.loads(open(tracking.client().download_artifacts(stages["ingest"].info.run_id, "data_card.json",
                                                                str(tmp_path))).read())
    assert spec in card["conversations_per_source"], card["conversations_per_source"]
    # Every served session arrives as one conversation, plus the arena choice's chosen and rejected halves.
    assert card["conversations_per_source"][spec] == len(USERS) + 2
    assert parent.data.params["data.sources"].count("mlflow-traces:") == 1
