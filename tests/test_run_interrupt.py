"""SIGINT / SIGTERM during training: a checkpoint at the current step, one line, exact resume.

Runs the toy task of ``train_toy.py``; the subprocess test drives the real
``experiments/train.py``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from train_toy import toy_config

from jiio_jax.train import load_state, read_metrics, train_and_evaluate
from jiio_jax.train import mesh as mesh_lib
from jiio_jax.train.checkpoint import checkpoint_steps
from jiio_jax.train.interrupt import TrainingInterrupted

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN = {
    "num_train_steps": 8,
    "log_every": 1,
    "eval_every": 4,
    "checkpoint_every": 4,
    "optim.schedule": "constant",
}


def _records(workdir):
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    for r in records:
        r.pop("steps_per_sec", None)
    return records


def _assert_same_run(workdir, reference):
    jax.tree.map(np.testing.assert_array_equal, load_state(workdir), load_state(reference))
    assert _records(workdir) == _records(reference)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("uninterrupted"))
    train_and_evaluate(toy_config(**RUN), workdir)
    return workdir


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_current_step_and_resume_is_exact(reference, tmp_path, monkeypatch, signum):
    workdir = str(tmp_path)
    batches = []
    global_batch = mesh_lib.global_batch

    def signalling_global_batch(local, sharding):
        if local["image"].shape[0] == toy_config().batch_size:
            batches.append(1)
            if len(batches) == 3:  # While step 3 runs.
                os.kill(os.getpid(), signum)
        return global_batch(local, sharding)

    with monkeypatch.context() as m:
        m.setattr(mesh_lib, "global_batch", signalling_global_batch)
        with pytest.raises(TrainingInterrupted) as info:
            train_and_evaluate(toy_config(**RUN), workdir)
    assert info.value.step == 3 and info.value.signum == signum
    assert str(info.value) == (
        f"{signal.Signals(signum).name}: saved step 3; rerun the same command to resume."
    )
    assert checkpoint_steps(workdir) == [3]
    # The handlers are gone again.
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL

    train_and_evaluate(toy_config(**RUN), workdir)
    _assert_same_run(workdir, reference)


@pytest.mark.slow
def test_sigterm_to_train_py_prints_one_line_and_resumes_exactly(reference, tmp_path):
    """SIGTERM the real command during its first step; rerunning it completes the run with
    the uninterrupted run's params and metrics."""
    workdir = str(tmp_path / "run")
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": "4",
        "JAX_ENABLE_X64": "1",  # As in this process (conftest).
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "1",  # As under the fast_compile fixture.
    }
    cmd = [
        sys.executable,
        os.path.join(REPO, "experiments", "train.py"),
        f"--config={os.path.join(REPO, 'tests', 'train_toy_config.py')}",
        f"--workdir={workdir}",
        *(f"--config.{k}={v}" for k, v in RUN.items()),
    ]
    log_path = tmp_path / "log.txt"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        try:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline and proc.poll() is None:
                if "Training steps" in log_path.read_text():
                    proc.send_signal(signal.SIGTERM)
                    break
                time.sleep(0.02)
            proc.wait(timeout=240)
        finally:
            if proc.poll() is None:
                proc.kill()
    out = log_path.read_text()
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    last = out.strip().splitlines()[-1]
    match = re.fullmatch(r"SIGTERM: saved step (\d+); rerun the same command to resume\.", last)
    assert match, out[-3000:]
    assert "Traceback" not in out
    step = int(match.group(1))
    assert 1 <= step < RUN["num_train_steps"]
    assert checkpoint_steps(workdir)[-1] == step

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO, timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"Resumed from the checkpoint at step {step}." in rerun.stderr
    _assert_same_run(workdir, reference)
