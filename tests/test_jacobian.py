"""Jacobian tools: Hutchinson Frobenius estimate (trainable) and power-method spectral radius."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import jacobian


def _matrix(seed, n, symmetric=False):
    a = np.random.default_rng(seed).normal(size=(n, n))
    return jnp.asarray(a + a.T if symmetric else a)


def test_hutchinson_is_unbiased_for_linear_map():
    a = _matrix(0, 20)
    est = jacobian.frobenius_norm_sq(
        lambda z: a @ z, jnp.zeros(20), jax.random.key(0), num_probes=4000, normalize=False
    )
    np.testing.assert_allclose(est, jnp.sum(a**2), rtol=0.05)
    normalized = jacobian.frobenius_norm_sq(
        lambda z: a @ z, jnp.zeros(20), jax.random.key(0), num_probes=4000
    )
    np.testing.assert_allclose(normalized, est / 20, rtol=1e-12)


def test_hutchinson_on_pytree_state_and_nonlinear_layer():
    a = _matrix(1, 6) * 0.3
    z = {"a": jnp.linspace(-1, 1, 4), "b": jnp.asarray([0.3, -0.2])}

    def f(t):
        flat = jnp.concatenate([t["a"], t["b"]])
        out = jnp.tanh(a @ flat)
        return {"a": out[:4], "b": out[4:]}

    flat_f = lambda v: jnp.concatenate(jax.tree.leaves(f({"a": v[:4], "b": v[4:]})))
    exact = jnp.sum(jax.jacobian(flat_f)(jnp.concatenate([z["a"], z["b"]])) ** 2)
    est = jacobian.frobenius_norm_sq(f, z, jax.random.key(3), num_probes=4000, normalize=False)
    np.testing.assert_allclose(est, exact, rtol=0.06)


def test_hutchinson_is_differentiable_wrt_parameters():
    """Fixed probes: the estimator is a smooth function of the weights; its gradient matches
    finite differences and, in expectation, the gradient of ||W||_F^2 (= 2 W)."""
    w = _matrix(2, 5) * 0.5
    key = jax.random.key(1)

    def reg(w_, n=1):
        return jacobian.frobenius_norm_sq(
            lambda z: jnp.tanh(w_ @ z), jnp.zeros(5), key, num_probes=n, normalize=False
        )

    g = jax.grad(reg)(w)
    eps = 1e-6
    fd = (reg(w.at[1, 2].add(eps)) - reg(w.at[1, 2].add(-eps))) / (2 * eps)
    np.testing.assert_allclose(g[1, 2], fd, rtol=1e-6)
    g_many = jax.grad(lambda w_: reg(w_, 3000))(w)
    np.testing.assert_allclose(g_many, 2 * w, atol=0.15)


def test_spectral_radius_symmetric_and_layer():
    s = _matrix(3, 30, symmetric=True)
    rho = jacobian.spectral_radius(lambda z: s @ z, jnp.zeros(30), jax.random.key(0), num_iters=800)
    np.testing.assert_allclose(rho, np.max(np.abs(np.linalg.eigvalsh(s))), rtol=1e-6)

    w = _matrix(4, 8, symmetric=True)
    w = 0.9 * w / np.max(np.abs(np.linalg.eigvalsh(w)))
    z = jnp.linspace(-0.5, 0.5, 8)
    layer = lambda t: jnp.tanh(w @ t + 0.1)
    exact = np.max(np.abs(np.linalg.eigvals(np.asarray(jax.jacobian(layer)(z)))))
    est = jacobian.spectral_radius(layer, z, jax.random.key(1), num_iters=2000)
    np.testing.assert_allclose(est, exact, rtol=1e-3)


def test_spectral_radius_of_rotation_scaling():
    """Complex dominant pair of a normal matrix: ||Jv|| = rho exactly."""
    r = 0.7 * jnp.asarray([[np.cos(1.0), -np.sin(1.0)], [np.sin(1.0), np.cos(1.0)]])
    est = jacobian.spectral_radius(lambda z: r @ z, jnp.zeros(2), jax.random.key(0), num_iters=10)
    np.testing.assert_allclose(est, 0.7, rtol=1e-12)


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_probes"):
        jacobian.frobenius_norm_sq(lambda z: z, jnp.zeros(2), jax.random.key(0), num_probes=0)
    with pytest.raises(ValueError, match="num_iters"):
        jacobian.spectral_radius(lambda z: z, jnp.zeros(2), jax.random.key(0), num_iters=0)
    with pytest.raises(ValueError, match="shape"):
        jacobian.spectral_radius(lambda z: z[:1], jnp.zeros(2), jax.random.key(0))
