"""Data sources in object storage: copy ``s3://`` (and any fsspec URL) sources to local files before ingest.

On a cluster, ``data.sources`` may name files in a bucket, e.g.
``jsonl:s3://team-data/chats/2026-12.jsonl`` or ``dailydialog:s3://corpora/dd.zip?cap=5000``.
The ingest step calls ``localize_sources(cfg)`` first: each remote file (or folder
prefix) is copied once into ``<cache>/convrl-data/<scheme>/<bucket>/<key>``, where the
cache is ``$HF_HOME`` (the model-cache PVC when the step mounts it, so reruns and
other steps reuse it) and a copy is refreshed when the object's ETag/size/mtime
changes. The spec is rewritten to the local path with its options kept, so every
reader in ``convrl.data.sources`` works unchanged.

Credentials come the standard way for each filesystem: for ``s3://`` the AWS
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, IRSA / workload identity,
``AWS_ENDPOINT_URL`` for MinIO or GCS's S3-interoperable endpoint).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

from convrl.config import Config, ConfigError
from convrl.data.sources.base import split_query

# Source kinds whose argument is not a file location.
_NOT_FILES = {"hf", "chatterbot", "mlflow-traces"}


def _cache_root() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "convrl-data"


def _remote(arg: str) -> tuple[str, str] | None:
    """(url, query) when the source's location is a URL with a scheme other than file://."""
    location, params = split_query(arg)
    scheme, sep, _ = location.partition("://")
    if not sep or scheme in ("", "file"):
        return None
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return location, query


def _version(info: dict) -> str:
    """What changes when the object changes (S3 ETag, GCS md5/generation, else size + mtime)."""
    keys = ("ETag", "etag", "md5Hash", "generation", "size", "LastModified", "mtime", "last_modified")
    return hashlib.sha256(json.dumps({k: str(info.get(k)) for k in keys}, sort_keys=True).encode()).hexdigest()[:16]


def localize(url: str, cache: Path | None = None) -> Path:
    """Copy ``url`` (a file, or every file under a prefix) into the cache; returns the local path."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"data source {url}: no filesystem for this scheme ({exc}); s3:// works out of the "
                          "box, other schemes need their fsspec package in the image") from None
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise ConfigError(f"data source {url} does not exist (or the step's credentials cannot see it)") from None
    scheme = url.partition("://")[0]
    local = (cache or _cache_root()) / scheme / path.lstrip("/")
    stamp = local.parent / f".{local.name}.version"
    version = _version(info) if info.get("type") != "directory" else _version(
        {"listing": sorted((p, _version(i)) for p, i in fs.find(path, detail=True).items())})
    if local.exists() and stamp.exists() and stamp.read_text() == version:
        return local
    local.parent.mkdir(parents=True, exist_ok=True)
    print(f"[data] copying {url} -> {local}")
    fs.get(path, str(local), recursive=info.get("type") == "directory")
    stamp.write_text(version)
    return local


def localize_sources(cfg: Config, cache: Path | None = None) -> Config:
    """``cfg`` with every remote file source rewritten to its local copy (unchanged when none is remote)."""
    sources = []
    for spec in cfg.data.sources:
        kind, sep, arg = spec.partition(":")
        remote = _remote(arg) if sep and kind not in _NOT_FILES else None
        if remote is None:
            sources.append(spec)
            continue
        url, query = remote
        local = localize(url, cache)
        sources.append(f"{kind}:{local}" + (f"?{query}" if query else ""))
    if sources == list(cfg.data.sources):
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=sources))
