"""Shared fixtures: an isolated CONVRL_HOME, per-module MLflow stores, tiny configs.

Model caches (converted SmolLM2, tiny random models) live in ``CONVRL_TEST_HOME``
(default ``<repo>/.convrl-test``) so they are built once per machine; every test
module gets its own SQLite MLflow store so runs never leak between tests.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from threads, and oversubscribed threads are 100x slower on a busy 2-core box.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["CONVRL_HOME"] = os.environ.get("CONVRL_TEST_HOME", str(REPO / ".convrl-test"))
os.environ.pop("MLFLOW_TRACKING_URI", None)
os.environ.pop("CONVRL_ON_CLUSTER", None)  # pipelines/step_env.py: tests run steps as on a laptop


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "shared_data" in item.keywords and not SHARED_DATA.exists():
            item.add_marker(pytest.mark.skip(reason=f"{SHARED_DATA} is absent (only CI and dev machines have ../shared)"))


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory):
    """A fresh SQLite MLflow store for one test module."""
    db = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{db}"
    yield os.environ["MLFLOW_TRACKING_URI"]
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture(scope="session")
def tiny_cfg():
    from convrl.config import load_config

    return load_config("tiny")


@pytest.fixture(scope="session")
def ingested(tiny_cfg):
    from convrl.data.ingest import ingest

    d = tiny_cfg.data
    return ingest(d.sources, seed=d.seed, max_conversations=d.max_conversations)


@pytest.fixture(scope="session")
def personas():
    from convrl.data.personas import load_personas

    return load_personas(["empathetic_coach", "cheerful_guide", "calm_expert"])


@pytest.fixture(scope="session")
def tiny_encoder():
    from convrl import models
    from convrl.rewards.encoder import SentenceEncoder

    return SentenceEncoder(models.resolve_encoder("tiny-bert"))


@pytest.fixture(scope="session")
def tiny_policy_dir():
    from convrl import models

    return models.resolve_policy("tiny-llama")


@pytest.fixture
def one_thread():
    # Two shared cores: torch's default thread pool spins against other processes and makes a
    # 2-layer model ~100x slower; one thread is plenty for it.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
