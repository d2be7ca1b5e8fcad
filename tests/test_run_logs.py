"""What a training run prints: a short log line with the loss first, compile time on its own
line, ETA from warm steps, TensorBoard's location, and no library noise caused by us."""

from __future__ import annotations

import logging
import re

import numpy as np
import optax
import pytest
from train_toy import toy_config

from jiio_jax.train import create_learning_rate_fn, read_metrics, train_and_evaluate
from jiio_jax.train.logs import hide_library_info
from jiio_jax.train.loop import LOG_LINE_METRICS
from jiio_jax.train.progress import ReportProgress

pytestmark = pytest.mark.usefixtures("fast_compile")


def test_log_lines_of_a_run(tmp_path, caplog):
    caplog.set_level(logging.INFO)
    config = toy_config(num_train_steps=6, log_every=2, tensorboard=True)
    train_and_evaluate(config, str(tmp_path))
    messages = [r.getMessage() for r in caplog.records]
    steps = [m for m in messages if m.startswith("step ")]
    assert [m.split(" | ")[0] for m in steps] == ["step 2/6", "step 4/6", "step 6/6"]
    for line in steps:
        parts = line.split(" | ")
        names = [p.split(" ")[0] for p in parts[1:-2]]
        # The toy task's metrics: loss, mse, grad_norm, lr, solver_steps (not shown).
        assert names == ["loss", "mse", "grad_norm", "lr"]
        assert re.fullmatch(r"[0-9.]+ steps/s", parts[-2]) and parts[-1].startswith("ETA ")
        assert len(line) < 120
    assert sum(m.startswith("First step (compile + run): ") for m in messages) == 1
    tensorboard = [m for m in messages if m.startswith("TensorBoard events in ")]
    assert tensorboard == [
        f"TensorBoard events in {tmp_path}/tensorboard; view with: "
        f"tensorboard --logdir {tmp_path}/tensorboard"
    ]
    assert not any("polynomial schedule" in m for m in messages)


def test_log_line_order():
    assert LOG_LINE_METRICS[0] == "loss"
    line = ReportProgress(100).line(
        10, {"steps_per_sec": 2.0, "eta_sec": 45.0}, {"loss": 0.5, "lr": 1e-3}
    )
    assert line == "step 10/100 | loss 0.5 | lr 0.001 | 2.00 steps/s | ETA 45s"


def test_eta_counts_warm_steps_only(monkeypatch):
    clock = iter([0.0, 100.0, 110.0])  # Start, after the 100 s compile step, 10 steps later.
    monkeypatch.setattr("jiio_jax.train.progress.time.perf_counter", lambda: next(clock))
    progress = ReportProgress(1000)
    progress.restart(1)
    rate = progress.report(11)
    assert rate["steps_per_sec"] == pytest.approx(1.0)
    assert rate["eta_sec"] == pytest.approx(989.0)


def test_no_warmup_builds_no_warmup_schedule(caplog):
    caplog.set_level(logging.INFO)
    optim = toy_config(**{"optim.warmup_steps": 0, "optim.schedule": "cosine"}).optim
    lr_fn = create_learning_rate_fn(optim, 600)
    assert not caplog.records  # optax logs about a zero-length warm-up piece.
    reference = optax.warmup_cosine_decay_schedule(0.0, optim.lr, 0, 600, 0.0)
    steps = np.arange(0, 650, 7)
    np.testing.assert_array_equal([lr_fn(s) for s in steps], [reference(s) for s in steps])


def test_backend_probe_info_hidden():
    hide_library_info()
    assert logging.getLogger("jax._src.xla_bridge").getEffectiveLevel() == logging.WARNING


def test_no_rate_logged_before_a_warm_step(tmp_path, caplog):
    # Logging every step: step 1 (the compile) has no warm rate: "?" in the line, and no NaN
    # written to metrics.jsonl or TensorBoard.
    caplog.set_level(logging.INFO)
    train_and_evaluate(toy_config(num_train_steps=2, log_every=1), str(tmp_path))
    steps = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert steps[0].endswith("| ? steps/s | ETA ?")
    assert re.search(r"\| [0-9.]+ steps/s \| ETA 0s$", steps[1])
    train = read_metrics(str(tmp_path / "metrics.jsonl"), split="train")
    assert "steps_per_sec" not in train[0] and isinstance(train[1]["steps_per_sec"], float)
