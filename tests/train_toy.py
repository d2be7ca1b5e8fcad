"""A tiny denoising-autoencoder task for the training-loop tests (no dependency on real tasks).

Registered as ``"train_test_toy"``; importing this module registers it. Its config section is
``config.toy`` (``hidden``: MLP width; ``noise``: std of the input noise drawn from the step
rng; ``nan_at_step``: make the loss NaN from that step on, -1 = never; ``nan_for``: for that
many steps only, 0 = for good).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from jiio_jax.tasks import Task, register_task
from jiio_jax.train.config import get_base_config

TOY_TASK = "train_test_toy"


def toy_config(**overrides) -> ml_collections.ConfigDict:
    """A fast config for the toy task on 8x8 digits (float32 throughout)."""
    config = get_base_config()
    config.task = TOY_TASK
    config.seed = 0
    config.batch_size = 16
    config.eval_batch_size = 32
    config.num_train_steps = 6
    config.log_every = 2
    config.eval_every = 3
    config.checkpoint_every = 2
    config.keep_checkpoints = 10
    config.num_eval_batches = 2
    config.optim.lr = 1e-2
    config.optim.warmup_steps = 1
    config.toy = ml_collections.ConfigDict(
        {"hidden": 16, "noise": 0.1, "nan_at_step": -1, "nan_for": 0}
    )
    for key, value in overrides.items():
        target = config
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return config


def _apply(params, x):
    flat = x.reshape(x.shape[0], -1)
    hidden = jnp.tanh(flat @ params["w1"] + params["b1"])
    return (hidden @ params["w2"] + params["b2"]).reshape(x.shape)


@register_task(TOY_TASK)
class ToyTask(Task):
    """Denoising MLP autoencoder: noise from the step rng, MSE loss, per-example PSNR."""

    def init_params(self, rng, batch):
        dim = batch["image"][0].size
        hidden = self.config.toy.hidden
        k1, k2 = jax.random.split(rng)
        return {
            "w1": jax.random.normal(k1, (dim, hidden), jnp.float32) / jnp.sqrt(dim),
            "b1": jnp.zeros((hidden,), jnp.float32),
            "w2": jax.random.normal(k2, (hidden, dim), jnp.float32) / jnp.sqrt(hidden),
            "b2": jnp.zeros((dim,), jnp.float32),
        }

    def loss(self, params, batch, rng, step):
        x = batch["image"]
        noisy = x + self.config.toy.noise * jax.random.normal(rng, x.shape, jnp.float32)
        mse = jnp.mean((_apply(params, noisy) - x) ** 2)
        loss = mse
        nan_at = self.config.toy.nan_at_step
        if nan_at >= 0:
            nan_for = self.config.toy.nan_for
            bad = (step >= nan_at) & ((nan_for == 0) | (step < nan_at + nan_for))
            loss = loss * jnp.where(bad, jnp.nan, 1.0).astype(jnp.float32)
        return loss, {"mse": mse, "solver_steps": jnp.float32(3.0)}

    def evaluate(self, params, batch, rng):
        del rng
        x = batch["image"]
        mse = jnp.mean((_apply(params, x) - x) ** 2, axis=(1, 2, 3))
        return {"mse": mse, "psnr": 10.0 * jnp.log10(4.0 / mse)}

    def images(self, params, batch, rng):
        del rng
        x = batch["image"][:8]
        return {"recon": (jnp.concatenate([x, _apply(params, x)]) + 1.0) / 2.0}
