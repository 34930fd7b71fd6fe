"""``convrl monitor`` and ``convrl ab online``: watch served traffic, decide champion vs challenger.

    convrl monitor --config demo                         score the last day against the week before, alert
    convrl monitor monitor.webhook=https://hooks... monitor.rollback=true
    convrl monitor --now 2026-12-01T00:00:00Z --out monitoring/   a past window, tables written locally
    convrl ab online --since 7d                          champion vs challenger on the last week's sessions
    convrl ab online --since 2026-11-20 --promote        and promote the challenger if the decision says so

Both read the traces ``convrl serve`` wrote to ``monitor.experiment`` (the
tracking store of ``MLFLOW_TRACKING_URI``, else the local SQLite store) and
record a run there. ``monitor`` exits 3 when it raised an alert, so a cron job
or CI step can act on it. Wired into ``convrl`` by :func:`add_commands`.
"""

from __future__ import annotations

import argparse
import json
import sys


def _when(value: str | None, what: str):
    from convrl.data.sources.base import IngestError
    from convrl.data.sources.mlflow_traces import parse_time

    try:
        return parse_time(value, what)
    except IngestError as exc:
        raise SystemExit(f"convrl: error: {exc}") from None


def cmd_monitor(args) -> int:
    from convrl.config import load_config
    from convrl.runtime import offline_defaults
    from convrl.stages.monitoring import monitor_stage

    offline_defaults()
    cfg = load_config(args.config, args.overrides)
    summary = monitor_stage(cfg, now=_when(args.now, "--now"), out_dir=args.out or None)
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
    else:
        print(f"monitored {summary['turns']} served turns in {summary['sessions']} sessions "
              f"({summary['window']['baseline_start']} .. {summary['window']['end']}); MLflow run {summary['run_id']}")
        for a in summary["alerts"]:
            print(f"ALERT {a['message']}")
        if not summary["alerts"]:
            print("no alerts")
        if summary.get("genai_evaluate"):
            print(f"mlflow.genai.evaluate: {summary['genai_evaluate']}")
        if summary["rollback"].get("done"):
            print(f"ROLLED BACK champion: v{summary['rollback']['previous']} -> v{summary['rollback']['champion']}")
    return 3 if summary["alerts"] else 0


def cmd_ab_online(args) -> int:
    from convrl.config import load_config
    from convrl.registry import RegistryError
    from convrl.runtime import offline_defaults
    from convrl.stages.monitoring import online_ab_stage

    offline_defaults()
    cfg = load_config(args.config, args.overrides)
    try:
        result = online_ab_stage(cfg, since=_when(args.since, "--since"), until=_when(args.until, "--until"),
                                 promote=args.promote, champion_version=args.champion_version,
                                 challenger_version=args.challenger_version)
    except (ValueError, RegistryError) as exc:
        print(f"convrl ab online: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2, default=str))
    else:
        print(f"champion v{result['champion_version']} ({result['champion_sessions']} sessions) vs challenger "
              f"v{result['challenger_version']} ({result['challenger_sessions']} sessions)")
        print(result["summary"])
        if result["promoted"]:
            print(f"PROMOTED: champion -> v{result['promoted']['champion']}")
        elif args.promote:
            print(f"not promoted: the decision is {result['decision']['outcome']}")
    return 0


def add_commands(sub) -> None:
    # Every `convrl` command line, `convrl data ingest mlflow-traces:...` included, gets the trace reader.
    import convrl.tracking.trace_source  # noqa: F401

    m = sub.add_parser("monitor", help="score served traffic, compare windows, alert (and optionally roll back)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    m.add_argument("--config", default="demo", help="preset name or YAML path (its monitor section applies)")
    m.add_argument("--now", default=None, help="end of the current window (ISO time; default now)")
    m.add_argument("--out", default="", help="also write daily.csv and summary.json to this folder")
    m.add_argument("--json", action="store_true", help="print the summary as JSON")
    m.add_argument("overrides", nargs="*", help="dotted overrides, e.g. monitor.window_days=2")
    m.set_defaults(fn=cmd_monitor)

    ab = sub.add_parser("ab", help="A/B analyses of served traffic")
    absub = ab.add_subparsers(dest="ab_cmd", required=True)
    on = absub.add_parser("online", help="champion vs challenger on served sessions (same rules as the offline A/B)",
                          description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    on.add_argument("--config", default="demo")
    on.add_argument("--since", default="7d", help="start of the window: 7d, 24h, or an ISO date/time")
    on.add_argument("--until", default=None, help="end of the window (default now)")
    on.add_argument("--champion-version", default=None, help="compare only this champion version's sessions")
    on.add_argument("--challenger-version", default=None, help="compare only this challenger version's sessions")
    on.add_argument("--promote", action="store_true", help="promote the challenger when the decision is promote")
    on.add_argument("--json", action="store_true")
    on.add_argument("overrides", nargs="*", help="dotted overrides, e.g. monitor.ab_primary=thumbs_up")
    on.set_defaults(fn=cmd_ab_online)
