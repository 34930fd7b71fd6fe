"""The upstream Kubeflow Trainer TrainJob CRDs (tests/data/trainer_crds/) as an API server would apply them.

``crd_problems(manifest, tag)`` lists schema violations and the fields the API server
would silently prune; ``prune`` returns what it would store.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import jsonschema
import yaml

CRDS = Path(__file__).parent / "data" / "trainer_crds"
# cluster.trainjob.trainer_version -> the vendored upstream CRD it is checked against (tests/data/trainer_crds/README.md)
RELEASES = {"v2.0": "v2.0.1", "v2.1": "v2.1.0", "v2.2": "v2.2.1", "v2.3": "v2.3.0"}


@functools.lru_cache(maxsize=None)
def crd_schema(tag: str) -> dict:
    crd = yaml.safe_load((CRDS / f"{tag}.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def prune(obj, schema: dict, dropped: list[str], path: str = ""):
    """What the API server stores: ``obj`` without the fields a structural schema does not know (listed in dropped)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return obj
    if isinstance(obj, dict):
        props, extra, kept = schema.get("properties"), schema.get("additionalProperties"), {}
        for key, value in obj.items():
            if path == "" and key == "metadata":
                kept[key] = value  # ObjectMeta is the API server's own, not the CRD's
            elif props is not None and key in props:
                kept[key] = prune(value, props[key], dropped, f"{path}.{key}")
            elif isinstance(extra, dict):
                kept[key] = prune(value, extra, dropped, f"{path}.{key}")
            elif props is None and extra is not None:
                kept[key] = value
            else:
                dropped.append(f"{path}.{key}")
        return kept
    if isinstance(obj, list) and isinstance(schema.get("items"), dict):
        return [prune(item, schema["items"], dropped, f"{path}[{i}]") for i, item in enumerate(obj)]
    return obj


def pruned(obj, schema: dict) -> list[str]:
    dropped: list[str] = []
    prune(obj, schema, dropped)
    return dropped


def crd_problems(manifest: dict, tag: str) -> list[str]:
    schema = crd_schema(tag)
    problems = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                for e in jsonschema.Draft7Validator(schema).iter_errors(manifest)]
    problems += [f"pruned {p}" for p in pruned(manifest, schema)]
    name = manifest["metadata"]["name"]  # the CRD's CEL rules on the name (v2.1+)
    if not re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        problems.append(f"metadata.name {name!r} is not an RFC 1035 label")
    return problems
