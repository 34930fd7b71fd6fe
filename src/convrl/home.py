"""Where convrl keeps its state: ``$CONVRL_HOME`` (default ``~/.convrl``).

It holds converted models (``models/``), the default MLflow store
(``mlflow.db`` + ``mlartifacts/``) and local pipeline outputs (``runs/``).
"""

from __future__ import annotations

import os
from pathlib import Path


class HomeNotWritable(RuntimeError):
    pass


def convrl_home() -> Path:
    return Path(os.environ.get("CONVRL_HOME", Path.home() / ".convrl")).expanduser().resolve()


def ensure_home() -> Path:
    home = convrl_home()
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe = home / ".write-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise HomeNotWritable(
            f"CONVRL_HOME={home} is not writable ({exc.strerror or exc}). Point CONVRL_HOME at a "
            "writable directory, e.g. `export CONVRL_HOME=$PWD/.convrl`.") from exc
    return home
