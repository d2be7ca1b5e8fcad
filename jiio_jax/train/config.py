"""Validation of the config fields the training loop reads.

Their defaults are :func:`jiio_jax.configs.get_base_config` (re-exported here): experiment
configs (``configs/<task>.py``) start from it and add their ``model``/task sections.
"""

from __future__ import annotations

import ml_collections

from jiio_jax.configs.common import get_base_config as get_base_config
from jiio_jax.train.optim import validate_optim_config

_POSITIVE_INTS = (
    "batch_size",
    "eval_batch_size",
    "num_train_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_eval_batches",
)


def validate_config(
    config: ml_collections.ConfigDict, *, num_devices: int, process_count: int
) -> None:
    """Checks the loop's fields; raises ``ValueError`` naming the first bad one.

    Args:
      config: the full experiment config.
      num_devices: devices in the training mesh (batch sizes must divide evenly).
      process_count: ``jax.process_count()`` (each process loads ``batch_size // count`` rows).
    """
    for field in ("task", "seed", "optim", "data", *_POSITIVE_INTS):
        if field not in config:
            raise ValueError(f"config.{field} is required by the training loop.")
    if not isinstance(config.task, str) or not config.task:
        raise ValueError(f"config.task={config.task!r} must name a registered task.")
    if isinstance(config.seed, bool) or not isinstance(config.seed, int):
        raise ValueError(f"config.seed={config.seed!r} must be an integer.")
    for field in _POSITIVE_INTS:
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"config.{field}={value!r} must be a positive integer.")
    for field in ("batch_size", "eval_batch_size"):
        for count, what in ((num_devices, "devices"), (process_count, "processes")):
            if config[field] % count:
                raise ValueError(
                    f"config.{field}={config[field]} must be divisible by the number of "
                    f"{what} ({count})."
                )
    skips = config.get("max_skipped_steps", 0)
    if isinstance(skips, bool) or not isinstance(skips, int) or skips < 0:
        raise ValueError(
            f"config.max_skipped_steps={skips!r} must be an integer >= 0 (0: stop at the first "
            "non-finite train step)."
        )
    validate_optim_config(config.optim, config.num_train_steps)
