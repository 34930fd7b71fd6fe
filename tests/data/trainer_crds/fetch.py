"""Regenerate the vendored Kubeflow Trainer TrainJob CRDs from a kubeflow/trainer git checkout.

    python tests/data/trainer_crds/fetch.py /path/to/kubeflow/trainer   # a clone with its tags

Writes ``<tag>.yaml`` for each tag in TAGS: the CRD at
``manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml`` with every
``description`` removed (they are 70% of the bytes and do not affect validation).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

TAGS = ("v2.0.1", "v2.1.0", "v2.2.1", "v2.3.0")
CRD = "manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml"


def strip(node):
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(repo: str) -> None:
    here = Path(__file__).parent
    for tag in TAGS:
        commit = subprocess.run(["git", "-C", repo, "rev-parse", f"{tag}^{{commit}}"], check=True,
                                capture_output=True, text=True).stdout.strip()
        text = subprocess.run(["git", "-C", repo, "show", f"{tag}:{CRD}"], check=True, capture_output=True,
                              text=True).stdout
        crd = strip(yaml.safe_load(text))
        header = f"# kubeflow/trainer {tag} ({commit}) {CRD}, descriptions removed by fetch.py\n"
        (here / f"{tag}.yaml").write_text(header + yaml.safe_dump(crd, sort_keys=False))
        print(tag, commit)


if __name__ == "__main__":
    main(sys.argv[1])
