"""``convrl serve`` and ``convrl serve-manifest``: serve the registered policy, or deploy it with KServe.

    convrl serve [--config demo] [--host 127.0.0.1] [--port 8000] [--api-key KEY] [serve.challenger_fraction=0.2 ...]
    convrl serve serve.champion=smollm2-135m-instruct serve.challenger=none      a base model, no registry needed
    convrl serve-manifest [--canary-percent 10] [--artifact-root s3://convrl-mlflow/artifacts]

``serve`` resolves ``@champion``/``@challenger`` to versions, loads them, and
serves the OpenAI-compatible API plus the arena page (http://127.0.0.1:8000/arena);
every turn is traced to MLflow (``serve.experiment``). See the README section
"Serving". Wired into ``convrl`` by :func:`add_commands`.
"""

from __future__ import annotations

import sys


def serve_config(args):
    """The config `convrl serve` runs with: the preset, its overrides, then --host/--port."""
    from convrl.config import load_config

    overrides = list(args.overrides)
    if args.host:
        overrides.append(f"serve.host={args.host}")
    if args.port:
        overrides.append(f"serve.port={args.port}")
    return load_config(args.config, overrides)


def cmd_serve(args) -> int:
    from convrl.serving.server import serve
    from convrl.serving.variants import ServeError
    from convrl.runtime import offline_defaults

    offline_defaults()
    cfg = serve_config(args)
    try:
        serve(cfg, api_key=args.api_key or None, log_level=args.log_level, access_log=args.access_log)
    except ServeError as exc:
        print(f"convrl serve: error: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_manifest(args) -> int:
    import yaml

    from convrl.config import load_config
    from convrl.serving import kserve

    cfg = load_config(args.config)
    try:
        isvc = kserve.from_registry(cfg.registry.model_name, canary_percent=args.canary_percent,
                                    artifact_root=args.artifact_root, namespace=args.namespace)
    except ValueError as exc:
        print(f"convrl serve-manifest: error: {exc}", file=sys.stderr)
        return 2
    print(yaml.safe_dump(isvc, sort_keys=False), end="")
    return 0


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="serve champion/challenger behind an OpenAI-compatible API, traced in MLflow")
    s.add_argument("--config", default="demo", help="preset name or YAML path (its serve.* section)")
    s.add_argument("--host", default="", help="bind address (default serve.host = 127.0.0.1)")
    s.add_argument("--port", type=int, default=0, help="port (default serve.port = 8000)")
    s.add_argument("--api-key", default="", help="required when binding beyond loopback (or $CONVRL_SERVE_API_KEY)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--access-log", action="store_true", help="log every request (off: one line per event)")
    s.add_argument("overrides", nargs="*", help="dotted overrides, e.g. serve.challenger_fraction=0.2")
    s.set_defaults(fn=cmd_serve)

    m = sub.add_parser("serve-manifest", help="KServe InferenceService YAML for the registered champion "
                                              "(and a canary for the challenger)")
    m.add_argument("--config", default="demo")
    m.add_argument("--canary-percent", type=int, default=0, help="share of requests for the challenger (1-99)")
    m.add_argument("--artifact-root", default="s3://convrl-mlflow/artifacts",
                   help="where the MLflow server stores artifacts (its --artifacts-destination)")
    m.add_argument("--namespace", default="kubeflow")
    m.set_defaults(fn=cmd_manifest)
