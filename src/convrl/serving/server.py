"""The serving process: models per variant, the batcher, sessions and the trace writer, behind one object.

``Server.from_config(cfg)`` resolves and loads the variants; ``create_app``
(``convrl.serving.app``) puts HTTP in front of it, and ``serve(cfg)`` runs it
under uvicorn. Tests build a ``Server`` over tiny models and run the same app.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import time

from convrl.home import convrl_home
from convrl.serving.batching import BatchEngine, GenRequest, GenResult
from convrl.serving.sessions import CHALLENGER, CHAMPION, Session, SessionStore
from convrl.serving.variants import ServeError, Variant, resolve_variants
from convrl.serving.writer import TraceWriter

log = logging.getLogger("convrl.serve")
API_KEY_ENV = "CONVRL_SERVE_API_KEY"


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    def __init__(self, cfg, variants: dict[str, Variant], api_key: str = ""):
        from convrl.rl.generation import Generator

        s = cfg.serve
        if s.threads:
            import torch

            torch.set_num_threads(s.threads)
        if not is_loopback(s.host) and not api_key:
            raise ServeError(f"serve.host={s.host} is reachable from other machines: set an API key in "
                             f"${API_KEY_ENV} (or --api-key), or bind 127.0.0.1")
        self.cfg = cfg
        self.api_key = api_key
        self.variants = variants
        self.registry_model = cfg.registry.model_name
        generators = {name: Generator(v.model_dir) for name, v in variants.items()}
        limit = min(getattr(g.model.config, "max_position_embeddings", 4096) or 4096 for g in generators.values())
        self.engine = BatchEngine(generators, max_batch_size=s.max_batch_size, max_wait_ms=s.max_wait_ms,
                                  max_prompt_tokens=max(64, min(4096, limit - s.max_tokens_limit)), seed=s.seed,
                                  no_repeat_ngram_size=s.no_repeat_ngram_size)
        self.sessions = SessionStore(s.persona, s.context_turns, s.token_budget, s.max_sessions,
                                     s.challenger_fraction, CHALLENGER in variants)
        self.writer = TraceWriter(s.experiment, s.journal or convrl_home() / "serving" / "journal.jsonl",
                                  retry_max_s=s.trace_retry_max_s)
        # "convrl-policy" follows the session's routing; "@champion"/"@challenger" pin a variant.
        self.model_ids: dict[str, str | None] = {self.registry_model: None}
        for name in variants:
            self.model_ids[f"{self.registry_model}@{name}"] = name
        self.started_at = int(time.time())

    @classmethod
    def from_config(cls, cfg, api_key: str | None = None) -> Server:
        variants = resolve_variants(cfg.serve, cfg.registry.model_name)
        for v in variants.values():
            log.info("%s: %s (%s)", v.name, v.label, v.model_dir)
        return cls(cfg, variants, api_key if api_key is not None else os.environ.get(API_KEY_ENV, ""))

    def start(self) -> None:
        self.writer.start()
        self.engine.start()
        split = (f"{self.cfg.serve.challenger_fraction:.0%} of sessions to the challenger"
                 if CHALLENGER in self.variants else "no challenger: every session on the champion")
        log.info("serving %s; %s; traces to MLflow experiment %r (buffered, journal %s)",
                 ", ".join(f"{n}={v.label}" for n, v in self.variants.items()), split,
                 self.cfg.serve.experiment, self.writer.journal)

    def stop(self) -> None:
        self.engine.stop()
        self.writer.close(timeout=30.0)

    def public_model(self, variant: str) -> str:
        return f"{self.registry_model}@{variant}"

    def record_turn(self, session: Session, variant: str, req: GenRequest, res: GenResult, turn_id: str,
                    remember: bool = True, source: str = "api") -> None:
        """Add the reply to the session's context and queue its trace (never blocks on MLflow)."""
        if remember:
            session.add_reply(res.text)
        v = self.variants[variant]
        self.writer.submit("turn", turn_id=turn_id, session_id=session.session_id, variant=variant,
                           model_name=v.model_name, model_version=v.version, persona=session.persona.persona_id,
                           messages=req.messages, reply=res.text, latency_s=res.latency_s,
                           prompt_tokens=res.prompt_tokens, completion_tokens=res.completion_tokens,
                           ttft_s=res.ttft_s, timestamp=time.time() - res.latency_s, source=source)

    def turn_known(self, turn_id: str) -> bool:
        try:
            return self.writer.knows_turn(turn_id)
        except Exception:  # noqa: BLE001 - MLflow down: accept; the writer drops it later if it is unknown
            return True

    def health(self) -> dict:
        e = self.engine
        return {"status": "ok", "variants": {n: {"model": v.model_name, "version": v.version}
                                             for n, v in self.variants.items()},
                "challenger_fraction": self.cfg.serve.challenger_fraction if CHALLENGER in self.variants else 0.0,
                "sessions": len(self.sessions), "queued": e.pending(), "decoding": e.running_rows(),
                "batches": e.batches, "mean_batch_size": round(e.rows / e.batches, 2) if e.batches else 0.0,
                **e.prefix_stats(), "traces": self.writer.stats()}


def serve(cfg, api_key: str | None = None, log_level: str = "info", access_log: bool = False) -> None:
    """Load the variants and serve until interrupted (uvicorn on serve.host:serve.port)."""
    import uvicorn

    from convrl.serving.app import create_app

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = Server.from_config(cfg, api_key)
    uvicorn.run(create_app(server), host=cfg.serve.host, port=cfg.serve.port, log_level=log_level,
                access_log=access_log, timeout_graceful_shutdown=10)


__all__ = ["API_KEY_ENV", "CHAMPION", "CHALLENGER", "Server", "ServeError", "is_loopback", "serve"]
