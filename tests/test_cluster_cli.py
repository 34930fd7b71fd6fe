"""`convrl upload|submit|schedule|runs` end to end against the stub KFP API (tests/test_cluster.py)."""

import json

import pytest

from convrl.cli import main
from tests.test_cluster import kfp  # noqa: F401 - the stub server fixture


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_upload_twice_makes_a_new_version(kfp, capsys):  # noqa: F811
    assert main(["upload", "--host", kfp.host]) == 0
    first = _last_json(capsys.readouterr().out)
    assert main(["upload", "--host", kfp.host]) == 0
    second = _last_json(capsys.readouterr().out)
    assert first["pipeline_id"] == second["pipeline_id"]
    assert first["pipeline_version_id"] != second["pipeline_version_id"]


def test_submit_passes_ui_parameters(kfp, capsys):  # noqa: F811
    assert main(["submit", "--host", kfp.host, "--config", "cluster", "rl.max_steps=50",
                 "rewards.weights.quality=0.5"]) == 0
    out = _last_json(capsys.readouterr().out)
    assert out["run_id"] and out["url"].startswith(kfp.host)
    body = next(r["body"] for r in kfp.seen if r["path"].endswith("/runs") and r["method"] == "POST")
    params = body["runtime_config"]["parameters"]
    assert params["config_name"] == "cluster"
    assert params["overrides"] == "rl.max_steps=50;rewards.weights.quality=0.5"
    assert body["service_account"] == "convrl-pipeline-runner"


def test_submit_rejects_a_bad_config_before_calling_the_cluster(kfp, capsys):  # noqa: F811
    assert main(["submit", "--host", kfp.host, "rl.max_stepz=5"]) == 2
    assert "max_steps" in capsys.readouterr().err
    assert not kfp.seen


def test_schedule_weekly(kfp, capsys):  # noqa: F811
    assert main(["schedule", "--host", kfp.host, "--cron", "0 0 3 * * 0"]) == 0
    body = kfp.recurring[0]
    assert body["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0"
    assert body["max_concurrency"] == "1" and body["no_catchup"] is True
    assert main(["schedule", "--host", kfp.host, "--cron", "0 3 * * 0"]) == 2
    assert "Did you mean '0 0 3 * * 0'" in capsys.readouterr().err


def test_runs_lists_states(kfp, capsys):  # noqa: F811
    main(["submit", "--host", kfp.host])
    capsys.readouterr()
    assert main(["runs", "--host", kfp.host]) == 0
    assert "PENDING" in capsys.readouterr().out


def test_unreachable_host_is_a_clear_error(capsys):
    assert main(["runs", "--host", "http://127.0.0.1:9"]) == 2
    assert "cannot reach KFP" in capsys.readouterr().err
