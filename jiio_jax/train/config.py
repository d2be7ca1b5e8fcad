"""The config fields the training loop reads, with defaults and validation.

Experiment configs (``configs/<task>.py``) start from :func:`get_base_config` and add their
``model``/``solver``/task sections; the loop reads only the fields below.
"""

from __future__ import annotations

import ml_collections

from jiio_jax.train.optim import validate_optim_config


def get_base_config() -> ml_collections.ConfigDict:
    """Defaults for every field read by :func:`jiio_jax.train.train_and_evaluate`."""
    config = ml_collections.ConfigDict()
    config.task = ""  # Registered task name (jiio_jax.tasks.get_task).
    config.seed = 0  # Seeds init, per-step rngs (fold_in(rng, step)) and the data order.
    config.batch_size = 64  # Global train batch; divisible by devices and processes.
    config.eval_batch_size = 64  # Global eval batch; same divisibility.
    config.num_train_steps = 1000
    config.log_every = 50  # Train metrics are fetched (one host sync) and logged this often.
    config.eval_every = 500  # Also evaluated at the last step.
    config.checkpoint_every = 500  # Also saved at the last step.
    config.keep_checkpoints = 2  # Most recent checkpoints kept.
    config.num_eval_batches = 10  # Eval batches of the test split (fewer if it is smaller).
    config.tensorboard = False  # Also write TensorBoard events (needs tensorboardX).
    config.num_devices = 0  # 0 = all devices; n = the first n (single-process only).

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adam"  # "adam" | "adamw" | "sgd" (sgd: momentum = b1).
    config.optim.lr = 1e-3  # Peak learning rate.
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.weight_decay = 0.0  # adamw: decoupled; adam/sgd: L2 on kernels (ndim > 1).
    config.optim.schedule = "cosine"  # "cosine" (to 0 at num_train_steps) | "constant".
    config.optim.warmup_steps = 0  # Linear warm-up from 0.
    config.optim.grad_clip_norm = 0.0  # Global-norm clipping; 0 = off.

    config.data = ml_collections.ConfigDict()  # Passed to jiio_jax.data (see its docs).
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    return config


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
    validate_optim_config(config.optim, config.num_train_steps)
