"""convrl.cluster against a stub KFP v2beta1 API server.

The stub runs on 127.0.0.1 in a thread and checks every request body (and its
own canned answers) against the field names of ``kfp_server_api``'s models, so
a misspelt field fails here rather than being silently ignored by a real cluster.
"""

from __future__ import annotations

import email.parser
import email.policy
import itertools
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import kfp_server_api.models as kfp_models
import pytest
import yaml

from convrl import cluster
from convrl.cluster import ClusterError

API = "/apis/v2beta1"
PIPELINE_YAML = "pipelineInfo:\n  name: conversational-rl\nroot: {}\nschemaVersion: 2.1.0\n"


def model_problems(obj, model: str, where: str = "$") -> list[str]:
    """Keys or enum values in ``obj`` that the kfp_server_api model ``model`` does not define."""
    cls = getattr(kfp_models, model)
    if hasattr(cls, "allowable_values"):  # an enum
        return [] if obj in cls.allowable_values else [f"{where}={obj!r} not in {cls.allowable_values}"]
    if not isinstance(obj, dict):
        return [f"{where}: expected a {model} object, got {type(obj).__name__}"]
    by_json = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    problems = []
    for key, value in obj.items():
        attr = by_json.get(key)
        if attr is None:
            problems.append(f"{where}.{key}: not a field of {model}")
            continue
        typ = cls.openapi_types[attr]
        if typ.startswith("list["):
            inner = typ[5:-1]
            if hasattr(kfp_models, inner):
                for i, item in enumerate(value):
                    problems += model_problems(item, inner, f"{where}.{key}[{i}]")
        elif hasattr(kfp_models, typ):
            problems += model_problems(value, typ, f"{where}.{key}")
        elif typ == "str" and not isinstance(value, str):
            problems.append(f"{where}.{key}: {typ} field holds {value!r}")
        elif typ == "bool" and not isinstance(value, bool):
            problems.append(f"{where}.{key}: bool field holds {value!r}")
    return problems


class StubKFP:
    """In-memory KFP: pipelines, versions, runs and recurring runs."""

    def __init__(self):
        self.ids = itertools.count(1)
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.runs: list[dict] = []
        self.recurring: list[dict] = []
        self.seen: list[dict] = []           # every request: method, path, query, body, headers
        self.problems: list[str] = []        # schema violations found in requests or answers
        self.token: str | None = None        # when set, requests need "Bearer <token>"
        self.redirect_to: str | None = None  # when set, answer 302 like an auth proxy

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids):04d}"

    def stamp(self) -> str:
        return f"2025-01-01T00:00:{len(self.seen):02d}Z"

    def handle(self, method: str, path: str, query: dict, body, headers) -> tuple[int, dict]:
        self.seen.append({"method": method, "path": path, "query": query, "body": body,
                          "headers": dict(headers)})
        if self.redirect_to:
            return 302, {"Location": self.redirect_to}
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            return 401, {"code": 16, "message": "Unauthenticated: missing or bad bearer token"}
        route = (method, path)
        if route == ("GET", f"{API}/pipelines"):
            predicates = []
            if "filter" in query:
                flt = json.loads(query["filter"])
                self.check(flt, "V2beta1Filter", "filter")
                predicates = flt.get("predicates", [])
            found = [p for p in self.pipelines.values()
                     if all(p.get(pr["key"]) == pr["string_value"] for pr in predicates)]
            return 200, self.answer({"pipelines": found, "total_size": len(found)} if found else {},
                                    "V2beta1ListPipelinesResponse")
        if route == ("POST", f"{API}/pipelines/upload"):
            list(yaml.safe_load_all(body["uploadfile"]))  # a pipeline spec plus its platform spec
            pid = self.new_id("pipeline")
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": query["name"],
                                   "name": query["name"], "description": query.get("description", ""),
                                   "created_at": self.stamp()}
            self.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": self.new_id("version"),
                                   "display_name": query["name"], "created_at": self.stamp()}]
            return 200, self.answer(self.pipelines[pid], "V2beta1Pipeline")
        if route == ("POST", f"{API}/pipelines/upload_version"):
            list(yaml.safe_load_all(body["uploadfile"]))  # a pipeline spec plus its platform spec
            pid = query["pipelineid"]
            if pid not in self.pipelines:
                return 404, {"code": 5, "message": f"pipeline {pid} not found"}
            if any(v["display_name"] == query["name"] for v in self.versions[pid]):
                return 409, {"code": 6, "message": "version name already exists"}
            version = {"pipeline_id": pid, "pipeline_version_id": self.new_id("version"),
                       "display_name": query["name"], "name": query["name"],
                       "created_at": self.stamp()}
            self.versions[pid].append(version)
            return 200, self.answer(version, "V2beta1PipelineVersion")
        if method == "GET" and path.startswith(f"{API}/pipelines/") and path.endswith("/versions"):
            pid = path.split("/")[-2]
            versions = sorted(self.versions.get(pid, []), key=lambda v: v["created_at"],
                              reverse=query.get("sort_by") == "created_at desc")
            versions = versions[: int(query.get("page_size", 100))]
            return 200, self.answer({"pipeline_versions": versions}, "V2beta1ListPipelineVersionsResponse")
        if route == ("POST", f"{API}/runs"):
            self.check(body, "V2beta1Run", "run")
            ref = body["pipeline_version_reference"]
            if not any(v["pipeline_version_id"] == ref["pipeline_version_id"]
                       for v in self.versions.get(ref["pipeline_id"], [])):
                return 404, {"code": 5, "message": f"pipeline version {ref['pipeline_version_id']} not found"}
            run = dict(body, run_id=self.new_id("run"), state="PENDING", created_at=self.stamp())
            self.runs.append(run)
            return 200, self.answer(run, "V2beta1Run")
        if route == ("GET", f"{API}/runs"):
            runs = sorted(self.runs, key=lambda r: r["created_at"],
                          reverse=query.get("sort_by") == "created_at desc")
            runs = runs[: int(query.get("page_size", 100))]
            return 200, self.answer({"runs": runs, "total_size": len(self.runs)} if runs else {},
                                    "V2beta1ListRunsResponse")
        if route == ("POST", f"{API}/recurringruns"):
            self.check(body, "V2beta1RecurringRun", "recurring_run")
            rec = dict(body, recurring_run_id=self.new_id("recurring"), status="ENABLED",
                       created_at=self.stamp())
            self.recurring.append(rec)
            return 200, self.answer(rec, "V2beta1RecurringRun")
        return 404, {"code": 5, "message": f"no route {method} {path}"}

    def check(self, obj, model: str, where: str) -> None:
        self.problems += model_problems(obj, model, where)

    def answer(self, obj: dict, model: str) -> dict:
        self.check(obj, model, f"answer:{model}")
        return obj


def _parse_multipart(content_type: str, raw: bytes) -> dict[str, str]:
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    return {part.get_param("name", header="content-disposition"):
            part.get_payload(decode=True).decode() for part in msg.iter_parts()}


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _serve(self):
        stub: StubKFP = self.server.stub
        url = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        ctype = self.headers.get("Content-Type", "")
        body = None
        if ctype.startswith("multipart/form-data"):
            body = _parse_multipart(ctype, raw)
        elif raw:
            body = json.loads(raw)
        status, payload = stub.handle(self.command, url.path, query, body, self.headers)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", payload["Location"])
            payload = {}
        data = json.dumps(payload).encode()
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = _serve


@pytest.fixture
def kfp(monkeypatch):
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.stub = StubKFP()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02},
                              daemon=True)
    thread.start()
    server.stub.host = f"http://127.0.0.1:{server.server_address[1]}"
    yield server.stub
    server.shutdown()
    server.server_close()
    thread.join(5)
    assert not server.stub.problems, server.stub.problems


@pytest.fixture
def package(tmp_path):
    path = tmp_path / "conversational_rl.yaml"
    path.write_text(PIPELINE_YAML)
    return path


def test_upload_creates_pipeline_then_adds_versions(kfp, package):
    first = cluster.upload_pipeline(kfp.host, package, "conversational-rl", description="RL chat")
    assert first == {"pipeline_id": "pipeline-0001", "pipeline_version_id": "version-0002"}
    upload = next(r for r in kfp.seen if r["path"].endswith("/pipelines/upload"))
    assert upload["query"]["name"] == "conversational-rl"
    assert upload["query"]["description"] == "RL chat"
    assert set(upload["body"]) == {"uploadfile"}
    assert yaml.safe_load(upload["body"]["uploadfile"])["pipelineInfo"]["name"] == "conversational-rl"
    lookup = kfp.seen[0]
    assert json.loads(lookup["query"]["filter"]) == {"predicates": [
        {"key": "display_name", "operation": "EQUALS", "string_value": "conversational-rl"}]}

    second = cluster.upload_pipeline(kfp.host, package, "conversational-rl")
    third = cluster.upload_pipeline(kfp.host, package, "conversational-rl")
    assert second["pipeline_id"] == third["pipeline_id"] == first["pipeline_id"]
    assert len({first["pipeline_version_id"], second["pipeline_version_id"],
                third["pipeline_version_id"]}) == 3
    uploads = [r for r in kfp.seen if r["path"].endswith("/upload_version")]
    assert [u["query"]["pipelineid"] for u in uploads] == ["pipeline-0001"] * 2
    assert all(u["query"]["name"].startswith("conversational-rl-20") for u in uploads)
    assert len(kfp.pipelines) == 1 and len(kfp.versions["pipeline-0001"]) == 3


def test_upload_missing_package(kfp, tmp_path):
    with pytest.raises(ClusterError, match="not found: compile the pipeline first"):
        cluster.upload_pipeline(kfp.host, tmp_path / "nope.yaml", "x")


def test_find_pipeline(kfp, package):
    assert cluster.find_pipeline(kfp.host, "conversational-rl") is None
    ids = cluster.upload_pipeline(kfp.host, package, "conversational-rl")
    assert cluster.find_pipeline(kfp.host, "conversational-rl")["pipeline_id"] == ids["pipeline_id"]
    assert cluster.find_pipeline(kfp.host, "other") is None


def test_submit_run_body(kfp, package):
    ids = cluster.upload_pipeline(kfp.host, package, "conversational-rl")
    params = {"config": "default", "steps": 10, "promote": False, "weights": {"emotion": 0.5}}
    run = cluster.submit_run(kfp.host, ids["pipeline_id"], ids["pipeline_version_id"], params,
                             run_name="try-1", experiment_id="exp-1",
                             service_account="convrl-pipeline-runner")
    assert run["run_id"] and run["state"] == "PENDING"
    assert kfp.seen[-1]["body"] == {
        "display_name": "try-1",
        "pipeline_version_reference": {"pipeline_id": ids["pipeline_id"],
                                       "pipeline_version_id": ids["pipeline_version_id"]},
        "runtime_config": {"parameters": params},
        "experiment_id": "exp-1",
        "service_account": "convrl-pipeline-runner",
    }
    cluster.submit_run(kfp.host, ids["pipeline_id"], ids["pipeline_version_id"], {}, "try-2")
    assert "experiment_id" not in kfp.seen[-1]["body"]
    assert cluster.run_url(kfp.host, run["run_id"]).endswith(f"/#/runs/details/{run['run_id']}")


def test_submit_run_rejects_non_json_params(kfp):
    with pytest.raises(ClusterError, match="'when'.*not JSON"):
        cluster.submit_run(kfp.host, "p", "v", {"when": object()}, "bad")
    assert kfp.seen == []


def test_server_error_carries_status_and_message(kfp):
    with pytest.raises(ClusterError) as err:
        cluster.submit_run(kfp.host, "pipeline-9", "version-9", {}, "orphan")
    assert "HTTP 404" in str(err.value) and "pipeline version version-9 not found" in str(err.value)


def test_schedule_body(kfp, package):
    ids = cluster.upload_pipeline(kfp.host, package, "conversational-rl")
    rec = cluster.schedule(kfp.host, ids["pipeline_id"], ids["pipeline_version_id"], "0 0 3 * * 0",
                           {"config": "default"}, name="weekly-retrain")
    assert rec["recurring_run_id"]
    body = kfp.seen[-1]["body"]
    assert body["trigger"] == {"cron_schedule": {"cron": "0 0 3 * * 0"}}
    assert body["max_concurrency"] == "1" and body["no_catchup"] is True
    assert body["mode"] == "ENABLE" and body["display_name"] == "weekly-retrain"
    assert body["runtime_config"] == {"parameters": {"config": "default"}}
    assert body["pipeline_version_reference"]["pipeline_version_id"] == ids["pipeline_version_id"]


@pytest.mark.parametrize("cron", ["0 0 3 * * 0", "0 */15 * * * *", "30 0 2 1-7 * MON",
                                  "0 0 0 1 JAN,JUL ?", "@weekly", "@every 6h"])
def test_valid_crons(cron):
    assert cluster.validate_cron(cron) == cron


def test_five_field_cron_rejected_with_six_field_suggestion(kfp):
    with pytest.raises(ClusterError) as err:
        cluster.schedule(kfp.host, "p", "v", "0 3 * * 0", {}, name="weekly")
    msg = str(err.value)
    assert "5 fields" in msg and "seconds first" in msg and "'0 0 3 * * 0'" in msg
    assert kfp.seen == []  # rejected before any request


@pytest.mark.parametrize("cron,needle", [("0 0 25 * * *", "hour"), ("0 61 * * * *", "minute"),
                                         ("* * *", "3 fields"), ("0 0 3 * * 0/x", "step")])
def test_bad_crons(cron, needle):
    with pytest.raises(ClusterError, match=needle):
        cluster.validate_cron(cron)


def test_schedule_rejects_bad_concurrency(kfp):
    with pytest.raises(ClusterError, match="between 1 and 10"):
        cluster.schedule(kfp.host, "p", "v", "0 0 3 * * 0", {}, name="x", max_concurrency=0)


def test_list_runs_newest_first(kfp, package):
    assert cluster.list_runs(kfp.host) == []  # KFP omits the empty list
    ids = cluster.upload_pipeline(kfp.host, package, "conversational-rl")
    for i in range(3):
        cluster.submit_run(kfp.host, ids["pipeline_id"], ids["pipeline_version_id"], {}, f"run-{i}")
    rows = cluster.list_runs(kfp.host, page_size=2)
    assert [r["display_name"] for r in rows] == ["run-2", "run-1"]
    assert set(rows[0]) == {"run_id", "display_name", "state", "created_at"}
    assert kfp.seen[-1]["query"] == {"page_size": "2", "sort_by": "created_at desc"}


def test_unreachable_host():
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ClusterError) as err:
        cluster.list_runs(f"http://127.0.0.1:{port}")
    msg = str(err.value)
    assert f"cannot reach KFP at http://127.0.0.1:{port}" in msg
    assert "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80" in msg


def test_401_says_how_to_authenticate(kfp):
    kfp.token = "s3cret"
    with pytest.raises(ClusterError) as err:
        cluster.list_runs(kfp.host)
    msg = str(err.value)
    assert "authentication failed" in msg and "HTTP 401" in msg
    assert "--token" in msg and "KFP_TOKEN" in msg
    assert cluster.list_runs(kfp.host, token="s3cret") == []
    assert kfp.seen[-1]["headers"]["Authorization"] == "Bearer s3cret"


def test_token_from_env(kfp, monkeypatch):
    kfp.token = "from-env"
    monkeypatch.setenv("KFP_TOKEN", "from-env")
    assert cluster.list_runs(kfp.host) == []


def test_login_redirect_is_an_auth_error(kfp):
    kfp.redirect_to = "https://kubeflow.example.com/dex/auth?client_id=kubeflow"
    with pytest.raises(ClusterError, match=r"authentication failed \(HTTP 302.*dex/auth"):
        cluster.list_runs(kfp.host)


def test_host_without_scheme(kfp):
    assert cluster.list_runs(kfp.host.removeprefix("http://") + "/") == []


def test_empty_host():
    with pytest.raises(ClusterError, match="--host"):
        cluster.list_runs("")
