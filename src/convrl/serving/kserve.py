"""KServe InferenceService manifests for the registered policy, with canary traffic for the challenger.

KServe's Hugging Face runtime (``modelFormat: huggingface``, Hugging Face
backend on CPU nodes) serves the checkpoint with an OpenAI-compatible API at
``/openai/v1/chat/completions``. ``storageUri`` points at the registered
version's own ``hf_dir`` artifact in the MLflow artifact store (S3/MinIO,
``--artifacts-destination`` of the MLflow server in ``manifests/base``), so a
manifest pins a version, not a moving alias. The canary manifest is the same
InferenceService with the challenger's ``storageUri`` and
``canaryTrafficPercent``: KServe keeps the rest of the traffic on the last
rolled-out revision (the champion) and moves all of it once the canary is
promoted (``canaryTrafficPercent`` removed). Render both from the registry::

    convrl serve-manifest > champion.yaml                       # champion only, 100%
    convrl serve-manifest --canary-percent 10 > canary.yaml     # challenger gets 10% of requests
    kubectl apply -f champion.yaml && kubectl apply -f canary.yaml

``manifests/serving/`` holds what this renders for champion v1 / challenger
v2 (a test keeps it in sync and validates it against KServe's CRD schema).
"""

from __future__ import annotations

from pathlib import Path

from convrl import tracking

NAMESPACE = "kubeflow"
ARTIFACT_ROOT = "s3://convrl-mlflow/artifacts"
SERVICE_ACCOUNT = "convrl-model-reader"


def hf_dir_location(model_name: str, version: str) -> str:
    """The artifact-store location of a registered version's checkpoint: the pyfunc's ``hf_dir`` artifact,
    whose path inside the model (the source dir's basename) the model's MLmodel file records."""
    import yaml

    source = tracking.version_info(model_name, version)["source"]
    if source.startswith("models:/m-"):
        source = tracking.client().get_logged_model(source[len("models:/"):].split("/")[0]).artifact_location
    source = source.rstrip("/")
    mlmodel = yaml.safe_load(Path(tracking.download(f"{source}/MLmodel")).read_text())
    artifacts = (mlmodel.get("flavors", {}).get("python_function", {}).get("artifacts") or {})
    if "hf_dir" not in artifacts:
        raise ValueError(f"{model_name} v{version} is not a convrl policy (its MLmodel has no hf_dir artifact)")
    return f"{source}/{artifacts['hf_dir']['path']}"


def storage_uri(model_name: str, version: str, artifact_root: str = ARTIFACT_ROOT) -> str:
    """``hf_dir_location`` as KServe's storage initializer reads it (``mlflow-artifacts:/`` mapped to S3)."""
    source = hf_dir_location(model_name, version)
    if source.startswith("mlflow-artifacts:"):
        source = artifact_root.rstrip("/") + "/" + source[len("mlflow-artifacts:"):].lstrip("/")
    if not source.startswith(("s3://", "gs://", "pvc://", "https://", "hf://")):
        raise ValueError(f"{model_name} v{version} is stored at {source}, which a cluster cannot read; register "
                         "it through the cluster's MLflow server (artifacts on S3/MinIO)")
    return source


def inference_service(model_name: str, champion_version: str, champion_uri: str, *,
                      challenger_version: str = "", challenger_uri: str = "", canary_percent: int = 0,
                      namespace: str = NAMESPACE, cpu: str = "2", memory: str = "4Gi",
                      max_length: int = 2048) -> dict:
    """The InferenceService for the champion, or (with ``canary_percent``) its canary for the challenger."""
    if canary_percent and not (challenger_uri and 0 < canary_percent < 100):
        raise ValueError("a canary needs the challenger's storage URI and a percent between 1 and 99")
    canary = bool(canary_percent)
    predictor: dict = {
        "serviceAccountName": SERVICE_ACCOUNT,
        "minReplicas": 1,
        "maxReplicas": 3,
        "model": {
            "modelFormat": {"name": "huggingface"},
            "args": [f"--model_name={model_name}", "--backend=huggingface", "--task=text_generation",
                     "--dtype=float32", f"--max_length={max_length}"],
            "storageUri": challenger_uri if canary else champion_uri,
            "resources": {"requests": {"cpu": cpu, "memory": memory},
                          "limits": {"cpu": str(int(cpu) * 2), "memory": memory}},
        },
    }
    if canary:
        predictor["canaryTrafficPercent"] = int(canary_percent)
    annotations = {"serving.kserve.io/deploymentMode": "Serverless",  # canary traffic needs Knative revisions
                   "convrl.io/champion-version": str(champion_version)}
    if canary:
        annotations["convrl.io/challenger-version"] = str(challenger_version)
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": {"name": model_name, "namespace": namespace, "annotations": annotations,
                         "labels": {"app.kubernetes.io/name": model_name, "app.kubernetes.io/component": "serving",
                                    "app.kubernetes.io/part-of": "convrl"}},
            "spec": {"predictor": predictor}}


def from_registry(model_name: str, canary_percent: int = 0, artifact_root: str = ARTIFACT_ROOT, **kw) -> dict:
    """Render from the registry's ``champion`` (and ``challenger``) aliases."""
    champion = tracking.alias_version(model_name, "champion")
    if champion is None:
        raise ValueError(f"{model_name} has no champion in the registry at {tracking.tracking_uri()}")
    kwargs = {}
    if canary_percent:
        challenger = tracking.alias_version(model_name, "challenger")
        if challenger is None or challenger == champion:
            raise ValueError(f"{model_name} has no challenger distinct from champion v{champion} to canary")
        kwargs = {"challenger_version": challenger,
                  "challenger_uri": storage_uri(model_name, challenger, artifact_root)}
    return inference_service(model_name, champion, storage_uri(model_name, champion, artifact_root),
                             canary_percent=canary_percent, **kwargs, **kw)
