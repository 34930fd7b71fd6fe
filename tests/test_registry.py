"""Registry policy against a real (SQLite) MLflow store: idempotent registration, promote, rollback."""

import multiprocessing as mp

import pytest

from convrl import registry, tracking
from convrl.tracking.pyfunc import HFDirModel

NAME = "convrl-policy-test"


@pytest.fixture(scope="module")
def logged_models(mlflow_store, tiny_policy_dir):
    parent = tracking.start_pipeline_run("registry-test", "p", {"a": 1}, {})
    uris = []
    with tracking.stage_run(parent, "rl_finetune", "registry-test") as run:
        for i in range(3):
            uris.append(run.log_pyfunc(f"policy{i}", HFDirModel(), {"hf_dir": tiny_policy_dir}))
    return uris


def test_register_is_idempotent_per_pipeline_run(logged_models):
    v1, created1 = registry.register_candidate(logged_models[0], NAME, "run-A", {"convrl.config_hash": "abc"})
    v1b, created1b = registry.register_candidate(logged_models[0], NAME, "run-A", {"convrl.config_hash": "abc"})
    assert created1 and not created1b and v1 == v1b
    assert tracking.alias_version(NAME, registry.CHALLENGER) == v1
    assert tracking.version_info(NAME, v1)["tags"]["convrl.config_hash"] == "abc"


def test_promote_records_previous_and_rollback_restores(logged_models):
    v1, _ = registry.register_candidate(logged_models[0], NAME, "run-A", {})
    v2, _ = registry.register_candidate(logged_models[1], NAME, "run-B", {})
    assert registry.promote(NAME, v1, "first")["moved"]
    out = registry.promote(NAME, v2, "better on A/B")
    assert out == {"champion": v2, "previous": v1, "moved": True}
    assert not registry.promote(NAME, v2, "again")["moved"]  # idempotent
    assert tracking.version_info(NAME, v2)["tags"]["convrl.previous_champion"] == v1
    back = registry.rollback(NAME, "regression in prod")
    assert back["champion"] == v1
    assert tracking.alias_version(NAME, registry.CHAMPION) == v1


def test_promote_unknown_version_fails_cleanly(logged_models):
    with pytest.raises(registry.RegistryError):
        registry.promote(NAME, "999", "nope")


def _promote_worker(uri, version, q):
    import os

    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        registry.promote(NAME, version, f"concurrent {version}")
        q.put("ok")
    except Exception as exc:  # noqa: BLE001
        q.put(repr(exc))


def test_two_concurrent_promotions_leave_a_champion(logged_models, mlflow_store):
    v3, _ = registry.register_candidate(logged_models[2], NAME, "run-C", {})
    v1 = tracking.alias_version(NAME, registry.CHAMPION)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_promote_worker, args=(mlflow_store, v, q)) for v in (v3, v1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    results = [q.get(timeout=5) for _ in procs]
    assert tracking.alias_version(NAME, registry.CHAMPION) in {v1, v3}, results


@pytest.mark.parametrize("decision", [{"outcome": "inconclusive", "metrics": {}}, {"outcome": "reject", "metrics": {}},
                                      None])
def test_promote_stage_never_promotes_without_a_promote_decision(logged_models, tmp_path, decision):
    import json

    from convrl.config import load_config
    from convrl.stages.decision import promote_stage

    cfg = load_config("tiny", [f"registry.model_name={NAME}", "tracking.experiment=registry-test"])
    before = tracking.alias_version(NAME, registry.CHAMPION)
    v, _ = registry.register_candidate(logged_models[2], NAME, "run-Z", {})
    path = tmp_path / "decision.json"
    if decision is not None:  # None: the evaluation never produced a decision
        path.write_text(json.dumps(decision))
    parent = tracking.start_pipeline_run("registry-test", "no-promote", {}, {})
    with pytest.raises((registry.RegistryError, FileNotFoundError)):
        promote_stage(cfg, parent, v, str(path))
    assert tracking.alias_version(NAME, registry.CHAMPION) == before
    assert tracking.get_run(parent).info.status == "FAILED"
