"""The ``convrl`` command line.

    convrl run --config demo [rl.max_steps=40 ...]   the whole pipeline locally (kfp.local)
    convrl compile --config cluster --image IMG       compile the pipeline for a cluster (docs/cluster.md)
    convrl ui                                         MLflow UI on 127.0.0.1 over the same store
    convrl chat [--model models:/convrl-policy@champion] [--persona empathetic_coach]
    convrl provision                                  convert/cache the default models once
    convrl config [--config demo] [overrides]         print the resolved config (or --help-keys)
    convrl promote --version N --reason "..."         move the champion alias by hand
    convrl rollback --reason "..."                    back to the previous champion
    convrl registry                                   aliases and tags of the policy model
    convrl upload|submit|schedule|unschedule|runs     a KFP cluster (docs/cluster.md)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from convrl.config import ConfigError, load_config
from convrl.config.eval import CHAT_NO_REPEAT_NGRAM


def _console():
    from rich.console import Console

    return Console()


def _fail(msg: str, code: int = 2) -> int:
    print(f"convrl: error: {msg}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- run

def preflight(cfg) -> None:
    """Everything that can fail before training: home, model packages, tracking store."""
    from convrl import models, tracking
    from convrl.home import ensure_home

    ensure_home()
    models.check_available(cfg.models.policy, cfg.models.encoder)
    tracking.preflight(cfg.tracking.experiment)


def cmd_run(args) -> int:
    from convrl.runtime import offline_defaults
    from convrl.stages import begin

    offline_defaults()
    cfg = load_config(args.config, args.overrides)
    preflight(cfg)
    from convrl import models, tracking
    from convrl.home import convrl_home

    con = _console()
    con.print(f"[bold]convrl[/] config [cyan]{cfg.name}[/] (hash {cfg.fingerprint()}), "
              f"tracking {tracking.tracking_uri()}")
    t0 = time.time()
    with con.status("provisioning models (first run converts SmolLM2 once, ~20 s)"):
        models.resolve_policy(cfg.models.policy)
        models.resolve_encoder(cfg.models.encoder)
    run_name = args.run_name or f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    parent = begin(cfg, run_name)
    root = convrl_home() / "runs" / run_name
    root.mkdir(parents=True, exist_ok=True)
    con.print(f"MLflow parent run [cyan]{parent}[/] ({run_name}); outputs under {root}")
    ok = run_local(cfg, run_name, parent, root)
    summary = run_summary(parent, cfg)
    print_summary(con, summary, time.time() - t0, root)
    return 0 if ok else 1


def run_local(cfg, run_name: str, parent: str, root: Path) -> bool:
    """Run the pipeline on kfp.local with the config resolved here, once.

    The resolved config is written to the run's folder and handed to the pipeline as its preset with no
    overrides, so ``start_tracking`` reads exactly what was validated and logged here instead of
    resolving preset + overrides a second time.
    """
    import yaml
    from kfp import local

    from convrl import tracking
    from convrl.pipelines.conversational_rl import conversational_rl

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root / "pipeline_root"),
               raise_on_error=False)
    os.environ["MLFLOW_TRACKING_URI"] = tracking.tracking_uri()
    resolved = root / "config.yaml"
    resolved.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    conversational_rl(config_name=str(resolved), overrides="", run_name=run_name, parent_run_id=parent)
    # The exit handler closes the parent run FINISHED only when every task succeeded.
    return tracking.get_run(parent).info.status == "FINISHED"


def run_summary(parent: str, cfg) -> dict:
    from convrl import registry, tracking

    run = tracking.get_run(parent)
    stages = {r.data.tags.get(tracking.STAGE_TAG): r.info.status for r in tracking.stage_runs(parent)}
    return {"run_id": parent, "status": run.info.status, "failed_stage": run.data.tags.get(tracking.FAILED_STAGE_TAG),
            "message": run.data.tags.get("convrl.message"), "metrics": dict(run.data.metrics),
            "decision": run.data.tags.get("convrl.decision"), "decision_summary": run.data.tags.get("convrl.decision_summary"),
            "baseline": run.data.tags.get("convrl.baseline"), "stages": stages,
            "registry": registry.status(cfg.registry.model_name), "experiment_id": run.info.experiment_id}


def print_summary(con, s: dict, seconds: float, root: Path) -> None:
    from rich.table import Table

    order = ["ingest", "validate", "reward_models", "rl_finetune", "evaluate", "ab_compare", "register", "promote"]
    t = Table(title="Stages")
    t.add_column("stage")
    t.add_column("status")
    for st in order:
        status = s["stages"].get(st, "skipped" if st == "promote" else "not run")
        t.add_row(st, status)
    con.print(t)
    m = s["metrics"]
    heads = ["composite", "quality", "personality", "engagement", "relevance", "distinct_2", "words"]
    if any(k.startswith("candidate_") for k in m):
        mt = Table(title=f"Held-out evaluation (baseline: {s.get('baseline')})")
        mt.add_column("metric")
        mt.add_column("baseline", justify="right")
        mt.add_column("candidate", justify="right")
        mt.add_column("diff", justify="right")
        for h in heads:
            b, c = m.get(f"baseline_{h}"), m.get(f"candidate_{h}")
            if b is not None and c is not None:
                mt.add_row(h, f"{b:.4f}", f"{c:.4f}", f"{c - b:+.4f}")
        con.print(mt)
    if s.get("decision"):
        con.print(f"[bold]A/B decision: {s['decision']}[/] - {s.get('decision_summary') or ''}")
    reg = s["registry"]
    con.print(f"Registry {reg.get('name')}: aliases {reg.get('aliases') or '{}'}")
    con.print(f"MLflow run {s['run_id']}: {s['status']}"
              + (f" (failed stage: {s['failed_stage']}: {s['message']})" if s.get("failed_stage") else ""))
    con.print(f"Outputs: {root}   Browse: convrl ui   Wall time: {seconds / 60:.1f} min")


# ---------------------------------------------------------------- other commands

def cmd_ui(args) -> int:
    from convrl import tracking

    uri = tracking.tracking_uri()
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1",
           "--port", str(args.port), "--workers", "1"]
    print(f"MLflow UI over {uri} at http://127.0.0.1:{args.port}  (Ctrl-C to stop)")
    os.execv(sys.executable, cmd)
    return 0


def resolve_chat_model(spec: str) -> str:
    from convrl import models, tracking

    if spec.startswith(("models:/", "runs:/")):
        return tracking.resolve_model_dir(spec)
    return models.resolve_policy(spec)


def cmd_chat(args) -> int:
    from convrl.data.personas import load_persona
    from convrl.rl.generation import Generator
    from convrl.runtime import offline_defaults

    offline_defaults()
    persona = load_persona(args.persona)
    model_dir = resolve_chat_model(args.model)
    from convrl.data.context import ConversationContextManager

    gen = Generator(model_dir, dtype=args.precision)
    ctx = ConversationContextManager(max_context_length=args.context_turns, token_budget=args.token_budget)
    lines = [args.message] if args.message else None
    print(f"Chatting with {persona.name} ({persona.persona_id}) on {args.model}. Empty line or Ctrl-D ends.")
    while True:
        if lines is not None:
            if not lines:
                break
            text = lines.pop(0)
            print(f"you> {text}")
        else:
            try:
                text = input("you> ")
            except EOFError:
                break
        if not text.strip():
            break
        ctx.add("user", text)
        reply = gen.generate([ctx.messages(persona.system_prompt())], max_new_tokens=args.max_new_tokens,
                             no_repeat_ngram_size=args.no_repeat_ngram_size)[0]
        ctx.add("assistant", reply)
        print(f"{persona.name}> {reply}", flush=True)
    return 0


def cmd_provision(args) -> int:
    from convrl import models
    from convrl.home import ensure_home

    ensure_home()
    t = time.time()
    print("policy:", models.resolve_policy(args.policy))
    print("encoder:", models.resolve_encoder(args.encoder))
    print(f"done in {time.time() - t:.1f}s")
    return 0


def cmd_config(args) -> int:
    from convrl.config import describe

    if args.keys:
        for key, default, help_ in describe():
            print(f"{key:40s} {json.dumps(default):30s} {help_}")
        return 0
    print(json.dumps(load_config(args.config, args.overrides).to_dict(), indent=2))
    return 0


def cmd_promote(args) -> int:
    from convrl import registry

    cfg = load_config(args.config)
    out = registry.promote(cfg.registry.model_name, str(args.version), args.reason, actor=os.environ.get("USER", "cli"))
    print(json.dumps(out))
    return 0


def cmd_rollback(args) -> int:
    from convrl import registry

    cfg = load_config(args.config)
    print(json.dumps(registry.rollback(cfg.registry.model_name, args.reason, actor=os.environ.get("USER", "cli"))))
    return 0


def cmd_registry(args) -> int:
    from convrl import registry

    cfg = load_config(args.config)
    print(json.dumps(registry.status(cfg.registry.model_name), indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="convrl", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="run the whole pipeline locally through kfp.local")
    r.add_argument("--config", default="demo", help="preset name (demo, tiny, cluster) or a YAML path")
    r.add_argument("--run-name", default="")
    r.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rl.max_steps=40")
    r.set_defaults(fn=cmd_run)

    u = sub.add_parser("ui", help="start the MLflow UI on 127.0.0.1")
    u.add_argument("--port", type=int, default=5000)
    u.set_defaults(fn=cmd_ui)

    ch = sub.add_parser("chat", help="chat in the terminal with a base or registered model")
    ch.add_argument("--model", default="smollm2-135m-instruct",
                    help="base model name, checkpoint dir, or models:/convrl-policy@champion")
    ch.add_argument("--persona", default="empathetic_coach", help="bundled persona name or YAML path")
    ch.add_argument("--message", default="", help="send one message and exit (non-interactive)")
    ch.add_argument("--max-new-tokens", type=int, default=96,
                    help="tokens per reply (the demo preset trains and evaluates with 96-token turns)")
    ch.add_argument("--context-turns", type=int, default=10, help="turns kept verbatim; older ones go to memory")
    ch.add_argument("--token-budget", type=int, default=1024)
    ch.add_argument("--no-repeat-ngram-size", type=int, default=CHAT_NO_REPEAT_NGRAM,
                    help="never repeat an n-gram of this many tokens of the conversation (0 = off); "
                         "evaluation decodes the same way")
    ch.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                    help="weights' dtype (auto: bf16 where the CPU/GPU has bf16 units, as eval.precision)")
    ch.set_defaults(fn=cmd_chat)

    pv = sub.add_parser("provision", help="convert and cache the default models")
    pv.add_argument("--policy", default="smollm2-135m-instruct")
    pv.add_argument("--encoder", default="all-minilm-l6-v2")
    pv.set_defaults(fn=cmd_provision)

    cf = sub.add_parser("config", help="print the resolved config")
    cf.add_argument("--config", default="demo")
    cf.add_argument("--keys", action="store_true", help="list every key with its default and help")
    cf.add_argument("overrides", nargs="*")
    cf.set_defaults(fn=cmd_config)

    pr = sub.add_parser("promote", help="point the champion alias at a version")
    pr.add_argument("--version", required=True)
    pr.add_argument("--reason", required=True)
    pr.add_argument("--config", default="demo")
    pr.set_defaults(fn=cmd_promote)

    rb = sub.add_parser("rollback", help="move champion back to the previous champion")
    rb.add_argument("--reason", required=True)
    rb.add_argument("--config", default="demo")
    rb.set_defaults(fn=cmd_rollback)

    rg = sub.add_parser("registry", help="show the policy model's aliases and tags")
    rg.add_argument("--config", default="demo")
    rg.set_defaults(fn=cmd_registry)

    from convrl import cluster_cli, data_cli, monitor_cli, serve_cli
    from convrl.meta_eval import cli as meta_eval_cli

    cluster_cli.add_commands(sub)
    data_cli.add_commands(sub)
    monitor_cli.add_commands(sub)
    meta_eval_cli.add_commands(sub)
    serve_cli.add_commands(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from convrl.data.personas import PersonaError
    from convrl.home import HomeNotWritable
    from convrl.models import ModelNotAvailable
    from convrl.cluster import ClusterError
    from convrl.tracking import TrackingUnavailable

    try:
        return args.fn(args)
    except (ConfigError, PersonaError, HomeNotWritable, ModelNotAvailable, TrackingUnavailable, ClusterError) as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
