"""Every notebook in notebooks/ runs top to bottom in a real kernel, and its progress bars reach their totals."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
#: Seconds one cell may run.
CELL_TIMEOUT = 60
#: Seconds the kernel gets to start.
STARTUP_TIMEOUT = 40
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"


@pytest.fixture(autouse=True)
def private_jupyter_dirs(tmp_path, monkeypatch):
    """Kernels keep their history and connection files in the test's folder, not in the user's."""
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "jupyter-runtime"))


def test_there_are_notebooks():
    assert {path.name for path in NOTEBOOKS} >= {"quickstart.ipynb", "monte_carlo.ipynb"}


@pytest.mark.timeout(150)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs_top_to_bottom(path, crowd_home, tmp_path):
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT,
        startup_timeout=STARTUP_TIMEOUT,
        kernel_name="python3",
        store_widget_state=True,
        resources={"metadata": {"path": str(tmp_path)}},
    )
    client.execute()  # raises CellExecutionError on an error in a cell not tagged raises-exception

    for cell in notebook.cells:
        errors = [o for o in cell.get("outputs", []) if o["output_type"] == "error"]
        if "raises-exception" in cell.metadata.get("tags", []):
            assert errors, f"this cell should fail and did not:\n{cell.source}"
            assert len(errors[0]["traceback"]) < 10, "a remote error shows its traceback, not ours"

    state = notebook.metadata["widgets"][WIDGET_STATE]["state"]
    bars = [model["state"] for model in state.values() if model["model_name"] == "IntProgressModel"]
    maps = sum(cell.source.startswith("%%crowdmap") for cell in notebook.cells)
    assert len(bars) >= maps > 0, f"{len(bars)} progress bars for {maps} %%crowdmap cells"
    for bar in bars:
        assert bar["value"] == bar["max"] > 0, f"a progress bar stopped at {bar['value']}/{bar['max']}"
        assert bar["bar_style"] in ("success", "danger")
    assert any(bar["bar_style"] == "success" for bar in bars)
