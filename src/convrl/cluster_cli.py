"""``convrl compile | upload | submit | schedule | unschedule | schedules | runs``: the pipeline on Kubeflow Pipelines.

    convrl compile --config cluster --image ghcr.io/<you>/convrl:0.1.0 --output build/convrl.yaml
    convrl upload   --host URL --package build/convrl.yaml         # a new version only when the content is new
    convrl submit   --host URL --package build/convrl.yaml rl.max_steps=800 [--wait 7200] [--no-cache]
    convrl schedule --host URL --package build/convrl.yaml --cron "0 0 3 * * 0"   # idempotent by --name
    convrl unschedule --host URL --name convrl-weekly-retraining    # stop it (--disable-only keeps it, paused)
    convrl schedules --host URL ; convrl runs --host URL
    convrl compile --pipeline monitoring --image ghcr.io/<you>/convrl:0.1.0 --output build/monitoring.yaml
    convrl schedule --host URL --package build/monitoring.yaml --cron "0 0 6 * * *" --name nightly-monitor

The package is used exactly as compiled: its pipeline (training, or monitoring, published
as its own pipeline), its image, its cluster settings and its default preset
(``config_name``). Multi-user Kubeflow needs ``--namespace`` (your profile) and a
credential: ``--token``/``$KFP_TOKEN`` or ``--cookie``. Parameters map onto the
pipeline's inputs: ``config_name`` (``--config``, default the one the package was
compiled with), ``overrides`` (dotted settings joined by ';'), ``run_name`` where the
pipeline takes it, and any other input it declares with ``--param KEY=VALUE``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from convrl import cluster
from convrl.config import load_config
from convrl.config.cluster import DEFAULT_IMAGE
from convrl.pipelines.packages import PIPELINES, package_info, pipeline_module, run_parameters


def cmd_compile(args) -> int:
    pipeline = pipeline_module(args.pipeline)
    cfg = load_config(args.config)
    image = args.image or cfg.cluster.image
    # Runs load their preset by name inside the image, where a local YAML path does not exist.
    preset = Path(args.config).stem if Path(args.config).suffix in (".yaml", ".yml") else args.config
    if preset != args.config:
        print(f"note: runs will load preset {preset!r} inside the image: put {args.config} in src/convrl/configs/ "
              f"before building it, or start runs with --config <a preset the image has>", file=sys.stderr)
    print(pipeline.compile_pipeline(cfg.cluster, image, args.output or pipeline.COMPILED, config_name=preset))
    if image == DEFAULT_IMAGE:
        print(f"note: compiled with the default image {image}; pass --image with the tag you pushed",
              file=sys.stderr)
    return 0


def _connect(args) -> cluster.Connection:
    return cluster.connect(args.host, namespace=args.namespace, token=args.token, cookie=args.cookie,
                           ssl_ca_cert=args.ca_cert, verify_ssl=False if args.insecure else None,
                           experiment=args.experiment)


def _publish(args, conn: cluster.Connection, info: dict) -> dict:
    if DEFAULT_IMAGE in info["images"]:
        print(f"warning: {args.package} runs on the default image {DEFAULT_IMAGE}; unless you pushed that tag, "
              "recompile with `convrl compile --image <your image>`", file=sys.stderr)
    # Each pipeline under its own name: a monitoring package must not become a version of the training pipeline.
    return cluster.publish(conn, args.package, info["name"], pipeline_module(info["pipeline"]).DESCRIPTION)


def _params(args, info: dict) -> dict:
    """The run parameters the package's pipeline declares (an undeclared --param is an error)."""
    config_name = args.config or info["config_name"] or "cluster"
    params = run_parameters(info, {"config_name": config_name, "overrides": ";".join(args.overrides),
                                   "run_name": args.run_name or ""}, args.param)
    if args.check_config:
        load_config(config_name, args.overrides)  # fail here, not in the cluster, on a bad config
    return params


def cmd_upload(args) -> int:
    info = package_info(args.package)
    ids = _publish(args, _connect(args), info)
    print(json.dumps({**ids, "pipeline": info["name"]}))
    return 0


def cmd_submit(args) -> int:
    import tempfile

    from convrl.pipelines.caching import without_caching

    info = package_info(args.package)
    params = _params(args, info)  # before anything reaches the cluster
    conn = _connect(args)
    # --no-cache: a run of the package itself with every task uncached (a version run cannot switch caching off).
    ids = None if args.no_cache else _publish(args, conn, info)
    prefix = "convrl" if info["pipeline"] == "training" else info["name"]
    name = args.run_name or f"{prefix}-{Path(params['config_name']).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    with tempfile.TemporaryDirectory() as tmp:
        package = without_caching(args.package, Path(tmp) / "convrl-nocache.yaml") if args.no_cache else None
        out = cluster.submit(conn, ids, params, name, service_account=args.service_account, package=package)
    print(json.dumps(out), flush=True)
    if args.wait:
        state = cluster.wait(conn, out["run_id"], args.wait)
        print(json.dumps({"run_id": out["run_id"], "state": state}))
        return 0 if state.upper() == "SUCCEEDED" else 1
    return 0


def cmd_schedule(args) -> int:
    info = package_info(args.package)
    params = _params(args, info)
    conn = _connect(args)
    name = args.name or pipeline_module(info["pipeline"]).SCHEDULE_NAME
    out = cluster.schedule(conn, _publish(args, conn, info), args.cron, params, name,
                           max_concurrency=args.max_concurrency, no_catchup=True,
                           service_account=args.service_account)
    print(json.dumps({**out, "name": name, "cron": args.cron}))
    return 0


def cmd_unschedule(args) -> int:
    ids = cluster.unschedule(_connect(args), args.name, delete=not args.disable_only)
    print(json.dumps({"name": args.name, "disabled" if args.disable_only else "deleted": ids}))
    return 0


def cmd_schedules(args) -> int:
    for r in cluster.list_schedules(_connect(args)):
        print(f"{r['mode']:8s} {r['cron']:16s} {r['recurring_run_id']:38s} {r['display_name']}")
    return 0


def cmd_runs(args) -> int:
    for r in cluster.list_runs(_connect(args), page_size=args.limit):
        print(f"{r['created_at']:25s} {str(r['state']):12s} {r['run_id']:38s} {r['display_name']}")
    return 0


def _connection_args(p) -> None:
    p.add_argument("--host", default=os.environ.get("KFP_HOST", ""),
                   help="KFP UI/API URL, e.g. http://localhost:8080 (default $KFP_HOST; inside a pod: in-cluster)")
    p.add_argument("--namespace", default=os.environ.get("KFP_NAMESPACE", ""),
                   help="Kubeflow profile namespace (multi-user Kubeflow; default $KFP_NAMESPACE)")
    p.add_argument("--token", default=None, help="bearer token (default $KFP_TOKEN)")
    p.add_argument("--cookie", default=None, help="session cookie from a logged-in browser: 'oauth2_proxy_kubeflow=...' "
                                                        "(Kubeflow 1.9+) or 'authservice_session=...' (older)")
    p.add_argument("--ca-cert", default=None, help="CA bundle for a TLS endpoint with a private CA")
    p.add_argument("--insecure", action="store_true", help="skip TLS verification (test clusters only)")
    p.add_argument("--experiment", default=cluster.DEFAULT_EXPERIMENT, help="KFP experiment runs go into")


def _run_args(p) -> None:
    from convrl.pipelines.conversational_rl import COMPILED

    p.add_argument("--package", default=str(COMPILED), help="compiled pipeline (convrl compile --output)")
    p.add_argument("--config", default="", help="preset for the run (default: the one the package was compiled with)")
    p.add_argument("--no-check-config", dest="check_config", action="store_false",
                   help="do not load the preset locally first (a YAML path that exists only inside the image)")
    p.add_argument("--run-name", default="")
    p.add_argument("--service-account", default="convrl-pipeline-runner",
                   help="Kubernetes service account the run's pods use (multi-user Kubeflow: default-editor)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="another run parameter the package's pipeline declares, typed as declared (repeatable), "
                        "e.g. run_online_ab=true (monitoring) or rl_max_steps=800 (training)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides, e.g. rl.max_steps=200")


def add_commands(sub) -> None:
    from convrl.pipelines.conversational_rl import COMPILED, SCHEDULE_NAME

    c = sub.add_parser("compile", help="compile the KFP pipeline for a cluster")
    c.add_argument("--pipeline", choices=list(PIPELINES), default="training",
                   help="training (ingest .. promote) or monitoring (score served traces, alert, online A/B)")
    c.add_argument("--config", default="cluster", help="preset whose `cluster` section sets resources (and the "
                                                        "default preset of runs)")
    c.add_argument("--image", default="", help="project image every step runs on (default: cluster.image)")
    c.add_argument("--output", default="", help=f"default: the pipeline's package in {COMPILED.parent}")
    c.set_defaults(fn=cmd_compile)
    up = sub.add_parser("upload", help="upload the compiled pipeline (a new version only when it changed)")
    _connection_args(up)
    up.add_argument("--package", default=str(COMPILED))
    up.set_defaults(fn=cmd_upload)
    sb = sub.add_parser("submit", help="start one pipeline run on the cluster")
    _connection_args(sb)
    _run_args(sb)
    sb.add_argument("--wait", type=float, default=0, help="wait up to this many seconds; exit 1 unless it succeeds")
    sb.add_argument("--no-cache", action="store_true",
                    help="recompute every step (ingest, validate and reward models are otherwise reused from an "
                         "earlier run with the same data and settings); the run carries its own spec, not a version")
    sb.set_defaults(fn=cmd_submit)
    sc = sub.add_parser("schedule", help="recurring retraining (6-field cron, seconds first), idempotent by --name")
    _connection_args(sc)
    _run_args(sc)
    sc.add_argument("--cron", required=True, help='e.g. "0 0 3 * * 0" = Sundays 03:00')
    sc.add_argument("--name", default="", help=f"the schedule's name (default {SCHEDULE_NAME}; for a monitoring "
                                                f"package {pipeline_module('monitoring').SCHEDULE_NAME})")
    sc.add_argument("--max-concurrency", type=int, default=1)
    sc.set_defaults(fn=cmd_schedule)
    us = sub.add_parser("unschedule", help="stop a recurring run by name")
    _connection_args(us)
    us.add_argument("--name", default=SCHEDULE_NAME)
    us.add_argument("--disable-only", action="store_true", help="pause it instead of deleting it")
    us.set_defaults(fn=cmd_unschedule)
    ls = sub.add_parser("schedules", help="recurring runs in the experiment")
    _connection_args(ls)
    ls.set_defaults(fn=cmd_schedules)
    rn = sub.add_parser("runs", help="recent runs and their states")
    _connection_args(rn)
    rn.add_argument("--limit", type=int, default=20)
    rn.set_defaults(fn=cmd_runs)
