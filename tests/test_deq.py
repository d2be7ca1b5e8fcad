"""DEQ layer: implicit gradients vs dense IFT and finite differences (float64), backward modes."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import deq
from jiio_jax.deq import Implicit, Neumann, OneStep, Phantom, Unrolled, fixed_point
from jiio_jax.solvers import Anderson, Broyden, FixedPointIteration

D, DX = 6, 3
TIGHT = Anderson(max_steps=300, tol=1e-13)


def layer(z, params, x):
    return jnp.tanh(params["w"] @ z + params["u"] @ x + params["b"])


@pytest.fixture(scope="module")
def problem():
    rng = np.random.default_rng(0)
    w = rng.normal(size=(D, D))
    params = {
        "w": jnp.asarray(0.7 * w / np.linalg.norm(w, 2)),
        "u": jnp.asarray(rng.normal(size=(D, DX))),
        "b": jnp.asarray(0.1 * rng.normal(size=D)),
    }
    x = jnp.asarray(rng.normal(size=DX))
    c = jnp.asarray(rng.normal(size=D))
    return params, x, c


@functools.partial(jax.jit, static_argnums=(3, 4))
def _loss(params, x, c, backward, solver=TIGHT):
    sol = fixed_point(layer, jnp.zeros(D), params, x, solver=solver, backward=backward)
    return c @ sol.value


@functools.partial(jax.jit, static_argnums=(3,))
def _grads(params, x, c, backward):
    return jax.grad(_loss, argnums=(0, 1))(params, x, c, backward)


@jax.jit
def _dense_ift_grads(params, x, c):
    """dL/d(params, x) = u^T df/d(params, x) with (I - J)^T u = c, J dense at z*."""
    z = fixed_point(layer, jnp.zeros(D), params, x, solver=TIGHT).value
    jac = jax.jacobian(layer)(z, params, x)
    u = jnp.linalg.solve((jnp.eye(D) - jac).T, c)
    _, vjp = jax.vjp(lambda p, xx: layer(z, p, xx), params, x)
    return vjp(u)


def _fd_grad_x(params, x, c, eps=1e-6):
    g = []
    for e in np.eye(DX):
        plus = _loss(params, x + eps * e, c, Implicit())
        minus = _loss(params, x - eps * e, c, Implicit())
        g.append((plus - minus) / (2 * eps))
    return jnp.asarray(g)


def _fd_grad_w(params, x, c, entries, eps=1e-6):
    out = []
    for i, j in entries:
        dp = {**params, "w": params["w"].at[i, j].add(eps)}
        dm = {**params, "w": params["w"].at[i, j].add(-eps)}
        out.append((_loss(dp, x, c, Implicit()) - _loss(dm, x, c, Implicit())) / (2 * eps))
    return jnp.asarray(out)


def test_value_is_a_fixed_point(problem):
    params, x, _ = problem
    sol = fixed_point(layer, jnp.zeros(D), params, x, solver=TIGHT)
    assert bool(sol.converged)
    np.testing.assert_allclose(layer(sol.value, params, x), sol.value, atol=1e-12)


EXACT_MODES = {
    "implicit-anderson": Implicit(solver=Anderson(max_steps=300, tol=1e-13)),
    "implicit-broyden": Implicit(solver=Broyden(max_steps=300, tol=1e-13, memory=20)),
    "implicit-fpi": Implicit(solver=FixedPointIteration(max_steps=2000, tol=1e-13)),
    "implicit-zeros-init": Implicit(solver=Anderson(max_steps=300, tol=1e-13), init="zeros"),
    "neumann-200": Neumann(k=200),
    "unrolled-fpi": Unrolled(solver=FixedPointIteration(max_steps=300, tol=1e-14)),
    "unrolled-anderson": Unrolled(),
}


@pytest.mark.parametrize("mode", EXACT_MODES)
def test_exact_backward_modes_match_dense_ift(problem, mode):
    params, x, c = problem
    ref_params, ref_x = _dense_ift_grads(params, x, c)
    g_params, g_x = _grads(params, x, c, EXACT_MODES[mode])
    for k in params:
        np.testing.assert_allclose(g_params[k], ref_params[k], rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(g_x, ref_x, rtol=1e-7, atol=1e-9)


def test_implicit_gradient_matches_finite_differences(problem):
    params, x, c = problem
    g_params, g_x = _grads(params, x, c, Implicit())
    np.testing.assert_allclose(g_x, _fd_grad_x(params, x, c), rtol=1e-6, atol=1e-8)
    entries = [(0, 0), (2, 3), (5, 1)]
    fd_w = _fd_grad_w(params, x, c, entries)
    np.testing.assert_allclose([g_params["w"][e] for e in entries], fd_w, rtol=1e-6, atol=1e-8)


def test_one_step_is_the_jacobian_free_gradient(problem):
    params, x, c = problem
    z = fixed_point(layer, jnp.zeros(D), params, x, solver=TIGHT).value
    _, vjp = jax.vjp(lambda p, xx: layer(z, p, xx), params, x)
    ref_params, ref_x = vjp(c)
    g_params, g_x = _grads(params, x, c, OneStep())
    np.testing.assert_allclose(g_x, ref_x, rtol=1e-9)
    g_phantom = _grads(params, x, c, Phantom(k=1, damping=1.0))[1]
    np.testing.assert_allclose(g_phantom, g_x, rtol=1e-9)


@pytest.mark.parametrize("mode", [OneStep(), Phantom(k=5, damping=0.5), Neumann(k=3)])
def test_approximate_modes_point_the_right_way(problem, mode):
    params, x, c = problem
    _, ref_x = _dense_ift_grads(params, x, c)
    g_x = _grads(params, x, c, mode)[1]
    cos = jnp.dot(g_x, ref_x) / (jnp.linalg.norm(g_x) * jnp.linalg.norm(ref_x))
    assert float(cos) > 0.8
    assert not np.allclose(g_x, ref_x, rtol=1e-6)  # they really are approximations


def test_neumann_error_shrinks_with_k(problem):
    params, x, c = problem
    _, ref_x = _dense_ift_grads(params, x, c)
    errs = [float(jnp.linalg.norm(_grads(params, x, c, Neumann(k))[1] - ref_x)) for k in (1, 5, 20)]
    assert errs[0] > errs[1] > errs[2]


def test_adjoint_warm_start(problem):
    """Started at the exact adjoint, the backward solve stops after one evaluation."""
    params, x, c = problem
    z = fixed_point(layer, jnp.zeros(D), params, x, solver=TIGHT).value
    jac = jax.jacobian(layer)(z, params, x)
    u_exact = jnp.linalg.solve((jnp.eye(D) - jac).T, c)
    mode = Implicit(solver=Anderson(max_steps=100, tol=1e-10))
    cold = mode.adjoint(layer, z, (params, x), c)
    warm = mode.adjoint(layer, z, (params, x), c, adjoint_init=u_exact)
    assert int(warm.num_steps) == 1 < int(cold.num_steps)
    np.testing.assert_allclose(cold.value, u_exact, rtol=1e-8)

    def loss_warm(p, xx):
        sol = fixed_point(layer, jnp.zeros(D), p, xx, solver=TIGHT, adjoint_init=u_exact)
        return c @ sol.value

    ref = _grads(params, x, c, EXACT_MODES["implicit-anderson"])[1]
    np.testing.assert_allclose(jax.jit(jax.grad(loss_warm, argnums=1))(params, x), ref, rtol=1e-8)


def test_jit_and_vmap_of_gradients(problem):
    params, _, c = problem
    xs = jnp.asarray(np.random.default_rng(1).normal(size=(4, DX)))
    grad_x = jax.grad(_loss, argnums=1)
    batched = jax.jit(jax.vmap(grad_x, in_axes=(None, 0, None, None)), static_argnums=3)(
        params, xs, c, Implicit()
    )
    for i in range(4):
        np.testing.assert_allclose(batched[i], _grads(params, xs[i], c, Implicit())[1], rtol=1e-9)


def test_pytree_state_gradient(problem):
    """Two-'resolution' state (a tuple of arrays of different shapes)."""
    params, x, c = problem

    def two_branch(z, p, xx):
        a, b = z
        flat = jnp.concatenate([a.ravel(), b])
        out = layer(flat, p, xx)
        return out[:4].reshape(2, 2), out[4:]

    def loss(p, xx):
        z0 = (jnp.zeros((2, 2)), jnp.zeros(2))
        a, b = fixed_point(two_branch, z0, p, xx, solver=TIGHT).value
        return c @ jnp.concatenate([a.ravel(), b])

    ref = _grads(params, x, c, Implicit())[1]
    np.testing.assert_allclose(jax.jit(jax.grad(loss, argnums=1))(params, x), ref, rtol=1e-8)


def test_closed_over_arrays_get_correct_gradients(problem):
    params, x, c = problem

    def closure_loss(xx):
        f = lambda z: layer(z, params, xx)  # closes over the traced xx
        return c @ fixed_point(f, jnp.zeros(D), solver=TIGHT).value

    ref = _grads(params, x, c, Implicit())[1]
    np.testing.assert_allclose(jax.jit(jax.grad(closure_loss))(x), ref, rtol=1e-8)
    np.testing.assert_allclose(jax.grad(jax.jit(closure_loss))(x), ref, rtol=1e-8)


def test_integer_and_unused_args(problem):
    params, x, c = problem

    def f(z, p, xx, index):
        return layer(z, p, xx) * (1.0 + 0.0 * index)

    def loss(p):
        sol = fixed_point(f, jnp.zeros(D), p, x, jnp.asarray(3, jnp.int32), solver=TIGHT)
        return c @ sol.value

    ref = _grads(params, x, c, Implicit())[0]
    np.testing.assert_allclose(jax.jit(jax.grad(loss))(params)["w"], ref["w"], rtol=1e-8)


def test_float32_layer(problem):
    params, x, c = problem
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    solver = Anderson(max_steps=100, tol=1e-6)

    def loss(xx):
        sol = fixed_point(layer, jnp.zeros(D, jnp.float32), p32, xx, solver=solver)
        return c.astype(jnp.float32) @ sol.value

    g = jax.jit(jax.grad(loss))(x.astype(jnp.float32))
    ref = _grads(params, x, c, Implicit())[1]
    assert g.dtype == jnp.float32
    np.testing.assert_allclose(g, ref, rtol=1e-4, atol=1e-5)


def test_bad_arguments_raise(problem):
    params, x, _ = problem
    with pytest.raises(TypeError, match="backward"):
        fixed_point(layer, jnp.zeros(D), params, x, backward="implicit")
    with pytest.raises(TypeError, match="solver"):
        fixed_point(layer, jnp.zeros(D), params, x, solver="anderson")
    with pytest.raises(ValueError, match="shape"):
        fixed_point(lambda z, p, xx: layer(z, p, xx)[:3], jnp.zeros(D), params, x)
    with pytest.raises(ValueError, match="k"):
        Neumann(k=0)
    with pytest.raises(ValueError, match="init"):
        Implicit(init="random")
    with pytest.raises(ValueError, match="damping"):
        Phantom(k=2, damping=0.0)


def test_public_names():
    for name in ("fixed_point", "Implicit", "Neumann", "OneStep", "Phantom", "Unrolled"):
        assert hasattr(deq, name)
