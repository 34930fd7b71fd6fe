"""KServe manifests: manifests/serving validates against KServe's own InferenceService CRD and matches
what ``convrl serve-manifest`` renders; storage URIs point at the registered version's checkpoint.

The CRD is vendored from github:kserve/kserve (tests/data/kserve/README.md). Objects are checked
with the CRD's openAPIV3Schema (jsonschema) and for fields the API server would prune, the
failure mode where a misspelt field is silently dropped.
"""

from __future__ import annotations

import functools
import gzip
from pathlib import Path

import jsonschema
import pytest
import yaml

from tests.test_manifests import render_python
from tests.trainer_crds import pruned

ROOT = Path(__file__).resolve().parents[1]
SERVING = ROOT / "manifests" / "serving"
CRD = Path(__file__).parent / "data" / "kserve" / "serving.kserve.io_inferenceservices.yaml.gz"
CHAMPION_URI = "s3://convrl-mlflow/artifacts/1/models/m-4f0c2a9e51b84d1e9a7c3d2b6e8f1a05/artifacts/artifacts/policy"
CHALLENGER_URI = "s3://convrl-mlflow/artifacts/1/models/m-9b2e7d4c1a6f4e3b8c5d0a7e2f9b6c18/artifacts/artifacts/policy"


@functools.lru_cache(maxsize=1)
def isvc_schema() -> dict:
    crd = yaml.safe_load(gzip.decompress(CRD.read_bytes()))
    assert crd["spec"]["names"]["kind"] == "InferenceService"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    return version["schema"]["openAPIV3Schema"]


def problems(obj: dict) -> list[str]:
    schema = isvc_schema()
    found = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
             for e in jsonschema.Draft7Validator(schema).iter_errors(obj)]
    return found + [f"pruned {p}" for p in pruned(obj, schema)]


def test_schema_catches_mistakes():
    from convrl.serving.kserve import inference_service

    good = inference_service("convrl-policy", "1", CHAMPION_URI)
    assert problems(good) == []
    typo = inference_service("convrl-policy", "1", CHAMPION_URI)
    typo["spec"]["predictor"]["canaryTraficPercent"] = 10
    assert any("canaryTraficPercent" in p for p in problems(typo))
    wrong = inference_service("convrl-policy", "1", CHAMPION_URI)
    wrong["spec"]["predictor"]["minReplicas"] = "one"
    assert problems(wrong)


@pytest.mark.parametrize("folder", ["", "canary"])
def test_manifests_validate(folder):
    import kubernetes_validate

    objs = render_python(SERVING / folder if folder else SERVING)
    kinds = sorted(o["kind"] for o in objs)
    assert kinds == ["InferenceService", "ServiceAccount"]
    for obj in objs:
        assert obj["metadata"]["namespace"] == "kubeflow"
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "convrl"
        if obj["kind"] == "InferenceService":
            assert problems(obj) == [], problems(obj)
        else:
            kubernetes_validate.validate(obj, "1.32.0", strict=True)
    (isvc,) = [o for o in objs if o["kind"] == "InferenceService"]
    sa = next(o for o in objs if o["kind"] == "ServiceAccount")
    assert isvc["spec"]["predictor"]["serviceAccountName"] == sa["metadata"]["name"]
    assert isvc["spec"]["predictor"]["model"]["modelFormat"]["name"] == "huggingface"


def test_committed_manifests_are_what_serve_manifest_renders():
    from convrl.serving.kserve import inference_service

    def strip(o):
        return {k: v for k, v in o.items() if k != "metadata"} | {
            "metadata": {k: v for k, v in o["metadata"].items() if k != "labels"}}

    (base,) = [o for o in render_python(SERVING) if o["kind"] == "InferenceService"]
    (canary,) = [o for o in render_python(SERVING / "canary") if o["kind"] == "InferenceService"]
    assert strip(base) == strip(inference_service("convrl-policy", "1", CHAMPION_URI))
    assert strip(canary) == strip(inference_service("convrl-policy", "1", CHAMPION_URI, challenger_version="2",
                                                    challenger_uri=CHALLENGER_URI, canary_percent=10))
    assert canary["spec"]["predictor"]["canaryTrafficPercent"] == 10


@pytest.fixture(scope="module")
def kserve_policy(mlflow_store, tiny_policy_dir):
    """models:/kserve-policy: versions 1 (@champion) and 2 (@challenger), both the tiny policy's checkpoint."""
    from convrl import tracking
    from convrl.tracking.pyfunc import HFDirModel

    name = "kserve-policy"
    parent = tracking.start_pipeline_run("kserve-test", "r", {}, {})
    with tracking.stage_run(parent, "rl_finetune", "kserve-test") as run:
        uri = run.log_pyfunc("policy", HFDirModel(), {"hf_dir": tiny_policy_dir})
    assert [tracking.register(uri, name, {}) for _ in range(2)] == ["1", "2"]
    tracking.set_alias(name, "champion", "1")
    tracking.set_alias(name, "challenger", "2")
    return name


def test_storage_uri_is_the_registered_versions_checkpoint(kserve_policy, monkeypatch):
    from convrl.serving import kserve

    location = kserve.hf_dir_location(kserve_policy, "1")
    assert (Path(location.removeprefix("file://")) / "config.json").exists(), location
    with pytest.raises(ValueError, match="a cluster cannot read"):
        kserve.storage_uri(kserve_policy, "1")
    # Behind the cluster's MLflow server the same layout sits under mlflow-artifacts:/ -> S3.
    proxied = location.split("/mlartifacts/", 1)[-1]
    monkeypatch.setattr(kserve, "hf_dir_location", lambda name, v: f"mlflow-artifacts:/{proxied}")
    isvc = kserve.from_registry(kserve_policy, canary_percent=25)
    assert problems(isvc) == []
    assert isvc["spec"]["predictor"]["model"]["storageUri"] == f"s3://convrl-mlflow/artifacts/{proxied}"
    assert isvc["metadata"]["annotations"]["convrl.io/challenger-version"] == "2"
    with pytest.raises(ValueError, match="between 1 and 99"):
        kserve.inference_service("m", "1", CHAMPION_URI, challenger_uri=CHALLENGER_URI, canary_percent=100)


def test_serve_resolves_registry_aliases_to_pinned_versions(kserve_policy):
    """`convrl serve` with the default config serves models:/<name>@champion and @challenger as versions."""
    from convrl.config import load_config
    from convrl.serving.variants import ServeError, resolve_variants

    cfg = load_config("tiny")
    with pytest.raises(ServeError, match="no 'champion' alias"):
        resolve_variants(cfg.serve, "nobody-registered-this")
    variants = resolve_variants(cfg.serve, kserve_policy)
    assert {n: v.version for n, v in variants.items()} == {"champion": "1", "challenger": "2"}
    assert all((Path(v.model_dir) / "config.json").exists() for v in variants.values())
    assert variants["champion"].label == f"{kserve_policy} v1"
    cfg.serve.challenger = "none"
    assert list(resolve_variants(cfg.serve, kserve_policy)) == ["champion"]
