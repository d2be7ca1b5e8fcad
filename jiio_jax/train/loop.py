"""``train_and_evaluate``: the data-parallel training loop for any registered task.

One top-to-bottom function in the flax-examples / big_vision mould:

1. Setup: validate the config, build the task, mesh, optimizer and data iterator (from
   ``jiio_jax.data``, or the task's own, e.g. meta-learning episodes: ``_task_data``).
2. State: initialise it sharded (jit with ``out_shardings``), or resume it together with the
   data-iterator position from the latest checkpoint in ``workdir/checkpoints``.
3. Loop: one jitted ``train_step`` per batch; every ``log_every`` steps fetch the accumulated
   metrics once (a single host sync), check them and log; evaluate every ``eval_every`` and
   checkpoint every ``checkpoint_every`` steps, and both at the last step.

Train metrics in ``metrics.jsonl`` are means over each log interval (``lr``: its last value);
eval metrics are means over ``num_eval_batches`` test batches.

The workdir's ``config.json`` is the run's record (:mod:`jiio_jax.train.record`): a rerun
with a conflicting config is refused before anything is touched, a finished run's rerun
changes nothing, and the record is written only once the config validated and the state was
built. SIGINT / SIGTERM save a checkpoint at the current step and raise
:class:`~jiio_jax.train.interrupt.TrainingInterrupted` (:mod:`jiio_jax.train.interrupt`).

Non-finite loss / gradient detection: every step's loss and gradient norm stay on device until
the next fetch, which happens at log, eval and checkpoint steps (so at least every
``log_every`` steps). A non-finite value raises ``FloatingPointError`` naming the exact step.
Checkpoints are only written after all steps up to them were verified finite, so the last
checkpoint on disk is always a good state.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from jiio_jax import plotting
from jiio_jax.tasks import Task, get_task
from jiio_jax.train import checkpoint as ckpt_lib
from jiio_jax.train import mesh as mesh_lib
from jiio_jax.train import plots
from jiio_jax.train import record as record_lib
from jiio_jax.train.config import validate_config
from jiio_jax.train.interrupt import StopOnSignal, TrainingInterrupted
from jiio_jax.train.metrics import METRICS_FILE, MetricWriter, flatten_config, read_metrics
from jiio_jax.train.optim import create_optimizer
from jiio_jax.train.progress import ReportProgress
from jiio_jax.train.state import TrainState, create_train_state

# Metrics that must be finite for a step's update to be valid.
_CHECKED = ("loss", "grad_norm")
# Ends the errors of a run stopped by non-finite train steps.
_NONFINITE_FIXES = (
    "Usual fixes: a lower config.optim.lr or config.optim.grad_clip_norm; for failed DEQ solves "
    "more solver steps or a larger config.model.failure_ratio."
)
# The log line's metrics, in this order, when the task has them (metrics.jsonl has all): the
# loss, each task family's headline metric, then the optimizer's.
LOG_LINE_METRICS = ("loss", "mse", "acc", "query_acc", "grad_norm", "lr")


# ---------------------------------------------------------------------------------------------
# Jitted steps.
# ---------------------------------------------------------------------------------------------


def make_train_step(task: Task, tx: optax.GradientTransformation, lr_fn: optax.Schedule):
    """The pure update ``train_step(state, batch) -> (state, metrics)`` (to be jitted).

    The step's rng is ``fold_in(state.rng, state.step)``: it depends on the seed and step only,
    so results do not change with the device count or across a resume. Metrics are the task's
    scalars plus ``loss``, ``grad_norm`` (before clipping), ``lr`` and ``skipped``: 1 when the
    loss or a gradient is non-finite, and then the step keeps the parameters and optimizer state
    (only ``step`` advances), so a rare failed solve cannot poison the state; the loop decides
    whether to go on (``config.max_skipped_steps``).
    """

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        key = state.step_key()

        def loss_fn(params):
            return task.loss(params, batch, key, state.step)

        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        return _apply_gradients(tx, lr_fn, state, loss, aux, grads)

    return train_step


def _apply_gradients(tx, lr_fn, state: TrainState, loss, aux, grads):
    """The optimizer update and the step's metrics (both train steps)."""
    for name, value in {"loss": loss, **aux}.items():
        if jnp.shape(value) != ():
            raise ValueError(
                f"Task.loss must return a scalar loss and scalar metrics; {name!r} has "
                f"shape {jnp.shape(value)}."
            )
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # A non-finite step changes nothing but the step count. A cond, not an elementwise select:
    # XLA fuses a select into the optimizer's update and rounds it differently (the main job's
    # losses moved in the 4th digit); the cond's branches only pick already computed buffers.
    params, opt_state = jax.lax.cond(
        finite,
        lambda: (params, opt_state),
        lambda: (state.params, state.opt_state),
    )
    metrics = {
        **aux,
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": jnp.asarray(lr_fn(state.step), jnp.float32),
        "skipped": (~finite).astype(jnp.float32),
    }
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    return new_state, metrics


def make_cached_train_step(task: Task, tx: optax.GradientTransformation, lr_fn: optax.Schedule):
    """``train_step(state, batch, cache) -> (state, metrics, cache)`` for a task with a
    per-example cache (``Task.example_cache``): :func:`make_train_step`'s update with
    ``task.cached_loss`` given the cache's rows at ``batch["index"]``, which it then
    overwrites with the returned entries (rows of other examples are untouched)."""

    def train_step(state: TrainState, batch: dict[str, jax.Array], cache):
        if "index" not in batch:
            raise ValueError(
                f"Task {type(task).__name__} keeps a per-example cache, which needs each "
                "example's index in the batch (batch['index'], from jiio_jax.data)."
            )
        key, index = state.step_key(), batch["index"]
        entries = jax.tree.map(lambda c: c[index], cache)

        def loss_fn(params):
            return task.cached_loss(params, batch, entries, key, state.step)

        (loss, (aux, new)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        state, metrics = _apply_gradients(tx, lr_fn, state, loss, aux, grads)
        # A skipped step writes its examples' old cache rows back (no change; a cond, as in
        # _apply_gradients).
        new = jax.tree.map(lambda e, old: e.astype(old.dtype), new, entries)
        new = jax.lax.cond(metrics["skipped"] > 0, lambda: entries, lambda: new)
        cache = jax.tree.map(lambda c, e: c.at[index].set(e), cache, new)
        return state, metrics, cache

    return train_step


def make_eval_step(task: Task):
    """``eval_step(params, batch, key) -> {name: sum over the batch}`` of ``task.evaluate``.

    Summing on device (rather than returning the ``[B]`` arrays) keeps the result a replicated
    scalar, which every process can read even when the batch spans several processes.
    """

    def eval_step(params, batch, key):
        per_example = task.evaluate(params, batch, key)
        batch_size = batch["image"].shape[0]
        sums = {}
        for name, value in per_example.items():
            if value.shape != (batch_size,):
                raise ValueError(
                    f"Task.evaluate must return per-example metrics of shape [{batch_size}]; "
                    f"{name!r} has shape {value.shape}."
                )
            sums[name] = jnp.sum(value.astype(jnp.float32))
        return sums

    return eval_step


# ---------------------------------------------------------------------------------------------
# Helpers of the loop.
# ---------------------------------------------------------------------------------------------


def _dummy_batch(info: Any, batch_size: int) -> dict[str, jax.Array]:
    # Init only needs shapes; a per-device-sized batch of zeros avoids touching the iterator.
    return {
        "image": jnp.zeros((batch_size, *info.image_shape), jnp.float32),
        "label": jnp.zeros((batch_size,), jnp.int32),
    }


def _close(iterator: Any) -> None:
    # Iterators with worker processes (config.data.num_workers > 0) must be closed.
    close = getattr(iterator, "close", None)
    if close is not None:
        close()


def _task_data(task: Task, config: ml_collections.ConfigDict) -> tuple[Any, Callable]:
    """``(dataset_info, make_iterator)`` of the task's data: the ``Task`` data hooks (by
    default ``jiio_jax.data`` on ``config.data``; meta-learning brings its episodes)."""
    del config
    return task.dataset_info(), task.make_iterator


def _every(step: int, every: int, last: int) -> bool:
    return step % every == 0 or step == last


def _finished_run_metrics(workdir: str, step: int) -> dict[str, float] | None:
    """The final metrics of a run already evaluated at ``step`` (from ``metrics.jsonl``), or
    None if that evaluation is not recorded."""
    records = read_metrics(os.path.join(workdir, METRICS_FILE))
    evals = [r for r in records if r["split"] == "eval" and r["step"] == step]
    if not evals:
        return None
    final: dict[str, float] = {"step": step}
    train = [r for r in records if r["split"] == "train" and r["step"] <= step]
    for split, record in (("train", train[-1] if train else {}), ("eval", evals[-1])):
        final.update({f"{split}/{k}": v for k, v in record.items() if k not in ("step", "split")})
    final.pop("train/steps_per_sec", None)
    return final


def _save_loss_curve(workdir: str) -> None:
    records = read_metrics(os.path.join(workdir, METRICS_FILE))
    train = [(r["step"], r["loss"]) for r in records if r["split"] == "train" and "loss" in r]
    evals: dict[str, list[tuple[int, float]]] = {}
    for r in records:
        if r["split"] == "eval":
            for k, v in r.items():
                if k not in ("step", "split") and isinstance(v, int | float):
                    evals.setdefault(k, []).append((r["step"], v))
    plots.save_loss_curve(os.path.join(workdir, "loss.png"), train, evals)


class _TrainMetrics:
    """Per-step train metrics, kept on device until fetched with one host sync.

    ``fetch`` also checks every fetched step's loss and gradient norm. A non-finite step was
    skipped by the train step (state unchanged, see :func:`make_train_step`): up to
    ``max_skipped`` consecutive ones are logged and counted (``skipped_steps`` in the summary);
    one more raises, before any later state can be checkpointed.
    """

    def __init__(self, max_skipped: int = 0):
        self._pending: list[tuple[int, dict[str, jax.Array]]] = []
        self._fetched: list[dict[str, float]] = []
        self._max_skipped = max_skipped
        self._run: list[int] = []  # the current run of consecutive skipped steps
        self._skipped = 0  # since the last summary
        self.finite_steps = 0  # fetched finite steps, in all

    def add(self, step: int, metrics: dict[str, jax.Array]) -> None:
        self._pending.append((step, metrics))

    def fetch(self, last_saved: int | None) -> None:
        """Moves pending metrics to host; raises ``FloatingPointError`` past the allowed run of
        non-finite steps."""
        if not self._pending:
            return
        host = jax.device_get([m for _, m in self._pending])
        pending, self._pending = self._pending, []
        for (step, _), metrics in zip(pending, host, strict=True):
            metrics = {k: float(v) for k, v in metrics.items()}
            metrics.pop("skipped", None)
            bad = {k: metrics[k] for k in _CHECKED if not np.isfinite(metrics[k])}
            if not bad:
                self._run = []
                self.finite_steps += 1
                self._fetched.append(metrics)
                continue
            values = ", ".join(f"{k}={v}" for k, v in bad.items())
            self._run.append(step)
            if len(self._run) <= self._max_skipped:
                self._skipped += 1
                logging.warning(
                    "Non-finite %s at train step %d: step skipped (parameters and optimizer "
                    "state unchanged; %d of config.max_skipped_steps=%d in a row).",
                    values,
                    step,
                    len(self._run),
                    self._max_skipped,
                )
                continue
            first = self._run[0]
            steps = f"train step {step}" if first == step else f"train steps {first}-{step}"
            raise FloatingPointError(
                f"Non-finite {values} at {steps} ({len(self._run)} in a row; "
                f"config.max_skipped_steps={self._max_skipped}); stopping (last checkpoint: "
                f"{'none' if last_saved is None else f'step {last_saved}'}). {_NONFINITE_FIXES}"
            )

    def summary(self) -> dict[str, float]:
        """Means over the finite steps fetched since the last summary (``lr``: the latest
        value), and ``skipped_steps`` when any was skipped."""
        records, self._fetched = self._fetched, []
        skipped, self._skipped = self._skipped, 0
        out = {k: float(np.mean([r[k] for r in records])) for k in records[0]} if records else {}
        if records:
            out["lr"] = records[-1]["lr"]
        if skipped:
            out["skipped_steps"] = float(skipped)
        return out


def _eval_iterator(config: ml_collections.ConfigDict, make_iterator: Callable, local_batch: int):
    """The test split, unshuffled, once, in full batches (every evaluation reads the same)."""
    return make_iterator(
        "test",
        local_batch,
        seed=config.seed,
        shuffle=False,
        repeat=False,
        drop_remainder=True,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )


def _eval_programs(
    config, make_iterator, eval_step, images_fn, params, key, *, batch_sharding, local_batch
) -> list[tuple[Any, tuple]]:
    """``(program, example args)`` of an evaluation (:func:`_evaluate`): shapes and shardings
    only, from the first test batch, so that the train step may donate ``params``."""
    it = _eval_iterator(config, make_iterator, local_batch)
    try:
        first = mesh_lib.global_batch(next(iter(it)), batch_sharding)
    finally:
        _close(it)
    spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding)  # noqa: E731
    params, first = jax.tree.map(spec, (params, first))
    return [
        (eval_step, (params, first, jax.random.fold_in(key, 0))),
        (images_fn, (params, first, key)),
    ]


def _compile_ahead(mesh, programs: Sequence[tuple[Any, tuple]]) -> threading.Thread:
    """Compiles ``programs`` (``(jitted function, example args)`` pairs) on a daemon thread.

    The evaluation programs then compile beside the first train step instead of inside the
    first evaluation. A later call with arguments of the same shapes, dtypes and shardings
    reuses the executable. On the README main job (2 CPU cores) the first evaluation took 3 s
    instead of 24 s and the run 214 s instead of 227 s (the first step compiles 15 s slower
    beside it); with more cores more of it is hidden. This only moves work earlier: if it
    fails, the call compiles as before and raises any real error where it belongs.
    """

    def work():
        with jax.set_mesh(mesh):
            for fn, args in programs:
                try:
                    fn.lower(*args).compile()
                except Exception as e:  # Any failure: see the docstring.
                    logging.debug("Compiling the evaluation ahead failed: %s", e)
                    return

    thread = threading.Thread(target=work, name="compile-evaluation", daemon=True)
    thread.start()
    return thread


def _evaluate(
    config: ml_collections.ConfigDict,
    make_iterator: Callable,
    eval_step,
    images_fn,
    params,
    *,
    batch_sharding,
    local_batch: int,
    num_batches: int,
    key: jax.Array,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Mean per-example metrics over the first ``num_batches`` test batches, and image grids.

    A fresh unshuffled iterator each time makes every evaluation see the same examples with
    the same rngs, so evaluations are comparable across steps and runs.
    """
    it = _eval_iterator(config, make_iterator, local_batch)
    sums, first = [], None
    try:
        for i, local in zip(range(num_batches), it, strict=False):
            batch = mesh_lib.global_batch(local, batch_sharding)
            first = batch if first is None else first
            sums.append(eval_step(params, batch, jax.random.fold_in(key, i)))
    finally:
        _close(it)
    sums = jax.device_get(sums)  # One host sync for the whole evaluation.
    count = len(sums) * config.eval_batch_size
    means = {f"eval/{k}": float(sum(s[k] for s in sums) / count) for k in sums[0]}
    return means, jax.device_get(images_fn(params, first, key))


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------


def train_and_evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    devices: Sequence[jax.Device] | None = None,
) -> dict[str, float]:
    """Trains ``config.task`` and evaluates it periodically; resumes from ``workdir``.

    Every process of a multi-process run calls this with the same config and workdir.

    Args:
      config: the experiment config; fields read here are documented in
        :func:`jiio_jax.train.config.get_base_config`, ``config.data`` goes to
        ``jiio_jax.data`` and the whole config to the task.
      workdir: output directory: ``checkpoints/``, ``metrics.jsonl``, ``config.json``,
        ``hparams.json``, ``images/<name>_<step>.png``, ``loss.png`` (and ``tensorboard/``).
      devices: devices of the data-parallel mesh; default per ``config.num_devices`` (all).

    Returns:
      The final metrics: ``step``, the last log interval's ``train/<name>`` means and the final
      ``eval/<name>`` means.

    Raises:
      ValueError: a config field is invalid (the message names it).
      jiio_jax.train.record.ConfigConflictError: ``workdir`` holds a run trained with another
        config (the message names the differing fields; the workdir is left untouched).
      jiio_jax.train.checkpoint.CheckpointError: the latest checkpoint cannot be read (the
        message names it and the previous readable step).
      TrainingInterrupted: SIGINT / SIGTERM arrived; a checkpoint at the current step was
        saved first (single-process runs).
      FloatingPointError: the loss or gradient norm became NaN/Inf (the message names the
        step); the last checkpoint on disk predates it.
    """
    # -- Setup -----------------------------------------------------------------------------
    if devices is None:
        devices = mesh_lib.select_devices(config.get("num_devices", 0))
    devices = list(devices)
    process_count, process_index = jax.process_count(), jax.process_index()
    validate_config(config, num_devices=len(devices), process_count=process_count)
    is_main = process_index == 0
    workdir = os.path.abspath(workdir)
    task = get_task(config.task)(config)
    # Read-only check against the run's record, before anything in workdir is touched.
    config_changes = record_lib.check_rerun(
        workdir, config, has_checkpoint=bool(ckpt_lib.checkpoint_steps(workdir))
    )
    os.makedirs(workdir, exist_ok=True)
    info, make_iterator = _task_data(task, config)
    mesh = mesh_lib.make_data_mesh(devices)
    state_sharding = mesh_lib.replicated(mesh)
    batch_sharding = mesh_lib.data_sharded(mesh)
    tx, lr_fn = create_optimizer(config.optim, config.num_train_steps)
    num_steps = config.num_train_steps
    local_batch = config.batch_size // process_count
    local_eval_batch = config.eval_batch_size // process_count
    # Every process holds at least num_test // process_count test examples, so this many
    # full batches exist on all of them (processes must run the same number of eval steps).
    num_eval_batches = min(
        config.num_eval_batches, info.num_test // process_count // local_eval_batch
    )
    if num_eval_batches == 0:
        raise ValueError(
            f"config.eval_batch_size={config.eval_batch_size} is larger than the test split "
            f"({info.num_test} examples over {process_count} processes)."
        )
    logging.info(
        "Process %d/%d; mesh of %d devices (%d local, %s); global batch %d (%d per process).",
        process_index,
        process_count,
        len(devices),
        len([d for d in devices if d.process_index == process_index]),
        devices[0].platform,
        config.batch_size,
        local_batch,
    )
    init_key, train_key, eval_key = jax.random.split(jax.random.key(config.seed), 3)

    train_step = jax.jit(
        make_train_step(task, tx, lr_fn),
        in_shardings=(state_sharding, batch_sharding),
        out_shardings=(state_sharding, state_sharding),  # Metrics replicated: any process reads.
        donate_argnums=0,
    )
    # A per-example cache (amortized inference), sharded with the data: rows padded to a
    # multiple of the device count (rows past num_train are never read).
    cache_rows = -(-info.num_train // len(devices)) * len(devices)
    if jax.eval_shape(lambda: task.example_cache(cache_rows)) is not None:
        train_step = jax.jit(
            make_cached_train_step(task, tx, lr_fn),
            in_shardings=(state_sharding, batch_sharding, batch_sharding),
            out_shardings=(state_sharding, state_sharding, batch_sharding),
            donate_argnums=(0, 2),
        )
        init_cache = jax.jit(lambda: task.example_cache(cache_rows), out_shardings=batch_sharding)
    else:
        init_cache = None
    eval_step = jax.jit(make_eval_step(task), out_shardings=state_sharding)
    images_fn = jax.jit(task.images, out_shardings=state_sharding)

    def init(init_key, train_key):
        batch = _dummy_batch(info, config.batch_size // len(devices))
        params = task.init_params(init_key, batch)
        return create_train_state(params, tx, jax.random.key_data(train_key))

    train_iter = make_iterator(
        "train",
        local_batch,
        seed=config.seed,
        process_index=process_index,
        process_count=process_count,
    )
    manager = ckpt_lib.create_checkpoint_manager(
        workdir, every=config.checkpoint_every, keep=config.keep_checkpoints
    )
    writer = None
    compiling_eval = None  # The thread compiling the evaluation ahead (_compile_ahead).
    with jax.set_mesh(mesh):
        try:
            # -- State: fresh (created sharded) or resumed with the data position ------------
            state = jax.jit(init, out_shardings=state_sharding)(init_key, train_key)
            num_params = sum(x.size for x in jax.tree.leaves(state.params))
            logging.info("Task %r with %s parameters.", config.task, f"{num_params:,}")
            cache = None if init_cache is None else init_cache()
            last_saved = manager.latest_step()
            if last_saved is not None:
                state = ckpt_lib.restore(manager, state, train_iter, last_saved)
                if cache is not None:
                    cache = ckpt_lib.restore_cache(manager, cache, last_saved)
                logging.info("Resumed from the checkpoint at step %d.", last_saved)
            initial_step = int(jax.device_get(state.step))
            if initial_step >= num_steps:
                done = _finished_run_metrics(workdir, initial_step)
                if done is not None:  # Nothing to do: leave every file as it is.
                    logging.info(
                        "The run is complete at step %d (config.num_train_steps=%d); nothing "
                        "to do. Raise --config.num_train_steps to train further.",
                        initial_step,
                        num_steps,
                    )
                    return done
            if is_main:  # The config validated and the state was built: it is the record.
                record_lib.write_record(workdir, config, step=initial_step, changes=config_changes)
                if config_changes:
                    logging.info(
                        "Changed since the last run (recorded in %s): %s.",
                        record_lib.HISTORY_FILE,
                        ", ".join(f"{k} {a} -> {b}" for k, (a, b) in config_changes.items()),
                    )
            # Metrics logged after the checkpoint by an interrupted run are dropped: they will
            # be logged again.
            writer = MetricWriter(
                workdir,
                enabled=is_main,
                tensorboard=config.get("tensorboard", False),
                purge_step=initial_step + 1,
            )
            writer.write_hparams(flatten_config(config.to_dict()))

            def run_eval(step: int) -> dict[str, float]:
                t0 = time.perf_counter()
                if compiling_eval is not None:
                    compiling_eval.join()
                means, images = _evaluate(
                    config,
                    make_iterator,
                    eval_step,
                    images_fn,
                    state.params,
                    batch_sharding=batch_sharding,
                    local_batch=local_eval_batch,
                    num_batches=num_eval_batches,
                    key=eval_key,
                )
                writer.write_scalars(step, means)
                writer.flush()
                if is_main:
                    for name, grid in images.items():
                        path = os.path.join(workdir, "images", f"{name}_{step}.png")
                        title = f"{getattr(grid, 'title', '') or name}, step {step}"
                        plotting.save_images(path, grid, title=title)
                    _save_loss_curve(workdir)
                logging.info(
                    "Eval at step %d (%.1fs): %s",
                    step,
                    time.perf_counter() - t0,
                    ", ".join(f"{k[5:]} {v:.4g}" for k, v in means.items()),
                )
                return means

            final: dict[str, float] = {"step": max(initial_step, num_steps)}
            if initial_step >= num_steps:
                logging.warning(
                    "Checkpoint step %d >= config.num_train_steps=%d: evaluating only.",
                    initial_step,
                    num_steps,
                )
                final.update(run_eval(initial_step))
                return final

            # -- Train loop ----------------------------------------------------------------
            compiling_eval = _compile_ahead(
                mesh,
                _eval_programs(
                    config, make_iterator, eval_step, images_fn, state.params, eval_key,
                    batch_sharding=batch_sharding, local_batch=local_eval_batch,
                ),
            )  # fmt: skip
            logging.info("Training steps %d..%d.", initial_step + 1, num_steps)
            progress = ReportProgress(num_steps, initial_step)
            train_metrics = _TrainMetrics(config.get("max_skipped_steps", 0))

            def save(step: int, force: bool) -> None:
                # Only a state whose every update was verified finite is saved.
                nonlocal last_saved
                train_metrics.fetch(last_saved)
                progress.pause()
                ckpt_lib.save(manager, state, train_iter, force=force, cache=cache)
                last_saved = step
                progress.resume()

            with StopOnSignal(enabled=process_count == 1) as stop:
                for step in range(initial_step + 1, num_steps + 1):
                    t0 = time.perf_counter()
                    batch = mesh_lib.global_batch(next(train_iter), batch_sharding)
                    if cache is None:
                        state, metrics = train_step(state, batch)
                    else:
                        state, metrics, cache = train_step(state, batch, cache)
                    train_metrics.add(step, metrics)
                    if step == initial_step + 1:
                        jax.block_until_ready(metrics)  # Make the compile time visible.
                        logging.info("First step (compile + run): %.1fs.", time.perf_counter() - t0)
                        progress.restart(step)  # Rate and ETA from warm steps only.

                    if _every(step, config.log_every, num_steps):
                        train_metrics.fetch(last_saved)
                        rate = progress.report(step)
                        summary = train_metrics.summary()
                        train = {f"train/{k}": v for k, v in summary.items()}
                        if np.isfinite(rate["steps_per_sec"]):  # Not right after compiling.
                            train["train/steps_per_sec"] = rate["steps_per_sec"]
                        writer.write_scalars(step, train)
                        train.pop("train/steps_per_sec", None)
                        writer.flush()
                        final.update(train)
                        shown = {k: summary[k] for k in LOG_LINE_METRICS if k in summary}
                        logging.info("%s", progress.line(step, rate, shown))

                    if _every(step, config.eval_every, num_steps):
                        train_metrics.fetch(last_saved)
                        progress.pause()
                        final.update(run_eval(step))
                        progress.resume()

                    if manager.should_save(step) or step == num_steps:
                        save(step, force=step == num_steps)
                    if stop.requested and step < num_steps:
                        if last_saved != step:
                            save(step, force=True)
                        manager.wait_until_finished()
                        raise TrainingInterrupted(step, stop.signum)
            if train_metrics.finite_steps == 0:
                raise FloatingPointError(
                    f"Every train step of this run ({initial_step + 1}-{num_steps}) was "
                    f"non-finite and skipped: the parameters did not change. {_NONFINITE_FIXES}"
                )
            return final
        finally:
            # A process that exits while XLA compiles on another thread aborts (SIGABRT, no
            # message): wait for it, also when raising.
            if compiling_eval is not None:
                compiling_eval.join()
            # Let in-flight (already verified) saves finalize, also when raising.
            manager.wait_until_finished()
            manager.close()
            _close(train_iter)
            if writer is not None:
                writer.close()
