"""Reuse a model's evaluation replies when nothing that decides them has changed.

Evaluation decodes greedily (``convrl.eval.evaluate``) and self-play draws its
simulated users from fixed seeds (``convrl.eval.selfplay``), so a model's
replies are a function of its weights, the prompts, the decoding settings, the
decoding code and the numeric environment (torch build, thread count, device:
float reductions change with the thread count, and with them greedy choices).
A retraining run whose baseline is the unchanged champion, or a rerun of a
failed evaluate step, would decode those replies again: about half of the
demo's evaluation minutes (README "Does it learn?": decoding 182 s, self-play
124 s for two models). The cache keys each model's replies on all of the above
and returns them instead; anything else misses::

    cache = ReplyCache(convrl_home() / "cache" / "eval")
    replies = cache.lookup("replies", model_dir, settings)   # None on a miss
    if replies is None:
        replies = decode(...)
        cache.store("replies", model_dir, settings, replies)

``eval.cache: false`` turns it off (``ReplyCache(None)``). Scores are never
cached: heads and judges always run, on the candidate and the baseline together.
An unreadable entry is a miss (and is overwritten), never an error.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import sys
from pathlib import Path

log = logging.getLogger(__name__)

# The modules whose code decides what a model says in evaluation: a change to any of them invalidates the cache.
DECODING_MODULES = ("convrl.rl.generation", "convrl.rl.decoding", "convrl.rl.packed_linear", "convrl.eval.selfplay",
                    "convrl.data.usersim", "convrl.data.context", "convrl.eval.recall", "convrl.eval.reply_cache")
# Files that make up a model for decoding; anything else in the folder (READMEs, MLflow metadata) is ignored.
_MODEL_SUFFIXES = (".safetensors", ".bin", ".json", ".jinja", ".model", ".txt")
_fingerprints: dict[tuple, str] = {}


def model_fingerprint(model_dir: str | Path) -> str:
    """SHA-256 over the model's weight, config and tokenizer files (names and contents)."""
    root = Path(model_dir)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in _MODEL_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"{root}: no model files (*.safetensors, config.json, tokenizer files) to fingerprint")
    # Hashing 0.5 GB of weights takes about a second; a run asks for the same model several times.
    stamp = (str(root.resolve()),) + tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files)
    if stamp not in _fingerprints:
        h = hashlib.sha256()
        for p in files:
            h.update(str(p.relative_to(root)).encode() + b"\0")
            with p.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 22), b""):
                    h.update(block)
        _fingerprints[stamp] = h.hexdigest()
    return _fingerprints[stamp]


def environment() -> dict:
    """What besides the inputs changes greedy decoding: library versions, threads, device, decoding code."""
    import importlib

    import torch
    import transformers

    code = hashlib.sha256()
    for name in DECODING_MODULES:
        code.update(inspect.getsource(importlib.import_module(name)).encode())
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": sys.version.split()[0],
            "threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu",
            "code": code.hexdigest()}


class ReplyCache:
    """Replies (or self-play transcripts) per (kind, model, settings, environment); ``root=None`` = off."""

    def __init__(self, root: str | Path | None):
        self.root = Path(root) if root else None
        self.hits: list[str] = []  # "kind:model_dir" of every hit, for the stage's log and MLflow tags

    @property
    def enabled(self) -> bool:
        return self.root is not None

    def _path(self, kind: str, model_dir: str, settings: dict) -> Path:
        key = json.dumps({"kind": kind, "model": model_fingerprint(model_dir), "settings": settings,
                          "env": environment()}, sort_keys=True, default=str)
        return self.root / kind / f"{hashlib.sha256(key.encode()).hexdigest()}.json"

    def lookup(self, kind: str, model_dir: str, settings: dict):
        if not self.enabled:
            return None
        path = self._path(kind, model_dir, settings)
        if not path.is_file():
            return None
        try:
            value = json.loads(path.read_text(encoding="utf-8"))["value"]
        except (OSError, ValueError, KeyError) as exc:
            log.warning("evaluation cache entry %s unreadable (%s): decoding again", path, exc)
            return None
        self.hits.append(f"{kind}:{model_dir}")
        log.info("%s of %s from the evaluation cache (%s)", kind, model_dir, path.name[:12])
        return value

    def store(self, kind: str, model_dir: str, settings: dict, value) -> None:
        if not self.enabled:
            return
        path = self._path(kind, model_dir, settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        # Written whole, then renamed: a killed run never leaves half an entry that a later run would read.
        # No default=: a value JSON cannot hold exactly fails here rather than reading back as strings.
        tmp.write_text(json.dumps({"model_dir": str(model_dir), "value": value}), encoding="utf-8")
        os.replace(tmp, path)
