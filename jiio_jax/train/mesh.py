"""Data-parallel sharding helpers: one ``('data',)`` mesh, replicated state, sharded batches.

Parallelism is global ``jax.Array`` + ``jax.jit`` (no ``pmap``): parameters and optimizer state
live replicated on every device of the mesh (``P()``), each batch is split along its leading
axis (``P('data')``). XLA inserts the gradient all-reduce, so ``jnp.mean`` over the batch inside
the loss is already the global mean. Multi-process runs build global batches from the rows each
process loaded with :func:`jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def select_devices(num_devices: int = 0) -> list[jax.Device]:
    """The devices to train on: all of them, or the first ``num_devices`` (single process).

    Args:
      num_devices: 0 for every device of every process, otherwise how many to use. A subset is
        only supported in single-process runs (it exists to compare 1 vs N devices).

    Returns:
      The device list, in ``jax.devices()`` order.

    Raises:
      ValueError: ``num_devices`` is negative, larger than ``jax.device_count()``, or a subset
        was requested in a multi-process run.
    """
    devices = jax.devices()
    if num_devices == 0:
        return devices
    if num_devices < 0 or num_devices > len(devices):
        raise ValueError(
            f"config.num_devices={num_devices} must be in [0, {len(devices)}] (0 = all devices)."
        )
    if jax.process_count() > 1 and num_devices != len(devices):
        raise ValueError(
            f"config.num_devices={num_devices}: a device subset is only supported with one "
            f"process; this run has {jax.process_count()} processes and {len(devices)} devices."
        )
    return devices[:num_devices]


def make_data_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``('data',)`` over ``devices`` (default: all devices).

    The axis is ``Auto`` rather than JAX 0.10's default ``Explicit``, so task code written
    without sharding-in-types annotations (reshapes, einsums over the batch) traces unchanged.
    """
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    """Sharding of the train state: a full copy on every device."""
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    """Sharding of batches: the leading (example) axis split over ``'data'``."""
    return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch: Any, sharding: NamedSharding) -> Any:
    """Builds global arrays from this process's rows of a batch.

    Args:
      local_batch: pytree of numpy arrays, each ``[b, ...]`` with ``b`` the per-process batch
        (global batch // process count).
      sharding: the batch sharding (:func:`data_sharded`).

    Returns:
      The same pytree of global ``jax.Array`` s, each ``[b * process_count, ...]``.
    """
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local_batch
    )
