"""A live ``convrl serve`` on 127.0.0.1 over two tiny random models, for the serving and arena tests."""

from __future__ import annotations

import shutil
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_serve_config(policy_dir: str, tmp: Path, *extra: str):
    """Champion = the tiny policy, challenger = a copy of it under another name, half the sessions each."""
    from convrl.config import load_config

    challenger = tmp / "tiny-challenger"
    if not challenger.exists():
        shutil.copytree(policy_dir, challenger)
    return load_config("tiny", [f"serve.champion={policy_dir}", f"serve.challenger={challenger}",
                                "serve.challenger_fraction=0.5", "serve.max_new_tokens=8",
                                "serve.max_tokens_limit=64", "serve.max_body_bytes=8192", "serve.max_wait_ms=40",
                                "serve.experiment=serve-test", f"serve.journal={tmp / 'journal.jsonl'}",
                                "serve.temperature=0.7", *extra])


@contextmanager
def live_server(cfg, api_key: str = ""):
    """(base_url, Server) with uvicorn running in a thread; stopped (and traces flushed) on exit."""
    import uvicorn

    from convrl.serving.app import create_app
    from convrl.serving.server import Server

    server = Server.from_config(cfg, api_key=api_key)
    port = free_port()
    uv = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning",
                                       access_log=False))
    thread = threading.Thread(target=uv.run, daemon=True)
    thread.start()
    deadline = time.time() + 60
    while not uv.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        uv.should_exit = True
        thread.join(timeout=60)
