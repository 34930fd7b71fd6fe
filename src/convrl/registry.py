"""Registry policy: register candidates, move the ``champion`` alias, roll back.

Conventions (MLflow aliases; stages are deprecated):

* every candidate version gets ``challenger`` and tags: pipeline run, data
  fingerprint, config hash, headline metrics;
* ``champion`` moves only on a promote decision (or a person's ``convrl
  promote``), and the version it replaces is recorded on the new champion
  (``previous_champion``) so ``convrl rollback`` knows where to go;
* re-registering the same pipeline run returns the existing version
  (idempotent), and aliases are overwritten, never deleted, so the registry is
  never left without a champion once it has one.
"""

from __future__ import annotations

import time

from convrl import tracking

CHAMPION = "champion"
CHALLENGER = "challenger"


class RegistryError(RuntimeError):
    pass


def register_candidate(model_uri: str, name: str, pipeline_run_id: str, tags: dict[str, str]) -> tuple[str, bool]:
    """Register (once per pipeline run) and set ``challenger``; returns (version, created)."""
    existing = tracking.find_version_by_tag(name, "convrl.pipeline_run_id", pipeline_run_id)
    if existing:
        if tracking.alias_version(name, CHALLENGER) != existing:
            tracking.set_alias(name, CHALLENGER, existing)
        return existing, False
    version = tracking.register(model_uri, name, {"convrl.pipeline_run_id": pipeline_run_id,
                                                  **{k: str(v) for k, v in tags.items()}})
    tracking.set_alias(name, CHALLENGER, version)
    return version, True


def promote(name: str, version: str, reason: str, actor: str = "pipeline") -> dict:
    """Point ``champion`` at ``version``, recording the previous champion; no-op if it already is."""
    try:
        tracking.version_info(name, version)
    except Exception as exc:
        raise RegistryError(f"{name} has no version {version}: {exc}") from exc
    previous = tracking.alias_version(name, CHAMPION)
    if previous == version:
        return {"champion": version, "previous": previous, "moved": False}
    tracking.set_version_tags(name, version, {"convrl.previous_champion": previous or "",
                                              "convrl.promoted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                              "convrl.promotion_reason": reason, "convrl.promoted_by": actor})
    tracking.set_alias(name, CHAMPION, version)
    tracking.set_model_tag(name, "convrl.last_promotion", f"v{previous or '-'} -> v{version}: {reason}")
    return {"champion": version, "previous": previous, "moved": True}


def rollback(name: str, reason: str, actor: str = "cli") -> dict:
    """Move ``champion`` back to the version it replaced."""
    current = tracking.alias_version(name, CHAMPION)
    if current is None:
        raise RegistryError(f"{name} has no champion to roll back from")
    previous = tracking.version_info(name, current)["tags"].get("convrl.previous_champion")
    if not previous:
        raise RegistryError(f"{name} v{current} records no previous champion; use `convrl promote --version N`")
    tracking.set_version_tags(name, current, {"convrl.rolled_back": reason})
    tracking.set_alias(name, CHAMPION, previous)
    tracking.set_version_tags(name, previous, {"convrl.restored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                                               "convrl.restored_reason": reason, "convrl.restored_by": actor})
    tracking.set_model_tag(name, "convrl.last_promotion", f"rollback v{current} -> v{previous}: {reason}")
    return {"champion": previous, "previous": current}


def status(name: str) -> dict:
    rm = tracking.registered_model(name)
    if rm is None:
        return {"name": name, "aliases": {}}
    return rm
