"""`convrl compile|upload|submit|schedule|unschedule|runs` end to end against the loopback KFP API (tests/kfp_fakes)."""

import json

import pytest
import yaml

from convrl.cli import main
from tests.test_cluster import kfp, kubeflow  # noqa: F401 - the stub server fixtures

IMAGE = "registry.example.com/team/convrl:7"


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    path = tmp_path_factory.mktemp("pkg") / "convrl.yaml"
    assert main(["compile", "--config", "cluster-cpu", "--image", IMAGE, "--output", str(path)]) == 0
    return path


def _uploaded_spec(stub) -> dict:
    upload = [r for r in stub.seen if r["path"].endswith(("/upload", "/upload_version"))][-1]
    return next(yaml.safe_load_all(upload["body"]["uploadfile"]))


def test_upload_sends_the_package_as_compiled(kfp, package, capsys):  # noqa: F811
    # `convrl compile --image X --config Y` then `convrl upload`: X and Y reach the cluster (issue 15, item 1).
    assert main(["upload", "--host", kfp.host, "--package", str(package)]) == 0
    first = _last_json(capsys.readouterr().out)
    spec = _uploaded_spec(kfp)
    assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} == {IMAGE}
    assert spec["root"]["inputDefinitions"]["parameters"]["config_name"]["defaultValue"] == "cluster-cpu"
    assert main(["upload", "--host", kfp.host, "--package", str(package)]) == 0
    again = _last_json(capsys.readouterr().out)
    assert again["pipeline_version_id"] == first["pipeline_version_id"] and again["uploaded"] is False


def test_submit_runs_the_compiled_preset_with_overrides(kfp, package, capsys):  # noqa: F811
    assert main(["submit", "--host", kfp.host, "--package", str(package), "rl.max_steps=3",
                 "rewards.weights.quality=0.5"]) == 0
    out = _last_json(capsys.readouterr().out)
    assert out["run_id"] and out["url"].startswith(kfp.host)
    body = kfp.runs[0]
    assert body["runtime_config"]["parameters"] == {
        "config_name": "cluster-cpu", "overrides": "rl.max_steps=3;rewards.weights.quality=0.5", "run_name": ""}
    assert body["service_account"] == "convrl-pipeline-runner"
    assert main(["submit", "--host", kfp.host, "--package", str(package)]) == 0
    assert sum(len(v) for v in kfp.versions.values()) == 2  # the pipeline's first version + one content version


def test_submit_wait_exits_nonzero_unless_the_run_succeeds(kfp, package, capsys, monkeypatch):  # noqa: F811
    from convrl import cluster

    monkeypatch.setattr(cluster, "wait", lambda conn, run_id, timeout_s: "FAILED")
    assert main(["submit", "--host", kfp.host, "--package", str(package), "--wait", "5"]) == 1
    assert _last_json(capsys.readouterr().out)["state"] == "FAILED"


def test_submit_no_cache_runs_the_package_with_every_task_uncached(kfp, package, capsys):  # noqa: F811
    from convrl.pipelines.caching import task_caching

    compiled = task_caching(next(yaml.safe_load_all(package.read_text())))
    assert compiled["ingest"] and compiled["train-reward-models"]  # cached unless a run says otherwise
    assert main(["submit", "--host", kfp.host, "--package", str(package), "--no-cache", "rl.max_steps=3"]) == 0
    out = _last_json(capsys.readouterr().out)
    (run,) = [r for r in kfp.runs if r["run_id"] == out["run_id"]]
    # A version run cannot turn caching off, so the run carries the spec itself (with its Kubernetes settings).
    assert not run.get("pipeline_version_reference") and not kfp.versions
    caching = task_caching(run["pipeline_spec"]["pipeline_spec"])
    assert set(caching) == set(compiled) and not any(caching.values())
    assert run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert run["runtime_config"]["parameters"]["overrides"] == "rl.max_steps=3"


def test_submit_rejects_a_bad_config_before_starting_a_run(kfp, package, capsys):  # noqa: F811
    assert main(["submit", "--host", kfp.host, "--package", str(package), "rl.max_stepz=5"]) == 2
    assert "max_steps" in capsys.readouterr().err
    assert not kfp.runs


def test_schedule_twice_keeps_one_and_unschedule_stops_it(kfp, package, capsys):  # noqa: F811
    args = ["schedule", "--host", kfp.host, "--package", str(package), "--cron", "0 0 3 * * 0"]
    assert main(args) == 0 and _last_json(capsys.readouterr().out)["action"] == "created"
    assert main(args) == 0 and _last_json(capsys.readouterr().out)["action"] == "unchanged"
    (rec,) = kfp.recurring.values()
    assert rec["trigger"]["cron_schedule"]["cron"] == "0 0 3 * * 0" and rec["no_catchup"] is True
    assert main(["schedules", "--host", kfp.host]) == 0
    assert "convrl-weekly-retraining" in capsys.readouterr().out
    assert main(["unschedule", "--host", kfp.host]) == 0
    assert not kfp.recurring
    assert main(["schedule", "--host", kfp.host, "--package", str(package), "--cron", "0 3 * * 0"]) == 2
    assert "Did you mean '0 0 3 * * 0'" in capsys.readouterr().err


def test_multi_user_needs_namespace_and_identity(kubeflow, package, capsys, monkeypatch):  # noqa: F811
    assert main(["submit", "--host", kubeflow.host, "--package", str(package), "--token", "alice"]) == 2
    assert "--namespace" in capsys.readouterr().err
    monkeypatch.setenv("KFP_TOKEN", "alice")
    assert main(["submit", "--host", kubeflow.host, "--namespace", "team-a", "--package", str(package),
                 "--service-account", "default-editor"]) == 0
    assert kubeflow.runs[0]["service_account"] == "default-editor"
    assert main(["runs", "--host", kubeflow.host, "--namespace", "team-a"]) == 0
    assert "PENDING" in capsys.readouterr().out


def test_compile_from_a_yaml_file_defaults_runs_to_its_preset_name(tmp_path, capsys):
    mine = tmp_path / "my-cluster.yaml"
    mine.write_text("cluster: {gpu_stages: [], tolerations: [], model_cache_pvc: ''}\n")
    out = tmp_path / "p.yaml"
    assert main(["compile", "--config", str(mine), "--image", IMAGE, "--output", str(out)]) == 0
    assert "src/convrl/configs/" in capsys.readouterr().err
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["config_name"]["defaultValue"] == "my-cluster"


def test_unreachable_host_is_a_clear_error(capsys):
    assert main(["runs", "--host", "http://127.0.0.1:9"]) == 2
    assert "cannot reach KFP" in capsys.readouterr().err


def _doc_commands(path) -> list[str]:
    """Shell lines inside ```bash blocks, backslash continuations joined, comments dropped."""
    lines, block, out = path.read_text().splitlines(), False, []
    for line in lines:
        if line.strip().startswith("```"):
            block = line.strip() == "```bash"
            continue
        if block:
            out.append(line)
    joined = "\n".join(out).replace("\\\n", " ")
    return [ln.split(" #")[0].strip() for ln in joined.splitlines() if ln.strip() and not ln.strip().startswith("#")]


def test_docs_commands_parse_and_paths_exist():
    """docs/cluster.md: every `convrl` command is one the CLI accepts; every applied overlay and preset exists."""
    import shlex
    from pathlib import Path

    from convrl.cli import build_parser
    from convrl.config import preset_names

    root = Path(__file__).resolve().parents[1]
    commands = _doc_commands(root / "docs" / "cluster.md")
    convrl = [c for c in commands if c.startswith("convrl ")]
    assert len(convrl) >= 10
    parser = build_parser()
    for command in convrl:
        args = parser.parse_args(shlex.split(command)[1:])
        if getattr(args, "config", ""):
            assert args.config in preset_names(), command
    for command in commands:
        for path in (w for w in command.split() if w.startswith("manifests/")):
            assert (root / path).exists(), command
