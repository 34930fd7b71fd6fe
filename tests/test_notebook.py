"""The quickstart notebook runs top to bottom on the tiny config."""

import os
from pathlib import Path

import pytest

NB = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"


@pytest.mark.slow
def test_quickstart_notebook_executes(mlflow_store, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NB, as_version=4)
    os.environ["CONVRL_NOTEBOOK_CONFIG"] = "tiny"
    client = NotebookClient(nb, timeout=900, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    outputs = "".join(str(o.get("text", "")) + str(o.get("data", {}).get("text/plain", ""))
                      for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "parent run" in outputs and "decision:" in outputs
    assert any("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
