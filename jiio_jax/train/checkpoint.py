"""Orbax checkpointing of the train state together with the data-iterator position.

Each checkpoint ``workdir/checkpoints/<step>/`` holds ``state`` (the :class:`TrainState`),
``data_iter`` (the grain iterator state, one file per process) and, for tasks with a
per-example cache (``Task.example_cache``, e.g. amortized JIIO), ``cache``, so a resumed run
continues with exactly the batch and the cache it would have seen. Orbax writes into a
temporary directory and renames it when complete, so a process killed at any moment leaves the
previous checkpoints valid; only finalized steps are listed by
:meth:`~orbax.checkpoint.CheckpointManager.latest_step`.

Damaged checkpoints (random bytes in an array file, an emptied data-iterator state, a step
directory missing files) are not skipped silently: :func:`restore` and :func:`load_state` raise
:class:`CheckpointError`, one line naming the unreadable checkpoint, the cause, and the
previous readable step with the command that moves the damaged one aside (after which a rerun
resumes from that step). Nothing is deleted automatically.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from jax.sharding import SingleDeviceSharding

from jiio_jax.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"
_MAX_CAUSE = 240  # Characters of the underlying error kept in CheckpointError's one line.


class CheckpointError(RuntimeError):
    """A checkpoint exists but cannot be read; the message names it and the previous readable
    step (if any)."""


def checkpoint_steps(workdir: str) -> list[int]:
    """Finalized checkpoint steps of ``workdir`` in increasing order ([] if none).

    Orbax renames a checkpoint's temporary directory to its step number only when the write
    completed, so the numeric directory names are the finalized steps.
    """
    path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    if not os.path.isdir(path):
        return []
    return sorted(int(n) for n in os.listdir(path) if n.isdigit())


def _is_orbax_coroutine(obj: Any) -> bool:
    code = getattr(obj, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def _silence_closed_loop_callbacks() -> None:
    # When a TensorStore read fails, orbax's asyncio loop closes while other reads are still
    # in flight: their completion callbacks raise "Event loop is closed" and the abandoned
    # read coroutines raise again when finalized, all as unraisable exceptions printed as a
    # wall of tracebacks that buries the real error (which CheckpointError reports). They
    # carry no information, so they are dropped; anything else reaches the previous hook.
    previous = sys.unraisablehook
    if getattr(previous, "_drops_closed_loop", False):
        return

    def hook(unraisable):
        exc = unraisable.exc_value
        if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
            return
        if _is_orbax_coroutine(unraisable.object):
            return
        previous(unraisable)

    hook._drops_closed_loop = True
    sys.unraisablehook = hook


def _cause(error: BaseException) -> str:
    # The innermost exception names the file and the failure (TensorStore's "Error reading
    # ... ZSTD_decompressStream() failed"); orbax's wrappers around it only say "error".
    seen = {id(error)}
    while (inner := error.__cause__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        error = inner
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= _MAX_CAUSE else text[: _MAX_CAUSE - 3] + "..."


def _unreadable(
    directory: str, step: int, error: BaseException, readable: Callable[[int], bool], steps
) -> CheckpointError:
    """The one-line error for checkpoint ``step``; probes earlier steps with ``readable``."""
    damaged = os.path.join(directory, str(step))
    previous = next((s for s in sorted(steps, reverse=True) if s < step and readable(s)), None)
    if previous is None:
        advice = (
            "no earlier checkpoint is readable; start afresh with a new --workdir "
            f"(or remove {directory})"
        )
    else:
        aside = os.path.join(os.path.dirname(directory), f"damaged_checkpoint_{step}")
        advice = (
            f"the previous readable checkpoint is step {previous}: run `mv {damaged} {aside}` "
            "and rerun the same command to resume from it"
        )
    return CheckpointError(f"Checkpoint {damaged} cannot be read ({_cause(error)}); {advice}.")


def create_checkpoint_manager(
    workdir: str, *, every: int, keep: int, enable_async: bool = True
) -> ocp.CheckpointManager:
    """A manager for ``workdir/checkpoints`` saving every ``every`` steps, keeping ``keep``.

    Every process must create it and call ``save``/``restore`` (orbax coordinates them).
    """
    return ocp.CheckpointManager(
        os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR),
        options=ocp.CheckpointManagerOptions(
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            preservation_policy=ocp.checkpoint_managers.LatestN(keep),
            # Remove half-written temporaries left by a killed run.
            cleanup_tmp_directories=True,
            enable_async_checkpointing=enable_async,
        ),
    )


def save(
    manager: ocp.CheckpointManager,
    state: TrainState,
    data_iter: grain.DatasetIterator,
    *,
    force: bool = False,
    cache: Any = None,
) -> bool:
    """Saves ``state``, the iterator position and ``cache`` (unless ``None``) at
    ``state.step`` (asynchronously).

    Returns:
      Whether a save was started (False when the policy skips this step and not ``force``).
    """
    step = int(jax.device_get(state.step))
    items = {
        "state": ocp.args.StandardSave(state),
        "data_iter": grain.checkpoint.CheckpointSave(data_iter),
    }
    if cache is not None:
        items["cache"] = ocp.args.StandardSave(cache)
    return manager.save(step, args=ocp.args.Composite(**items), force=force)


def restore(
    manager: ocp.CheckpointManager,
    state: TrainState,
    data_iter: grain.DatasetIterator,
    step: int | None = None,
) -> TrainState:
    """Restores the latest (or ``step``) checkpoint into ``state``'s structure and shardings.

    ``data_iter`` is repositioned in place to the batch after the checkpointed step.

    Args:
      manager: the run's checkpoint manager.
      state: a template state (e.g. the freshly initialised one); its shapes, dtypes and
        shardings are used, its values are not.
      data_iter: the training iterator to reposition.
      step: the step to restore; default the latest.

    Returns:
      The restored state, sharded like ``state``.
    """
    step = manager.latest_step() if step is None else step
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)

    def read(s: int) -> TrainState:
        return manager.restore(
            s,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract),
                data_iter=grain.checkpoint.CheckpointRestore(data_iter),
            ),
        ).state

    # Probing an earlier step on failure also moves data_iter, harmless as it raises anyway.
    return _read_or_raise(manager, step, read)


def restore_cache(manager: ocp.CheckpointManager, cache: Any, step: int) -> Any:
    """The ``cache`` item of checkpoint ``step``, in the structure and shardings of the
    template ``cache``; a checkpoint without one (or a damaged one) raises
    :class:`CheckpointError` like :func:`restore`."""
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, cache)

    def read(s: int) -> Any:
        args = ocp.args.Composite(cache=ocp.args.StandardRestore(abstract))
        return manager.restore(s, args=args).cache

    return _read_or_raise(manager, step, read)


def _read_or_raise(manager: ocp.CheckpointManager, step: int, read: Callable[[int], Any]) -> Any:
    """``read(step)``; any failure is a damaged checkpoint: :class:`CheckpointError` naming it
    and the previous step ``read`` succeeds on."""
    _silence_closed_loop_callbacks()
    try:
        return read(step)
    except Exception as e:  # noqa: BLE001 (any failure to read means a damaged checkpoint)
        raise _unreadable(
            str(manager.directory), step, e, _succeeds(read), manager.all_steps()
        ) from e


def _succeeds(fn: Callable[[int], Any]) -> Callable[[int], bool]:
    def probe(step: int) -> bool:
        try:
            fn(step)
        except Exception:  # noqa: BLE001
            return False
        return True

    return probe


def load_state(workdir: str, step: int | None = None, item: str = "state") -> dict[str, Any]:
    """Loads a saved train state as a nested dict of numpy arrays (for analysis, tests).

    Args:
      workdir: the run's workdir (the checkpoints are in ``workdir/checkpoints``).
      step: which checkpoint; default the latest.
      item: ``"state"``, or ``"cache"`` for the per-example cache of a task that has one.

    Returns:
      ``{"step", "params", "opt_state", "rng"}`` (``item="cache"``: the cache) with host
      arrays.

    Raises:
      FileNotFoundError: there is no finalized checkpoint, or none at ``step`` (the message
        lists the available steps).
      CheckpointError: the checkpoint cannot be read (the message names the previous readable
        step).
    """
    path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    steps = checkpoint_steps(workdir)
    if not steps:
        raise FileNotFoundError(f"No checkpoint in {path}.")
    if step is None:
        step = steps[-1]
    elif step not in steps:
        raise FileNotFoundError(
            f"No checkpoint at step {step} in {path}; available steps: "
            f"{', '.join(map(str, steps))}."
        )
    # The state item's own handler, without a CheckpointManager: a read-only manager warns
    # about its options and about the data_iter item it is not asked to restore.
    handler = ocp.StandardCheckpointHandler()
    # Restore onto one local device whatever mesh saved it (the saved shardings name devices
    # that may not exist here).
    device = jax.local_devices()[0]
    _silence_closed_loop_callbacks()

    def read(s: int) -> Any:
        directory = epath.Path(path) / str(s) / item
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=SingleDeviceSharding(device)),
            handler.metadata(directory),
        )
        return handler.restore(directory, args=ocp.args.StandardRestore(abstract))

    try:
        restored = read(step)
    except Exception as e:  # noqa: BLE001 (any failure to read means a damaged checkpoint)
        raise _unreadable(path, step, e, _succeeds(read), steps) from e
    finally:
        handler.close()
    return jax.device_get(restored)
