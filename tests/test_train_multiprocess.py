"""A real 2-process data-parallel run on localhost agrees with a 1-process run.

Two ``experiments/train.py`` processes (2 CPU devices each) join through
``jax.distributed.initialize`` on a free localhost port and train the toy task into one shared
workdir; the final parameters and train losses must match a single-process run with the same
global batch. The toy task's input noise is off: each process contributes its own rows of the
global batch, so the batch holds the same examples in a different order, which the mean loss
does not see but position-dependent noise would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import jax
import numpy as np
from train_toy import toy_config

from jiio_jax.train import load_state, read_metrics, train_and_evaluate

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {
    "num_train_steps": 4,
    "log_every": 1,
    "eval_every": 4,
    "checkpoint_every": 2,
    "toy.noise": 0.0,
}
TIMEOUT_S = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_losses(workdir):
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"), split="train")
    return [r["loss"] for r in records]


def test_two_processes_match_one(tmp_path):
    workdir = str(tmp_path / "multi")
    port = _free_port()
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "JAX_NUM_CPU_DEVICES": "2",
        "JAX_ENABLE_X64": "1",  # As in this process (conftest), for the comparison.
    }
    procs, logs = [], []
    for i in range(2):
        cmd = [
            sys.executable,
            os.path.join(REPO, "experiments", "train.py"),
            f"--config={os.path.join(REPO, 'tests', 'train_toy_config.py')}",
            f"--workdir={workdir}",
            f"--coordinator_address=127.0.0.1:{port}",
            "--num_processes=2",
            f"--process_id={i}",
            *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
        ]
        logs.append(open(tmp_path / f"process_{i}.log", "w"))  # noqa: SIM115
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=logs[i], stderr=subprocess.STDOUT, cwd=REPO)
        )
    try:
        for proc in procs:
            proc.wait(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        pass
    finally:
        for proc in procs:
            if proc.poll() is None:  # A hang (e.g. a collective waiting forever) fails the test.
                proc.kill()
                proc.wait()
        for log in logs:
            log.close()
    for i, proc in enumerate(procs):
        tail = (tmp_path / f"process_{i}.log").read_text()[-4000:]
        assert proc.returncode == 0, f"process {i} exited with {proc.returncode}:\n{tail}"

    single = str(tmp_path / "single")
    train_and_evaluate(toy_config(**OVERRIDES), single)
    multi_state, single_state = load_state(workdir), load_state(single)
    assert int(multi_state["step"]) == int(single_state["step"]) == OVERRIDES["num_train_steps"]
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
        multi_state["params"],
        single_state["params"],
    )
    np.testing.assert_allclose(_train_losses(workdir), _train_losses(single), rtol=1e-5)
    # Only process 0 wrote metrics: one train line per step.
    assert len(_train_losses(workdir)) == OVERRIDES["num_train_steps"]
    # Both processes' data-iterator states are in the checkpoint.
    data_iter = os.path.join(workdir, "checkpoints", "4", "data_iter")
    assert sorted(f for f in os.listdir(data_iter) if f.endswith(".json")) == [
        "process_0-of-2.json",
        "process_1-of-2.json",
    ]
