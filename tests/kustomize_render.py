"""Render the kustomize tree under manifests/ for tests: with ``kustomize``/``kubectl kustomize`` when on PATH,
else with a small Python renderer that covers exactly the kustomize features these manifests use
(``tests/test_manifests.py`` checks that both agree when a binary is present).
"""

from __future__ import annotations

import base64
import copy
import functools
import shutil
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
KUSTOMIZATIONS = {"base": MANIFESTS / "base", "dev": MANIFESTS / "overlays/dev",
                  "prod": MANIFESTS / "overlays/prod", "profile": MANIFESTS / "overlays/profile"}
# The namespace each kustomization puts everything in.
NAMESPACES = {"base": "kubeflow", "dev": "kubeflow", "prod": "kubeflow", "profile": "kubeflow-user-example-com"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

# --------------------------------------------------------------------------- rendering

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}
# Strategic-merge keys of the associative lists these manifests patch.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
              "topologySpreadConstraints": "topologyKey"}
SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "commonLabels", "resources",
             "generatorOptions", "secretGenerator", "configMapGenerator", "patches", "images"}
# Marks a RoleBinding subject whose namespace kustomize set (and may set again in an outer overlay).
_SET_BY_KUSTOMIZE = "_namespace_set_by_kustomize"


def _drop_nulls(node):
    if isinstance(node, dict):
        return {k: _drop_nulls(v) for k, v in node.items() if v is not None}
    if isinstance(node, list):
        return [_drop_nulls(v) for v in node]
    return node


def strategic_merge(base, patch):
    """Kubernetes strategic merge patch, for maps and name-keyed lists (null deletes)."""
    if not isinstance(base, dict) or not isinstance(patch, dict):
        return _drop_nulls(copy.deepcopy(patch))
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in MERGE_KEYS and isinstance(value, list) and isinstance(out.get(key), list):
            merge_key, merged = MERGE_KEYS[key], out[key]
            for item in value:
                at = next((i for i, old in enumerate(merged)
                           if old.get(merge_key) == item.get(merge_key)), None)
                if at is None:
                    merged.append(_drop_nulls(copy.deepcopy(item)))
                else:
                    merged[at] = strategic_merge(merged[at], item)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = strategic_merge(out[key], value)
        else:
            out[key] = _drop_nulls(copy.deepcopy(value))
    return out


def _pod_template_metas(obj: dict) -> list[dict]:
    spec = obj.get("spec", {})
    metas = []
    if obj["kind"] in WORKLOADS or obj["kind"] == "ReplicaSet":
        metas.append(spec.setdefault("template", {}).setdefault("metadata", {}))
    if obj["kind"] == "StatefulSet":
        metas += [t.setdefault("metadata", {}) for t in spec.get("volumeClaimTemplates", [])]
    return metas


def _add_labels(obj: dict, pairs: dict, templates: bool, selectors: bool) -> None:
    obj["metadata"].setdefault("labels", {}).update(pairs)
    if templates or selectors:
        for meta in _pod_template_metas(obj):
            meta.setdefault("labels", {}).update(pairs)
    if selectors:
        if obj["kind"] == "Service":
            obj["spec"].setdefault("selector", {}).update(pairs)
        elif obj["kind"] in WORKLOADS - {"Job"}:
            obj["spec"].setdefault("selector", {}).setdefault("matchLabels", {}).update(pairs)


def _generate(kind: str, gen: dict, options: dict) -> dict:
    unsupported = set(gen) - {"name", "literals", "envs", "type", "options"}
    if unsupported:
        raise NotImplementedError(f"{kind} generator fields {unsupported}")
    if not {**options, **gen.get("options", {})}.get("disableNameSuffixHash"):
        raise NotImplementedError("name-suffix hashes: set generatorOptions.disableNameSuffixHash")
    lines = list(gen.get("literals", []))
    for env_file in gen.get("envs", []):
        lines += [ln for ln in Path(env_file).read_text().splitlines()
                  if ln.strip() and not ln.startswith("#")]
    data = dict(line.split("=", 1) for line in lines)
    obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": gen["name"]}}
    if kind == "Secret":
        obj["type"] = gen.get("type", "Opaque")
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    obj["data"] = data
    return obj


def _render(path: Path) -> list[dict]:
    kust = yaml.safe_load((path / "kustomization.yaml").read_text())
    if set(kust) - SUPPORTED:
        raise NotImplementedError(f"{path}: kustomize fields {set(kust) - SUPPORTED}")
    objs: list[dict] = []
    for res in kust.get("resources", []):
        target = path / res
        objs += _render(target) if target.is_dir() else [
            d for d in yaml.safe_load_all(target.read_text()) if d]
    options = kust.get("generatorOptions", {})
    objs += [_generate("Secret", g, options) for g in kust.get("secretGenerator", [])]
    objs += [_generate("ConfigMap", g, options) for g in kust.get("configMapGenerator", [])]
    for entry in kust.get("patches", []):
        if set(entry) != {"path"}:
            raise NotImplementedError(f"{path}: only file strategic-merge patches, got {entry}")
        for patch in yaml.safe_load_all((path / entry["path"]).read_text()):
            hits = [i for i, o in enumerate(objs) if o["kind"] == patch["kind"]
                    and o["metadata"]["name"] == patch["metadata"]["name"]]
            assert len(hits) == 1, f"patch {entry['path']} matches {len(hits)} objects"
            objs[hits[0]] = strategic_merge(objs[hits[0]], patch)
    namespace = kust.get("namespace")
    if namespace:
        accounts = {o["metadata"]["name"] for o in objs if o["kind"] == "ServiceAccount"}
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
            # kustomize moves a binding's ServiceAccount subject along with an account it renders,
            # unless the source names a namespace itself.
            for subject in obj.get("subjects", []) if obj["kind"].endswith("RoleBinding") else []:
                if subject.get("kind") == "ServiceAccount" and subject["name"] in accounts and (
                        "namespace" not in subject or subject.get(_SET_BY_KUSTOMIZE)):
                    subject.update({"namespace": namespace, _SET_BY_KUSTOMIZE: True})
    for image in kust.get("images", []):
        for obj in objs:
            pod = obj.get("spec", {}).get("template", {}).get("spec", {})
            for c in pod.get("initContainers", []) + pod.get("containers", []):
                if c["image"].rsplit(":", 1)[0] == image["name"]:
                    c["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for entry in kust.get("labels", []):
        for obj in objs:
            _add_labels(obj, entry["pairs"], entry.get("includeTemplates", False),
                        entry.get("includeSelectors", False))
    for obj in objs:
        if kust.get("commonLabels"):
            _add_labels(obj, kust["commonLabels"], True, True)
    return objs


def render_python(path: Path) -> list[dict]:
    objs = _render(path)
    for obj in objs:
        for subject in obj.get("subjects", []):
            subject.pop(_SET_BY_KUSTOMIZE, None)
    return objs


def binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def render_binary(name: str) -> tuple[dict, ...]:
    out = subprocess.run([*binary(), str(KUSTOMIZATIONS[name])], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@functools.cache
def _rendered(name: str) -> tuple[dict, ...]:
    return render_binary(name) if binary() else tuple(render_python(KUSTOMIZATIONS[name]))


def rendered(name: str) -> list[dict]:
    return copy.deepcopy(list(_rendered(name)))


def find(objs: list[dict], kind: str, name: str) -> dict:
    hits = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(hits) == 1, f"{kind}/{name}: {len(hits)} found"
    return hits[0]


def containers(obj: dict) -> list[dict]:
    spec = obj["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}



def canonical(node):
    """Order-insensitive form: named lists sorted, Secret data decoded."""
    if isinstance(node, dict):
        out = {k: canonical(v) for k, v in node.items()}
        if out.get("kind") == "Secret" and "data" in out:
            out["data"] = {k: base64.b64decode("".join(v.split())).decode()
                           for k, v in out["data"].items()}
        return out
    if isinstance(node, list):
        items = [canonical(v) for v in node]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    return node


