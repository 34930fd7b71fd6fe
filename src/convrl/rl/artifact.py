"""The policy artifact: what the RL stage hands to evaluation and the registry.

A policy directory holds the exported Hugging Face checkpoint (``policy_subdir``) and
``policy.json`` (this dataclass): the base model it was trained from, the LoggedModel
it was logged as, the stage run, and the training summary::

    art = PolicyArtifact.load(policy_dir)
    art.weights_dir(policy_dir)    # the checkpoint to load with transformers
    art.logged_model               # models:/m-... (register this)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

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
        path = Path(policy_dir) / POLICY_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True))
        return path

    @classmethod
    def load(cls, policy_dir: str | Path) -> PolicyArtifact:
        path = Path(policy_dir) / POLICY_FILE
        if not path.exists():
            raise FileNotFoundError(f"{policy_dir} is not a policy artifact (no {POLICY_FILE}): pass the policy "
                                    "output of the RL stage")
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})
