"""Inner-loop baselines on the linear DEQ / quadratic cost of test_jiio.

With tight forward and backward solves every baseline must reproduce, step by step, the same
optimizer run on the closed-form reduced cost phi(x) = ||K x - r||^2 + lam ||x||^2.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from test_jiio import LAM, NX, NZ, closed_form, cost, layer, make_problem

from jiio_jax import jiio
from jiio_jax.deq import Implicit, Unrolled
from jiio_jax.solvers import Anderson

pytestmark = pytest.mark.usefixtures("fast_compile")

STEPS = 8
FORWARD = Anderson(max_steps=100, tol=1e-13)
BACKWARD = Implicit(Anderson(max_steps=100, tol=1e-13))


@pytest.fixture(scope="module")
def params():
    return {key: jnp.asarray(v) for key, v in make_problem().items()}


def reduced(p):
    _, _, _, k, r, lipschitz = closed_form(p)
    k, r = jnp.asarray(k), jnp.asarray(r)
    phi = lambda x: jnp.sum((k @ x - r) ** 2) + LAM * jnp.sum(x**2)
    return phi, lipschitz


def reference_run(phi, update, steps=STEPS):
    """Runs ``x <- update(x, grad, state)`` on the exact reduced cost; returns x and costs."""
    x, state, costs = jnp.zeros(NX), None, []
    for k in range(steps):
        costs.append(float(phi(x)))
        x, state = update(x, jax.grad(phi)(x), state, k)
    costs.append(float(phi(x)))
    return x, np.asarray(costs)


def adam_update(lr, project=lambda x: x):
    opt = optax.adam(lr)

    def update(x, g, state, k):
        state = opt.init(x) if state is None else state
        step, state = opt.update(g, state, x)
        return project(optax.apply_updates(x, step)), state

    return update


@functools.partial(jax.jit, static_argnames=("method", "projection_kind"))
def run_baseline(method, p, projection_kind=None, radius=1.0):
    projection = {None: None, "l2": jiio.L2Ball(radius), "box": jiio.Box(-radius, radius)}[
        projection_kind
    ]
    z0, x0 = jnp.zeros(NZ), jnp.zeros(NX)
    if method == "inner_adam":
        return jiio.inner_adam(
            layer, cost, z0, x0, p, num_steps=STEPS, learning_rate=0.05,
            forward_solver=FORWARD, backward=BACKWARD, projection=projection,
        )  # fmt: skip
    if method == "pgd":
        return jiio.pgd(
            layer, cost, z0, x0, p, num_steps=STEPS, step_size=0.3 * radius,
            forward_solver=FORWARD, backward=BACKWARD, projection=projection,
        )  # fmt: skip
    return jiio.projected_adam(
        layer, cost, z0, x0, p, num_steps=STEPS, learning_rate=0.05,
        forward_solver=FORWARD, adjoint=BACKWARD, projection=projection,
    )  # fmt: skip


def test_inner_adam_matches_adam_on_reduced_cost(params):
    phi, _ = reduced(params)
    x_ref, costs_ref = reference_run(phi, adam_update(0.05))
    sol = run_baseline("inner_adam", params)
    np.testing.assert_allclose(sol.x, x_ref, atol=1e-10)
    np.testing.assert_allclose(sol.cost_trace, costs_ref, rtol=1e-9)
    assert sol.cost_trace.shape == (STEPS + 1,) and int(sol.forward_steps) > STEPS
    assert sol.mu is None


def test_pgd_matches_projected_normalized_gradient_descent(params):
    phi, _ = reduced(params)
    radius = 0.2
    ball = jiio.L2Ball(radius)

    def update(x, g, state, k):
        return ball(x - 0.3 * radius * g / (jnp.linalg.norm(g) + 1e-8)), state

    x_ref, costs_ref = reference_run(phi, update)
    sol = run_baseline("pgd", params, "l2", radius)
    np.testing.assert_allclose(sol.x, x_ref, atol=1e-10)
    np.testing.assert_allclose(sol.cost_trace, costs_ref, rtol=1e-9)
    assert float(jnp.linalg.norm(sol.x)) <= radius


def test_projected_adam_matches_and_returns_adjoint(params):
    phi, _ = reduced(params)
    box = jiio.Box(-0.1, 0.1)
    x_ref, costs_ref = reference_run(phi, adam_update(0.05, box))
    sol = run_baseline("projected_adam", params, "box", 0.1)
    np.testing.assert_allclose(sol.x, x_ref, atol=1e-10)
    np.testing.assert_allclose(sol.cost_trace, costs_ref, rtol=1e-9)
    assert float(box.violation(sol.x)) == 0.0
    assert sol.mu.shape == (NZ,) and np.all(np.isfinite(np.asarray(sol.mu)))


def test_baseline_vmap_equals_per_sample(params):
    targets = jnp.asarray(np.random.default_rng(3).normal(size=(3, params["y"].shape[0])))
    fn = lambda y: run_baseline("pgd", dict(params, y=y), "l2", 0.5)
    batched = jax.jit(jax.vmap(fn))(targets)
    for i in range(3):
        single = fn(targets[i])
        np.testing.assert_allclose(batched.x[i], single.x, atol=1e-9)
        np.testing.assert_allclose(batched.cost_trace[i], single.cost_trace, rtol=1e-8)


def test_returned_z_is_differentiable_with_x_constant(params):
    sol = run_baseline("inner_adam", params)
    x_fixed = np.asarray(sol.x)

    def loss(p):
        return jnp.sum(run_baseline("inner_adam", p).z ** 2)

    def exact(p):  # z*(x) with x held at the baseline's (constant) output
        p = {k: np.asarray(v) for k, v in p.items()}
        m = np.linalg.inv(np.eye(NZ) - p["A"])
        return float(np.sum((m @ (p["B"] @ x_fixed + p["c"])) ** 2))

    grads = jax.jit(jax.grad(loss))(params)
    direction = np.random.default_rng(4).normal(size=(NZ, NZ))
    eps = 1e-6
    fd = (
        exact(dict(params, A=params["A"] + eps * direction))
        - exact(dict(params, A=params["A"] - eps * direction))
    ) / (2 * eps)
    np.testing.assert_allclose(np.sum(grads["A"] * direction), fd, rtol=1e-6)


def test_bad_inputs_raise(params):
    z0, x0 = jnp.zeros(NZ), jnp.zeros(NX)
    with pytest.raises(ValueError, match="num_steps"):
        jiio.inner_adam(layer, cost, z0, x0, params, num_steps=0)
    with pytest.raises(ValueError, match="backward"):
        jiio.pgd(layer, cost, z0, x0, params, step_size=0.1, backward=Unrolled())
    with pytest.raises(ValueError, match="scalar"):
        jiio.pgd(layer, lambda z, x, p: z, z0, x0, params, step_size=0.1)
    with pytest.raises(TypeError, match="adjoint"):
        jiio.projected_adam(layer, cost, z0, x0, params, adjoint=Anderson())
    with pytest.raises(ValueError, match="step_size"):
        jiio.pgd(layer, cost, z0, x0, params, step_size="large")


def test_pgd_sign_direction_and_ball_box_match_reference(params):
    """Linf PGD (sign steps) inside a ball-and-box set, and a traced step count."""
    phi, _ = reduced(params)
    radius = 0.15
    threat = jiio.BallBox(radius, lower=-0.1, upper=0.2, norm="linf")

    def update(x, g, state, k):
        return threat(x - 0.3 * radius * jnp.sign(g)), state

    x_ref, costs_ref = reference_run(phi, update)
    z0, x0 = jnp.zeros(NZ), jnp.zeros(NX)

    def run(steps):
        return jiio.pgd(
            layer, cost, z0, x0, params, num_steps=steps, step_size=0.3 * radius,
            direction="sign", projection=threat, forward_solver=FORWARD, backward=BACKWARD,
        )  # fmt: skip

    sol = jax.jit(lambda: run(STEPS))()
    np.testing.assert_allclose(sol.x, x_ref, atol=1e-10)
    np.testing.assert_allclose(sol.cost_trace, costs_ref, rtol=1e-9)
    assert float(threat.violation(sol.x)) == 0.0
    # One compilation for every k: a traced num_steps gives the same point, no trace.
    traced = jax.jit(run)(jnp.asarray(STEPS, jnp.int32))
    np.testing.assert_allclose(traced.x, sol.x, atol=1e-12)
    assert traced.cost_trace is None
    # The f-eval count: every forward solve's f evaluations, final solve included.
    assert int(traced.forward_steps) == int(sol.forward_steps) > STEPS
    # final_solve=False (the attacks): same x, no z / cost, the count without the final solve.
    bare = jax.jit(lambda: jiio.pgd(
        layer, cost, z0, x0, params, num_steps=STEPS, step_size=0.3 * radius,
        direction="sign", projection=threat, forward_solver=FORWARD, backward=BACKWARD,
        final_solve=False,
    ))()  # fmt: skip
    np.testing.assert_allclose(bare.x, sol.x, atol=1e-12)
    assert bare.z is None and bare.cost is None and bare.cost_trace.shape == (STEPS,)
    assert STEPS <= int(bare.forward_steps) < int(sol.forward_steps)


def test_pgd_vmaps_over_per_sample_ball_box_sets(params):
    radii = jnp.asarray([0.05, 0.1, 0.3])
    z0, x0 = jnp.zeros(NZ), jnp.zeros(NX)

    def one(r):
        threat = jiio.BallBox(r, lower=-0.2, upper=0.2)
        return jiio.pgd(
            layer, cost, z0, x0, params, num_steps=4, step_size=0.5 * r,
            projection=threat, forward_solver=FORWARD, backward=BACKWARD,
        )  # fmt: skip

    batched = jax.jit(jax.vmap(one))(radii)
    for i, r in enumerate(radii):
        single = jax.jit(one)(r)
        np.testing.assert_allclose(batched.x[i], single.x, atol=1e-12)
        assert float(jnp.linalg.norm(batched.x[i])) <= float(r)
        assert float(jnp.max(jnp.abs(batched.x[i]))) <= 0.2


def test_pgd_bad_arguments_raise(params):
    z0, x0 = jnp.zeros(NZ), jnp.zeros(NX)
    with pytest.raises(ValueError, match="`direction` must be one of"):
        jiio.pgd(layer, cost, z0, x0, params, step_size=0.1, direction="l1")
    with pytest.raises(TypeError, match="`final_solve` must be a bool"):
        jiio.pgd(layer, cost, z0, x0, params, step_size=0.1, final_solve="no")
    with pytest.raises(ValueError, match="`num_steps` must be"):
        jiio.pgd(layer, cost, z0, x0, params, step_size=0.1, num_steps=jnp.asarray(2.0))
    with pytest.raises(TypeError, match="got the class Anderson itself"):
        jiio.pgd(layer, cost, z0, x0, params, step_size=0.1, forward_solver=Anderson)
    with pytest.raises(TypeError, match="got the class Implicit itself"):
        jiio.pgd(layer, cost, z0, x0, params, step_size=0.1, backward=Implicit)
    with pytest.raises(TypeError, match="got the class BallBox itself"):
        jiio.pgd(layer, cost, z0, x0, params, step_size=0.1, projection=jiio.BallBox)
