"""manifests/serving/convrl-serve: ``convrl serve`` itself as a KServe custom predictor, so cluster traffic is traced.

The kustomization is rendered like the other manifests (the Python renderer, checked against
``kubectl kustomize`` / ``kustomize build`` when one is on PATH), validated against KServe's own
InferenceService CRD (``tests/test_serve_kserve.py``), and its container is read back the way the pod
runs it: the command line goes through convrl's own argument parser and ``load_config``, the probes
are requested from the real app, and the journal path must sit on a mounted volume.
"""

from __future__ import annotations

import subprocess
from pathlib import PurePosixPath
from types import SimpleNamespace

import pytest
import yaml

from tests.kustomize_render import MANIFESTS, ROOT, binary, canonical, env_of, render_python
from tests.test_manifests import URL_WITH_PASSWORD, credential_leaks
from tests.test_serve_kserve import problems

CONVRL_SERVE = MANIFESTS / "serving" / "convrl-serve"


def isvc() -> dict:
    objs = render_python(CONVRL_SERVE)
    assert [o["kind"] for o in objs] == ["InferenceService"], "no Secret or anything else: secrets are referenced"
    return objs[0]


def container(obj: dict | None = None) -> dict:
    (c,) = (obj or isvc())["spec"]["predictor"]["containers"]
    return c


def serve_args(c: dict):
    """The container's command line as `convrl` parses it."""
    from convrl.cli import build_parser

    assert c["command"][0] == "convrl"
    return build_parser().parse_args([*c["command"][1:], *c["args"]])


def serve_config(c: dict):
    """What `convrl serve` builds from that command line."""
    from convrl import serve_cli

    return serve_cli.serve_config(serve_args(c))


def test_renders_and_validates_against_the_kserve_crd():
    obj = isvc()
    assert obj["metadata"]["namespace"] == "kubeflow"
    assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "convrl"
    assert problems(obj) == [], problems(obj)
    assert obj["metadata"]["name"] != "convrl-policy"  # not the Hugging Face runtime's InferenceService
    if binary():
        out = subprocess.run([*binary(), str(CONVRL_SERVE)], capture_output=True, text=True, timeout=60,
                             check=True).stdout
        (theirs,) = [d for d in yaml.safe_load_all(out) if d]
        assert canonical(theirs) == canonical(obj)


def test_custom_predictor_runs_convrl_serve_on_the_project_image():
    from convrl import serve_cli
    from convrl.config import preset_names
    from convrl.config.cluster import DEFAULT_IMAGE

    obj = isvc()
    pred = obj["spec"]["predictor"]
    assert "model" not in pred and "canaryTrafficPercent" not in pred  # a custom container, split in-process
    assert pred["minReplicas"] == pred["maxReplicas"] == 1  # sessions and arena state live in the process
    c = container(obj)
    assert c["name"] == "kserve-container"
    assert c["image"] == DEFAULT_IMAGE
    kust = yaml.safe_load((CONVRL_SERVE / "kustomization.yaml").read_text())
    (image,) = kust["images"]  # `kustomize edit set image` points it at your registry
    assert f"{image['newName']}:{image['newTag']}" == DEFAULT_IMAGE and image["name"] == DEFAULT_IMAGE.split(":")[0]
    args = serve_args(c)
    assert args.fn is serve_cli.cmd_serve
    assert args.config in preset_names()
    assert args.host == "0.0.0.0"
    (port,) = c["ports"]
    assert args.port == port["containerPort"] == 8080  # Knative's default port for a custom container
    assert args.api_key == ""  # from the environment, never on the command line


def test_serve_overrides_are_valid_config():
    """Every override is a real serve.* key (load_config rejects unknown ones) with the intended value."""
    from convrl.config import ConfigError, load_config

    c = container()
    cfg = serve_config(c)
    assert (cfg.serve.host, cfg.serve.port) == ("0.0.0.0", c["ports"][0]["containerPort"])
    name = cfg.registry.model_name
    assert cfg.serve.champion == f"models:/{name}@champion"
    assert cfg.serve.challenger == f"models:/{name}@challenger"
    assert cfg.serve.threads == int(c["resources"]["limits"]["cpu"])  # torch would count the node's cores
    assert {a.split("=", 1)[0] for a in serve_args(c).overrides} <= {f"serve.{k}" for k in vars(cfg.serve)}
    with pytest.raises(ConfigError, match="unknown config key"):  # the check the test relies on
        load_config(serve_args(c).config, ["serve.jornal=/x"])


def test_api_key_and_mlflow_come_from_secrets():
    from convrl.config.cluster import ClusterConfig
    from convrl.serving.server import API_KEY_ENV

    obj = isvc()
    env = env_of(container(obj))
    assert env[API_KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "convrl-serve", "key": API_KEY_ENV}
    pipeline = ClusterConfig()  # the Secret and keys pipeline steps read MLflow settings from
    uri = env["MLFLOW_TRACKING_URI"]["valueFrom"]["secretKeyRef"]
    assert uri == {"name": pipeline.mlflow_secret, "key": "MLFLOW_TRACKING_URI"}
    assert "MLFLOW_TRACKING_URI" in pipeline.mlflow_secret_keys
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):  # the prod overlay's basic auth
        assert env[key]["valueFrom"]["secretKeyRef"] == {"name": pipeline.mlflow_secret, "key": key,
                                                         "optional": True}
    for e in env.values():
        if e["name"].startswith(("MLFLOW_", "CONVRL_SERVE")):
            assert "value" not in e, e
    assert credential_leaks(obj) == []
    for path in CONVRL_SERVE.rglob("*.yaml"):
        assert not URL_WITH_PASSWORD.search(path.read_text()), path
    # The server refuses 0.0.0.0 without a key, so a missing Secret must stop the pod, not start it open.
    assert "optional" not in env[API_KEY_ENV]["valueFrom"]["secretKeyRef"]


def test_models_load_offline_as_the_pipeline_sets_it():
    env = env_of(container())
    assert env["HF_HUB_OFFLINE"] == {"name": "HF_HUB_OFFLINE", "value": "1"}
    assert env["TRANSFORMERS_OFFLINE"] == {"name": "TRANSFORMERS_OFFLINE", "value": "1"}
    compiled = (ROOT / "pipelines" / "conversational_rl.py").read_text()
    assert 'task.set_env_variable("HF_HUB_OFFLINE", "1" if cluster.hf_hub_offline else "0")' in compiled


def test_probes_hit_the_servers_open_health_route():
    """Every probe GETs a route the app really has, on the served port, and it answers without the API key."""
    from fastapi.testclient import TestClient

    from convrl.serving.app import OPEN_PATHS, create_app

    c = container()
    probes = [c[k] for k in ("startupProbe", "readinessProbe", "livenessProbe")]
    paths = {p["httpGet"]["path"] for p in probes}
    assert paths == {"/healthz"}
    assert {p["httpGet"]["port"] for p in probes} == {c["ports"][0]["containerPort"]}
    fake = SimpleNamespace(cfg=serve_config(c), api_key="the-key", health=lambda: {"status": "ok"})
    app = create_app(fake)  # no lifespan: nothing is loaded, the routes are real
    gets = {r.path for r in app.routes if "GET" in getattr(r, "methods", ())}
    assert paths <= gets and paths <= set(OPEN_PATHS)
    client = TestClient(app)
    assert client.get("/healthz").status_code == 200  # the kubelet sends no Authorization header
    assert client.get("/v1/models").status_code == 401


def test_requests_resources():
    res = container()["resources"]
    assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"])


def test_trace_journal_is_on_a_mounted_volume():
    obj = isvc()
    c = container(obj)
    journal = PurePosixPath(serve_config(c).serve.journal)
    assert journal.is_absolute()
    mounts = [m for m in c["volumeMounts"] if journal.is_relative_to(m["mountPath"])]
    assert len(mounts) == 1, (journal, c["volumeMounts"])
    assert not mounts[0].get("readOnly")
    (volume,) = [v for v in obj["spec"]["predictor"]["volumes"] if v["name"] == mounts[0]["name"]]
    assert "emptyDir" in volume or "persistentVolumeClaim" in volume


def test_docs_show_how_to_deploy_and_call_it():
    from convrl.serving.server import API_KEY_ENV

    text = (ROOT / "docs" / "cluster.md").read_text()
    assert "kubectl apply -k manifests/serving/convrl-serve" in text
    assert f"kubectl create secret generic convrl-serve -n kubeflow --from-literal={API_KEY_ENV}=" in text
    assert "kubectl get inferenceservice convrl-serve -n kubeflow -o jsonpath='{.status.url}'" in text
    assert "manifests/serving/convrl-serve" in (ROOT / "README.md").read_text()
