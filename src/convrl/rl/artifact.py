"""The policy artifact: what the RL stage hands to evaluation and the registry.

A policy directory holds the exported Hugging Face checkpoint (``policy_subdir``) and
``policy.json`` (this dataclass): the base model it was trained from, the LoggedModel
it was logged as, the stage run, and the training summary::

    art = PolicyArtifact.load(policy_dir)
    art.weights_dir(policy_dir)    # the checkpoint to load with transformers
    art.logged_model               # models:/m-... (register this)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from convrl.artifact_io import load_json, save_json

POLICY_FILE = "policy.json"


@dataclass
class PolicyArtifact:
    policy_subdir: str
    base_model: str = ""
    algorithm: str = ""
    logged_model: str = ""
    stage_run_id: str = ""
    resumed_from: str | None = None
    summary: dict[str, float] = field(default_factory=dict)

    def weights_dir(self, policy_dir: str | Path) -> Path:
        return Path(policy_dir) / self.policy_subdir

    def save(self, policy_dir: str | Path) -> Path:
        return save_json(self, Path(policy_dir) / POLICY_FILE)

    @classmethod
    def load(cls, policy_dir: str | Path) -> PolicyArtifact:
        return load_json(cls, Path(policy_dir) / POLICY_FILE, "a policy artifact: pass the policy output of the RL stage")
