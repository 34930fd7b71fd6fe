"""Run the RL step as a Kubeflow Trainer TrainJob: multi-GPU / multi-node GRPO on a cluster.

With ``rl.launcher=trainjob`` the RL pipeline step does not train itself. It
stages its inputs on the shared ReadWriteMany model-cache PVC
(``convrl.rl.distributed_train.stage_inputs``), creates a TrainJob on the
``torch-distributed`` ClusterTrainingRuntime whose nodes run
``torchrun --module convrl.rl.distributed_train --workdir DIR`` on the project
image, waits for it, logs what the job produced to the stage run and copies the
merged policy back::

    result = train_on_cluster(cfg, stage_run, turns_path, personas_path, reward_dir, out_dir)   # an RLResult

``build_trainjob`` is a pure function (the manifest as a dict); ``submit`` and
``wait`` talk to the API server through ``kubernetes.client.CustomObjectsApi``
(in-cluster config, else ``~/.kube/config``), or through any object with the
same three methods (tests pass a fake).

The manifest targets Kubeflow Trainer v2.0/v2.1 (``trainer.kubeflow.org/v1alpha1``,
checked against pkg/apis/trainer/v1alpha1/trainjob_types.go of v2.1): volumes go
through ``spec.podTemplateOverrides``, which v2.2 replaced with ``runtimePatches``.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from convrl.config import Config

GROUP, VERSION, PLURAL = "trainer.kubeflow.org", "v1alpha1", "trainjobs"
TRAINER_VERSION = "v2.1.0"
DEFAULT_IMAGE = "ghcr.io/convrl/convrl:0.1.0"
# The replicated job and its container in the torch-distributed runtime are both called "node".
NODE = "node"
MLFLOW_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
_REPO = "https://github.com/kubeflow/trainer.git/manifests/overlays"
INSTALL_HINT = (
    "install Kubeflow Trainer v2 and its runtimes, then rerun:\n"
    f'  kubectl apply --server-side -k "{_REPO}/manager?ref={TRAINER_VERSION}"\n'
    f'  kubectl apply --server-side -k "{_REPO}/runtimes?ref={TRAINER_VERSION}"\n'
    "  kubectl get clustertrainingruntimes   # torch-distributed must be listed")


class TrainJobError(RuntimeError):
    """The TrainJob could not be created, failed, or vanished; the message says what to do."""


class TrainJobTimeout(TrainJobError, TimeoutError):
    """The TrainJob did not finish within cluster.trainjob.timeout_s (it has been deleted)."""


def job_name(stage_run_id: str) -> str:
    """A DNS-1035 name unique per RL stage run (MLflow run ids are hex)."""
    return f"convrl-rl-{stage_run_id[:12].lower()}"


def project_image(core_api: Any = None) -> str:
    """``$CONVRL_IMAGE``, else the image of the pipeline step's own pod, else the default tag.

    The step pod runs the image the pipeline was compiled with, which need not be
    the default tag, and the TrainJob must run the same code; reading the own pod
    needs only the ``pods get`` the runner role already has.
    """
    if os.environ.get("CONVRL_IMAGE"):
        return os.environ["CONVRL_IMAGE"]
    ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
    if os.environ.get("HOSTNAME") and (core_api is not None or ns_file.exists()):
        try:
            if core_api is None:
                from kubernetes import client, config

                config.load_incluster_config()
                core_api = client.CoreV1Api()
            ns = ns_file.read_text().strip() if ns_file.exists() else "kubeflow"
            pod = core_api.read_namespaced_pod(os.environ["HOSTNAME"], ns)
            containers = pod.spec.containers
            return next((c.image for c in containers if c.name == "main"), containers[0].image)
        except Exception:  # noqa: BLE001 - any failure falls back to the documented default
            pass
    return DEFAULT_IMAGE


def _toleration(spec: str) -> dict:
    key_value, _, effect = spec.rpartition(":")
    if key_value.endswith(":Exists"):
        return {"key": key_value[:-7], "operator": "Exists", "effect": effect}
    key, _, value = key_value.partition("=")
    return {"key": key, "operator": "Equal", "value": value, "effect": effect}


def build_trainjob(name: str, cfg: Config, workdir: str, image: str) -> dict:
    """The TrainJob manifest: ``cluster.trainjob.num_nodes`` nodes x ``cluster.trainjob.gpus_per_node`` GPUs, PVC mounted."""
    rl, cl = cfg.rl, cfg.cluster
    gpus = cl.trainjob.gpus_per_node
    limits: dict[str, str] = {"memory": cl.gpu_memory_limit}
    requests: dict[str, str] = {"cpu": cl.gpu_cpu_request, "memory": cl.gpu_memory_request}
    if gpus:
        limits[cl.accelerator_type] = requests[cl.accelerator_type] = str(gpus)
    # Credentials stay in the Secret; optional so a cluster without it still trains (metrics then come back
    # through result.json and the pipeline step logs them).
    env = [{"name": k, "valueFrom": {"secretKeyRef": {"name": cl.mlflow_secret, "key": k, "optional": True}}}
           for k in MLFLOW_KEYS]
    env += [{"name": "HF_HOME", "value": cl.model_cache_mount}, {"name": "PYTHONUNBUFFERED", "value": "1"}]
    trainer: dict[str, Any] = {
        "image": image,
        # The runtime sets PET_NNODES/PET_NPROC_PER_NODE/PET_NODE_RANK/PET_MASTER_ADDR/PET_MASTER_PORT, which
        # torchrun reads; nproc per node is "auto" = the GPUs in resourcesPerNode.
        "command": ["torchrun", "--module", "convrl.rl.distributed_train"],
        "args": ["--workdir", workdir],
        "env": env,
        "numNodes": cl.trainjob.num_nodes,
        "resourcesPerNode": {"limits": limits, "requests": requests},
    }
    if not gpus:
        trainer["numProcPerNode"] = 1  # CPU dry runs: "auto" would start one process per CPU
    pod_spec: dict[str, Any] = {
        "volumes": [{"name": "model-cache", "persistentVolumeClaim": {"claimName": cl.model_cache_pvc}},
                    # NCCL exchanges tensors through /dev/shm; the container default of 64 MiB stalls it.
                    {"name": "dshm", "emptyDir": {"medium": "Memory"}}],
        "containers": [{"name": NODE, "volumeMounts": [{"name": "model-cache", "mountPath": cl.model_cache_mount},
                                                       {"name": "dshm", "mountPath": "/dev/shm"}]}],
    }
    if gpus:
        if cl.node_selector:
            pod_spec["nodeSelector"] = dict(s.partition("=")[::2] for s in cl.node_selector)
        if cl.tolerations:
            pod_spec["tolerations"] = [_toleration(t) for t in cl.tolerations]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": cl.trainjob.namespace,
                     "labels": {"app.kubernetes.io/part-of": "convrl", "app.kubernetes.io/component": "rl-finetune"}},
        "spec": {
            "runtimeRef": {"name": cl.trainjob.runtime, "kind": "ClusterTrainingRuntime", "apiGroup": GROUP},
            "trainer": trainer,
            "podTemplateOverrides": [{"targetJobs": [{"name": NODE}], "spec": pod_spec}],
        },
    }


def custom_objects_api():
    """``CustomObjectsApi`` from the in-cluster service account, else the local kubeconfig."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except Exception as exc:  # noqa: BLE001 - kubeconfig errors come in several types
            raise TrainJobError(f"no Kubernetes credentials: not in a pod and no usable kubeconfig ({exc})") from exc
    return client.CustomObjectsApi()


def _status(exc: Exception) -> int | None:
    return getattr(exc, "status", None)


def submit(manifest: dict, api: Any = None, log: Callable[[str], None] = print) -> str:
    """Create the TrainJob; returns its name. An existing job of the same name is attached to, not replaced."""
    api = api or custom_objects_api()
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
    except Exception as exc:  # noqa: BLE001 - ApiException without importing kubernetes here
        status, body = _status(exc), str(getattr(exc, "body", "") or exc)
        if status == 409:
            log(f"[trainjob] {ns}/{name} exists already; waiting for it")
            return name
        if status == 404 and 'namespaces "' in body:
            raise TrainJobError(f"namespace {ns!r} does not exist; set cluster.trainjob.namespace") from exc
        if status == 404:
            raise TrainJobError(f"the TrainJob API ({PLURAL}.{GROUP}/{VERSION}) is not installed on this "
                                f"cluster; {INSTALL_HINT}") from exc
        if status == 403:
            raise TrainJobError(f"not allowed to create {PLURAL}.{GROUP} in {ns!r}: grant the pipeline runner "
                                "create/get/list/watch/delete on trainjobs (manifests/base/rbac.yaml) and run "
                                "the pipeline as convrl-pipeline-runner") from exc
        if status is not None:
            raise TrainJobError(f"creating TrainJob {ns}/{name} failed ({status}): {body}; is the "
                                f"ClusterTrainingRuntime {manifest['spec']['runtimeRef']['name']!r} installed? "
                                f"{INSTALL_HINT}") from exc
        raise TrainJobError(f"cannot reach the Kubernetes API server to create {ns}/{name}: {exc}") from exc
    log(f"[trainjob] created {ns}/{name} ({manifest['spec']['trainer']['numNodes']} node(s)); "
        f"kubectl -n {ns} get trainjob {name}")
    return name


def job_state(obj: dict) -> tuple[str | None, str]:
    """("Complete" | "Failed" | None, message) from the TrainJob's status conditions."""
    conds = (obj.get("status") or {}).get("conditions") or []
    for cond in conds:
        # Trainer v2 reports success as "Complete"; "Succeeded" is accepted for JobSet-style controllers.
        if cond.get("status") == "True" and cond.get("type") in ("Complete", "Succeeded", "Failed"):
            state = "Failed" if cond["type"] == "Failed" else "Complete"
            return state, f"{cond.get('reason', '')}: {cond.get('message', '')}".strip(": ")
    last = conds[-1] if conds else {}
    return None, f"{last.get('type', 'Pending')} {last.get('reason', '')}".strip()


def delete(name: str, namespace: str, api: Any) -> None:
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except Exception as exc:  # noqa: BLE001
        if _status(exc) != 404:
            raise


def wait(name: str, namespace: str, timeout_s: float, api: Any = None, poll_s: float = 30.0,
         clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
         log: Callable[[str], None] = print) -> dict:
    """Poll until the TrainJob completes (returns it), fails (raises with the condition message) or times out.

    On timeout the job is deleted so its GPUs are freed. API hiccups (5xx,
    connection errors) are retried until the deadline.
    """
    api = api or custom_objects_api()
    deadline, seen = clock() + timeout_s, None
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except Exception as exc:  # noqa: BLE001
            if _status(exc) == 404:
                raise TrainJobError(f"TrainJob {namespace}/{name} disappeared while the RL step waited for it") from exc
            if _status(exc) is not None and _status(exc) < 500:
                raise TrainJobError(f"reading TrainJob {namespace}/{name} failed ({_status(exc)}): "
                                    f"{getattr(exc, 'body', exc)}") from exc
            obj = None
            log(f"[trainjob] API error, retrying: {exc}")
        if obj is not None:
            state, msg = job_state(obj)
            if state == "Complete":
                log(f"[trainjob] {name} complete")
                return obj
            if state == "Failed":
                raise TrainJobError(f"TrainJob {namespace}/{name} failed: {msg}; "
                                    f"logs: kubectl -n {namespace} logs -l jobset.sigs.k8s.io/jobset-name={name}")
            if msg != seen:
                log(f"[trainjob] {name}: {msg}")
                seen = msg
        if clock() >= deadline:
            try:
                delete(name, namespace, api)
                outcome = "it was deleted"
            except Exception as exc:  # noqa: BLE001 - the timeout is the error to report
                outcome = f"deleting it failed ({exc}): kubectl -n {namespace} delete trainjob {name}"
            raise TrainJobTimeout(f"TrainJob {namespace}/{name} did not finish within {timeout_s:.0f} s "
                                  f"(cluster.trainjob.timeout_s); {outcome}")
        sleep(poll_s)


def _log_job_outputs(run: Any, info: dict, workdir: Path) -> None:
    """What the inline step logs while training: per-step metrics (unless the job logged them live) and samples."""
    import pandas as pd

    run.log_params({"rl.num_prompts": info["num_prompts"], "rl.world_size": info["world_size"]})
    if info.get("metrics_run_id") != run.run_id:
        # Logged after the fact when the job had no MLflow access; partial live logs may then repeat some steps.
        for row in info["history"]:
            run.log_metrics({k: v for k, v in row.items() if k != "step"}, step=row["step"])
    for path in sorted((workdir / "out" / "samples").glob("step_*.json")):
        run.log_table(pd.read_json(path, orient="records"), f"samples/{path.name}")


def train_on_cluster(cfg: Config, run: Any, turns_path: str, personas_path: str, reward_dir: str, out_dir: str,
                     api: Any = None, poll_s: float = 30.0):
    """Stage inputs on the PVC, run the TrainJob, log what it produced to ``run``, copy the policy into ``out_dir``.

    ``run`` is the RL stage's ``tracking.StageRun``. Returns an ``RLResult``
    like ``train_grpo``. The staging dir is removed on success and kept
    (inputs, checkpoints) on failure, for inspection.
    """
    from convrl.rl import distributed_train as dt
    from convrl.rl.grpo import RLResult

    name = job_name(run.run_id)
    workdir = Path(cfg.cluster.model_cache_mount) / "convrl-trainjobs" / name
    dt.stage_inputs(workdir, cfg, turns_path, personas_path, reward_dir, run.run_id, run.parent_run_id)
    api = api or custom_objects_api()
    submit(build_trainjob(name, cfg, str(workdir), project_image()), api)
    try:
        wait(name, cfg.cluster.trainjob.namespace, cfg.cluster.trainjob.timeout_s, api, poll_s=poll_s)
    except TrainJobError as exc:
        raise TrainJobError(f"{exc}\n(staged inputs and checkpoints kept in {workdir} on PVC "
                            f"{cfg.cluster.model_cache_pvc})") from exc
    info = dt.load_result(workdir)
    _log_job_outputs(run, info, workdir)
    policy_dir = Path(out_dir) / "policy"
    if policy_dir.exists():
        shutil.rmtree(policy_dir)
    shutil.copytree(workdir / "out" / info.get("policy_subdir", "policy"), policy_dir)
    shutil.rmtree(workdir, ignore_errors=True)
    return RLResult(str(policy_dir), info["history"], info["steps"], info.get("resumed_from"), info["seconds"])
