"""The quickstart notebook (``experiments/quickstart.ipynb``).

It is stored with its outputs (a reader sees the results before running anything) and runs top
to bottom in a fresh kernel from ``experiments/`` (as a user would run it); its last cell
asserts the solver, JIIO and training results, so a regression fails the slow test. Its setup
cell also works without a checkout, from a git URL (as on Colab).
"""

import os
import pathlib
import subprocess
import sys

import pytest

nbformat = pytest.importorskip("nbformat")

REPO = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
NOTEBOOK = EXPERIMENTS / "quickstart.ipynb"


def _outputs(cells, output_type):
    return [out for c in cells for out in c.get("outputs", []) if out["output_type"] == output_type]


def _stdout(cells):
    return "".join(out["text"] for out in _outputs(cells, "stream") if out["name"] == "stdout")


def _pngs(cells):
    return [out for out in _outputs(cells, "display_data") if "image/png" in out["data"]]


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_notebook_is_stored_with_outputs_and_a_colab_badge():
    nb = nbformat.read(NOTEBOOK, as_version=4)
    code = _code(nb)
    # Every code cell was run, in order, in one session.
    counts = [c.get("execution_count") for c in code]
    assert counts == list(range(1, len(code) + 1)), counts
    assert not _outputs(code, "error")
    assert "All checks passed." in _stdout(code)
    assert len(_pngs(code)) >= 4  # solver traces, JIIO traces, loss curve, image grids
    first = nb.cells[0].source
    assert "colab-badge.svg" in first and "JIIO_JAX_GIT_URL" in first
    assert "tensorboard --logdir" in "".join(c.source for c in nb.cells)


@pytest.mark.slow  # Two fresh interpreters importing jax: ~30 s on a busy 2-core machine.
def test_setup_cell_clones_from_the_git_url_without_a_checkout(tmp_path):
    """The Colab path: no checkout above the working directory, ``JIIO_JAX_GIT_URL`` set."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    setup = next(c.source for c in _code(nb) if "JIIO_JAX_GIT_URL" in c.source)
    script = tmp_path / "setup_cell.py"
    script.write_text(setup + "\nprint('cwd', os.getcwd())\n")
    env = {**os.environ, "JIIO_JAX_GIT_URL": str(REPO)}  # A local clone is a valid git URL.
    out = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    clone = tmp_path / "jiio_jax_repo"
    assert (clone / "configs" / "digits_gen.py").is_file()
    assert f"cwd {clone / 'experiments'}" in out.stdout
    # Without a URL it stops with an error that says what to set.
    env.pop("JIIO_JAX_GIT_URL")
    (tmp_path / "empty").mkdir()
    out = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path / "empty",
        env=env,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "Set JIIO_JAX_GIT_URL" in out.stderr


@pytest.mark.slow
def test_quickstart_notebook_runs(tmp_path, monkeypatch):
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    # The kernel inherits the environment: its temporary training workdir lands in tmp_path.
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    nb = nbformat.read(NOTEBOOK, as_version=4)
    for cell in _code(nb):
        cell.outputs, cell.execution_count = [], None
    client = nbclient.NotebookClient(
        nb,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": str(EXPERIMENTS)}},
    )
    client.execute()  # Raises CellExecutionError (with the traceback) if any cell fails.

    code = _code(nb)
    assert not _outputs(code, "error")
    stdout = _stdout(code)
    assert "All checks passed." in stdout
    assert "status CONVERGED" in stdout
    # Four figures: solver traces, JIIO traces, loss curve, image grids.
    assert len(_pngs(code)) >= 4, len(_pngs(code))
    assert any((tmp_path / name / "metrics.jsonl").is_file() for name in os.listdir(tmp_path))
