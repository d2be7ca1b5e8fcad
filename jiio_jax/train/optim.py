"""Optimizers from ``config.optim``: optax chains with schedule, weight decay and clipping."""

from __future__ import annotations

import jax
import ml_collections
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("cosine", "constant")
_FIELDS = ("name", "lr", "b1", "b2", "weight_decay", "schedule", "warmup_steps", "grad_clip_norm")


def validate_optim_config(optim: ml_collections.ConfigDict, num_train_steps: int) -> None:
    """Raises ``ValueError`` naming the first bad ``config.optim`` field."""
    for field in _FIELDS:
        if field not in optim:
            raise ValueError(f"config.optim.{field} is required.")
    if optim.name not in OPTIMIZERS:
        raise ValueError(f"config.optim.name={optim.name!r} must be one of {OPTIMIZERS}.")
    if optim.schedule not in SCHEDULES:
        raise ValueError(f"config.optim.schedule={optim.schedule!r} must be one of {SCHEDULES}.")
    if not optim.lr > 0:
        raise ValueError(f"config.optim.lr={optim.lr} must be positive.")
    for field in ("b1", "b2"):
        if not 0.0 <= optim[field] < 1.0:
            raise ValueError(f"config.optim.{field}={optim[field]} must be in [0, 1).")
    for field in ("weight_decay", "grad_clip_norm", "warmup_steps"):
        if optim[field] < 0:
            raise ValueError(f"config.optim.{field}={optim[field]} must be >= 0.")
    if optim.schedule == "cosine" and optim.warmup_steps >= num_train_steps:
        raise ValueError(
            f"config.optim.warmup_steps={optim.warmup_steps} must be smaller than "
            f"config.num_train_steps={num_train_steps} for the cosine schedule."
        )


def create_learning_rate_fn(
    optim: ml_collections.ConfigDict, num_train_steps: int
) -> optax.Schedule:
    """Linear warm-up from 0 to ``optim.lr`` over ``warmup_steps``, then cosine to 0 at
    ``num_train_steps`` or constant."""
    if optim.schedule == "cosine" and optim.warmup_steps == 0:
        # The same values as the warm-up version with 0 steps, without optax's warning about
        # the zero-length linear piece that version builds.
        return optax.cosine_decay_schedule(optim.lr, decay_steps=num_train_steps, alpha=0.0)
    if optim.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=optim.lr,
            warmup_steps=optim.warmup_steps,
            decay_steps=num_train_steps,
            end_value=0.0,
        )
    if optim.warmup_steps == 0:
        return optax.constant_schedule(optim.lr)
    return optax.join_schedules(
        [
            optax.linear_schedule(0.0, optim.lr, optim.warmup_steps),
            optax.constant_schedule(optim.lr),
        ],
        [optim.warmup_steps],
    )


def _decay_mask(params):
    # Decay weight matrices and kernels only: decaying biases and norm scales/offsets only
    # shrinks them towards a meaningless origin (the usual convention, e.g. big_vision's
    # `.*/kernel` wd pattern).
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(
    optim: ml_collections.ConfigDict, num_train_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Builds the optimizer described by ``config.optim``.

    Fields: ``name`` ("adam" | "adamw" | "sgd"; sgd uses ``b1`` as momentum, 0 = plain SGD),
    ``lr``, ``b1``, ``b2``, ``weight_decay`` (decoupled for adamw; an L2 term added to the
    gradient for adam and sgd; applied to parameters with ``ndim > 1``), ``schedule``
    ("cosine" | "constant"), ``warmup_steps`` and ``grad_clip_norm`` (global-norm clipping of the
    raw gradient; 0 = off).

    Args:
      optim: the ``config.optim`` section.
      num_train_steps: total steps, the horizon of the cosine schedule.

    Returns:
      ``(tx, learning_rate_fn)``; the schedule is returned for logging.

    Raises:
      ValueError: a field has an invalid value.
    """
    validate_optim_config(optim, num_train_steps)
    lr_fn = create_learning_rate_fn(optim, num_train_steps)
    parts = []
    if optim.grad_clip_norm > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip_norm))
    if optim.name == "adamw":
        parts.append(
            optax.adamw(
                lr_fn, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay, mask=_decay_mask
            )
        )
    else:
        if optim.weight_decay > 0:
            parts.append(optax.add_decayed_weights(optim.weight_decay, mask=_decay_mask))
        if optim.name == "adam":
            parts.append(optax.adam(lr_fn, b1=optim.b1, b2=optim.b2))
        else:
            parts.append(optax.sgd(lr_fn, momentum=optim.b1 or None))
    return optax.chain(*parts), lr_fn
