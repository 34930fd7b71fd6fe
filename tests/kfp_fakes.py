"""Stand-ins for KFP: Artifact/Metrics objects for ``.python_func`` tests, and a loopback KFP API server."""

import json


class _Art:
    def __init__(self, path):
        self.path = str(path)
        self.metadata = {}


class _Metrics(_Art):
    def __init__(self, path):
        super().__init__(path)
        self.logged = {}

    def log_metric(self, k, v):
        self.logged[k] = v


# --------------------------------------------------------------------------- a loopback KFP v2beta1 API server

class StubKFP:
    """An in-memory KFP API server that behaves like the v2beta1 API the real ``kfp.Client`` talks to.

    Modelled on kubeflow/pipelines backend/src/apiserver (2.5 .. 2.15): name
    conflicts are 409, unknown ids 404, and in multi-user mode runs and recurring
    runs need an experiment, experiments a namespace, and every call an identity
    allowed in that namespace (403 otherwise). Request bodies and canned answers
    are checked against ``kfp_server_api``'s models, so a misspelt field fails.
    """

    def __init__(self, multi_user: bool = False):
        import itertools

        self.multi_user = multi_user
        self.ids = itertools.count(1)
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}
        self.experiments: dict[str, dict] = {}
        self.runs: list[dict] = []
        self.recurring: dict[str, dict] = {}
        self.namespace_of: dict[str, str] = {}  # run / recurring run id -> namespace (from its experiment)
        self.seen: list[dict] = []           # every request: method, path, query, body, headers
        self.problems: list[str] = []        # schema violations found in requests or answers
        self.users: dict[str, set[str]] = {}  # token -> namespaces it may write (multi-user)
        self.token: str | None = None        # single-user: when set, requests need "Bearer <token>"
        self.redirect_to: str | None = None  # when set, answer 302 like an auth proxy

    def new_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self.ids):04d}"

    def stamp(self) -> str:
        return f"2026-01-01T00:{len(self.seen) // 60:02d}:{len(self.seen) % 60:02d}Z"

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def error(status: int, message: str) -> tuple[int, dict]:
        codes = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6}
        return status, {"error": message, "code": codes.get(status, 2), "message": message, "details": []}

    def check(self, obj, model: str, where: str) -> None:
        self.problems += model_problems(obj, model, where)

    def answer(self, obj: dict, model: str) -> tuple[int, dict]:
        self.check(obj, model, f"answer:{model}")
        return 200, obj

    def matches(self, item: dict, query: dict) -> bool:
        if "filter" not in query:
            return True
        flt = json.loads(query["filter"])
        # The server reads filters with protojson, which takes proto names and their camelCase (kfp.Client's).
        for pr in flt.get("predicates", []):
            if "stringValue" in pr:
                pr["string_value"] = pr.pop("stringValue")
            if pr.get("operation") == 1:  # enums travel as names or numbers; 1 is EQUALS
                pr["operation"] = "EQUALS"
        self.check(flt, "V2beta1Filter", "filter")
        for pr in flt.get("predicates", []):
            if pr.get("operation") != "EQUALS":
                raise AssertionError(f"stub supports EQUALS filters only: {pr}")
            if item.get(pr["key"]) != pr["string_value"]:
                return False
        return True

    def page(self, items: list[dict], query: dict, key: str, model: str) -> tuple[int, dict]:
        items = [i for i in items if self.matches(i, query)]
        if query.get("sort_by") == "created_at desc":
            items = sorted(items, key=lambda i: i["created_at"], reverse=True)
        start = int(query.get("page_token") or 0)
        size = int(query.get("page_size") or 10)
        out: dict = {key: items[start:start + size], "total_size": len(items)} if items else {}  # KFP omits []
        if start + size < len(items):
            out["next_page_token"] = str(start + size)
        return self.answer(out, model)

    def authorize(self, headers, namespace: str) -> tuple[int, dict] | None:
        """Multi-user: the bearer token's identity must be allowed in ``namespace`` (SubjectAccessReview)."""
        if not self.multi_user:
            return None
        token = (headers.get("Authorization") or "").removeprefix("Bearer ")
        if token not in self.users:
            return self.error(401, "Unauthenticated: Request header error: there is no user identity header")
        if not namespace:
            return None
        if namespace not in self.users[token]:
            return self.error(403, f"PermissionDenied: User 'user-{token}' is not authorized with reason: "
                                   f"(request: namespace {namespace})")
        return None

    def experiment_namespace(self, body: dict, kind: str) -> tuple[str, str] | tuple[int, dict]:
        """resource_manager.GetValidExperimentNamespacePair: multi-user needs an experiment id."""
        exp_id = body.get("experiment_id") or ""
        if self.multi_user and not exp_id:
            return self.error(400, f"Failed to create a {kind} due to invalid experimentId and namespace combination: "
                                   "Invalid input error: Experiment id can not be empty in multi-user mode")
        if not exp_id:
            default = next((e for e in self.experiments.values() if e["display_name"] == "Default"), None)
            if default is None:
                default = self.add_experiment("Default", "")
            exp_id = default["experiment_id"]
        if exp_id not in self.experiments:
            return self.error(404, f"Failed to fetch namespace for experiment {exp_id}: NotFoundError")
        return exp_id, self.experiments[exp_id].get("namespace", "")

    def creation_scope(self, body: dict, headers, kind: str, empty_name: str):
        """Checks a new run or recurring run shares: a name, an experiment/namespace, access, the version."""
        if not body.get("display_name"):
            return self.error(400, f"{empty_name}. Please specify a valid name")
        pair = self.experiment_namespace(body, kind)
        if isinstance(pair[0], int):
            return pair
        denied = self.authorize(headers, pair[1])
        if denied:
            return denied
        if body.get("pipeline_spec"):  # a run may carry its spec instead of naming a version
            spec = body["pipeline_spec"].get("pipeline_spec", body["pipeline_spec"])
            if not spec.get("root") or not spec.get("pipelineInfo"):
                return self.error(400, f"Failed to create a {kind}: the pipeline spec has no root or pipelineInfo")
            return pair
        if not self.version_exists(body.get("pipeline_version_reference")):
            return self.error(404, "Pipeline version not found")
        return pair

    def add_experiment(self, name: str, namespace: str) -> dict:
        exp = {"experiment_id": self.new_id("experiment"), "display_name": name, "created_at": self.stamp(),
               "storage_state": "AVAILABLE"}
        if namespace:
            exp["namespace"] = namespace
        self.experiments[exp["experiment_id"]] = exp
        return exp

    def version_exists(self, ref: dict | None) -> bool:
        ref = ref or {}
        return any(v["pipeline_version_id"] == ref.get("pipeline_version_id")
                   for v in self.versions.get(ref.get("pipeline_id", ""), []))

    # ------------------------------------------------------------------ routes

    def handle(self, method: str, path: str, query: dict, body, headers) -> tuple[int, dict]:
        self.seen.append({"method": method, "path": path, "query": query, "body": body,
                          "headers": {k.lower(): v for k, v in headers.items()}})
        if self.redirect_to:
            return 302, {"Location": self.redirect_to}
        if self.token and headers.get("Authorization") != f"Bearer {self.token}":
            return self.error(401, "Unauthenticated: missing or bad bearer token")
        if path == f"{API}/healthz":
            return self.answer({"multi_user": self.multi_user, "pipeline_store": "database"},
                               "V2beta1GetHealthzResponse")
        denied = self.authorize(headers, "")
        if denied:
            return denied
        parts = path[len(API) + 1:].split("/")
        handler = getattr(self, f"{method.lower()}_{parts[0]}", None)
        if handler is None:
            return self.error(404, f"no route {method} {path}")
        return handler(parts[1:], query, body, headers)

    def get_pipelines(self, rest, query, body, headers):
        if not rest:  # a namespace lists that profile's pipelines; none lists the shared ones
            ns = query.get("namespace", "")
            items = [p for p in self.pipelines.values() if p.get("namespace", "") == ns or not self.multi_user]
            return self.page(items, query, "pipelines", "V2beta1ListPipelinesResponse")
        if len(rest) == 2 and rest[1] == "versions":
            if rest[0] not in self.pipelines:
                return self.error(404, f"Pipeline {rest[0]} not found")
            return self.page(self.versions[rest[0]], query, "pipeline_versions", "V2beta1ListPipelineVersionsResponse")
        return self.error(404, f"no route GET pipelines/{'/'.join(rest)}")

    def post_pipelines(self, rest, query, body, headers):
        import yaml

        docs = list(yaml.safe_load_all(body["uploadfile"]))  # a pipeline spec plus its platform spec
        if not docs or docs[0].get("schemaVersion") != "2.1.0":
            return self.error(400, "Invalid input error: KFP only supports schema version 2.1.0")
        if rest == ["upload"]:
            name = query.get("display_name") or query["name"]
            if any(p["display_name"] == name for p in self.pipelines.values()):
                return self.error(409, f"Failed to create a pipeline due to name conflict: {name}")
            ns = query.get("namespace", "") if self.multi_user else ""
            if self.multi_user and not ns:
                # A multi-user server with pipelines namespaced (validation/namespace.go, KFP 2.15+).
                return self.error(400, "Invalid input error: Namespace is required for pipeline operations")
            denied = self.authorize(headers, ns)
            if denied:
                return denied
            pid = self.new_id("pipeline")
            self.pipelines[pid] = {"pipeline_id": pid, "display_name": name, "name": query.get("name", name),
                                   "description": query.get("description", ""), "created_at": self.stamp()}
            if ns:
                self.pipelines[pid]["namespace"] = ns
            self.versions[pid] = [{"pipeline_id": pid, "pipeline_version_id": self.new_id("version"),
                                   "display_name": name, "name": name, "created_at": self.stamp()}]
            return self.answer(self.pipelines[pid], "V2beta1Pipeline")
        if rest == ["upload_version"]:
            pid, name = query.get("pipelineid", ""), query.get("display_name") or query["name"]
            if pid not in self.pipelines:
                return self.error(404, f"Pipeline {pid} not found")
            if any(v["display_name"] == name for v in self.versions[pid]):
                return self.error(409, f"Failed to create a pipeline version due to name conflict: {name}")
            version = {"pipeline_id": pid, "pipeline_version_id": self.new_id("version"), "display_name": name,
                       "name": name, "created_at": self.stamp(), "description": query.get("description", "")}
            self.versions[pid].append(version)
            return self.answer(version, "V2beta1PipelineVersion")
        return self.error(404, f"no route POST pipelines/{'/'.join(rest)}")

    def get_experiments(self, rest, query, body, headers):
        ns = query.get("namespace", "")
        if self.multi_user and not ns:
            return self.error(400, "Failed to list experiments: Invalid input error: An experiment cannot have an "
                                   "empty namespace in multi-user mode")
        denied = self.authorize(headers, ns)
        if denied:
            return denied
        items = [e for e in self.experiments.values() if e.get("namespace", "") == ns or not self.multi_user]
        return self.page(items, query, "experiments", "V2beta1ListExperimentsResponse")

    def post_experiments(self, rest, query, body, headers):
        self.check(body, "V2beta1Experiment", "experiment")
        ns = body.get("namespace") or ""
        if self.multi_user and not ns:
            return self.error(400, "Invalid input error: An experiment cannot have an empty namespace in "
                                   "multi-user mode")
        denied = self.authorize(headers, ns)
        if denied:
            return denied
        if any(e["display_name"] == body["display_name"] and e.get("namespace", "") == ns
               for e in self.experiments.values()):
            return self.error(409, f"Failed to create an experiment due to name conflict: {body['display_name']}")
        return self.answer(self.add_experiment(body["display_name"], ns if self.multi_user else ""),
                           "V2beta1Experiment")

    def post_runs(self, rest, query, body, headers):
        self.check(body, "V2beta1Run", "run")
        scope = self.creation_scope(body, headers, "run", "The run name is empty")
        if isinstance(scope[0], int):
            return scope
        exp_id, ns = scope
        run = dict(body, run_id=self.new_id("run"), experiment_id=exp_id, state="PENDING", created_at=self.stamp())
        self.namespace_of[run["run_id"]] = ns
        self.runs.append(run)
        return self.answer(run, "V2beta1Run")

    def _listing_scope(self, query, headers, kind: str):
        ns = query.get("namespace", "")
        exp = query.get("experiment_id", "")
        if exp:
            if exp not in self.experiments:
                return self.error(404, f"experiment {exp} not found")
            ns = self.experiments[exp].get("namespace", "")
        elif self.multi_user and not ns:
            return self.error(400, f"Failed to list {kind}: Invalid input error: A {kind[:-1]} cannot have an "
                                   "empty namespace in multi-user mode")
        return self.authorize(headers, ns) or (exp, ns)

    def get_runs(self, rest, query, body, headers):
        if rest:
            run = next((r for r in self.runs if r["run_id"] == rest[0]), None)
            return self.answer(run, "V2beta1Run") if run else self.error(404, f"Run {rest[0]} not found")
        scope = self._listing_scope(query, headers, "runs")
        if isinstance(scope[0], int):
            return scope
        exp, ns = scope
        items = [r for r in self.runs if (not exp or r["experiment_id"] == exp) and self.namespace_of[r["run_id"]] == ns]
        return self.page(items, query, "runs", "V2beta1ListRunsResponse")

    def post_recurringruns(self, rest, query, body, headers):
        if rest:
            rid, _, action = rest[0].partition(":")
            if rid not in self.recurring:
                return self.error(404, f"Recurring run {rid} not found")
            self.recurring[rid]["mode"] = {"disable": "DISABLE", "enable": "ENABLE"}[action]
            self.recurring[rid]["status"] = self.recurring[rid]["mode"] + "D"
            return 200, {}
        if isinstance(body.get("max_concurrency"), int):  # protojson takes int64 as a number or a string
            body["max_concurrency"] = str(body["max_concurrency"])
        self.check(body, "V2beta1RecurringRun", "recurring_run")
        if not 1 <= int(body.get("max_concurrency") or 1) <= 10:
            return self.error(400, "max concurrency of the recurring run should be in the range of [1,10]")
        scope = self.creation_scope(body, headers, "recurring run", "Recurring run name is empty")
        if isinstance(scope[0], int):
            return scope
        exp_id, ns = scope
        rec = dict(body, recurring_run_id=self.new_id("recurring"), experiment_id=exp_id,
                   status="ENABLED" if body.get("mode") == "ENABLE" else "DISABLED", created_at=self.stamp())
        if ns:
            rec["namespace"] = ns
        self.recurring[rec["recurring_run_id"]] = rec
        return self.answer(rec, "V2beta1RecurringRun")

    def get_recurringruns(self, rest, query, body, headers):
        scope = self._listing_scope(query, headers, "recurring runs")
        if isinstance(scope[0], int):
            return scope
        exp, ns = scope
        items = [r for r in self.recurring.values()
                 if (not exp or r["experiment_id"] == exp) and r.get("namespace", "") == ns]
        return self.page(items, query, "recurringRuns", "V2beta1ListRecurringRunsResponse")

    def delete_recurringruns(self, rest, query, body, headers):
        if rest[0] not in self.recurring:
            return self.error(404, f"Recurring run {rest[0]} not found")
        del self.recurring[rest[0]]
        return 200, {}


API = "/apis/v2beta1"


def model_problems(obj, model: str, where: str = "$") -> list[str]:
    """Keys or enum values in ``obj`` that the kfp_server_api model ``model`` does not define."""
    import kfp_server_api.models as kfp_models

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


def serve(stub: StubKFP):
    """Serve ``stub`` on 127.0.0.1 in a thread; returns (base URL, stop function)."""
    import email.parser
    import email.policy
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from urllib.parse import parse_qs, urlsplit

    def parse_multipart(content_type: str, raw: bytes) -> dict[str, str]:
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
            b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
        return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True).decode()
                for part in msg.iter_parts()}

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep pytest output clean
            pass

        def _serve(self):
            url = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(url.query).items()}
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            ctype = self.headers.get("Content-Type", "")
            body = parse_multipart(ctype, raw) if ctype.startswith("multipart/form-data") else (
                json.loads(raw) if raw else None)
            status, payload = stub.handle(self.command, url.path, query, body, self.headers)
            self.send_response(status)
            if status == 302:
                self.send_header("Location", payload["Location"])
                data = b"<html>login</html>"
                self.send_header("Content-Type", "text/html")
            else:
                data = json.dumps(payload).encode()
                self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()

    def stop():
        server.shutdown()
        server.server_close()
        thread.join(5)

    return f"http://127.0.0.1:{server.server_address[1]}", stop
