"""The quickstart notebook (``experiments/quickstart.ipynb``) runs top to bottom.

It executes in a fresh kernel from ``experiments/`` (as a user would run it); its last cell
asserts the solver, JIIO and training results, so a regression fails this test.
"""

import os
import pathlib

import pytest

pytestmark = pytest.mark.slow

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

EXPERIMENTS = pathlib.Path(__file__).resolve().parents[1] / "experiments"
NOTEBOOK = EXPERIMENTS / "quickstart.ipynb"


def _outputs(cell, output_type):
    return [out for out in cell.get("outputs", []) if out["output_type"] == output_type]


def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    # The kernel inherits the environment: its temporary training workdir lands in tmp_path.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    # Stored without outputs, so the file stays small and diffable.
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXPERIMENTS)}},
    )
    client.execute()  # Raises CellExecutionError (with the traceback) if any cell fails.

    code = [c for c in nb.cells if c.cell_type == "code"]
    assert not [out for c in code for out in _outputs(c, "error")]
    stdout = "".join(
        out["text"] for c in code for out in _outputs(c, "stream") if out["name"] == "stdout"
    )
    assert "All checks passed." in stdout
    assert "status CONVERGED" in stdout
    # Four figures: solver traces, JIIO traces, loss curve, image grids.
    images = [
        out for c in code for out in _outputs(c, "display_data") if "image/png" in out["data"]
    ]
    assert len(images) >= 4, len(images)
    assert any((tmp_path / name / "metrics.jsonl").is_file() for name in os.listdir(tmp_path))
