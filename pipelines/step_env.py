"""What every pipeline step does before its stage: offline defaults, and on a cluster a required MLflow server.

Components call ``prepare()`` first. On a laptop (kfp.local) it only sets the
offline defaults (``convrl.runtime.offline_defaults``, which keep any value already
set). On a cluster the compiled pipeline sets ``CONVRL_ON_CLUSTER=1`` and
``HF_HUB_OFFLINE`` from ``cluster.hf_hub_offline``; there a step without an MLflow
server to log to stops with an error instead of logging into a SQLite file that
dies with its pod.
"""

from __future__ import annotations

import os

ON_CLUSTER_ENV = "CONVRL_ON_CLUSTER"


class TrackingNotConfigured(RuntimeError):
    """A cluster step has no MLflow server to log to."""


def prepare() -> None:
    from convrl.runtime import offline_defaults

    if os.environ.get(ON_CLUSTER_ENV) == "1":
        uri = os.environ.get("MLFLOW_TRACKING_URI", "")
        if not uri.startswith(("http://", "https://", "databricks")):
            raise TrackingNotConfigured(
                f"MLFLOW_TRACKING_URI is {uri or 'not set'} in this pipeline step: set it in the Secret named by "
                "cluster.mlflow_secret (default convrl-mlflow-client), e.g. `kubectl -n <namespace> create secret "
                "generic convrl-mlflow-client --from-literal=MLFLOW_TRACKING_URI="
                "http://convrl-mlflow.kubeflow.svc.cluster.local:5000`")
    offline_defaults()
