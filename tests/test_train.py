"""Training loop: outputs, exact resume, device-count invariance, NaN handling, validation.

Runs ``train_and_evaluate`` on the toy denoising task of ``train_toy.py`` (8x8 digits, a
2k-parameter MLP) so every run takes a few seconds; the reference run is shared by the module.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_toy import TOY_TASK, toy_config

from jiio_jax.train import (
    MetricWriter,
    create_learning_rate_fn,
    create_optimizer,
    load_state,
    read_metrics,
    train_and_evaluate,
)
from jiio_jax.train import mesh as mesh_lib
from jiio_jax.train.loop import make_cached_train_step
from jiio_jax.train.state import base_key_data, create_train_state

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Log every step so every step's train metrics can be compared between runs.
REF = {
    "num_train_steps": 6,
    "log_every": 1,
    "eval_every": 3,
    "checkpoint_every": 2,
    "optim.schedule": "constant",
    "tensorboard": True,
}


def _records(workdir):
    """metrics.jsonl without the wall-clock field."""
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    for r in records:
        r.pop("steps_per_sec", None)
    return records


def _assert_same_params(a, b, rtol=0.0, atol=0.0):
    jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 6-step run on all 4 CPU devices: (workdir, final metrics, state)."""
    workdir = str(tmp_path_factory.mktemp("reference"))
    final = train_and_evaluate(toy_config(**REF), workdir)
    return workdir, final, load_state(workdir)


def test_run_writes_outputs(reference):
    workdir, final, state = reference
    assert final["step"] == 6
    assert np.isfinite(final["train/loss"]) and np.isfinite(final["eval/psnr"])
    for name in ("config.json", "hparams.json", "metrics.jsonl", "loss.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert sorted(os.listdir(os.path.join(workdir, "images"))) == ["recon_3.png", "recon_6.png"]
    assert os.listdir(os.path.join(workdir, "tensorboard"))
    # Saved every 2 steps and at the end; the last one is the final state.
    assert sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints"))) == [2, 4, 6]
    assert int(state["step"]) == 6
    assert all(x.dtype == np.float32 for x in jax.tree.leaves(state["params"]))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["task"] == TOY_TASK
    records = _records(workdir)
    train = [r for r in records if r["split"] == "train"]
    evals = [r for r in records if r["split"] == "eval"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert {"loss", "mse", "grad_norm", "lr", "solver_steps"} <= set(train[0])
    assert [r["step"] for r in evals] == [3, 6]
    assert evals[-1]["psnr"] == pytest.approx(final["eval/psnr"])
    assert train[-1]["loss"] < train[0]["loss"]


def test_resume_after_shorter_run_matches_uninterrupted(reference, tmp_path):
    """3 steps, then a second call to 6 steps in the same workdir == 6 steps at once."""
    ref_dir, ref_final, ref_state = reference
    workdir = str(tmp_path)
    train_and_evaluate(toy_config(**{**REF, "num_train_steps": 3}), workdir)
    final = train_and_evaluate(toy_config(**REF), workdir)
    _assert_same_params(load_state(workdir), ref_state)
    assert _records(workdir) == _records(ref_dir)
    assert final == ref_final


def test_resume_after_crash_matches_uninterrupted(reference, tmp_path, monkeypatch):
    """A crash while fetching step 6's batch (last checkpoint: step 4) and a restart give the
    same params and metrics; the step-5 metrics logged before the crash are not duplicated."""
    ref_dir, _, ref_state = reference
    workdir = str(tmp_path)
    train_batches = []
    global_batch = mesh_lib.global_batch

    def crashing_global_batch(local, sharding):
        if local["image"].shape[0] == toy_config().batch_size:
            train_batches.append(1)
            if len(train_batches) == 6:
                raise KeyboardInterrupt("simulated crash")
        return global_batch(local, sharding)

    with monkeypatch.context() as m:
        m.setattr(mesh_lib, "global_batch", crashing_global_batch)
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(toy_config(**REF), workdir)
    assert max(r["step"] for r in _records(workdir)) == 5
    assert load_state(workdir)["step"] == 4
    train_and_evaluate(toy_config(**REF), workdir)
    _assert_same_params(load_state(workdir), ref_state)
    assert _records(workdir) == _records(ref_dir)


def test_one_device_matches_four(reference, tmp_path):
    ref_dir, ref_final, ref_state = reference
    final = train_and_evaluate(toy_config(**REF, num_devices=1), str(tmp_path))
    _assert_same_params(load_state(str(tmp_path)), ref_state, rtol=1e-5, atol=1e-6)
    ref_losses = [r["loss"] for r in _records(ref_dir) if r["split"] == "train"]
    losses = [r["loss"] for r in _records(str(tmp_path)) if r["split"] == "train"]
    np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
    assert final["eval/psnr"] == pytest.approx(ref_final["eval/psnr"], rel=1e-5)


def test_evaluation_programs_compile_while_training(tmp_path, monkeypatch):
    """The evaluation's programs compile on a second thread during training, so the first
    evaluation compiles nothing on the main thread; its results are those of every run."""
    from jax import monitoring

    from jiio_jax.train import loop

    compiles, evaluating = [], threading.Event()

    def listener(event, secs, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append((threading.current_thread().name, evaluating.is_set()))

    evaluate = loop._evaluate

    def watched(*args, **kwargs):
        evaluating.set()
        try:
            return evaluate(*args, **kwargs)
        finally:
            evaluating.clear()

    monkeypatch.setattr(loop, "_evaluate", watched)
    monitoring.register_event_duration_secs_listener(listener)
    try:
        final = train_and_evaluate(toy_config(num_train_steps=4, eval_every=2), str(tmp_path))
    finally:
        monitoring.unregister_event_duration_listener(listener)
    assert np.isfinite(final["eval/mse"])
    # eval_step and images: compiled ahead, on the second thread.
    assert [c for c in compiles if c[0] == "compile-evaluation"] == [
        ("compile-evaluation", False)
    ] * 2, compiles
    assert not [c for c in compiles if c[1]], compiles


_FAIL_WHILE_COMPILING = """
import sys
import jax, jax.numpy as jnp
from jiio_jax.train import loop, train_and_evaluate
from train_toy import toy_config

def slow_to_compile(*args, **kwargs):  # stands in for a large model's evaluation programs
    def body(x):
        for i in range(400):
            x = jnp.tanh(x @ x.T @ x + i)
        return x.sum()
    return [(jax.jit(body), (jnp.ones((64, 64)),))]

loop._eval_programs = slow_to_compile
config = toy_config(num_train_steps=4, log_every=1, eval_every=4)
config.max_skipped_steps = 0
config.toy.nan_at_step = 0
train_and_evaluate(config, sys.argv[1])
"""


def test_a_run_failing_while_the_evaluation_compiles_exits_cleanly(tmp_path):
    """The run raises in its first steps, while the evaluation still compiles on the second
    thread: the process ends with the error (exit status 1), not an abort (SIGABRT, 134)."""
    proc = subprocess.run(
        [sys.executable, "-c", _FAIL_WHILE_COMPILING, str(tmp_path)],
        cwd=os.path.join(REPO, "tests"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert proc.stderr.rstrip().splitlines()[-1].startswith("FloatingPointError"), proc.stderr
    assert "terminate called" not in proc.stderr


def test_nan_loss_stops_before_saving(tmp_path):
    # The loss is NaN from state.step 2 on, i.e. for train step 3; checkpoints every 2 steps.
    config = toy_config(num_train_steps=8, log_every=5, checkpoint_every=2, eval_every=8)
    config.max_skipped_steps = 0
    config.toy.nan_at_step = 2
    with pytest.raises(FloatingPointError, match=r"train step 3 \(1 in a row.*checkpoint: step 2"):
        train_and_evaluate(config, str(tmp_path))
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
    state = load_state(str(tmp_path))
    assert int(state["step"]) == 2
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(state["params"]))


def test_a_transient_nan_step_is_skipped_and_counted(tmp_path):
    # Train steps 3 and 4 are NaN; at most 2 in a row may be skipped.
    config = toy_config(num_train_steps=8, log_every=4, checkpoint_every=2, eval_every=8)
    config.max_skipped_steps = 2
    config.toy.update(nan_at_step=2, nan_for=2)
    final = train_and_evaluate(config, str(tmp_path))
    assert np.isfinite(final["train/loss"]) and np.isfinite(final["eval/psnr"])
    train = [r for r in _records(str(tmp_path)) if r["split"] == "train"]
    assert [r.get("skipped_steps") for r in train] == [2.0, None]
    assert all(np.isfinite(r["loss"]) for r in train)  # means over the finite steps only
    # A skipped step leaves parameters and optimizer state as they were.
    step2, step4 = (load_state(str(tmp_path), step=s) for s in (2, 4))
    for a, b in zip(
        jax.tree.leaves((step2["params"], step2["opt_state"])),
        jax.tree.leaves((step4["params"], step4["opt_state"])),
        strict=True,
    ):
        np.testing.assert_array_equal(a, b)


def test_too_many_nan_steps_in_a_row_stop_the_run(tmp_path):
    config = toy_config(num_train_steps=8, log_every=8, checkpoint_every=8, eval_every=8)
    config.max_skipped_steps = 2
    config.toy.nan_at_step = 2
    with pytest.raises(FloatingPointError, match=r"train steps 3-5 \(3 in a row"):
        train_and_evaluate(config, str(tmp_path))
    # Every step skipped: the run stops once it is over, without pretending it trained.
    config = toy_config(num_train_steps=3, log_every=3, checkpoint_every=3, eval_every=3)
    config.max_skipped_steps = 5
    config.toy.nan_at_step = 0
    with pytest.raises(FloatingPointError, match=r"Every train step of this run \(1-3\)"):
        train_and_evaluate(config, str(tmp_path / "all"))


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"num_train_steps": 0}, "num_train_steps"),
        ({"batch_size": 6}, "batch_size"),  # Not divisible by the 4 devices.
        ({"eval_batch_size": 10}, "eval_batch_size"),
        ({"log_every": -1}, "log_every"),
        ({"num_devices": 9}, "num_devices"),
        ({"task": ""}, "task"),
        ({"optim.name": "lamb"}, "optim.name"),
        ({"optim.schedule": "linear"}, "optim.schedule"),
        ({"optim.lr": 0.0}, "optim.lr"),
        ({"optim.b2": 1.0}, "optim.b2"),
        ({"optim.warmup_steps": 10}, "optim.warmup_steps"),  # >= num_train_steps (cosine).
    ],
)
def test_bad_config_raises_naming_the_field(overrides, field, tmp_path):
    with pytest.raises(ValueError, match=rf"config\.{field}\b"):
        train_and_evaluate(toy_config(**overrides), str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()


def test_unknown_task_raises(tmp_path):
    with pytest.raises(ValueError, match="config.task"):
        train_and_evaluate(toy_config(task="no_such_task"), str(tmp_path))


def _update(name, weight_decay, grad=0.0, **overrides):
    optim = toy_config(**{"optim.name": name, "optim.weight_decay": weight_decay}).optim
    optim.update(overrides)
    tx, _ = create_optimizer(optim, num_train_steps=10)
    params = {"w": jnp.full((3, 3), 2.0, jnp.float32), "b": jnp.full((3,), 2.0, jnp.float32)}
    grads = jax.tree.map(lambda p: jnp.full_like(p, grad), params)
    # The second update (warm-up makes the first lr 0).
    update = jax.jit(tx.update)
    _, state = update(grads, tx.init(params), params)
    updates, _ = update(grads, state, params)
    return updates


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_weight_decay_is_applied_to_kernels_only(name):
    # With zero gradients only the decay moves the (positive) kernel, towards zero; biases
    # are not decayed.
    plain, decayed = _update(name, 0.0), _update(name, 0.1)
    assert np.all(np.asarray(decayed["w"]) < np.asarray(plain["w"]))
    np.testing.assert_array_equal(decayed["b"], plain["b"])


def test_grad_clipping():
    updates = _update(
        "sgd", 0.0, grad=0.5, grad_clip_norm=0.1, b1=0.0, schedule="constant", warmup_steps=0
    )
    norm = optax.tree.norm(updates) / toy_config().optim.lr
    assert float(norm) == pytest.approx(0.1, rel=1e-5)


def test_learning_rate_schedules():
    optim = toy_config(**{"optim.warmup_steps": 2}).optim
    cosine = create_learning_rate_fn(optim, 10)
    np.testing.assert_allclose([cosine(0), cosine(2), cosine(10)], [0.0, optim.lr, 0.0], atol=1e-9)
    optim.schedule = "constant"
    constant = create_learning_rate_fn(optim, 10)
    np.testing.assert_allclose(
        [constant(1), constant(2), constant(10)], [optim.lr / 2] + [optim.lr] * 2
    )


def test_metric_writer_purges_and_writes_tensorboard(tmp_path):
    writer = MetricWriter(str(tmp_path), tensorboard=True)
    for step in (1, 2, 3):
        writer.write_scalars(step, {"train/loss": 1.0 / step, "eval/psnr": float(step)})
    writer.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 4, "spl')  # A line cut short by a kill.
    assert len(read_metrics(str(tmp_path / "metrics.jsonl"))) == 6
    # Resuming from step 2: lines of steps >= 3 (and the broken one) are dropped.
    MetricWriter(str(tmp_path), purge_step=3).close()
    records = read_metrics(str(tmp_path / "metrics.jsonl"))
    assert [(r["step"], r["split"]) for r in records] == [
        (1, "train"),
        (1, "eval"),
        (2, "train"),
        (2, "eval"),
    ]
    assert records[0] == {"step": 1, "split": "train", "loss": 1.0}
    assert any(n.startswith("events.out.tfevents") for n in os.listdir(tmp_path / "tensorboard"))
    # Non-main processes write nothing.
    MetricWriter(str(tmp_path / "other"), enabled=False).write_scalars(1, {"train/loss": 1.0})
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_matches_uninterrupted(tmp_path):
    """SIGKILL a real training process mid-run (checkpointing every step, so possibly mid-save);
    resuming in the same workdir reaches the uninterrupted run's final params."""
    overrides = {"num_train_steps": 40, "checkpoint_every": 1, "log_every": 1, "eval_every": 40}
    killed = str(tmp_path / "killed")
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
        f"--workdir={killed}",
        *(f"--config.{k}={v}" for k, v in overrides.items()),
    ]
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        deadline = time.monotonic() + 240
        ckpt_dir = os.path.join(killed, "checkpoints")
        try:
            while time.monotonic() < deadline and proc.poll() is None:
                steps = os.listdir(ckpt_dir) if os.path.isdir(ckpt_dir) else []
                if any(s.isdigit() and int(s) >= 3 for s in steps):
                    os.kill(proc.pid, signal.SIGKILL)
                    break
                time.sleep(0.02)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, (tmp_path / "log.txt").read_text()[-3000:]
    killed_at = int(load_state(killed)["step"])
    assert 3 <= killed_at < 40

    train_and_evaluate(toy_config(**overrides), killed)
    uninterrupted = str(tmp_path / "uninterrupted")
    train_and_evaluate(toy_config(**overrides), uninterrupted)
    _assert_same_params(load_state(killed), load_state(uninterrupted), rtol=1e-6, atol=1e-7)
    assert _records(killed) == _records(uninterrupted)


def test_a_skipped_cached_step_keeps_its_cache_rows():
    """``make_cached_train_step``: a non-finite step writes nothing to the example cache."""

    class CachedToy:
        def cached_loss(self, params, batch, entries, key, step):
            loss = jnp.sum((params["w"] * batch["x"] - entries["z"]) ** 2)
            loss = jnp.where(batch["poison"], jnp.nan, loss)
            return loss, ({}, {"z": entries["z"] + 1.0})

    tx = optax.sgd(0.1)
    step_fn = jax.jit(make_cached_train_step(CachedToy(), tx, optax.constant_schedule(0.1)))
    state = create_train_state({"w": jnp.ones(3)}, tx, base_key_data(0))
    cache = {"z": jnp.zeros((4, 3))}
    batch = {"x": jnp.ones((2, 3)), "index": jnp.asarray([1, 3])}
    state1, metrics, cache1 = step_fn(state, {**batch, "poison": False}, cache)
    assert float(metrics["skipped"]) == 0.0
    np.testing.assert_array_equal(cache1["z"][jnp.asarray([1, 3])], 1.0)
    state2, metrics, cache2 = step_fn(state1, {**batch, "poison": True}, cache1)
    assert float(metrics["skipped"]) == 1.0 and int(state2.step) == 2
    np.testing.assert_array_equal(cache2["z"], cache1["z"])
    np.testing.assert_array_equal(state2.params["w"], state1.params["w"])
