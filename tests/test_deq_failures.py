"""Loud failures of the DEQ layer: on_failure="ignore" | "nan" | "raise", forward and adjoint,
under jit and vmap; the adjoint solve observable through ``Implicit(callback=...)``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import deq, solvers
from jiio_jax.deq import Implicit, fixed_point

D = 4
W = 0.5 * jnp.eye(D)


def contractive(z, w, x):
    return jnp.tanh(w @ z + x)


def expansive(z, w, x):
    return 3.0 * (w @ z) + x  # spectral radius 1.5: plain iteration diverges


FPI = solvers.FixedPointIteration(max_steps=40, tol=1e-6, divergence_ratio=1e3)
BAD_ADJOINT = Implicit(solver=solvers.FixedPointIteration(max_steps=2, tol=1e-10))


def _loss(f, x, on_failure, backward=Implicit(), solver=FPI):
    sol = fixed_point(
        f, jnp.zeros(D), W, x, solver=solver, backward=backward, on_failure=on_failure
    )
    return jnp.sum(sol.value**2), sol


def test_ignore_keeps_the_historical_behaviour():
    (loss, sol), g = jax.value_and_grad(_loss, argnums=1, has_aux=True)(
        expansive, jnp.ones(D), "ignore"
    )
    assert int(sol.status) == solvers.Status.DIVERGED
    assert np.isfinite(loss) and np.all(np.isfinite(g))


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_nan_on_forward_failure(wrap):
    fn = wrap(jax.value_and_grad(lambda x: _loss(expansive, x, "nan"), has_aux=True))
    (loss, sol), g = fn(jnp.ones(D))
    assert np.all(np.isnan(sol.value)) and np.isnan(loss) and np.all(np.isnan(g))
    # A converged problem is untouched.
    (loss, sol), g = wrap(jax.value_and_grad(lambda x: _loss(contractive, x, "nan"), has_aux=True))(
        jnp.ones(D)
    )
    assert bool(sol.converged) and np.all(np.isfinite(g))


def test_nan_on_adjoint_failure_only_touches_derivatives():
    fn = jax.jit(
        jax.value_and_grad(lambda x: _loss(contractive, x, "nan", BAD_ADJOINT), has_aux=True)
    )
    (loss, sol), g = fn(jnp.ones(D))
    assert bool(sol.converged) and np.isfinite(loss)
    assert np.all(np.isnan(g))
    # Forward mode goes through the same (tangent) solve.
    t = jax.jvp(
        lambda x: _loss(contractive, x, "nan", BAD_ADJOINT)[0], (jnp.ones(D),), (jnp.ones(D),)
    )[1]  # noqa: E501
    assert np.isnan(t)


def test_nan_per_sample_under_vmap():
    xs = jnp.stack([jnp.ones(D), jnp.ones(D)])

    def per_sample(x, scale):
        f = lambda z, w, x: scale * 3.0 * (w @ z) + jnp.tanh(x)
        sol = fixed_point(f, jnp.zeros(D), W, x, solver=FPI, on_failure="nan")
        return sol.value

    out = jax.vmap(per_sample)(xs, jnp.asarray([0.1, 1.0]))
    assert np.all(np.isfinite(out[0])) and np.all(np.isnan(out[1]))


@pytest.mark.parametrize("wrap", [lambda f: f, jax.jit], ids=["eager", "jit"])
def test_raise_on_forward_failure(wrap):
    fn = wrap(lambda x: _loss(expansive, x, "raise")[0])
    with pytest.raises(Exception, match=r"forward solve failed: status DIVERGED after \d+ steps"):
        jax.block_until_ready(fn(jnp.ones(D)))
    assert np.isfinite(wrap(lambda x: _loss(contractive, x, "raise")[0])(jnp.ones(D)))


def test_raise_on_adjoint_failure_under_jit_and_vmap():
    grad = jax.jit(jax.vmap(jax.grad(lambda x: _loss(contractive, x, "raise", BAD_ADJOINT)[0])))
    with pytest.raises(Exception, match="adjoint solve failed.*status MAX_STEPS after 2 steps"):
        jax.block_until_ready(grad(jnp.ones((3, D))))


def test_max_steps_counts_only_far_above_tol():
    slow = solvers.FixedPointIteration(max_steps=5, tol=1e-6)
    f = lambda z, w, x: jnp.tanh(w @ z + x)
    sol = fixed_point(f, jnp.zeros(D), W, jnp.ones(D), solver=slow, on_failure="nan")
    assert int(sol.status) == solvers.Status.MAX_STEPS and np.all(np.isnan(sol.value))
    lenient = fixed_point(
        f, jnp.zeros(D), W, jnp.ones(D), solver=slow, on_failure="nan", failure_ratio=1e9
    )
    assert int(lenient.status) == solvers.Status.MAX_STEPS
    assert np.all(np.isfinite(lenient.value))


def test_adjoint_solve_is_observable():
    seen = []
    backward = Implicit(solver=solvers.Anderson(max_steps=30, tol=1e-6), callback=seen.append)
    x = jnp.ones(D)
    jax.block_until_ready(
        jax.jit(jax.grad(lambda x: _loss(contractive, x, "ignore", backward)[0]))(x)
    )
    jax.effects_barrier()
    assert [info.kind for info in seen] == ["adjoint"]
    info = seen[0]
    assert int(info.status) == solvers.Status.CONVERGED and not bool(info.failed)
    assert 0 < int(info.num_steps) <= 30 and float(info.residual) <= 1e-6
    seen.clear()
    jax.jvp(lambda x: _loss(contractive, x, "ignore", backward)[0], (x,), (x,))
    jax.effects_barrier()
    assert [info.kind for info in seen] == ["tangent"]
    # The adjoint itself, for analysis: u = g + J^T u.
    z = fixed_point(contractive, jnp.zeros(D), W, x).value
    sol = backward.adjoint(contractive, z, (W, x), jnp.ones(D))
    jac = jax.jacobian(contractive)(z, W, x)
    np.testing.assert_allclose(
        sol.value, np.linalg.solve((np.eye(D) - jac).T, np.ones(D)), atol=1e-5
    )


def test_bad_arguments():
    x = jnp.ones(D)
    with pytest.raises(ValueError, match="on_failure"):
        fixed_point(contractive, jnp.zeros(D), W, x, on_failure="warn")
    with pytest.raises(ValueError, match="failure_ratio"):
        fixed_point(contractive, jnp.zeros(D), W, x, failure_ratio=0.5)
    with pytest.raises(TypeError, match=r"pass an instance, e.g. Anderson\(\)"):
        fixed_point(contractive, jnp.zeros(D), W, x, solver=solvers.Anderson)
    with pytest.raises(TypeError, match=r"instance such as Implicit\(\)"):
        fixed_point(contractive, jnp.zeros(D), W, x, backward=deq.Implicit)
    with pytest.raises(ValueError, match="one_step"):
        deq.resolve_backward({"name": "onestep"})
    with pytest.raises(ValueError, match="valid fields"):
        deq.resolve_backward({"name": "neumann", "steps": 3})
    assert deq.resolve_backward({"name": "neumann", "k": 3}) == deq.Neumann(3)


def test_backward_configs_are_jit_arguments():
    @jax.jit
    def grad(backward, x):
        return jax.grad(lambda x: _loss(contractive, x, "ignore", backward)[0])(x)

    a = grad(Implicit(), jnp.ones(D))
    b = grad(deq.Neumann(30), jnp.ones(D))
    np.testing.assert_allclose(a, b, atol=1e-5)
