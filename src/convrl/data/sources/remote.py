"""Data sources in object storage: copy ``s3://``, ``gs://`` (any fsspec URL) sources to local files before ingest.

On a cluster, ``data.sources`` may name files in a bucket, e.g.
``jsonl:s3://team-data/chats/2026-12.jsonl``, ``jsonl:gs://team-data/chats/`` (a prefix: every
object under it) or ``dailydialog:gs://corpora/dd.zip?cap=5000``. The ingest stage calls
``localize_sources(cfg)`` first: each remote file (or folder prefix) is copied once into
``<cache>/convrl-data/<scheme>/<bucket>/<key>``, where the cache is ``$HF_HOME`` (the
model-cache PVC when the step mounts it, so reruns and other steps reuse it) and a copy
is refreshed when the object's version (ETag, GCS generation/md5, else size + mtime)
changes. The spec is rewritten to the local path with its options kept, so every reader
in ``convrl.data.sources`` works unchanged. ``object_version`` is also what the pipeline's
data fingerprint (``convrl.data.fingerprint``) reads, without downloading anything.

Credentials come the standard way for each filesystem: for ``s3://`` (s3fs) the AWS
environment (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, IRSA, ``AWS_ENDPOINT_URL`` for
MinIO); for ``gs://`` (gcsfs) Google's application-default credentials (GKE Workload
Identity, ``GOOGLE_APPLICATION_CREDENTIALS``) or a service-account key in the environment
variable ``FSSPEC_GS_TOKEN`` (fsspec's per-protocol settings), which a Kubernetes Secret can hold.
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
NOT_FILES = {"hf", "chatterbot", "mlflow-traces"}
_VERSION_KEYS = ("ETag", "etag", "md5Hash", "generation", "size", "LastModified", "mtime", "last_modified", "updated")


def _cache_root() -> Path:
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface") / "convrl-data"


def remote_url(location: str) -> bool:
    """Whether a source location is a URL with a scheme other than file:// (s3://, gs://, memory://, ...)."""
    scheme, sep, _ = location.partition("://")
    return bool(sep) and scheme not in ("", "file")


def _remote(arg: str) -> tuple[str, str] | None:
    """(url, query) when the source's location is remote."""
    location, params = split_query(arg)
    if not remote_url(location):
        return None
    return location, "&".join(f"{k}={v}" for k, v in params.items())


def _version(info: dict) -> str:
    return hashlib.sha256(json.dumps({k: str(info.get(k)) for k in _VERSION_KEYS}, sort_keys=True)
                          .encode()).hexdigest()[:16]


def open_url(url: str):
    """(filesystem, path, info) of a remote object or prefix; ConfigError names what is missing."""
    import fsspec

    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        raise ConfigError(f"data source {url}: no filesystem for this scheme ({exc}); s3:// and gs:// work out of "
                          "the box, other schemes need their fsspec package in the image") from None
    try:
        info = fs.info(path)
    except FileNotFoundError:
        raise ConfigError(f"data source {url} does not exist (or the step's credentials cannot see it)") from None
    return fs, path, info


def object_version(fs, path: str, info: dict) -> str:
    """What changes when the object (or any object under a prefix) changes, read from metadata only."""
    if info.get("type") != "directory":
        return _version(info)
    return _version({"listing": sorted((p, _version(i)) for p, i in fs.find(path, detail=True).items())})


def localize(url: str, cache: Path | None = None) -> Path:
    """Copy ``url`` (a file, or every file under a prefix) into the cache; returns the local path."""
    fs, path, info = open_url(url)
    scheme = url.partition("://")[0]
    local = (cache or _cache_root()) / scheme / path.lstrip("/")
    stamp = local.parent / f".{local.name}.version"
    version = object_version(fs, path, info)
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
        remote = _remote(arg) if sep and kind not in NOT_FILES else None
        if remote is None:
            sources.append(spec)
            continue
        url, query = remote
        local = localize(url, cache)
        sources.append(f"{kind}:{local}" + (f"?{query}" if query else ""))
    if sources == list(cfg.data.sources):
        return cfg
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, sources=sources))
