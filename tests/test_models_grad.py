"""Gradients of the MDEQ models (float64): implicit gradients vs finite differences, Jacobian
regulariser."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import models
from jiio_jax.deq import Implicit, OneStep
from jiio_jax.solvers import Anderson

pytestmark = pytest.mark.usefixtures("fast_compile")

F64 = jnp.float64

# A contractive tiny generator (every branch injected, small second conv, post-norm scale 0.25).
CFG = models.MDEQConfig(
    image_shape=(8, 8, 3),
    channels=(4, 8),
    expansion=2,
    block_groups=2,
    num_groups=2,
    aux_groups=2,
    latent_dim=6,
    cell_init_std=0.01,
    state_norm_scale=0.25,
)
TIGHT = Anderson(max_steps=100, tol=1e-13)


def _random_like(key, tree):
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )


def _axpy(a, x, y):
    return jax.tree.map(lambda xi, yi: a * xi + yi, x, y)


def _vdot(a, b):
    return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.fixture(scope="module")
def setup():
    model = models.MDEQGenerator(
        CFG, solver=TIGHT, backward=Implicit(solver=TIGHT), param_dtype=F64
    )
    params = jax.jit(model.init)(jax.random.key(0))
    latents = jax.random.normal(jax.random.key(1), (2, CFG.latent_dim), F64)
    weights = jax.random.normal(jax.random.key(2), (2, *CFG.image_shape), F64)

    @jax.jit
    def loss(params, latents):
        images, info = model(params, latents)
        return jnp.sum(weights * images), info

    return model, params, latents, loss


def test_forward_converges_in_float64(setup):
    _, params, latents, loss = setup
    _, info = loss(params, latents)
    assert bool(jnp.all(info.converged)) and bool(jnp.all(info.residual <= 1e-13))


def test_implicit_gradient_matches_finite_differences(setup):
    _, params, latents, loss = setup
    grad = jax.jit(jax.grad(lambda p, lat: loss(p, lat)[0], argnums=(0, 1)))
    g_params, g_latents = grad(params, latents)
    value = lambda p, lat: float(loss(p, lat)[0])
    # Small enough not to cross a ReLU kink along these directions (with eps = 1e-6 the `cell`
    # direction crosses one at t ~ 4.6e-7 and the central difference is off by 20%).
    eps = 1e-7
    # Directional derivatives: the latent (through the injection and the equilibrium), and each
    # parameter group (injection maps, the cell, the head) separately.
    d_lat = jax.random.normal(jax.random.key(3), latents.shape, F64)
    fd = (value(params, latents + eps * d_lat) - value(params, latents - eps * d_lat)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(g_latents, d_lat)), fd, rtol=1e-6, atol=1e-8)
    for i, part in enumerate(("injection", "cell", "head")):
        direction = {k: jax.tree.map(jnp.zeros_like, v) for k, v in params.items()}
        direction[part] = _random_like(jax.random.key(10 + i), params[part])
        plus, minus = _axpy(eps, direction, params), _axpy(-eps, direction, params)
        fd = (value(plus, latents) - value(minus, latents)) / (2 * eps)
        analytic = float(_vdot(g_params, direction))
        np.testing.assert_allclose(analytic, fd, rtol=1e-6, atol=1e-8, err_msg=part)


@pytest.mark.slow
def test_one_step_backward_is_an_approximation(setup):
    model, params, latents, loss = setup
    approx = models.MDEQGenerator(CFG, solver=TIGHT, backward=OneStep(), param_dtype=F64)

    def approx_loss(p):
        images, _ = approx(p, latents)
        weights = jax.random.normal(jax.random.key(2), (2, *CFG.image_shape), F64)
        return jnp.sum(weights * images)

    g_exact = jax.jit(jax.grad(lambda p: loss(p, latents)[0]))(params)["cell"]
    g_approx = jax.jit(jax.grad(approx_loss))(params)["cell"]
    exact, approx_ = (jax.flatten_util.ravel_pytree(g)[0] for g in (g_exact, g_approx))
    cos = float(jnp.vdot(exact, approx_) / (jnp.linalg.norm(exact) * jnp.linalg.norm(approx_)))
    assert bool(jnp.all(jnp.isfinite(approx_))) and 0.5 < cos < 1 - 1e-6


def test_jacobian_regulariser_is_differentiable(setup):
    model, params, latents, loss = setup
    _, info = loss(params, latents)
    z = jax.tree.map(lambda a: a[0], info.z_star)
    key = jax.random.key(7)

    def reg(p, z, latent, key):
        x = model.inject(latent, p["injection"])
        return model.jacobian_loss(z, x, p["cell"], key)

    value_and_grad = jax.jit(jax.value_and_grad(reg))
    value, grad = value_and_grad(params, z, latents[0], key)
    assert float(value) > 0
    for part in ("injection", "cell"):
        flat = jax.flatten_util.ravel_pytree(grad[part])[0]
        assert bool(jnp.all(jnp.isfinite(flat))) and float(jnp.linalg.norm(flat)) > 0
    eps = 1e-6
    direction = _random_like(jax.random.key(8), params)
    plus = float(value_and_grad(_axpy(eps, direction, params), z, latents[0], key)[0])
    minus = float(value_and_grad(_axpy(-eps, direction, params), z, latents[0], key)[0])
    np.testing.assert_allclose(
        float(_vdot(grad, direction)), (plus - minus) / (2 * eps), rtol=1e-6, atol=1e-9
    )


def _jacobian_loss(model, p, z, latent, key):
    return model.jacobian_loss(z, model.inject(latent, p["injection"]), p["cell"], key)


@pytest.mark.slow
def test_model_reports_batch_mean_jacobian_loss(setup):
    model, params, latents, _ = setup
    key = jax.random.key(7)
    # The model reports the batch mean of the per-sample estimate (per-sample keys).
    _, info_j = jax.jit(lambda p: model(p, latents, jac_key=key))(params)
    reg = functools.partial(_jacobian_loss, model)
    per_sample = jax.jit(jax.vmap(reg, in_axes=(None, 0, 0, 0)))(
        params, info_j.z_star, latents, jax.random.split(key, 2)
    )
    np.testing.assert_allclose(float(info_j.jac_loss), float(jnp.mean(per_sample)), rtol=1e-8)
