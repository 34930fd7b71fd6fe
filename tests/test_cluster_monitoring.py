"""The monitoring pipeline on a cluster through the CLI: `convrl compile --pipeline monitoring`, then
upload | submit | schedule | unschedule against the loopback KFP API (tests/kfp_fakes), like the training path
in tests/test_cluster_cli.py. Also: the TLS options reach ``kfp.Client``."""

import json

import pytest
import yaml

from convrl.cli import main
from convrl.cluster import ClusterError
from convrl.pipelines.packages import package_info, run_parameters
from tests.test_cluster import kfp, kubeflow  # noqa: F401 - the stub server fixtures

IMAGE = "registry.example.com/team/convrl:9"
MONITORING = "convrl-monitoring"
DECLARED = ["ab_since", "config_name", "overrides", "promote", "run_online_ab"]


def _last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    """A monitoring package and a training package, both compiled with IMAGE and the cluster-cpu preset."""
    root = tmp_path_factory.mktemp("pkgs")
    out = {"monitoring": root / "monitoring.yaml", "training": root / "convrl.yaml"}
    assert main(["compile", "--pipeline", "monitoring", "--config", "cluster-cpu", "--image", IMAGE,
                 "--output", str(out["monitoring"])]) == 0
    assert main(["compile", "--config", "cluster-cpu", "--image", IMAGE, "--output", str(out["training"])]) == 0
    return out


def _uploads(stub) -> list[dict]:
    return [r for r in stub.seen if r["path"].endswith(("/upload", "/upload_version"))]


def test_compile_records_the_pipeline_and_its_image(packages):
    info = package_info(packages["monitoring"])
    assert info["pipeline"] == "monitoring" and info["name"] == MONITORING
    assert info["images"] == [IMAGE] and info["config_name"] == "cluster-cpu"
    assert sorted(info["parameters"]) == DECLARED and info["parameters"]["run_online_ab"] == "BOOLEAN"
    training = package_info(packages["training"])  # the default --pipeline is unchanged
    assert training["pipeline"] == "training" and training["name"] == "convrl-conversational-rl"
    assert training["images"] == [IMAGE] and "run_name" in training["parameters"]


def test_upload_publishes_monitoring_as_its_own_pipeline(kfp, packages, capsys):  # noqa: F811
    assert main(["upload", "--host", kfp.host, "--package", str(packages["monitoring"])]) == 0
    first = _last_json(capsys.readouterr().out)
    assert first["pipeline"] == MONITORING and first["uploaded"] is True
    (pipeline,) = kfp.pipelines.values()
    assert pipeline["display_name"] == MONITORING and "served conversations" in pipeline["description"]
    for upload in _uploads(kfp):
        spec = next(yaml.safe_load_all(upload["body"]["uploadfile"]))
        assert spec["pipelineInfo"]["name"] == MONITORING
        assert {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()} == {IMAGE}
    assert main(["upload", "--host", kfp.host, "--package", str(packages["training"])]) == 0
    assert sorted(p["display_name"] for p in kfp.pipelines.values()) == ["convrl-conversational-rl", MONITORING]
    assert main(["upload", "--host", kfp.host, "--package", str(packages["monitoring"])]) == 0
    again = _last_json(capsys.readouterr().out)
    assert again["pipeline_version_id"] == first["pipeline_version_id"] and again["uploaded"] is False


def test_submit_sends_only_the_parameters_monitoring_declares(kfp, packages, capsys):  # noqa: F811
    pkg = str(packages["monitoring"])
    assert main(["submit", "--host", kfp.host, "--package", pkg, "monitor.window_days=2"]) == 0
    run = kfp.runs[-1]
    # No run_name: the monitoring pipeline does not declare it (the training pipeline would get it).
    assert run["runtime_config"]["parameters"] == {"config_name": "cluster-cpu", "overrides": "monitor.window_days=2"}
    assert run["display_name"].startswith("convrl-monitoring-cluster-cpu-")
    monitoring_id = next(p["pipeline_id"] for p in kfp.pipelines.values() if p["display_name"] == MONITORING)
    assert run["pipeline_version_reference"]["pipeline_id"] == monitoring_id
    assert main(["submit", "--host", kfp.host, "--package", pkg, "--run-name", "check-ab", "--param",
                 "run_online_ab=true", "--param", "ab_since=3d", "--param", "promote=no"]) == 0
    run = kfp.runs[-1]
    assert run["display_name"] == "check-ab"
    assert run["runtime_config"]["parameters"] == {"config_name": "cluster-cpu", "overrides": "",
                                                   "run_online_ab": True, "ab_since": "3d", "promote": False}
    assert len(kfp.pipelines) == 1 and _last_json(capsys.readouterr().out)["run_id"] == run["run_id"]


@pytest.mark.parametrize("param,needles", [
    ("rl_max_steps=800", ["'rl_max_steps'", "convrl-monitoring", ", ".join(DECLARED)]),
    ("run_online_ab=maybe", ["run_online_ab", "true or false"]),
    ("config_name=demo", ["--config"]),
    ("ab_since", ["KEY=VALUE"]),
])
def test_a_parameter_monitoring_does_not_take_is_a_clear_error(kfp, packages, capsys, param, needles):  # noqa: F811
    for command in ("submit", "schedule"):
        extra = ["--cron", "0 0 6 * * *"] if command == "schedule" else []
        assert main([command, "--host", kfp.host, "--package", str(packages["monitoring"]), "--param", param,
                     *extra]) == 2
        err = capsys.readouterr().err
        assert all(n in err for n in needles), err
    assert not kfp.runs and not kfp.recurring


def test_schedule_monitoring_twice_keeps_one_and_unschedule_stops_it(kfp, packages, capsys):  # noqa: F811
    args = ["schedule", "--host", kfp.host, "--package", str(packages["monitoring"]), "--cron", "0 0 6 * * *",
            "--name", "nightly-monitor"]
    assert main(args) == 0 and _last_json(capsys.readouterr().out)["action"] == "created"
    assert main(args) == 0 and _last_json(capsys.readouterr().out) == {
        "recurring_run_id": next(iter(kfp.recurring)), "action": "unchanged", "name": "nightly-monitor",
        "cron": "0 0 6 * * *"}
    (rec,) = kfp.recurring.values()
    assert rec["display_name"] == "nightly-monitor" and rec["trigger"]["cron_schedule"]["cron"] == "0 0 6 * * *"
    assert rec["runtime_config"]["parameters"] == {"config_name": "cluster-cpu", "overrides": ""}
    monitoring_id = next(p["pipeline_id"] for p in kfp.pipelines.values() if p["display_name"] == MONITORING)
    assert rec["pipeline_version_reference"]["pipeline_id"] == monitoring_id
    # The training schedule's default name is its own: scheduling retraining leaves the monitor in place.
    training = ["schedule", "--host", kfp.host, "--package", str(packages["training"]), "--cron", "0 0 3 * * 0"]
    assert main(training) == 0 and _last_json(capsys.readouterr().out)["name"] == "convrl-weekly-retraining"
    assert sorted(r["display_name"] for r in kfp.recurring.values()) == ["convrl-weekly-retraining",
                                                                         "nightly-monitor"]
    # A schedule of another pipeline under the same name is refused, not silently replaced.
    assert main([*training, "--name", "nightly-monitor"]) == 2
    assert "runs another pipeline" in capsys.readouterr().err and len(kfp.recurring) == 2
    assert main(["unschedule", "--host", kfp.host, "--name", "nightly-monitor"]) == 0
    assert [r["display_name"] for r in kfp.recurring.values()] == ["convrl-weekly-retraining"]
    assert main(["schedule", "--host", kfp.host, "--package", str(packages["monitoring"]), "--cron",
                 "0 0 * * * *"]) == 0
    assert _last_json(capsys.readouterr().out)["name"] == "convrl-monitoring"  # its default name


def test_monitoring_in_multi_user_kubeflow_lives_in_the_profile(kubeflow, packages, capsys):  # noqa: F811
    common = ["--host", kubeflow.host, "--namespace", "team-a", "--token", "alice", "--package",
              str(packages["monitoring"])]
    assert main(["schedule", *common, "--cron", "0 0 6 * * *", "--name", "nightly-monitor"]) == 0
    assert main(["schedule", *common, "--cron", "0 0 6 * * *", "--name", "nightly-monitor"]) == 0
    assert _last_json(capsys.readouterr().out)["action"] == "unchanged"
    (pipeline,) = kubeflow.pipelines.values()
    assert pipeline["display_name"] == MONITORING and pipeline["namespace"] == "team-a"
    (rec,) = kubeflow.recurring.values()
    assert rec["namespace"] == "team-a"


def test_run_parameters_types_values_as_the_pipeline_declares():
    info = {"name": "p", "parameters": {"config_name": "STRING", "rl_max_steps": "NUMBER_INTEGER",
                                        "margin": "NUMBER_DOUBLE", "tags": "LIST", "on": "BOOLEAN"}}
    base = {"config_name": "cluster", "run_name": "r1"}
    assert run_parameters(info, base, ["rl_max_steps=800", "margin=1", "tags=[a, b]", "on=false"]) == {
        "config_name": "cluster", "rl_max_steps": 800, "margin": 1.0, "tags": ["a", "b"], "on": False}
    for bad, words in (("rl_max_steps=8.5", "whole number"), ("rl_max_steps=true", "whole number"),
                       ("margin=x", "a number"), ("tags=a", "a list")):
        with pytest.raises(ClusterError, match=words):
            run_parameters(info, base, [bad])
    with pytest.raises(ClusterError, match=r"takes no parameter 'overrides'; it takes: config_name, margin"):
        run_parameters(info, {**base, "overrides": ""})  # only run_name is left out silently


def test_package_of_another_pipeline_is_refused(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("pipelineInfo: {name: someone-elses}\nroot: {}\ndeploymentSpec: {executors: {}}\n")
    with pytest.raises(ClusterError, match="'someone-elses', not one convrl compiles"):
        package_info(other)


@pytest.mark.parametrize("flags,expected", [(["--ca-cert", "CA"], {"ssl_ca_cert": "CA", "verify_ssl": None}),
                                            (["--insecure"], {"ssl_ca_cert": None, "verify_ssl": False})])
def test_tls_options_reach_kfp_client(kfp, monkeypatch, tmp_path, flags, expected):  # noqa: F811
    import kfp as kfp_sdk

    from convrl import cluster

    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    flags = [str(ca) if f == "CA" else f for f in flags]
    expected = {k: str(ca) if v == "CA" else v for k, v in expected.items()}
    clients, gets = [], []

    class Recording(kfp_sdk.Client):
        def __init__(self, *args, **kwargs):
            clients.append(kwargs)
            super().__init__(*args, **kwargs)

    real_get = cluster.requests.get

    def recording_get(url, **kwargs):
        gets.append(kwargs["verify"])
        return real_get(url, **kwargs)

    monkeypatch.setattr(kfp_sdk, "Client", Recording)
    monkeypatch.setattr(cluster.requests, "get", recording_get)
    assert main(["runs", "--host", kfp.host, *flags]) == 0
    (kwargs,) = clients
    assert {k: kwargs[k] for k in expected} == expected and kwargs["host"] == kfp.host
    # The preflight checks the same certificate (or skips verification) before kfp.Client is built.
    assert gets == [expected["ssl_ca_cert"] or expected["verify_ssl"]]
