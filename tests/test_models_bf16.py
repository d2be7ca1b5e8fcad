"""MDEQ cell in bfloat16 with a float32 solver state (``MDEQConfig.compute_dtype``)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from helpers import tiny_generative_model_config

from jiio_jax.models import cell as cell_lib
from jiio_jax.models.configs import MDEQConfig
from jiio_jax.tasks.generative import task_from_model_config

pytestmark = pytest.mark.usefixtures("fast_compile")

F32 = jnp.float32


def _digits(n=16):
    from sklearn.datasets import load_digits

    images = load_digits().images[:n].astype(np.float32) / 8.0 - 1.0  # [0, 16] -> [-1, 1]
    return {"image": jnp.asarray(images[..., None]), "label": jnp.zeros((n,), jnp.int32)}


def test_compute_dtype_is_validated():
    base = dict(
        image_shape=(8, 8, 1),
        channels=(4,),
        latent_dim=4,
        expansion=1,
        block_groups=2,
        num_groups=2,
        aux_groups=2,
    )
    assert MDEQConfig(**base).compute_dtype is None
    with pytest.raises(ValueError, match="`compute_dtype` must be one of"):
        MDEQConfig(**base, compute_dtype="bf16")


def test_bf16_cell_keeps_a_float32_state_and_float32_gradients():
    cfg = MDEQConfig(
        image_shape=(8, 8, 1),
        channels=(4, 8),
        latent_dim=4,
        expansion=1,
        block_groups=2,
        num_groups=2,
        aux_groups=2,
        cell_init_std=0.01,
    )
    low = cfg.replace(compute_dtype="bfloat16")
    z = tuple(
        0.1 * jax.random.normal(jax.random.key(i), s, F32) for i, s in enumerate(cfg.branch_shapes)
    )
    x = cell_lib.CellInput(injection=tuple(0.5 * zi for zi in z))
    params = cell_lib.MDEQCell(cfg).init(jax.random.key(3), z, x)["params"]
    ref = cell_lib.apply_cell(cfg, params, z, x)
    out = cell_lib.apply_cell(low, params, z, x)
    for o, r in zip(out, ref, strict=True):
        assert o.dtype == F32
        err = float(jnp.linalg.norm(o - r) / jnp.linalg.norm(r))
        assert 1e-5 < err < 5e-2  # really computed in bf16, and close to the f32 cell
    jaxpr = str(jax.make_jaxpr(lambda p: cell_lib.apply_cell(low, p, z, x))(params))
    assert "bf16" in jaxpr and "conv_general_dilated" in jaxpr

    def loss(p):
        return sum(jnp.sum(o**2) for o in cell_lib.apply_cell(low, p, z, x))

    grads = jax.grad(loss)(params)
    leaves = jax.tree.leaves(grads)
    assert all(g.dtype == F32 and bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.sum(g**2)) for g in leaves) > 0


def _model_config(compute_dtype):
    m = tiny_generative_model_config("jiio", compute_dtype=compute_dtype)
    m.corruption = "none"
    m.forward.max_steps = 8
    return m


def test_digits_train_in_bfloat16_loss_decreases_without_nan():
    """A few Adam steps on real digits with the cell in bf16: finite, decreasing loss; the
    solver state, loss and gradients stay float32."""
    task = task_from_model_config(_model_config("bfloat16"), 8, 1)
    assert task.arch.compute_dtype == "bfloat16"
    batch = _digits()
    params = task.init_params(jax.random.key(0), batch)
    opt = optax.adam(3e-3)
    state = opt.init(params)

    @jax.jit
    def step(params, state, i):
        (loss, metrics), grads = jax.value_and_grad(task.loss, has_aux=True)(
            params, batch, jax.random.key(1), i
        )
        updates, state = opt.update(grads, state, params)
        return optax.apply_updates(params, updates), state, loss, metrics, grads

    losses = []
    for i in range(8):
        params, state, loss, metrics, grads = step(params, state, jnp.asarray(i, jnp.int32))
        assert loss.dtype == F32 and np.isfinite(float(loss)), i
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads)), i
        assert all(g.dtype == F32 for g in jax.tree.leaves(grads))
        losses.append(float(loss))
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert losses[-1] < 0.9 * losses[0], losses
