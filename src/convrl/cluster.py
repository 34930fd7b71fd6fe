"""Talk to a Kubeflow Pipelines cluster through ``kfp.Client``: publish the pipeline, start runs, schedule retraining.

``kfp.Client`` does the work (upload, versions, experiments, runs, recurring runs, listing, waiting,
tokens, cookies, CA certificates, in-cluster service-account credentials); this module adds on top of it:

* a preflight that turns a login page, a wrong host or a refused token into one :class:`ClusterError`
  saying what to do, before ``kfp.Client`` would retry or parse an HTML page as JSON;
* multi-user Kubeflow: every call carries the profile namespace and an experiment
  (the server refuses runs without one there), and refusals name the fix;
* publishing that is idempotent: the pipeline version is named after the package's content hash, so
  submitting the same package twice reuses it; each pipeline (training, monitoring) has its own name;
* schedules that are idempotent by name (``schedule`` twice keeps one recurring run, and never replaces
  another pipeline's) and can be stopped (``unschedule``); 6-field cron checked with suggestions.

    from convrl import cluster
    kfp = cluster.connect("http://localhost:8080")            # port-forward to ml-pipeline-ui
    ids = cluster.publish(kfp, "pipelines/compiled/conversational_rl.yaml")
    run = cluster.submit(kfp, ids, {"config_name": "cluster"}, run_name="try-1")
    cluster.schedule(kfp, ids, "0 0 3 * * 0", {}, name="weekly-retrain")   # Sundays 03:00
    cluster.unschedule(kfp, "weekly-retrain")
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import requests

from convrl.config.cluster import PIPELINE_NAME
from convrl.pipelines import cron as kfp_cron

__all__ = ["ClusterError", "Connection", "connect", "publish", "submit", "wait", "list_runs", "schedule",
           "unschedule", "list_schedules", "validate_cron"]

API = "/apis/v2beta1"
TIMEOUT_S = 10
PORT_FORWARD_HINT = "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80"
IN_CLUSTER_HOST = "http://ml-pipeline.kubeflow.svc.cluster.local:8888"
# Projected token KFP's own pods use (audience pipelines.kubeflow.org); kfp.Client reads it.
SA_TOKEN_PATH = Path("/var/run/secrets/kubeflow/pipelines/token")
DEFAULT_EXPERIMENT = "convrl"
# KFP's recurring-run controller caps max_concurrency to this range.
MAX_CONCURRENCY_RANGE = (1, 10)


class ClusterError(RuntimeError):
    """A KFP request failed; the message is meant for the user as is."""


def validate_cron(expr: str) -> str:
    """``convrl.pipelines.cron.validate_cron``, failing as a ClusterError (the CLI's user-facing error)."""
    try:
        return kfp_cron.validate_cron(expr)
    except kfp_cron.CronError as exc:
        raise ClusterError(str(exc)) from None


@dataclass
class Connection:
    """A ``kfp.Client`` plus what every call needs: the profile namespace and whether KFP is multi-user."""
    client: Any
    host: str
    namespace: str
    multi_user: bool
    experiment: str = DEFAULT_EXPERIMENT


# --------------------------------------------------------------------------- connecting


def _base_url(host: str) -> str:
    host = (host or "").strip()
    if "://" not in host:
        host = "http://" + host
    return host.rstrip("/")


def _server_message(resp: requests.Response) -> str:
    """KFP errors are google.rpc.Status JSON ({code, message, details}); older servers use `error`."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip()[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or body)[:500]
    return str(body)[:500]


def _auth_hint(multi_user: bool | None = None) -> str:
    hint = ("Pass --token or set KFP_TOKEN to a bearer token the cluster accepts (e.g. `kubectl -n <profile> "
            "create token default-editor` behind Kubeflow's login), or --cookie "
            "'oauth2_proxy_kubeflow=...' (Kubeflow 1.9+; 'authservice_session=...' before) copied from a logged-in "
            "browser")
    if multi_user:
        hint += "; in multi-user Kubeflow the identity also needs edit access to the profile namespace (--namespace)"
    return hint


def preflight(host: str, token: str | None = None, cookie: str | None = None,
              ssl_ca_cert: str | None = None, verify_ssl: bool | None = None) -> dict:
    """GET the healthz endpoint without following redirects; returns KFP's answer (``multi_user``, version).

    An auth proxy (Dex/oauth2-proxy, IAP) answers an unauthenticated API call with a
    302 to its login page; ``kfp.Client`` would follow it and fail parsing HTML.
    """
    url = _base_url(host) + API + "/healthz"
    headers = {"Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if cookie:
        headers["Cookie"] = cookie
    verify: Any = ssl_ca_cert or (verify_ssl if verify_ssl is not None else True)
    try:
        resp = requests.get(url, headers=headers, timeout=TIMEOUT_S, allow_redirects=False, verify=verify)
    except requests.Timeout:
        raise ClusterError(f"cannot reach KFP at {host}: no answer within {TIMEOUT_S} s. "
                           f"Check --host / port-forward: {PORT_FORWARD_HINT}") from None
    except requests.RequestException as exc:
        inner = exc.args[0] if exc.args else ""
        inner = getattr(inner, "reason", inner)  # urllib3 wraps the socket error
        raise ClusterError(f"cannot reach KFP at {host}: {exc.__class__.__name__}: {inner}. "
                           f"Check --host / port-forward: {PORT_FORWARD_HINT}") from None
    status = resp.status_code
    if 300 <= status < 400 or status in (401, 403):
        where = f", redirected to {resp.headers.get('Location')}: a login page answered" if status < 400 else ""
        raise ClusterError(f"KFP at {host} rejected the request: authentication failed (HTTP {status}{where}: "
                           f"{_server_message(resp) if status >= 400 else 'no API answer'}). {_auth_hint()}")
    if status == 404:
        raise ClusterError(f"{url} answered 404: --host must be the KFP UI or API endpoint (with its path "
                           f"prefix, e.g. https://kubeflow.example.com/pipeline), not {host}")
    if not 200 <= status < 300:
        raise ClusterError(f"KFP healthz at {host} failed with HTTP {status}: {_server_message(resp)}")
    try:
        info = resp.json()
    except ValueError:
        raise ClusterError(f"KFP at {host} answered with non-JSON ({resp.headers.get('Content-Type', 'no type')}): "
                           "is --host the KFP UI/API endpoint, and is a login page in front of it?") from None
    return info if isinstance(info, dict) else {}


def _quiet():
    """kfp.Client prints links to stdout; the CLI's stdout is JSON, so send them to stderr."""
    return contextlib.redirect_stdout(sys.stderr)


def connect(host: str | None = None, namespace: str = "", token: str | None = None, cookie: str | None = None,
            ssl_ca_cert: str | None = None, verify_ssl: bool | None = None,
            experiment: str = DEFAULT_EXPERIMENT) -> Connection:
    """A checked ``kfp.Client``. ``host`` None inside a pod: the in-cluster API with the pod's KFP token.

    ``token`` defaults to ``$KFP_TOKEN``; ``namespace`` is the Kubeflow profile
    (required when the server is multi-user, ignored otherwise).
    """
    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    token = token or os.environ.get("KFP_TOKEN") or None
    credentials = None
    if not host:
        if not SA_TOKEN_PATH.exists():
            raise ClusterError(f"no KFP host given. Pass --host, e.g. http://localhost:8080 after "
                               f"`{PORT_FORWARD_HINT}`")
        host, credentials = IN_CLUSTER_HOST, ServiceAccountTokenVolumeCredentials(str(SA_TOKEN_PATH))
        token = token or SA_TOKEN_PATH.read_text().strip()
    info = preflight(host, token, cookie, ssl_ca_cert, verify_ssl)
    multi_user = bool(info.get("multi_user"))
    if multi_user and not namespace:
        raise ClusterError(f"KFP at {host} is multi-user Kubeflow: pass --namespace <your profile namespace> "
                           "(runs, experiments and schedules live in a profile)")
    with warnings.catch_warnings(), _quiet():
        warnings.simplefilter("ignore", FutureWarning)  # "only works with KFP v2.0.0-beta.2 and later"
        client = kfp.Client(host=_base_url(host), existing_token=None if credentials else token,
                            credentials=credentials, cookies=cookie, ssl_ca_cert=ssl_ca_cert, verify_ssl=verify_ssl,
                            namespace=namespace if multi_user else "kubeflow")
    return Connection(client, _base_url(host), namespace if multi_user else "", multi_user, experiment)


def _call(conn: Connection, what: str, fn: Callable, *args, **kwargs):
    """Run one kfp.Client call; API refusals become a ClusterError that says what to do."""
    import kfp_server_api
    import urllib3

    try:
        with _quiet():
            return fn(*args, **kwargs)
    except kfp_server_api.ApiException as exc:
        status, message = exc.status, _api_message(exc)
        if status in (401, 403):
            raise ClusterError(f"KFP refused to {what} (HTTP {status}: {message}). "
                               f"{_auth_hint(conn.multi_user)}") from None
        hint = ""
        if "multi-user" in message:
            hint = " This KFP is multi-user: pass --namespace <your profile namespace>."
        raise ClusterError(f"KFP could not {what} (HTTP {status}: {message}).{hint}") from None
    except urllib3.exceptions.HTTPError as exc:
        raise ClusterError(f"cannot reach KFP at {conn.host} to {what}: {exc}. "
                           f"Check --host / port-forward: {PORT_FORWARD_HINT}") from None


def _api_message(exc) -> str:
    try:
        body = json.loads(exc.body or "")
    except (TypeError, ValueError):
        return str(exc.body or exc.reason or "")[:300]
    return str(body.get("message") or body.get("error") or body)[:500] if isinstance(body, dict) else str(body)


def _filter(**equals: str) -> str:
    return json.dumps({"predicates": [{"key": key, "operation": "EQUALS", "string_value": value}
                                      for key, value in equals.items()]})


# --------------------------------------------------------------------------- pipelines


def package_digest(package_path: str | os.PathLike) -> str:
    """Content hash of a compiled pipeline: the version name, so identical packages share one version."""
    path = Path(package_path)
    if not path.is_file():
        raise ClusterError(f"pipeline package {path} not found: run `convrl compile --config <preset> --image "
                           "<your image>` first")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


def publish(conn: Connection, package_path: str | os.PathLike, name: str = PIPELINE_NAME,
            description: str = "") -> dict:
    """Upload the package as pipeline ``name``, or as a new version only when its content is new.

    In multi-user Kubeflow the pipeline lives in the profile namespace: writing shared
    pipelines needs rights in KFP's own namespace, which profile users lack, and
    servers can be set to require a namespace for every pipeline.
    Returns ``{"pipeline_id", "pipeline_version_id", "version_name", "uploaded"}``.
    """
    c = conn.client
    version_name = f"{name}-{package_digest(package_path)}"
    found = _call(conn, f"look up pipeline {name!r}", c.list_pipelines, page_size=1, filter=_filter(display_name=name),
                  namespace=conn.namespace or None)
    pipeline_id = found.pipelines[0].pipeline_id if found.pipelines else None
    if pipeline_id is None:
        # Its first version is named after the pipeline; the content-named version below is the one runs use.
        pipeline_id = _call(conn, f"upload pipeline {name!r}", c.upload_pipeline, str(package_path), name,
                            description, namespace=conn.namespace or None).pipeline_id
    else:
        existing = _call(conn, "list pipeline versions", c.list_pipeline_versions, pipeline_id, page_size=1,
                         filter=_filter(display_name=version_name))
        if existing.pipeline_versions:
            return {"pipeline_id": pipeline_id, "pipeline_version_id": existing.pipeline_versions[0].pipeline_version_id,
                    "version_name": version_name, "uploaded": False}
    uploaded = _call(conn, "upload a pipeline version", c.upload_pipeline_version, str(package_path),
                     version_name, pipeline_id=pipeline_id, description=description)
    return {"pipeline_id": pipeline_id, "pipeline_version_id": uploaded.pipeline_version_id,
            "version_name": version_name, "uploaded": True}


# --------------------------------------------------------------------------- runs


def experiment_id(conn: Connection) -> str:
    """The id of ``conn.experiment`` in the profile namespace, created when missing (multi-user requires one)."""
    exp = _call(conn, f"get or create experiment {conn.experiment!r}", conn.client.create_experiment,
                conn.experiment, namespace=conn.namespace or None)
    return exp.experiment_id


def _check_params(params: dict | None) -> dict:
    params = dict(params or {})
    for key, value in params.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ClusterError(f"pipeline parameter {key!r}={value!r} is not JSON "
                               "(KFP takes strings, numbers, booleans, lists and dicts)") from None
    return params


def submit(conn: Connection, ids: dict | None, params: dict, run_name: str, service_account: str | None = None,
           package: str | os.PathLike | None = None) -> dict:
    """Start one run of a published version (``ids``), or of ``package`` itself (the spec travels with the run:
    how a run with caching off starts); returns ``{"run_id", "url"}``."""
    source = ({"pipeline_package_path": str(package)} if package else
              {"pipeline_id": ids["pipeline_id"], "version_id": ids["pipeline_version_id"]})
    run = _call(conn, f"start run {run_name!r}", conn.client.run_pipeline, experiment_id(conn), run_name,
                params=_check_params(params), service_account=service_account or None, **source)
    return {"run_id": run.run_id, "url": run_url(conn, run.run_id)}


def run_url(conn: Connection, run_id: str) -> str:
    """Where the run shows in the KFP UI."""
    return f"{conn.host}/#/runs/details/{run_id}"


def wait(conn: Connection, run_id: str, timeout_s: float) -> str:
    """Block until the run ends; returns its final state (SUCCEEDED, FAILED, ...)."""
    try:
        run = _call(conn, f"wait for run {run_id}", conn.client.wait_for_run_completion, run_id, timeout_s)
    except TimeoutError:
        raise ClusterError(f"run {run_id} did not finish within {timeout_s:.0f} s; it keeps running: "
                           f"{run_url(conn, run_id)}") from None
    return str(run.state)


def list_runs(conn: Connection, page_size: int = 20) -> list[dict]:
    """The newest runs first, as ``{run_id, display_name, state, created_at}`` rows."""
    data = _call(conn, "list runs", conn.client.list_runs, page_size=int(page_size), sort_by="created_at desc",
                 namespace=conn.namespace or None)
    return [{"run_id": r.run_id, "display_name": r.display_name, "state": r.state,
             "created_at": str(r.created_at or "")} for r in data.runs or []]  # KFP omits empty lists


# --------------------------------------------------------------------------- schedules

def find_schedules(conn: Connection, name: str) -> list:
    """Recurring runs called ``name`` in the experiment (kfp_server_api objects)."""
    found, token = [], ""
    exp = experiment_id(conn)
    while True:
        page = _call(conn, "list recurring runs", conn.client.list_recurring_runs, page_token=token, page_size=100,
                     experiment_id=exp, filter=_filter(display_name=name))
        found += [r for r in page.recurring_runs or [] if r.display_name == name]
        token = page.next_page_token or ""
        if not token:
            return found


def _same_schedule(rr, ids: dict, cron: str, params: dict, max_concurrency: int, service_account: str) -> bool:
    ref = rr.pipeline_version_reference
    return (ref is not None and ref.pipeline_version_id == ids["pipeline_version_id"]
            and rr.trigger is not None and rr.trigger.cron_schedule is not None
            and rr.trigger.cron_schedule.cron == cron and str(rr.mode) == "ENABLE"
            and dict((rr.runtime_config.parameters if rr.runtime_config else None) or {}) == params
            and int(rr.max_concurrency or 1) == int(max_concurrency)
            and (rr.service_account or "") == (service_account or ""))


def schedule(conn: Connection, ids: dict, cron: str, params: dict, name: str, max_concurrency: int = 1,
             no_catchup: bool = True, service_account: str | None = None) -> dict:
    """Make ``name`` the one enabled recurring run of this version, cron and parameters.

    Idempotent by name: an identical schedule is kept, a different one of the same name
    is replaced, one of another pipeline is refused. ``no_catchup`` skips missed runs.
    Returns ``{"recurring_run_id", "action": "created" | "unchanged" | "replaced"}``.
    """
    expr = validate_cron(cron)
    low, high = MAX_CONCURRENCY_RANGE
    if not low <= int(max_concurrency) <= high:
        raise ClusterError(f"max_concurrency must be between {low} and {high}, got {max_concurrency}")
    params = _check_params(params)
    existing = find_schedules(conn, name)
    if any(r.pipeline_version_reference and r.pipeline_version_reference.pipeline_id != ids["pipeline_id"]
           for r in existing):  # e.g. the monitoring package scheduled under the retraining schedule's name
        raise ClusterError(f"recurring run {name!r} runs another pipeline: pick another --name, or stop it first "
                           f"(`convrl unschedule --name {name}`)")
    same = [r for r in existing if _same_schedule(r, ids, expr, params, max_concurrency, service_account or "")]
    if len(same) == 1 and len(existing) == 1:
        return {"recurring_run_id": same[0].recurring_run_id, "action": "unchanged"}
    for old in existing:
        _call(conn, f"delete recurring run {old.recurring_run_id}", conn.client.delete_recurring_run,
              old.recurring_run_id)
    created = _call(conn, f"create recurring run {name!r}", conn.client.create_recurring_run, experiment_id(conn),
                    name, cron_expression=expr, max_concurrency=int(max_concurrency), no_catchup=bool(no_catchup),
                    params=params, pipeline_id=ids["pipeline_id"], version_id=ids["pipeline_version_id"],
                    service_account=service_account or None)
    return {"recurring_run_id": created.recurring_run_id, "action": "replaced" if existing else "created"}


def unschedule(conn: Connection, name: str, delete: bool = True) -> list[str]:
    """Stop the recurring runs called ``name``: delete them, or only disable them (``delete=False``).

    Returns the ids acted on; raises when there is none (a typo should not look like success).
    """
    existing = find_schedules(conn, name)
    if not existing:
        raise ClusterError(f"no recurring run called {name!r} in experiment {conn.experiment!r}"
                           + (f" of namespace {conn.namespace!r}" if conn.namespace else "")
                           + "; `convrl schedules` lists them")
    for rr in existing:
        if delete:
            _call(conn, f"delete recurring run {rr.recurring_run_id}", conn.client.delete_recurring_run,
                  rr.recurring_run_id)
        else:
            _call(conn, f"disable recurring run {rr.recurring_run_id}", conn.client.disable_recurring_run,
                  rr.recurring_run_id)
    return [rr.recurring_run_id for rr in existing]


def list_schedules(conn: Connection) -> list[dict]:
    """Recurring runs in the experiment: ``{recurring_run_id, display_name, cron, mode}`` rows."""
    page = _call(conn, "list recurring runs", conn.client.list_recurring_runs, page_size=100,
                 experiment_id=experiment_id(conn))
    return [{"recurring_run_id": r.recurring_run_id, "display_name": r.display_name, "mode": str(r.mode),
             "cron": r.trigger.cron_schedule.cron if r.trigger and r.trigger.cron_schedule else ""}
            for r in page.recurring_runs or []]
