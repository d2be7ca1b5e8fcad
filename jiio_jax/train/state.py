"""The train state: everything a step reads and writes, as one checkpointable pytree."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Explicit training state (replicated over the mesh; saved whole by orbax).

    Attributes:
      step: int32 scalar, the number of optimizer updates applied so far.
      params: the task's trainable parameters.
      opt_state: the optax optimizer state for ``params``.
      rng: uint32 ``[2]`` raw key data of the run's base key. It never changes; step ``s`` uses
        ``fold_in(rng, s)``, so randomness depends only on the seed and the step, not on the
        device count or on where a run was resumed. Raw data rather than a typed key because
        it checkpoints as a plain array.
    """

    step: jax.Array
    params: PyTree
    opt_state: optax.OptState
    rng: jax.Array

    def step_key(self) -> jax.Array:
        """The typed PRNG key of the current step."""
        return jax.random.fold_in(jax.random.wrap_key_data(self.rng), self.step)


def base_key_data(seed: int) -> jax.Array:
    """Raw uint32 key data for ``seed`` (the ``TrainState.rng`` of a fresh run)."""
    return jax.random.key_data(jax.random.key(seed))


def create_train_state(
    params: PyTree, tx: optax.GradientTransformation, rng: jax.Array
) -> TrainState:
    """A step-0 state for ``params``; jit it with ``out_shardings`` to create it sharded."""
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng
    )
