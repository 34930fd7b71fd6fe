"""Compiled pipeline packages: which convrl pipeline a package is, what it runs, and the run parameters it takes.

convrl compiles two pipelines for a cluster; each is published under its own KFP name:

    training    pipelines/conversational_rl.py   convrl-conversational-rl   (schedule: convrl-weekly-retraining)
    monitoring  pipelines/monitoring.py          convrl-monitoring          (schedule: convrl-monitoring)

A package names its pipeline (``pipelineInfo.name``) and declares its run parameters
with their types (``root.inputDefinitions``); a run sends only those::

    info = package_info("build/monitoring.yaml")   # {"pipeline": "monitoring", "name": "convrl-monitoring", ...}
    run_parameters(info, {"config_name": "cluster", "overrides": "", "run_name": ""}, ["run_online_ab=true"])
    # {'config_name': 'cluster', 'overrides': '', 'run_online_ab': True}   (monitoring declares no run_name)
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Sequence

import yaml

from convrl.cluster import ClusterError

# Each module has PIPELINE_NAME, DESCRIPTION, COMPILED, SCHEDULE_NAME and
# compile_pipeline(cluster, image, path, config_name).
PIPELINES = {"training": "convrl.pipelines.conversational_rl", "monitoring": "convrl.pipelines.monitoring"}
# Parameters the command line adds on its own: sent only to a pipeline that declares them.
CLI_ADDED = ("run_name",)
# Parameters with their own command-line options, not --param.
OWN_OPTIONS = {"config_name": "--config", "overrides": "trailing KEY=VALUE config overrides",
               "run_name": "--run-name"}
# KFP parameter types other than STRING: the Python types a value must have, and how to say so.
TYPES = {"BOOLEAN": (bool, "true or false"), "NUMBER_INTEGER": (int, "a whole number"),
         "NUMBER_DOUBLE": ((int, float), "a number"), "LIST": (list, "a list, e.g. [a, b]"),
         "STRUCT": (dict, "a mapping, e.g. {a: 1}")}


def pipeline_module(kind: str):
    """The module of pipeline ``kind`` (a key of PIPELINES)."""
    return importlib.import_module(PIPELINES[kind])


def package_info(path: str | os.PathLike) -> dict:
    """What a compiled package is and runs.

    ``pipeline`` (training | monitoring), ``name`` (its KFP pipeline name), ``images``,
    the default ``config_name`` and ``parameters`` (declared run parameter -> KFP type).
    """
    p = Path(path)
    if not p.is_file():
        raise ClusterError(f"pipeline package {p} not found: run `convrl compile --config <preset> "
                           f"--image <your image> --output {p}` first")
    spec = next(yaml.safe_load_all(p.read_text()))
    name = spec["pipelineInfo"]["name"]
    kinds = {pipeline_module(kind).PIPELINE_NAME: kind for kind in PIPELINES}
    if name not in kinds:
        raise ClusterError(f"{p} holds pipeline {name!r}, not one convrl compiles ({', '.join(kinds)}): "
                           "compile it with `convrl compile --pipeline training|monitoring`")
    params = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    images = sorted({ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()})
    return {"pipeline": kinds[name], "name": name, "images": images,
            "config_name": params.get("config_name", {}).get("defaultValue", ""),
            "parameters": {key: decl.get("parameterType", "STRING") for key, decl in params.items()}}


def _typed(key: str, text: str, kind: str):
    if kind not in TYPES:  # STRING
        return text
    want, words = TYPES[kind]
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = None
    if not isinstance(value, want) or (kind.startswith("NUMBER") and isinstance(value, bool)):
        raise ClusterError(f"--param {key}={text!r}: the pipeline's {key} takes {words}")
    return float(value) if kind == "NUMBER_DOUBLE" else value


def run_parameters(info: dict, params: dict, extra: Sequence[str] = ()) -> dict:
    """The parameters to send to a run of ``info``'s pipeline: only ones it declares.

    ``params`` are what the command line sets itself; ``extra`` are ``KEY=VALUE`` texts
    (``--param``), typed as the pipeline declares them. A key the pipeline does not
    declare is an error naming the ones it takes, except CLI_ADDED keys, left out.
    """
    declared = info["parameters"]
    out = {key: value for key, value in params.items() if key in declared or key not in CLI_ADDED}
    for item in extra:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ClusterError(f"--param {item!r} must look like KEY=VALUE, e.g. run_online_ab=true")
        if key in OWN_OPTIONS:
            raise ClusterError(f"set {key} with {OWN_OPTIONS[key]}, not --param")
        out[key] = _typed(key, text.strip(), declared.get(key, "STRING"))
    unknown = sorted(set(out) - set(declared))
    if unknown:
        raise ClusterError(f"pipeline {info['name']} takes no parameter {', '.join(map(repr, unknown))}; "
                           f"it takes: {', '.join(sorted(declared))}")
    return out
