"""``convrl upload | submit | schedule | runs``: the pipeline on a Kubeflow Pipelines cluster.

    convrl upload   --host http://localhost:8080                 # pipeline + a new version each time
    convrl submit   --host URL --config cluster rl.max_steps=800 # one run with parameters
    convrl schedule --host URL --cron "0 0 3 * * 0"              # weekly retraining, Sundays 03:00
    convrl runs     --host URL                                   # recent runs and their states

The token comes from ``--token`` or ``$KFP_TOKEN``. Parameters map onto the
pipeline's inputs: ``config_name`` and ``overrides`` (dotted settings joined by ';').
"""

from __future__ import annotations

import json
import time

from convrl import cluster
from convrl.config import load_config

PIPELINE_DISPLAY_NAME = "convrl-conversational-rl"


def _params(args) -> dict:
    load_config(args.config, args.overrides)  # fail here, not in the cluster, on a bad config
    return {"config_name": args.config, "overrides": ";".join(args.overrides), "run_name": args.run_name or ""}


def _ids(args) -> dict:
    from convrl.pipelines.conversational_rl import COMPILED, compile_pipeline

    path = compile_pipeline(COMPILED)
    return cluster.upload_pipeline(args.host, path, PIPELINE_DISPLAY_NAME,
                                   "convrl: RL fine-tuning of persona-conditioned chat models", token=args.token)


def cmd_upload(args) -> int:
    print(json.dumps(_ids(args)))
    return 0


def cmd_submit(args) -> int:
    params = _params(args)
    ids = _ids(args)
    name = args.run_name or f"convrl-{args.config}-{time.strftime('%Y%m%d-%H%M%S')}"
    run = cluster.submit_run(args.host, ids["pipeline_id"], ids["pipeline_version_id"], params, name,
                             token=args.token, service_account=args.service_account)
    rid = run.get("run_id", "")
    print(json.dumps({"run_id": rid, "url": cluster.run_url(args.host, rid) if rid else ""}))
    return 0


def cmd_schedule(args) -> int:
    params = _params(args)
    ids = _ids(args)
    out = cluster.schedule(args.host, ids["pipeline_id"], ids["pipeline_version_id"], args.cron, params,
                           args.name, max_concurrency=1, no_catchup=True, token=args.token,
                           service_account=args.service_account)
    print(json.dumps({"recurring_run_id": out.get("recurring_run_id", ""), "cron": args.cron}))
    return 0


def cmd_runs(args) -> int:
    for r in cluster.list_runs(args.host, page_size=args.limit, token=args.token):
        print(f"{r.get('created_at', ''):25s} {r.get('state', ''):12s} {r.get('run_id', ''):38s} {r.get('display_name', '')}")
    return 0


def add_commands(sub) -> None:
    def common(p, with_config: bool = True):
        p.add_argument("--host", required=True, help="KFP UI/API URL, e.g. http://localhost:8080")
        p.add_argument("--token", default=None, help="bearer token (default: $KFP_TOKEN)")
        if with_config:
            p.add_argument("--config", default="cluster")
            p.add_argument("--run-name", default="")
            p.add_argument("--service-account", default="convrl-pipeline-runner")
            p.add_argument("overrides", nargs="*")

    up = sub.add_parser("upload", help="upload the compiled pipeline (a new version each time)")
    common(up, with_config=False)
    up.set_defaults(fn=cmd_upload)
    sb = sub.add_parser("submit", help="start one pipeline run on the cluster")
    common(sb)
    sb.set_defaults(fn=cmd_submit)
    sc = sub.add_parser("schedule", help="recurring retraining (6-field cron, seconds first)")
    common(sc)
    sc.add_argument("--cron", required=True, help='e.g. "0 0 3 * * 0" = Sundays 03:00')
    sc.add_argument("--name", default="convrl-weekly-retraining")
    sc.set_defaults(fn=cmd_schedule)
    rn = sub.add_parser("runs", help="recent runs and their states")
    common(rn, with_config=False)
    rn.add_argument("--limit", type=int, default=20)
    rn.set_defaults(fn=cmd_runs)
