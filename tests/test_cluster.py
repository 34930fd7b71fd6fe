"""convrl.cluster through the real ``kfp.Client`` against a loopback KFP v2beta1 API (tests/kfp_fakes.StubKFP).

The stub answers like the KFP API server (name conflicts, unknown ids, multi-user
refusals without an experiment, a namespace or an allowed identity) and checks
every body against ``kfp_server_api``'s models.
"""

from __future__ import annotations

import json
import socket

import pytest
import yaml

from convrl import cluster
from convrl.cluster import ClusterError
from tests.kfp_fakes import StubKFP, serve

PIPELINE_YAML = "pipelineInfo:\n  name: convrl-conversational-rl\nroot: {}\nschemaVersion: 2.1.0\n"


def _start(monkeypatch, tmp_path, multi_user: bool):
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    import kfp

    # kfp.Client reads a per-user context file; keep a developer's own out of the tests.
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "kfp-context.json"))
    stub = StubKFP(multi_user=multi_user)
    stub.host, stop = serve(stub)
    return stub, stop


@pytest.fixture
def kfp(monkeypatch, tmp_path):
    stub, stop = _start(monkeypatch, tmp_path, multi_user=False)
    yield stub
    stop()
    assert not stub.problems, stub.problems


@pytest.fixture
def kubeflow(monkeypatch, tmp_path):
    """Multi-user Kubeflow: token "alice" may use namespace team-a only."""
    stub, stop = _start(monkeypatch, tmp_path, multi_user=True)
    stub.users = {"alice": {"team-a"}}
    yield stub
    stop()
    assert not stub.problems, stub.problems


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "conversational_rl.yaml"
    path.write_text(PIPELINE_YAML)
    return path


def test_publish_reuses_a_version_with_the_same_content(kfp, package):
    conn = cluster.connect(kfp.host)
    assert not conn.multi_user and conn.namespace == ""
    first = cluster.publish(conn, package, description="RL chat")
    assert first["uploaded"] and first["version_name"] == f"convrl-conversational-rl-{cluster.package_digest(package)}"
    again = cluster.publish(conn, package)
    assert again == {**first, "uploaded": False}  # submit twice: no new version
    package.write_text(PIPELINE_YAML + "# changed\n")
    changed = cluster.publish(conn, package)
    assert changed["uploaded"] and changed["pipeline_id"] == first["pipeline_id"]
    assert changed["pipeline_version_id"] != first["pipeline_version_id"]
    assert len(kfp.pipelines) == 1
    upload = next(r for r in kfp.seen if r["path"].endswith("/pipelines/upload"))
    assert upload["query"]["name"] == "convrl-conversational-rl" and upload["query"]["description"] == "RL chat"


def test_publish_missing_package(kfp, tmp_path):
    with pytest.raises(ClusterError, match="not found: run `convrl compile"):
        cluster.publish(cluster.connect(kfp.host), tmp_path / "nope.yaml")


def test_submit_creates_the_experiment_once_and_runs_in_it(kfp, package):
    conn = cluster.connect(kfp.host)
    ids = cluster.publish(conn, package)
    params = {"config_name": "cluster", "overrides": "rl.max_steps=5", "rl_max_steps": 0}
    out = cluster.submit(conn, ids, params, "try-1", service_account="convrl-pipeline-runner")
    assert out["url"] == f"{kfp.host}/#/runs/details/{out['run_id']}"
    cluster.submit(conn, ids, {}, "try-2")
    assert [e["display_name"] for e in kfp.experiments.values()] == ["convrl"]
    run = kfp.runs[0]
    assert run["experiment_id"] == next(iter(kfp.experiments))
    assert run["runtime_config"]["parameters"] == params and run["service_account"] == "convrl-pipeline-runner"
    assert run["pipeline_version_reference"] == {"pipeline_id": ids["pipeline_id"],
                                                 "pipeline_version_id": ids["pipeline_version_id"]}
    rows = cluster.list_runs(conn, page_size=1)
    assert [r["display_name"] for r in rows] == ["try-2"] and rows[0]["state"] == "PENDING"


def test_submit_rejects_non_json_params(kfp, package):
    conn = cluster.connect(kfp.host)
    ids = cluster.publish(conn, package)
    with pytest.raises(ClusterError, match="'when'.*not JSON"):
        cluster.submit(conn, ids, {"when": object()}, "bad")
    assert not kfp.runs


def test_server_refusal_carries_status_and_message(kfp):
    conn = cluster.connect(kfp.host)
    with pytest.raises(ClusterError, match=r"HTTP 404: Pipeline version not found"):
        cluster.submit(conn, {"pipeline_id": "pipeline-9", "pipeline_version_id": "version-9"}, {}, "orphan")


def test_wait_returns_the_final_state(kfp, package):
    conn = cluster.connect(kfp.host)
    out = cluster.submit(conn, cluster.publish(conn, package), {}, "w")
    kfp.runs[0]["state"] = "SUCCEEDED"
    assert cluster.wait(conn, out["run_id"], 30) == "SUCCEEDED"


# --------------------------------------------------------------------------- schedules


def test_schedule_is_idempotent_by_name_and_unschedule_stops_it(kfp, package):
    conn = cluster.connect(kfp.host)
    ids = cluster.publish(conn, package)
    first = cluster.schedule(conn, ids, "0 0 3 * * 0", {"config_name": "cluster"}, "weekly")
    assert first["action"] == "created"
    rec = kfp.recurring[first["recurring_run_id"]]
    assert rec["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert rec["max_concurrency"] == "1" and rec["no_catchup"] is True and rec["mode"] == "ENABLE"
    same = cluster.schedule(conn, ids, "0 0 3 * * 0", {"config_name": "cluster"}, "weekly")
    assert same == {"recurring_run_id": first["recurring_run_id"], "action": "unchanged"}
    moved = cluster.schedule(conn, ids, "0 0 4 * * 0", {"config_name": "cluster"}, "weekly")
    assert moved["action"] == "replaced" and list(kfp.recurring) == [moved["recurring_run_id"]]
    cluster.schedule(conn, ids, "@daily", {}, "nightly")
    assert {r["display_name"] for r in cluster.list_schedules(conn)} == {"weekly", "nightly"}

    assert cluster.unschedule(conn, "weekly", delete=False) == [moved["recurring_run_id"]]
    assert kfp.recurring[moved["recurring_run_id"]]["mode"] == "DISABLE"
    assert cluster.unschedule(conn, "weekly") == [moved["recurring_run_id"]]
    assert [r["display_name"] for r in kfp.recurring.values()] == ["nightly"]
    with pytest.raises(ClusterError, match="no recurring run called 'weekly'.*convrl schedules"):
        cluster.unschedule(conn, "weekly")


@pytest.mark.parametrize("cron", ["0 0 3 * * 0", "0 */15 * * * *", "30 0 2 1-7 * MON",
                                  "0 0 0 1 JAN,JUL ?", "@weekly", "@every 6h"])
def test_valid_crons(cron):
    assert cluster.validate_cron(cron) == cron


def test_five_field_cron_rejected_with_six_field_suggestion(kfp, package):
    conn = cluster.connect(kfp.host)
    ids = cluster.publish(conn, package)
    before = len(kfp.seen)
    with pytest.raises(ClusterError) as err:
        cluster.schedule(conn, ids, "0 3 * * 0", {}, "weekly")
    msg = str(err.value)
    assert "5 fields" in msg and "seconds first" in msg and "'0 0 3 * * 0'" in msg
    assert len(kfp.seen) == before  # rejected before any request


@pytest.mark.parametrize("cron,needle", [("0 0 25 * * *", "hour"), ("0 61 * * * *", "minute"),
                                         ("* * *", "3 fields"), ("0 0 3 * * 0/x", "step")])
def test_bad_crons(cron, needle):
    with pytest.raises(ClusterError, match=needle):
        cluster.validate_cron(cron)


def test_schedule_rejects_bad_concurrency(kfp, package):
    conn = cluster.connect(kfp.host)
    with pytest.raises(ClusterError, match="between 1 and 10"):
        cluster.schedule(conn, cluster.publish(conn, package), "0 0 3 * * 0", {}, "x", max_concurrency=0)


# --------------------------------------------------------------------------- multi-user Kubeflow


def test_multi_user_needs_a_namespace(kubeflow):
    with pytest.raises(ClusterError, match="multi-user Kubeflow: pass --namespace"):
        cluster.connect(kubeflow.host, token="alice")


def test_multi_user_runs_and_schedules_live_in_the_profile(kubeflow, package):
    conn = cluster.connect(kubeflow.host, namespace="team-a", token="alice")
    assert conn.multi_user and conn.namespace == "team-a"
    ids = cluster.publish(conn, package)
    cluster.submit(conn, ids, {}, "mu-1")
    (exp,) = kubeflow.experiments.values()
    assert exp["namespace"] == "team-a" and kubeflow.namespace_of[kubeflow.runs[0]["run_id"]] == "team-a"
    assert kubeflow.pipelines[ids["pipeline_id"]]["namespace"] == "team-a"  # a profile pipeline, not a shared one
    assert cluster.publish(conn, package)["uploaded"] is False
    assert [r["display_name"] for r in cluster.list_runs(conn)] == ["mu-1"]
    cluster.schedule(conn, ids, "@weekly", {}, "weekly")
    assert cluster.schedule(conn, ids, "@weekly", {}, "weekly")["action"] == "unchanged"
    assert [r["path"] for r in kubeflow.seen if r["headers"].get("authorization") != "Bearer alice"] == []


def test_multi_user_refusals_name_the_fix(kubeflow, package):
    other = cluster.connect(kubeflow.host, namespace="team-b", token="alice")
    with pytest.raises(ClusterError) as err:
        cluster.publish(other, package)
    assert "HTTP 403" in str(err.value) and "edit access to the profile namespace" in str(err.value)
    conn = cluster.connect(kubeflow.host, namespace="team-a", token="alice")
    ids = cluster.publish(conn, package)
    # The server refuses a run without an experiment in multi-user mode; the client always sends one.
    import kfp

    raw = conn.client
    with pytest.raises(kfp.client.client.kfp_server_api.ApiException) as api_err:
        raw.run_pipeline(experiment_id="", job_name="bare", pipeline_id=ids["pipeline_id"],
                         version_id=ids["pipeline_version_id"])
    assert api_err.value.status == 400 and "Experiment id can not be empty" in api_err.value.body
    with pytest.raises(ClusterError, match="multi-user: pass --namespace"):
        cluster._call(conn, "list runs", raw._run_api.run_service_list_runs)  # no namespace, no experiment


def test_multi_user_without_identity(kubeflow, package):
    conn = cluster.connect(kubeflow.host, namespace="team-a", token="alice")
    conn.client._existing_config.api_key.pop("authorization")
    with pytest.raises(ClusterError, match="HTTP 401.*--token"):
        cluster.publish(conn, package)


# --------------------------------------------------------------------------- connecting


def test_unreachable_host():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClusterError) as err:
        cluster.connect(f"http://127.0.0.1:{port}")
    msg = str(err.value)
    assert f"cannot reach KFP at http://127.0.0.1:{port}" in msg
    assert "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80" in msg


def test_bad_token_says_how_to_authenticate(kfp):
    kfp.token = "s3cret"
    with pytest.raises(ClusterError) as err:
        cluster.connect(kfp.host)
    msg = str(err.value)
    assert "authentication failed" in msg and "HTTP 401" in msg and "--token" in msg and "KFP_TOKEN" in msg
    conn = cluster.connect(kfp.host, token="s3cret")
    assert cluster.list_runs(conn) == []
    assert kfp.seen[-1]["headers"]["authorization"] == "Bearer s3cret"


def test_token_from_env_and_cookie(kfp, monkeypatch, package):
    kfp.token = "from-env"
    monkeypatch.setenv("KFP_TOKEN", "from-env")
    conn = cluster.connect(kfp.host, cookie="authservice_session=abc")
    cluster.publish(conn, package)
    assert kfp.seen[-1]["headers"]["cookie"] == "authservice_session=abc"


def test_login_redirect_is_an_auth_error(kfp):
    kfp.redirect_to = "https://kubeflow.example.com/dex/auth?client_id=kubeflow"
    with pytest.raises(ClusterError, match=r"authentication failed \(HTTP 302.*dex/auth.*a login page answered"):
        cluster.connect(kfp.host)


def test_host_without_scheme(kfp):
    conn = cluster.connect(kfp.host.removeprefix("http://") + "/")
    assert conn.host == kfp.host and cluster.list_runs(conn) == []


def test_no_host_outside_a_pod():
    with pytest.raises(ClusterError, match="--host"):
        cluster.connect("")


def test_request_bodies_match_kfp_server_api(kfp, package):
    """The stub's schema check is live: an unknown field in a body is reported."""
    kfp.check({"display_name": "x", "max_concurency": "1"}, "V2beta1RecurringRun", "probe")
    assert kfp.problems == ["probe.max_concurency: not a field of V2beta1RecurringRun"]
    kfp.problems.clear()
    doc = yaml.safe_load(PIPELINE_YAML)
    assert doc["schemaVersion"] == "2.1.0" and json.dumps(doc)


def test_inside_a_pod_without_host_uses_the_pods_kfp_token(kfp, monkeypatch, tmp_path):
    token = tmp_path / "token"
    token.write_text("pod-token\n")
    kfp.token = "pod-token"
    monkeypatch.setattr(cluster, "SA_TOKEN_PATH", token)
    monkeypatch.setattr(cluster, "IN_CLUSTER_HOST", kfp.host)
    conn = cluster.connect(None)
    assert conn.host == kfp.host and cluster.list_runs(conn) == []
    assert kfp.seen[-1]["headers"]["authorization"] == "Bearer pod-token"


def test_cluster_steps_refuse_to_run_without_a_tracking_server(monkeypatch):
    from convrl.pipelines import step_env

    monkeypatch.setenv("CONVRL_ON_CLUSTER", "1")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(step_env.TrackingNotConfigured, match="convrl-mlflow-client"):
        step_env.prepare()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/mlflow.db")  # dies with the pod
    with pytest.raises(step_env.TrackingNotConfigured, match="sqlite"):
        step_env.prepare()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://convrl-mlflow.kubeflow.svc.cluster.local:5000")
    step_env.prepare()
    monkeypatch.delenv("CONVRL_ON_CLUSTER")
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    step_env.prepare()  # a laptop (kfp.local): the local SQLite store is the point
