"""Orbax checkpointing of the train state together with the data-iterator position.

Each checkpoint ``workdir/checkpoints/<step>/`` holds ``state`` (the :class:`TrainState`) and
``data_iter`` (the grain iterator state, one file per process), so a resumed run continues with
exactly the batch it would have seen. Orbax writes into a temporary directory and renames it
when complete, so a process killed at any moment leaves the previous checkpoints valid; only
finalized steps are listed by :meth:`~orbax.checkpoint.CheckpointManager.latest_step`.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from jax.sharding import SingleDeviceSharding

from jiio_jax.train.state import TrainState

CHECKPOINT_DIR = "checkpoints"


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
) -> bool:
    """Saves ``state`` and the iterator position at ``state.step`` (asynchronously).

    Returns:
      Whether a save was started (False when the policy skips this step and not ``force``).
    """
    step = int(jax.device_get(state.step))
    return manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data_iter=grain.checkpoint.CheckpointSave(data_iter),
        ),
        force=force,
    )


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
    restored = manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data_iter=grain.checkpoint.CheckpointRestore(data_iter),
        ),
    )
    return restored.state


def load_state(workdir: str, step: int | None = None) -> dict[str, Any]:
    """Loads a saved train state as a nested dict of numpy arrays (for analysis, tests).

    Args:
      workdir: the run's workdir (the checkpoints are in ``workdir/checkpoints``).
      step: which checkpoint; default the latest.

    Returns:
      ``{"step", "params", "opt_state", "rng"}`` with host arrays.

    Raises:
      FileNotFoundError: there is no finalized checkpoint.
    """
    path = os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)
    options = ocp.CheckpointManagerOptions(read_only=True)
    handlers = {"state": ocp.StandardCheckpointHandler()}
    with ocp.CheckpointManager(path, options=options, item_handlers=handlers) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No checkpoint in {path}.")
        # Restore onto one local device whatever mesh saved it (the saved shardings name
        # devices that may not exist here).
        device = jax.local_devices()[0]
        abstract = jax.tree.map(
            lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=SingleDeviceSharding(device)),
            manager.item_metadata(step)["state"],
        )
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))
        )
    return jax.device_get(restored.state)
