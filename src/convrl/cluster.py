"""Talk to a Kubeflow Pipelines cluster: upload the pipeline, start runs, schedule retraining.

A thin client over the KFP v2beta1 REST API built on ``requests`` instead of
``kfp.Client``, so every request body is explicit (and tested against
``kfp_server_api``'s field names in ``tests/test_cluster.py``) and every
failure becomes one :class:`ClusterError` whose message says what to do next.

    from convrl import cluster
    host = "http://localhost:8080"   # kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80
    ids = cluster.upload_pipeline(host, "pipelines/compiled/conversational_rl.yaml", "conversational-rl")
    run = cluster.submit_run(host, ids["pipeline_id"], ids["pipeline_version_id"],
                             {"config": "default"}, run_name="try-1")
    cluster.schedule(host, ids["pipeline_id"], ids["pipeline_version_id"], "0 0 3 * * 0",
                     {}, name="weekly-retrain")          # Sundays 03:00, seconds field first
    cluster.list_runs(host)

``host`` is the KFP UI or API endpoint (the UI proxies ``/apis/``); a path prefix
such as ``https://kubeflow.example.com/pipeline`` works too. The bearer token
comes from the ``token`` argument or ``$KFP_TOKEN``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import requests

API = "/apis/v2beta1"
TIMEOUT_S = 10
PORT_FORWARD_HINT = "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80"
# KFP's recurring-run controller caps max_concurrency to this range.
MAX_CONCURRENCY_RANGE = (1, 10)


class ClusterError(RuntimeError):
    """A KFP request failed; the message is meant for the user as is."""


# --------------------------------------------------------------------------- HTTP


def _base_url(host: str) -> str:
    host = (host or "").strip()
    if not host:
        raise ClusterError(f"no KFP host given. Pass --host, e.g. http://localhost:8080 after "
                           f"`{PORT_FORWARD_HINT}`")
    if "://" not in host:
        host = "http://" + host
    return host.rstrip("/")


def _token(token: str | None) -> str | None:
    return token or os.environ.get("KFP_TOKEN") or None


def _server_message(resp: requests.Response) -> str:
    """KFP errors are google.rpc.Status JSON ({code, message, details}); older servers use `error`."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:500]
    return str(body)[:500]


def _request(method: str, host: str, path: str, *, token: str | None = None,
             params: dict | None = None, body: dict | None = None,
             files: dict | None = None) -> dict:
    url = _base_url(host) + API + path
    headers = {"Accept": "application/json"}
    tok = _token(token)
    if tok:
        headers["Authorization"] = f"Bearer {tok}"
    try:
        # No redirects: an auth proxy (Dex, oauth2-proxy, IAP) answers an unauthenticated API
        # call with 302 to a login page, which would otherwise come back as a 200 HTML page.
        resp = requests.request(method, url, headers=headers, params=params, json=body,
                                files=files, timeout=TIMEOUT_S, allow_redirects=False)
    except requests.Timeout:
        raise ClusterError(f"cannot reach KFP at {host}: no answer within {TIMEOUT_S} s. "
                           f"Check --host / port-forward: {PORT_FORWARD_HINT}") from None
    except requests.RequestException as exc:
        reason = exc.__class__.__name__
        inner = exc.args[0] if exc.args else ""
        inner = getattr(inner, "reason", inner)  # urllib3 wraps the socket error
        raise ClusterError(f"cannot reach KFP at {host}: {reason}: {inner}. "
                           f"Check --host / port-forward: {PORT_FORWARD_HINT}") from None

    status = resp.status_code
    if status in (401, 403) or 300 <= status < 400:
        where = f" (redirected to {resp.headers.get('Location')})" if status < 400 else ""
        raise ClusterError(
            f"KFP at {host} rejected the request: authentication failed (HTTP {status}{where}: "
            f"{_server_message(resp) or 'no message'}). Pass --token or set KFP_TOKEN to a bearer "
            "token the cluster accepts (e.g. `kubectl create token <service-account> -n <namespace>`).")
    if not 200 <= status < 300:
        raise ClusterError(f"KFP {method} {API}{path} failed with HTTP {status}: {_server_message(resp)}")
    if not resp.content:
        return {}
    try:
        data = resp.json()
    except ValueError:
        raise ClusterError(f"KFP at {host} answered {method} {API}{path} with non-JSON "
                           f"({resp.headers.get('Content-Type', 'no content type')}); is --host the "
                           "KFP UI/API endpoint?") from None
    return data if isinstance(data, dict) else {"value": data}


# --------------------------------------------------------------------------- pipelines


def _name_filter(key: str, value: str) -> str:
    return json.dumps({"predicates": [{"key": key, "operation": "EQUALS", "string_value": value}]})


def find_pipeline(host: str, name: str, token: str | None = None) -> dict | None:
    """The pipeline whose display name is ``name`` (KFP's JSON object), or None."""
    # The filter is a JSON document in a query parameter (requests URL-encodes it).
    data = _request("GET", host, "/pipelines", token=token,
                    params={"filter": _name_filter("display_name", name), "page_size": 10})
    for pipeline in data.get("pipelines") or []:
        if pipeline.get("display_name") == name or pipeline.get("name") == name:
            return pipeline
    return None


def _latest_version_id(host: str, pipeline_id: str, token: str | None) -> str:
    data = _request("GET", host, f"/pipelines/{pipeline_id}/versions", token=token,
                    params={"page_size": 1, "sort_by": "created_at desc"})
    versions = data.get("pipeline_versions") or []
    if not versions:
        raise ClusterError(f"KFP created pipeline {pipeline_id} but lists no version for it")
    return versions[0]["pipeline_version_id"]


def upload_pipeline(host: str, package_path: str | os.PathLike, name: str,
                    description: str = "", token: str | None = None) -> dict:
    """Upload a compiled pipeline; a new version of ``name`` when it already exists.

    Returns ``{"pipeline_id", "pipeline_version_id"}``.
    """
    path = Path(package_path)
    if not path.is_file():
        raise ClusterError(f"pipeline package {path} not found: compile the pipeline first")
    existing = find_pipeline(host, name, token=token)
    with path.open("rb") as fh:
        files = {"uploadfile": (path.name, fh, "application/x-yaml")}
        if existing is None:
            created = _request("POST", host, "/pipelines/upload", token=token, files=files,
                               params={"name": name, "display_name": name,
                                       "description": description})
            pipeline_id = created["pipeline_id"]
            return {"pipeline_id": pipeline_id,
                    "pipeline_version_id": _latest_version_id(host, pipeline_id, token)}
        # Version names must be unique within a pipeline: a UTC timestamp also sorts.
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")[:-3]
        version_name = f"{name}-{stamp}"
        version = _request("POST", host, "/pipelines/upload_version", token=token, files=files,
                           params={"pipelineid": existing["pipeline_id"], "name": version_name,
                                   "display_name": version_name, "description": description})
    return {"pipeline_id": version.get("pipeline_id") or existing["pipeline_id"],
            "pipeline_version_id": version["pipeline_version_id"]}


# --------------------------------------------------------------------------- runs


def _run_spec(display_name: str, pipeline_id: str, version_id: str, params: dict | None,
              experiment_id: str | None, service_account: str | None) -> dict:
    params = dict(params or {})
    for key, value in params.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ClusterError(f"pipeline parameter {key!r}={value!r} is not JSON "
                               "(KFP takes strings, numbers, booleans, lists and dicts)") from None
    body: dict[str, Any] = {
        "display_name": display_name,
        "pipeline_version_reference": {"pipeline_id": pipeline_id,
                                       "pipeline_version_id": version_id},
        "runtime_config": {"parameters": params},
    }
    if experiment_id:
        body["experiment_id"] = experiment_id
    if service_account:
        body["service_account"] = service_account
    return body


def submit_run(host: str, pipeline_id: str, version_id: str, params: dict, run_name: str,
               experiment_id: str | None = None, token: str | None = None,
               service_account: str | None = None) -> dict:
    """Start one run of a pipeline version; returns KFP's run object (``run_id``, ``state``...).

    ``service_account`` runs the pods as that account (e.g. ``convrl-pipeline-runner``
    from manifests/base); KFP's default runner is used when None.
    """
    body = _run_spec(run_name, pipeline_id, version_id, params, experiment_id, service_account)
    return _request("POST", host, "/runs", token=token, body=body)


def run_url(host: str, run_id: str) -> str:
    """Where the run shows in the KFP UI."""
    return f"{_base_url(host)}/#/runs/details/{run_id}"


def list_runs(host: str, page_size: int = 20, token: str | None = None) -> list[dict]:
    """The newest runs first, as ``{run_id, display_name, state, created_at}`` rows."""
    data = _request("GET", host, "/runs", token=token,
                    params={"page_size": int(page_size), "sort_by": "created_at desc"})
    return [{"run_id": r.get("run_id"), "display_name": r.get("display_name"),
             "state": r.get("state"), "created_at": r.get("created_at")}
            for r in data.get("runs") or []]  # KFP omits empty lists


# --------------------------------------------------------------------------- schedules

_CRON_DESCRIPTORS = {"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight",
                     "@hourly"}
_CRON_FIELDS = (("second", 0, 59), ("minute", 0, 59), ("hour", 0, 23),
                ("day-of-month", 1, 31), ("month", 1, 12), ("day-of-week", 0, 6))
_CRON_NAMES = {"month": "JAN FEB MAR APR MAY JUN JUL AUG SEP OCT NOV DEC".split(),
               "day-of-week": "SUN MON TUE WED THU FRI SAT".split()}


def validate_cron(cron: str) -> str:
    """Check a KFP cron expression: 6 fields, seconds first (robfig/cron syntax).

    Returns the normalized expression; raises ClusterError with a suggested fix.
    """
    expr = " ".join((cron or "").split())
    if expr in _CRON_DESCRIPTORS or expr.startswith("@every "):
        return expr
    fields = expr.split(" ") if expr else []
    if len(fields) == 5:
        raise ClusterError(
            f"cron {cron!r} has 5 fields, but KFP uses 6 with seconds first "
            "(second minute hour day-of-month month day-of-week). "
            f"Did you mean '0 {expr}'? e.g. '0 0 3 * * 0' is every Sunday at 03:00.")
    if len(fields) != 6:
        raise ClusterError(
            f"cron {cron!r} has {len(fields)} fields; KFP expects 6: second minute hour "
            "day-of-month month day-of-week, e.g. '0 0 3 * * 0' (Sundays 03:00)")
    for text, (label, low, high) in zip(fields, _CRON_FIELDS):
        names = _CRON_NAMES.get(label, [])
        for part in text.split(","):
            base, _, step = part.partition("/")
            if step and not step.isdigit():
                raise ClusterError(f"cron {cron!r}: bad step {step!r} in the {label} field")
            if base in ("*", "?"):
                continue
            for bound in base.split("-", 1):
                if bound.upper() in names:
                    continue
                if not bound.isdigit() or not low <= int(bound) <= high:
                    raise ClusterError(f"cron {cron!r}: {bound!r} is not a valid {label} "
                                       f"({low}-{high}); fields are second minute hour "
                                       "day-of-month month day-of-week")
    return expr


def schedule(host: str, pipeline_id: str, version_id: str, cron: str, params: dict,
             name: str, max_concurrency: int = 1, no_catchup: bool = True,
             token: str | None = None, experiment_id: str | None = None,
             service_account: str | None = None) -> dict:
    """Create an enabled recurring run; returns KFP's recurring-run object.

    ``no_catchup`` skips the runs missed while the schedule was paused or the
    cluster was down, instead of starting them all at once.
    """
    expr = validate_cron(cron)
    low, high = MAX_CONCURRENCY_RANGE
    if not low <= int(max_concurrency) <= high:
        raise ClusterError(f"max_concurrency must be between {low} and {high}, got {max_concurrency}")
    body = _run_spec(name, pipeline_id, version_id, params, experiment_id, service_account)
    body.update({
        "trigger": {"cron_schedule": {"cron": expr}},
        "max_concurrency": str(int(max_concurrency)),  # int64 travels as a JSON string
        "no_catchup": bool(no_catchup),
        "mode": "ENABLE",
    })
    return _request("POST", host, "/recurringruns", token=token, body=body)

