"""Which models ``convrl serve`` serves: the champion, and the challenger beside it.

``serve.champion`` / ``serve.challenger`` name a registry URI
(``models:/convrl-policy@champion``), a base model (``smollm2-135m-instruct``)
or a checkpoint dir. Registry aliases are resolved to a version once, at start,
and that version is what is loaded and what every trace records, so an alias
that moves while the server runs never mixes two versions under one name
(restart the server to pick up a new champion).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from convrl import models, tracking
from convrl.serving.sessions import CHALLENGER, CHAMPION


class ServeError(RuntimeError):
    """The server cannot start as configured; the message says what to change."""


@dataclass
class Variant:
    name: str  # champion | challenger
    spec: str  # what the config named
    model_name: str  # registry model name, or the base model / dir name
    version: str  # registry version, or "base"
    model_dir: str

    @property
    def label(self) -> str:
        return f"{self.model_name} v{self.version}" if self.version != "base" else self.model_name


def _registry_spec(spec: str) -> tuple[str, str] | None:
    """``models:/name@alias`` or ``models:/name/3`` -> (name, alias-or-version); None otherwise."""
    if not spec.startswith("models:/") or spec.startswith("models:/m-"):
        return None
    rest = spec[len("models:/"):]
    if "@" in rest:
        return tuple(rest.split("@", 1))  # type: ignore[return-value]
    if "/" in rest:
        return tuple(rest.split("/", 1))  # type: ignore[return-value]
    return None


def resolve(name: str, spec: str, required: bool) -> Variant | None:
    reg = _registry_spec(spec)
    if reg is None:
        if spec.startswith(("models:/", "runs:/")):
            return Variant(name, spec, spec.split(":/", 1)[1].split("/")[0], "base", tracking.resolve_model_dir(spec))
        model_dir = models.resolve_policy(spec)
        if not (Path(model_dir) / "config.json").exists():
            raise ServeError(f"serve.{name}={spec!r} is neither a registry URI, a bundled model name nor a "
                             "checkpoint dir with config.json")
        return Variant(name, spec, Path(spec).name, "base", model_dir)
    model_name, ref = reg
    version = ref if ref.isdigit() else tracking.alias_version(model_name, ref)
    if version is None:
        if not required:
            return None
        raise ServeError(f"{model_name} has no '{ref}' alias in the registry at {tracking.tracking_uri()}. "
                         "Run the pipeline (`convrl run`) or `convrl promote --version N`, or serve a base model: "
                         "`convrl serve serve.champion=smollm2-135m-instruct`.")
    return Variant(name, spec, model_name, version, tracking.resolve_model_dir(f"models:/{model_name}/{version}"))


def resolve_variants(serve_cfg, registry_model: str) -> dict[str, Variant]:
    """{"champion": Variant, "challenger": Variant?}; the challenger is skipped if absent or the same version."""
    champion = resolve(CHAMPION, serve_cfg.champion or f"models:/{registry_model}@champion", required=True)
    out = {CHAMPION: champion}
    if serve_cfg.challenger.lower() == "none":
        return out
    challenger = resolve(CHALLENGER, serve_cfg.challenger or f"models:/{registry_model}@challenger",
                         required=bool(serve_cfg.challenger))
    if challenger is not None and (challenger.model_name, challenger.version) != (champion.model_name,
                                                                                 champion.version):
        out[CHALLENGER] = challenger
    return out
