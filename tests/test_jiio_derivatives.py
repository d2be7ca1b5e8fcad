"""JIIO's returned z is differentiable w.r.t. the parameters in every order and mode (float64).

With x* held constant (as documented), z(theta) = z*(x*, theta) of the layer; its derivatives
must equal those of an unrolled plain iteration of the same layer at the same x*.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import jiio
from jiio_jax.deq import Implicit, Unrolled, fixed_point
from jiio_jax.solvers import Anderson, FixedPointIteration

NZ, NX = 5, 3
EXACT = Implicit(solver=Anderson(max_steps=200, tol=1e-13))


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def layer(z, x, w, u):
    return jnp.tanh(w @ z + u @ x)


def cost(z, x, w, u):
    return jnp.sum((z - 0.3) ** 2) + 0.1 * jnp.sum(x**2)


def _problem():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(NZ, NZ))
    return jnp.asarray(0.5 * w / np.linalg.norm(w, 2)), jnp.asarray(rng.normal(size=(NZ, NX)))


def test_jiio_z_derivatives_match_unrolled_at_fixed_x():
    w, u = _problem()
    solver = jiio.JIIO(step_size=0.2, max_steps=300, tol=1e-12, backward=EXACT)
    sol = solver(layer, cost, jnp.zeros(NZ), jnp.zeros(NX), w, u)
    assert float(sol.z_residual) < 1e-11
    x_star = sol.x

    def via_jiio(w):
        return solver(layer, cost, jnp.zeros(NZ), jnp.zeros(NX), w, u).z

    def unrolled(w):
        solve = FixedPointIteration(max_steps=300, tol=1e-15)
        f = lambda z, w: layer(z, x_star, w, u)
        return fixed_point(f, jnp.zeros(NZ), w, solver=solve, backward=Unrolled()).value

    np.testing.assert_allclose(jax.jacfwd(via_jiio)(w), jax.jacfwd(unrolled)(w), atol=1e-8)
    loss = lambda fn: lambda w: jnp.sum(jnp.sin(fn(w)) ** 2)
    h = jax.hessian(loss(via_jiio))(w)
    h_ref = jax.hessian(loss(unrolled))(w)
    assert np.max(np.abs(h_ref)) > 1e-3
    np.testing.assert_allclose(h, h_ref, atol=1e-7)


def test_jiio_on_failure_nan_marks_a_failed_adjoint():
    w, u = _problem()
    bad = Implicit(solver=FixedPointIteration(max_steps=2, tol=1e-12))

    def loss(w, on_failure):
        solver = jiio.JIIO(step_size=0.2, max_steps=40, backward=bad, on_failure=on_failure)
        return jnp.sum(solver(layer, cost, jnp.zeros(NZ), jnp.zeros(NX), w, u).z ** 2)

    assert np.all(np.isfinite(jax.grad(loss)(w, "ignore")))
    assert np.all(np.isnan(jax.grad(loss)(w, "nan")))
    assert np.isfinite(loss(w, "nan"))  # the value itself is not touched
