"""Run the RL step as a Kubeflow Trainer TrainJob: multi-GPU / multi-node GRPO on a cluster.

With ``rl.launcher=trainjob`` the RL pipeline step does not train itself. It
stages its inputs on the shared ReadWriteMany model-cache PVC
(``convrl.stages.distributed_train.stage_inputs``), creates a TrainJob on the
``torch-distributed`` ClusterTrainingRuntime whose nodes run
``torchrun --module convrl.stages.distributed_train --workdir DIR`` on the project
image, waits for it, logs what the job produced to the stage run and copies the
merged policy back::

    result = train_on_cluster(cfg, stage_run, turns_path, personas_path, reward_dir, out_dir)   # an RLResult

The manifest (``trainjob_spec.build_trainjob``) follows the installed Trainer
release (``cluster.trainjob.trainer_version``: v2.0, v2.1, v2.2, v2.3); after
creating it the step checks that the API server kept the pod overrides and
otherwise deletes the job and names the right release. The job is owned by the
step's pod (cancelling or deleting the KFP run garbage-collects it), deleted when
the step gets SIGTERM (KFP terminating the run), and deleted once it succeeded;
a failed job stays for ``kubectl logs`` until its owner pod goes. ``submit`` and
``wait`` talk to the API server through ``kubernetes.client.CustomObjectsApi``
(in-cluster config, else ``~/.kube/config``), or any object with the same
methods (tests pass a fake).
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from convrl.config import Config
from convrl.stages.trainjob_spec import (GROUP, OVERRIDE_FIELD, PLURAL, VERSION, TrainJobSpecError, build_trainjob,
                                         job_name, kept_overrides)

__all__ = ["TrainJobError", "TrainJobTimeout", "build_trainjob", "job_name", "submit", "wait", "train_on_cluster"]

TRAINER_VERSION = "v2.3.0"  # the release the install hint points at
_REPO = "https://github.com/kubeflow/trainer.git/manifests/overlays"
INSTALL_HINT = (
    "install Kubeflow Trainer v2 and its runtimes, then rerun:\n"
    f'  kubectl apply --server-side -k "{_REPO}/manager?ref={TRAINER_VERSION}"\n'
    f'  kubectl apply --server-side -k "{_REPO}/runtimes?ref={TRAINER_VERSION}"\n'
    "  kubectl get clustertrainingruntimes   # torch-distributed must be listed")
SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobError(RuntimeError):
    """The TrainJob could not be created, failed, or vanished; the message says what to do."""


class TrainJobTimeout(TrainJobError, TimeoutError):
    """The TrainJob did not finish within cluster.trainjob.timeout_s (it has been deleted)."""


@dataclass
class StepPod:
    """The pipeline step's own pod: where the TrainJob goes, what owns it, which image it runs."""
    namespace: str
    name: str
    uid: str
    image: str

    def owner_reference(self) -> dict:
        return {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid}


def step_pod(core_api: Any = None, hostname: str | None = None) -> StepPod | None:
    """Read the step's own pod (``pods get``, which the runner role has); None outside a pod."""
    import os

    hostname = hostname or os.environ.get("HOSTNAME")
    if not hostname or (core_api is None and not SA_NAMESPACE.exists()):
        return None
    ns = SA_NAMESPACE.read_text().strip() if SA_NAMESPACE.exists() else "kubeflow"
    try:
        if core_api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            core_api = client.CoreV1Api()
        pod = core_api.read_namespaced_pod(hostname, ns)
    except Exception as exc:  # noqa: BLE001 - any failure: no owner, image from the config
        print(f"[trainjob] cannot read the step's pod {ns}/{hostname} ({exc}); the TrainJob gets no owner")
        return None
    containers = pod.spec.containers
    image = next((c.image for c in containers if c.name == "main"), containers[0].image)
    return StepPod(ns, hostname, pod.metadata.uid, image)


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
    """Create the TrainJob; returns its name. An existing job of the same name is attached to, not replaced.

    The API server prunes fields its TrainJob CRD does not know: when the pod
    overrides did not survive, the job is deleted and the error names the setting.
    """
    api = api or custom_objects_api()
    name, ns = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    try:
        stored = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, manifest)
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
                                "create/get/list/watch/delete on trainjobs (manifests/base/runner/rbac.yaml) and run "
                                "the pipeline as convrl-pipeline-runner") from exc
        if status == 422 or (status == 400 and "unknown field" in body):
            raise TrainJobError(f"the API server rejected TrainJob {ns}/{name} ({status}): {body[:500]}; "
                                "is cluster.trainjob.trainer_version the installed Trainer release?") from exc
        if status is not None:
            raise TrainJobError(f"creating TrainJob {ns}/{name} failed ({status}): {body}; is the "
                                f"ClusterTrainingRuntime {manifest['spec']['runtimeRef']['name']!r} installed? "
                                f"{INSTALL_HINT}") from exc
        raise TrainJobError(f"cannot reach the Kubernetes API server to create {ns}/{name}: {exc}") from exc
    if isinstance(stored, dict) and not kept_overrides(manifest, stored):
        field = next(f for f in set(OVERRIDE_FIELD.values()) if f in manifest["spec"])
        delete(name, ns, api)
        versions = ", ".join(f"{v}: {f}" for v, f in OVERRIDE_FIELD.items())
        raise TrainJobError(f"the cluster's TrainJob CRD dropped spec.{field} (the PVC would not be mounted), so "
                            f"TrainJob {ns}/{name} was deleted: set cluster.trainjob.trainer_version to the installed "
                            f"Kubeflow Trainer release ({versions}); `kubectl get crd trainjobs.trainer.kubeflow.org "
                            "-o yaml | grep -E 'podSpecOverrides|podTemplateOverrides|runtimePatches'` shows it")
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


@contextlib.contextmanager
def _delete_on_sigterm(name: str, namespace: str, api: Any, log: Callable[[str], None] = print):
    """KFP terminates a run by sending SIGTERM to its pods: take the GPUs of the TrainJob down with the step."""
    def handler(signum, frame):
        log(f"[trainjob] step terminated (signal {signum}); deleting TrainJob {namespace}/{name}")
        with contextlib.suppress(Exception):
            delete(name, namespace, api)
        raise SystemExit(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread (e.g. a test runner's worker): the owner reference still applies
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def train_on_cluster(cfg: Config, run: Any, turns_path: str, personas_path: str, reward_dir: str, out_dir: str,
                     api: Any = None, poll_s: float = 30.0, pod: StepPod | None = None):
    """Stage inputs on the PVC, run the TrainJob, log what it produced to ``run``, copy the policy into ``out_dir``.

    ``run`` is the RL stage's ``tracking.StageRun``; ``pod`` the step's own pod
    (read from the API when None). Returns an ``RLResult`` like ``train_grpo``.
    The staging dir and the job are removed on success; on failure both stay
    (inputs, checkpoints, logs) for inspection, until the step's pod is removed.
    """
    from convrl.rl.grpo import RLResult
    from convrl.stages import distributed_train as dt

    pod = pod or step_pod()
    namespace = cfg.cluster.trainjob.namespace or (pod.namespace if pod else "kubeflow")
    # An owner must live in the same namespace as what it owns.
    owner = pod.owner_reference() if pod and pod.namespace == namespace else None
    name = job_name(run.run_id)
    workdir = Path(cfg.cluster.model_cache_mount) / "convrl-trainjobs" / name
    try:
        manifest = build_trainjob(name, cfg, str(workdir), pod.image if pod else cfg.cluster.image, namespace, owner)
    except TrainJobSpecError as exc:
        raise TrainJobError(str(exc)) from exc
    dt.stage_inputs(workdir, cfg, turns_path, personas_path, reward_dir, run.run_id, run.parent_run_id)
    api = api or custom_objects_api()
    with _delete_on_sigterm(name, namespace, api):
        submit(manifest, api)
        try:
            wait(name, namespace, cfg.cluster.trainjob.timeout_s, api, poll_s=poll_s)
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
    delete(name, namespace, api)  # finished: free the JobSet and its pods
    return RLResult(str(policy_dir), info["history"], info["steps"], info.get("resumed_from"), info["seconds"],
                    info.get("warmstart"))
