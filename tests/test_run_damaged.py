"""Damaged checkpoints: one line naming the unreadable checkpoint and the previous readable step.

The chosen behaviour (``jiio_jax.train.checkpoint``): no silent fallback, a
``CheckpointError`` whose one-line message names the damaged step directory, the cause, and the
previous readable step with the ``mv`` that sets the damaged one aside; after that ``mv`` a
rerun resumes from the previous step.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from train_toy import toy_config

from jiio_jax.train import load_state, train_and_evaluate
from jiio_jax.train.checkpoint import CheckpointError

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = {"num_train_steps": 6, "log_every": 2, "eval_every": 6, "checkpoint_every": 2}


def _random_bytes_in_arrays(step_dir):
    rng = np.random.default_rng(0)
    data = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    for name in os.listdir(data):
        path = os.path.join(data, name)
        size = os.path.getsize(path)
        with open(path, "wb") as f:
            f.write(rng.integers(0, 256, size, dtype=np.uint8).tobytes())


def _empty_iterator_state(step_dir):
    data_iter = os.path.join(step_dir, "data_iter")
    for name in os.listdir(data_iter):
        if name.endswith(".json"):
            with open(os.path.join(data_iter, name), "w") as f:
                f.write("{}")


def _incomplete_write(step_dir):
    # Files an interrupted array write would not have produced yet.
    os.remove(os.path.join(step_dir, "state", "manifest.ocdbt"))
    os.remove(os.path.join(step_dir, "state", "_METADATA"))


DAMAGES = {
    "random_bytes": _random_bytes_in_arrays,
    "empty_iterator_state": _empty_iterator_state,
    "incomplete_write": _incomplete_write,
}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished toy run with checkpoints at steps 2, 4 and 6."""
    workdir = str(tmp_path_factory.mktemp("finished"))
    train_and_evaluate(toy_config(**RUN), workdir)
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4", "6"]
    return workdir


@pytest.fixture
def run_copy(finished, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished, workdir)
    return workdir


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_names_it_and_the_previous_step(run_copy, damage, capfd):
    damaged = os.path.join(run_copy, "checkpoints", "6")
    DAMAGES[damage](damaged)
    with pytest.raises(CheckpointError) as info:
        train_and_evaluate(toy_config(**{**RUN, "num_train_steps": 8}), run_copy)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"Checkpoint {damaged} cannot be read (")
    assert "the previous readable checkpoint is step 4" in message
    assert "Event loop is closed" not in capfd.readouterr().err

    # Following the advice resumes from step 4.
    os.rename(damaged, os.path.join(run_copy, "damaged_checkpoint_6"))
    final = train_and_evaluate(toy_config(**{**RUN, "num_train_steps": 8}), run_copy)
    assert final["step"] == 8 and int(load_state(run_copy)["step"]) == 8


@pytest.mark.parametrize("damage", ["random_bytes", "incomplete_write"])
def test_load_state_of_damaged_checkpoint(run_copy, damage):
    DAMAGES[damage](os.path.join(run_copy, "checkpoints", "6"))
    with pytest.raises(CheckpointError, match=r"checkpoints/6 cannot be read.*step 4"):
        load_state(run_copy)
    assert int(load_state(run_copy, step=4)["step"]) == 4


def test_no_readable_checkpoint_left(run_copy):
    for step in ("2", "4", "6"):
        _random_bytes_in_arrays(os.path.join(run_copy, "checkpoints", step))
    with pytest.raises(CheckpointError, match="no earlier checkpoint is readable"):
        train_and_evaluate(toy_config(**{**RUN, "num_train_steps": 8}), run_copy)


def test_missing_step_lists_the_available_ones(finished):
    with pytest.raises(FileNotFoundError, match=r"No checkpoint at step 5 .*: 2, 4, 6\."):
        load_state(finished, step=5)


def test_train_py_prints_one_line_for_a_damaged_checkpoint(run_copy):
    _incomplete_write(os.path.join(run_copy, "checkpoints", "6"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "experiments", "train.py"),
            f"--config={os.path.join(REPO, 'tests', 'train_toy_config.py')}",
            f"--workdir={run_copy}",
            *(f"--config.{k}={v}" for k, v in {**RUN, "num_train_steps": 8}.items()),
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=240,
    )
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and "Event loop is closed" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert (
        last.startswith("error: Checkpoint ") and "previous readable checkpoint is step 4" in last
    )
