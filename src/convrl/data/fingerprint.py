"""Fingerprints of the data that config settings point at: what a cached pipeline step's key is made of.

KFP caches a step on its inputs, and ``data.sources: [jsonl:/data/chats.jsonl]`` names a path, not
its contents: new data behind the same path would hit the cache. The pipeline's small, uncached
``fingerprint data`` step therefore hashes what the sources hold and hands the digest to the cached
ingest step as an input (likewise for the rating sets the reward section names)::

    sources_fingerprint(["chatterbot:english", "jsonl:s3://team/chats.jsonl?cap=5"])   # -> hex digest
    settings_fingerprint({"rewards": {"safety_data": "/data/toxichat", ...}})             # paths in a section
    ingest_fingerprint({"data": {"sources": [...], "personas": ["/cards/coach.yaml"]}})  # both, for ingest

What stands for each source's data:

* a local file or folder: the sha256 of its bytes (every file under a folder, with relative paths);
* an ``s3://``/``gs://`` (any fsspec) URL: the object's version (ETag, GCS generation/md5, size, mtime;
  every object under a prefix), read from metadata, nothing downloaded;
* ``chatterbot:LANG``: the packaged corpus files;
* ``hf:NAME`` (a hub dataset): its current commit sha, where the hub answers;
* ``mlflow-traces:`` (served conversations keep arriving), a hub or bucket that cannot be asked, or a
  read error: a fresh random value, so that step is never served from the cache.

A missing local path has a stable fingerprint: ingest fails on it the same way every time, and the
fingerprint changes as soon as the file appears.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from importlib import resources
from pathlib import Path
from typing import Any

from convrl.data.sources.base import split_query
from convrl.data.sources.remote import object_version, open_url, remote_url

_CHUNK = 1 << 20


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _fresh(why: str) -> str:
    print(f"[fingerprint] {why}: the steps that read it will run again (no cache hit)")
    return "uncached-" + uuid.uuid4().hex


def _file_sha(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def tree_fingerprint(path: Path) -> str:
    """sha256 over a file's bytes, or over every file under a folder with its relative path."""
    from tqdm.auto import tqdm

    if path.is_file():
        return _file_sha(path)
    files = sorted(p for p in path.rglob("*") if p.is_file())
    return _digest([(str(p.relative_to(path)), _file_sha(p))
                    for p in tqdm(files, desc=f"hashing {path}", unit="file", disable=len(files) < 100)])


def location_fingerprint(location: str) -> str:
    """A local path's content hash, a remote URL's object version, ``missing`` for an absent local path."""
    if remote_url(location):
        try:
            fs, path, info = open_url(location)
            return object_version(fs, path, info)
        except Exception as exc:  # noqa: BLE001 - credentials, network, missing: ingest reports it; never cache
            return _fresh(f"{location}: {type(exc).__name__}: {str(exc)[:200]}")
    path = Path(location).expanduser()
    return tree_fingerprint(path) if path.exists() else "missing"


def _hub_dataset(name: str) -> str:
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return _fresh(f"hf:{name}: the hub is offline, its revision cannot be checked")
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name).sha or _fresh(f"hf:{name}: the hub gave no revision")
    except Exception as exc:  # noqa: BLE001 - unreachable hub or no access: ingest reports it
        return _fresh(f"hf:{name}: {type(exc).__name__}")


def source_fingerprint(spec: str) -> str:
    """What stands for the data of one ``data.sources`` spec (see the module docstring)."""
    kind, _, arg = spec.partition(":")
    location, _ = split_query(arg)
    if kind == "mlflow-traces":
        return _fresh(f"{spec}: served conversations keep arriving")
    if kind == "chatterbot":
        corpus = Path(str(resources.files("chatterbot_corpus") / "data" / (location or "english")))
        return tree_fingerprint(corpus) if corpus.is_dir() else "missing"
    if kind == "hf" and not remote_url(location) and not Path(location).expanduser().exists():
        return _hub_dataset(location)
    return location_fingerprint(location)


def sources_fingerprint(specs: list[str]) -> str:
    """One digest over every source spec and its data."""
    return _digest([[spec, source_fingerprint(spec)] for spec in specs])


def _named_locations(value: Any) -> list[str]:
    """Strings in a config section that name a file: a URL, or a path with a separator that exists here."""
    if isinstance(value, dict):
        return [loc for v in value.values() for loc in _named_locations(v)]
    if isinstance(value, list):
        return [loc for v in value for loc in _named_locations(v)]
    if isinstance(value, str) and value:
        location, _ = split_query(value)
        if remote_url(location) or (os.sep in location and Path(location).expanduser().exists()):
            return [location]
    return []


def ingest_fingerprint(sections: dict) -> str:
    """The ingest step's data: what every ``data.sources`` spec reads, and the files the section names
    elsewhere (persona cards given as YAML paths). ``sections``: ``{"data": {...}}``."""
    return _digest([sources_fingerprint(sections["data"]["sources"]), settings_fingerprint(sections)])


def settings_fingerprint(sections: dict) -> str:
    """One digest over the data behind every file a config section names (rating sets, local checkpoints).

    Hub ids (``sentence-transformers/all-MiniLM-L6-v2``) are not files here and are keyed by name only.
    """
    return _digest(sorted([loc, location_fingerprint(loc)] for loc in set(_named_locations(sections))))
