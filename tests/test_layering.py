"""The package's layers import one way, nobody imports another module's private names, only
``convrl.tracking`` talks to MLflow, and modules stay small enough to read.

Layers, lowest first (README, "Layout"):

    core     convrl.config, convrl.runtime, convrl.home, convrl.models, convrl.artifact_io, convrl.data.schema
    data     convrl.data.*, convrl.data_checks.*
    rewards  convrl.rewards.*
    rl       convrl.rl.*
    eval     convrl.eval.*, convrl.meta_eval*
    stages   convrl.stages.*, convrl.tracking.*, convrl.registry, convrl.serving.*, convrl.monitoring.*
    entry    convrl.components.*, convrl.pipelines.*, convrl.cluster, and every command line
             (convrl.cli, convrl.*_cli, any *.cli or __main__ module)

A module may import its own layer and those below it, never one above. The test reads
every import statement, function-level ones included, so a lazy import cannot hide a cycle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where each importable package lives in the tree (pyproject's package-dir mapping).
TREES = {"convrl": ROOT / "src" / "convrl", "convrl.components": ROOT / "components",
         "convrl.pipelines": ROOT / "pipelines", "convrl.data_checks": ROOT / "data_checks"}
LAYERS = ["core", "data", "rewards", "rl", "eval", "stages", "entry"]
MAX_LINES = 400  # issue 12: "no module over ~400 lines"


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "convrl":
        raise ValueError(module)
    sub = parts[1] if len(parts) > 1 else ""
    if parts[-1] in ("cli", "__main__") or parts[-1].endswith("_cli"):
        return "entry"  # a command line is an entry point wherever it lives (e.g. convrl.meta_eval.cli)
    if module == "convrl" or sub in ("config", "runtime", "home", "models", "artifact_io") or module == "convrl.data.schema":
        return "core"
    if sub in ("data", "data_checks"):
        return "data"
    if sub in ("rewards", "rl"):
        return sub
    if sub == "eval" or sub.startswith("meta_eval"):
        return "eval"
    if sub in ("stages", "tracking", "registry", "serving", "monitoring"):
        return "stages"
    if sub in ("components", "pipelines", "cli", "cluster") or sub.endswith("_cli"):
        return "entry"
    raise AssertionError(f"{module}: no layer assigned; add it to tests/test_layering.py and the README's layout")


def modules() -> list[tuple[str, Path]]:
    out = []
    for pkg, root in TREES.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out.append((".".join([pkg, *parts]), path))
    return out


def imports(module: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((a.name, [], node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_pkg else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [a.name for a in node.names], node.lineno))
    return found


def resolve(name: str, names: list[str]) -> list[str]:
    """The convrl modules an import touches: ``from convrl.x import y`` may name a submodule y."""
    known = {m for m, _ in modules()}
    out = [name] if name in known else []
    out += [f"{name}.{n}" for n in names if f"{name}.{n}" in known]
    if not out and name.startswith("convrl"):
        parent = name
        while parent and parent not in known:
            parent = parent.rpartition(".")[0]
        out = [parent] if parent else []
    return out


ALL = modules()


def test_every_module_has_a_layer():
    for module, _ in ALL:
        layer_of(module)


@pytest.mark.parametrize("module,path", ALL, ids=[m for m, _ in ALL])
def test_imports_go_one_way(module, path):
    mine = LAYERS.index(layer_of(module))
    bad = []
    for name, names, line in imports(module, path):
        if not name.startswith("convrl"):
            continue
        for target in resolve(name, names):
            theirs = LAYERS.index(layer_of(target))
            if theirs > mine:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target} ({layer_of(target)} layer) "
                           f"from the {layer_of(module)} layer")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module,path", ALL, ids=[m for m, _ in ALL])
def test_no_private_names_across_modules(module, path):
    bad = [f"{path.relative_to(ROOT)}:{line} imports {n} from {name}"
           for name, names, line in imports(module, path)
           if name.startswith("convrl") and name != module
           for n in names if n.startswith("_") and not n.startswith("__")]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("module,path", ALL, ids=[m for m, _ in ALL])
def test_only_tracking_imports_mlflow(module, path):
    if module.startswith("convrl.tracking"):
        return
    bad = [f"{path.relative_to(ROOT)}:{line} imports {name}" for name, _, line in imports(module, path)
           if name == "mlflow" or name.startswith("mlflow.")]
    assert not bad, "\n".join(bad) + "\n(go through convrl.tracking, the one module that owns MLflow access)"


@pytest.mark.parametrize("module,path", ALL, ids=[m for m, _ in ALL])
def test_modules_stay_readable(module, path):
    n = len(path.read_text().splitlines())
    assert n <= MAX_LINES, f"{path.relative_to(ROOT)} has {n} lines; split it (limit {MAX_LINES})"


def test_the_checker_catches_an_upward_import(tmp_path):
    fake = tmp_path / "bad.py"
    fake.write_text("def f():\n    from convrl.stages.rl import rl_stage\n    from convrl.data.ingest import _x\n")
    found = imports("convrl.rewards.bad", fake)
    assert ("convrl.stages.rl", ["rl_stage"], 2) in found
    assert LAYERS.index(layer_of("convrl.stages.rl")) > LAYERS.index(layer_of("convrl.rewards.heads"))
    assert any(n.startswith("_") for _, names, _ in found for n in names)


def test_every_package_is_listed_for_installation():
    """A package missing from pyproject's list imports in an editable checkout but not from the built image."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    present = {m for m, path in ALL if path.name == "__init__.py"}
    assert present <= listed, f"add to [tool.setuptools] packages in pyproject.toml: {sorted(present - listed)}"
