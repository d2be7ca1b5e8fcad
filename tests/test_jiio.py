"""JIIO on linear DEQs with quadratic costs, where the bilevel optimum has a closed form.

f(z, x) = A z + B x + c with rho(A) < 1, cost = ||D z - y||^2 + lam ||x||^2, so
z*(x) = M (B x + c) with M = (I - A)^{-1}, and x* solves (K^T K + lam I) x = K^T r with
K = D M B, r = y - D M c; the adjoint is mu* = M^T 2 D^T (D z* - y).
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import jacobian, jiio
from jiio_jax.deq import Implicit
from jiio_jax.jiio._augmented import AugmentedMap, make_layout
from jiio_jax.jiio._solve import _run
from jiio_jax.jiio.schedules import reference_switch_step
from jiio_jax.solvers import Anderson, Status

pytestmark = pytest.mark.usefixtures("fast_compile")

NZ, NX, NY, LAM = 6, 3, 5, 0.1


def make_problem(seed=0, nz=NZ, nx=NX, ny=NY):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(nz, nz))
    a *= 0.5 / np.max(np.abs(np.linalg.eigvals(a)))
    return {
        "A": a,
        "B": rng.normal(size=(nz, nx)),
        "c": rng.normal(size=nz),
        "D": rng.normal(size=(ny, nz)),
        "y": rng.normal(size=ny),
    }


def layer(z, x, p):
    return p["A"] @ z + p["B"] @ x + p["c"]


def cost(z, x, p):
    return jnp.sum((p["D"] @ z - p["y"]) ** 2) + LAM * jnp.sum(x**2)


def closed_form(p):
    p = {k: np.asarray(v) for k, v in p.items()}
    m = np.linalg.inv(np.eye(p["A"].shape[0]) - p["A"])
    k = p["D"] @ m @ p["B"]
    r = p["y"] - p["D"] @ m @ p["c"]
    hess = k.T @ k + LAM * np.eye(k.shape[1])
    x = np.linalg.solve(hess, k.T @ r)
    z = m @ (p["B"] @ x + p["c"])
    mu = m.T @ (2 * p["D"].T @ (p["D"] @ z - p["y"]))
    lipschitz = 2 * np.linalg.eigvalsh(hess).max()
    return x, z, mu, k, r, lipschitz


def ball_closed_form(k, r, radius):
    """argmin ||K x - r||^2 + lam ||x||^2 s.t. ||x|| <= radius (bisection on the multiplier)."""
    n = k.shape[1]
    sol = lambda nu: np.linalg.solve(k.T @ k + (LAM + nu) * np.eye(n), k.T @ r)
    if np.linalg.norm(sol(0.0)) <= radius:
        return sol(0.0)
    lo, hi = 0.0, 1.0
    while np.linalg.norm(sol(hi)) > radius:
        hi *= 2
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.linalg.norm(sol(mid)) > radius else (lo, mid)
    return sol(hi)


def projected_gradient_reference(k, r, project, steps=20000):
    """Projected gradient descent on the reduced quadratic, in NumPy (for sets w/o closed form)."""
    hess = k.T @ k + LAM * np.eye(k.shape[1])
    step = 1.0 / (2 * np.linalg.eigvalsh(hess).max())
    x = np.zeros(k.shape[1])
    for _ in range(steps):
        x = project(x - step * 2 * (hess @ x - k.T @ r))
    return x


@pytest.fixture(scope="module")
def params():
    return {key: jnp.asarray(v) for key, v in make_problem().items()}


LIPSCHITZ = closed_form(make_problem())[-1]
TIGHT = jiio.JIIO(
    step_size=1.0 / LIPSCHITZ,
    max_steps=300,
    tol=1e-12,
    backward=Implicit(Anderson(max_steps=100, tol=1e-13)),
)


@functools.partial(jax.jit, static_argnames=("cfg", "warm"))
def run(cfg, p, projection=None, key=None, warm=None):
    return jiio.solve(
        layer,
        cost,
        jnp.zeros(NZ),
        jnp.zeros(NX),
        p,
        solver=cfg,
        projection=projection,
        trajectory_key=key,
        adjoint_init_scale=warm,
    )


SOLVER_CASES = {
    "anderson_type1": dict(accelerator="anderson", anderson_type="type1", memory=5),
    "anderson_type2": dict(accelerator="anderson", anderson_type="type2", memory=5),
    "broyden": dict(accelerator="broyden", memory=30),
}


@pytest.mark.parametrize("case", SOLVER_CASES)
def test_matches_closed_form_optimum(params, case):
    x_star, z_star, mu_star, _, _, lipschitz = closed_form(params)
    cfg = dataclasses.replace(TIGHT, **SOLVER_CASES[case])
    sol = run(cfg, params)
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.x, x_star, atol=1e-9, rtol=0)
    np.testing.assert_allclose(sol.z, z_star, atol=1e-9, rtol=0)
    np.testing.assert_allclose(sol.mu, mu_star, atol=1e-8, rtol=0)
    np.testing.assert_allclose(sol.cost, cost(z_star, x_star, params), rtol=1e-10)
    assert float(sol.x_residual) <= 1e-11
    assert float(sol.z_residual) <= 1e-11 and float(sol.mu_residual) <= 1e-11


@pytest.mark.parametrize("anderson_type", ["type1", "type2"])
def test_fixed_steps_stationarity_residual_goes_to_zero(params, anderson_type):
    *_, lipschitz = closed_form(params)
    cfg = jiio.JIIO(step_size=1.0 / lipschitz, max_steps=150, anderson_type=anderson_type)
    sol = run(cfg, params)
    # Without tol the reference behaviour: always max_steps evaluations.
    assert int(sol.num_steps) == 150 and int(sol.status) == Status.MAX_STEPS
    assert float(sol.x_residual) < 1e-9
    trace = np.asarray(sol.residual_trace)
    assert trace[-1] < 1e-9 * trace[0]
    assert np.all(np.isfinite(np.asarray(sol.cost_trace)))


def test_plain_iteration_converges_slowly_at_small_step(params):
    x_star, *_, lipschitz = closed_form(params)
    cfg = jiio.JIIO(step_size=0.3 / lipschitz, max_steps=8000, accelerator="none", tol=1e-9)
    sol = run(cfg, params)
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.x, x_star, atol=1e-8)


@pytest.mark.parametrize("normalize_step", [False, True])
def test_l2_ball_matches_projected_closed_form(params, normalize_step):
    x_free, _, _, k, r, lipschitz = closed_form(params)
    radius = 0.5 * np.linalg.norm(x_free)
    x_ball = ball_closed_form(k, r, radius)
    step = 0.05 * radius if normalize_step else 1.0 / lipschitz
    cfg = jiio.JIIO(
        step_size=step, max_steps=400, tol=1e-10, normalize_step=normalize_step, memory=5
    )
    sol = run(cfg, params, projection=jiio.L2Ball(radius))
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.x, x_ball, atol=1e-8)
    assert float(jnp.linalg.norm(sol.x)) <= radius * (1 + 1e-12)


@pytest.mark.parametrize(
    "make_projection, numpy_projection",
    [
        (lambda: jiio.LinfBall(0.3), lambda x: np.clip(x, -0.3, 0.3)),
        (lambda: jiio.Box(-0.2, 0.5), lambda x: np.clip(x, -0.2, 0.5)),
    ],
    ids=["linf", "box"],
)
def test_box_like_sets_match_projected_gradient_reference(
    params, make_projection, numpy_projection
):
    _, _, _, k, r, lipschitz = closed_form(params)
    x_ref = projected_gradient_reference(k, r, numpy_projection)
    cfg = TIGHT
    sol = run(cfg, params, projection=make_projection())
    assert int(sol.status) == Status.CONVERGED
    np.testing.assert_allclose(sol.x, x_ref, atol=1e-8)
    assert float(make_projection().violation(sol.x)) == 0.0


def test_returned_x_is_feasible_after_anderson_extrapolation(params):
    # Anderson returns extrapolated points sum_j a_j F(X_j); with some a_j < 0 their x block
    # leaves the ball (the reference's bug). We project it; check both facts.
    x_free, *_ = closed_form(params)
    radius = 0.2 * np.linalg.norm(x_free)
    projection = jiio.L2Ball(radius)
    cfg = jiio.JIIO(step_size=0.3 * radius, max_steps=4, normalize_step=True)
    sol = run(cfg, params, projection=projection)
    assert float(projection.violation(sol.x)) == 0.0

    layout = make_layout(jnp.zeros(NZ), jnp.zeros(NX))
    fmap = AugmentedMap(
        layer, cost, (params,), layout, projection, lambda t: 0.3 * radius, 0.8, 0.6, True, 1e-8
    )
    s0 = jnp.zeros(2 * NZ + NX)
    unprojected = jax.jit(lambda s: _run(cfg, fmap, s, False, None))(s0)
    _, x_unprojected, _ = layout.unflatten(unprojected.best[: s0.shape[0]])
    assert float(projection.violation(x_unprojected)) > 0.1 * radius


def test_vmap_equals_per_sample(params):
    *_, lipschitz = closed_form(params)
    cfg = jiio.JIIO(step_size=1.0 / lipschitz, max_steps=300, tol=1e-10)
    targets = jnp.asarray(np.random.default_rng(1).normal(size=(4, NY)))
    radius = jnp.asarray([0.3, 0.5, 1.0, 10.0])

    def one(y, rad):
        p = dict(params, y=y)
        return jiio.solve(
            layer, cost, jnp.zeros(NZ), jnp.zeros(NX), p, solver=cfg, projection=jiio.L2Ball(rad)
        )

    batched = jax.jit(jax.vmap(one))(targets, radius)
    single_fn = jax.jit(one)
    for i in range(4):
        single = single_fn(targets[i], radius[i])
        assert int(single.status) == int(batched.status[i]) == Status.CONVERGED
        # Batched and single matmuls round differently; Anderson amplifies that up to the tol.
        for name in ("x", "z", "mu", "cost"):
            np.testing.assert_allclose(
                getattr(batched, name)[i], getattr(single, name), rtol=1e-8, atol=1e-8
            )
    assert len(set(np.asarray(batched.num_steps).tolist())) > 1  # samples stop independently


def test_vmapped_tolerance_loop_runs_in_lockstep(params):
    """Under vmap the tolerance loop is one lockstep loop (a custom batching rule): no per-step
    select of the Anderson history, finished samples frozen (their best point, step count and
    trajectory sample match the per-sample runs), nested vmaps too."""
    *_, lipschitz = closed_form(params)
    cfg = jiio.JIIO(step_size=1.0 / lipschitz, max_steps=300, tol=1e-10, memory=5)
    targets = jnp.asarray(np.random.default_rng(1).normal(size=(4, NY)))
    radius = jnp.asarray([0.3, 0.5, 1.0, 10.0])
    keys = jax.random.split(jax.random.key(0), 4)

    def one(y, rad, key):
        p = dict(params, y=y)
        return jiio.solve(
            layer, cost, jnp.zeros(NZ), jnp.zeros(NX), p, solver=cfg,
            projection=jiio.L2Ball(rad), trajectory_key=key,
        )  # fmt: skip

    hlo = jax.jit(jax.vmap(one)).lower(targets, radius, keys).as_text()
    history = f"tensor<4x5x{2 * NZ + NX}xf64>"  # [batch, memory, n]
    assert not [line for line in hlo.splitlines() if "select" in line and history in line]
    batched = jax.jit(jax.vmap(one))(targets, radius, keys)
    assert len(set(np.asarray(batched.num_steps).tolist())) > 1
    single_fn = jax.jit(one)
    for i in range(4):
        single = single_fn(targets[i], radius[i], keys[i])
        # Batched and single matmuls round differently (the step counts may differ by a few).
        assert int(batched.status[i]) == int(single.status) == Status.CONVERGED
        np.testing.assert_allclose(batched.x[i], single.x, rtol=0, atol=1e-8)
        samples = (batched.trajectory_sample, single.trajectory_sample)
        for b, s in zip(*map(jax.tree.leaves, samples), strict=True):
            np.testing.assert_allclose(b[i], s, rtol=0, atol=1e-8)
    flip = lambda a: jnp.stack([a, a[::-1]])
    nested = jax.jit(jax.vmap(jax.vmap(one)))(flip(targets), flip(radius), flip(keys))
    np.testing.assert_allclose(nested.x[0], batched.x, rtol=0, atol=1e-12)
    np.testing.assert_allclose(nested.x[1], batched.x[::-1], rtol=0, atol=1e-12)
    assert np.all(np.asarray(nested.status) == Status.CONVERGED)


def bilevel_value(p):
    x, z, *_ = closed_form(p)
    return float(cost(jnp.asarray(z), jnp.asarray(x), p))


@functools.partial(jax.jit, static_argnames="warm")
def outer_loss_grad(p, warm=None):
    """Gradient of the outer loss = inner cost at JIIO's solution (envelope theorem: exact)."""

    def outer(p):
        sol = run(TIGHT, p, warm=warm)
        return cost(sol.z, sol.x, p)

    return jax.grad(outer)(p)


@pytest.mark.parametrize("warm", [None, 1.0])
def test_gradient_matches_finite_differences_of_bilevel_value(params, warm):
    grads = outer_loss_grad(params, warm=warm)
    rng = np.random.default_rng(2)
    for name in ("A", "B", "c", "D", "y"):
        direction = rng.normal(size=np.shape(params[name]))
        eps = 1e-6
        plus = dict(params, **{name: params[name] + eps * direction})
        minus = dict(params, **{name: params[name] - eps * direction})
        fd = (bilevel_value(plus) - bilevel_value(minus)) / (2 * eps)
        np.testing.assert_allclose(np.sum(grads[name] * direction), fd, rtol=1e-6, atol=1e-8)


def test_mu_is_the_adjoint_warm_start(params):
    # With outer loss = inner cost, mu* solves the backward adjoint equation already.
    sol = run(TIGHT, params)
    implicit = Implicit(Anderson(max_steps=50, tol=1e-10))

    @jax.jit
    def adjoint_steps(sol):
        grad_z = jax.grad(cost)(sol.z, sol.x, params)
        args = (sol.x, params)
        warm = implicit.adjoint(layer, sol.z, args, grad_z, adjoint_init=sol.mu)
        cold = implicit.adjoint(layer, sol.z, args, grad_z)
        return warm.num_steps, cold.num_steps

    warm_steps, cold_steps = adjoint_steps(sol)
    assert int(warm_steps) == 1 < int(cold_steps)


def test_closed_over_parameters_get_gradients(params):
    # Parameters captured by closures (not passed as args) get the same implicit gradients.
    def closed(p):
        f = lambda z, x: layer(z, x, p)
        c = lambda z, x: cost(z, x, p)
        sol = jiio.solve(f, c, jnp.zeros(NZ), jnp.zeros(NX), solver=TIGHT)
        return c(sol.z, sol.x)

    expected = outer_loss_grad(params)
    got = jax.jit(jax.grad(closed))(params)
    for name in params:
        np.testing.assert_allclose(got[name], expected[name], rtol=1e-10, atol=1e-12)


def test_pytree_state_and_input(params):
    *_, lipschitz = closed_form(params)
    x_star, z_star, *_ = closed_form(params)

    def f(z, x, p):
        full = layer(jnp.concatenate([z["a"], z["b"]]), jnp.concatenate([x[0], x[1]]), p)
        return {"a": full[:2], "b": full[2:]}

    def c(z, x, p):
        return cost(jnp.concatenate([z["a"], z["b"]]), jnp.concatenate([x[0], x[1]]), p)

    z0 = {"a": jnp.zeros(2), "b": jnp.zeros(NZ - 2)}
    x0 = (jnp.zeros(1), jnp.zeros(NX - 1))
    cfg = jiio.JIIO(step_size=1.0 / lipschitz, max_steps=200, tol=1e-11)
    sol = jax.jit(lambda p: jiio.solve(f, c, z0, x0, p, solver=cfg))(params)
    np.testing.assert_allclose(jnp.concatenate(sol.x), x_star, atol=1e-9)
    np.testing.assert_allclose(jnp.concatenate([sol.z["a"], sol.z["b"]]), z_star, atol=1e-9)


def test_best_iterate_rules_and_traces(params):
    for cfg in (TIGHT, jiio.JIIO(step_size=1.0 / LIPSCHITZ, max_steps=20, best_iterate="residual")):
        sol = run(cfg, params)
        step = int(sol.best_step)
        np.testing.assert_allclose(sol.cost, sol.cost_trace[step], rtol=1e-12)
        np.testing.assert_allclose(sol.residual, sol.residual_trace[step], rtol=1e-12)
        if cfg.best_iterate == "residual":
            assert step == int(np.argmin(np.asarray(sol.residual_trace)))
        else:  # converged: the point that met tol is returned
            assert step == int(sol.num_steps) - 1


def test_trajectory_sample(params):
    *_, lipschitz = closed_form(params)
    cfg = jiio.JIIO(step_size=1.0 / lipschitz, max_steps=30, trajectory_min_step=15)
    sol = run(cfg, params, key=jax.random.key(0))
    z_s, x_s = sol.trajectory_sample
    assert z_s.shape == (NZ,) and x_s.shape == (NX,)
    reg = jacobian.frobenius_norm_sq(lambda z: layer(z, x_s, params), z_s, jax.random.key(1))
    assert np.isfinite(float(reg)) and float(reg) > 0
    assert run(TIGHT, params).trajectory_sample is None


def test_reference_schedule_switch():
    assert reference_switch_step(80) == 49 and reference_switch_step(100) == 61
    sched = jiio.Piecewise((0.6, 0.2))
    assert float(sched(jnp.asarray(48), 80)) == 0.6 and float(sched(jnp.asarray(49), 80)) == 0.2
    explicit = jiio.Piecewise((1.0, 0.5, 0.1), boundaries=(2, 5))
    got = [float(explicit(jnp.asarray(t), 10)) for t in range(7)]
    assert got == [1.0, 1.0, 0.5, 0.5, 0.5, 0.1, 0.1]
    cfg = jiio.JIIO(step_size=lambda t: 0.1 / (1.0 + t))
    assert float(cfg.step_size(jnp.asarray(1), 10)) == 0.05
    hash(jiio.JIIO(step_size=0.1))


def test_nonfinite_cost_gives_nonfinite_status(params):
    bad_cost = lambda z, x, p: cost(z, x, p) * jnp.nan
    cfg = jiio.JIIO(step_size=0.01, max_steps=10)
    sol = jax.jit(
        lambda p: jiio.solve(layer, bad_cost, jnp.zeros(NZ), jnp.zeros(NX), p, solver=cfg)
    )(params)
    assert int(sol.status) == Status.NONFINITE and int(sol.num_steps) == 1
    assert not bool(sol.converged)


BAD_INPUTS = {
    "cost_not_scalar": (
        lambda p: (layer, lambda z, x, p: (p["D"] @ z - p["y"]) ** 2, jnp.zeros(NX)),
        ValueError,
        "scalar",
    ),
    "x_shape_mismatch": (lambda p: (layer, cost, jnp.zeros(NX + 1)), ValueError, "x0"),
    "mixed_dtypes": (lambda p: (layer, cost, jnp.zeros(NX, jnp.float32)), ValueError, "dtype"),
    "f_changes_shape": (
        lambda p: (lambda z, x, p: z[:2], cost, jnp.zeros(NX)),
        ValueError,
        "shape",
    ),
    "integer_x": (lambda p: (layer, cost, jnp.zeros(NX, jnp.int32)), TypeError, "floating"),
}


@pytest.mark.parametrize("case", BAD_INPUTS)
def test_bad_inputs_raise(params, case):
    build, error, match = BAD_INPUTS[case]
    f, c, x0 = build(params)
    with pytest.raises(error, match=match):
        jiio.solve(f, c, jnp.zeros(NZ), x0, params, solver=jiio.JIIO(step_size=0.1))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(accelerator="lbfgs"), "accelerator"),
        (dict(anderson_type="good"), "anderson_type"),
        (dict(z_damping=-0.8), "z_damping"),
        (dict(best_iterate="lowest"), "best_iterate"),
        (dict(tol="small"), "tol"),
        (dict(max_steps=0), "max_steps"),
        (dict(step_size=-1.0), "`step_size` must be a positive"),
        (dict(step_size="big"), "step_size"),
        (dict(cost_slack=0.5), "cost_slack"),
    ],
)
def test_bad_configuration_raises(kwargs, match):
    kwargs = {"step_size": 0.1, **kwargs}
    with pytest.raises(ValueError, match=match):
        jiio.JIIO(**kwargs)


def test_misuse_of_solve_raises(params):
    with pytest.raises(TypeError, match="JIIO"):
        jiio.solve(layer, cost, jnp.zeros(NZ), jnp.zeros(NX), params, solver=Anderson())
    cfg = jiio.JIIO(step_size=0.1, accelerator="broyden")
    with pytest.raises(ValueError, match="broyden"):
        jiio.solve(
            layer,
            cost,
            jnp.zeros(NZ),
            jnp.zeros(NX),
            params,
            solver=cfg,
            projection=jiio.L2Ball(1.0),
        )
    with pytest.raises(ValueError, match="radius"):
        jiio.L2Ball(-1.0)
    with pytest.raises(ValueError, match="center"):
        jiio.solve(
            layer,
            cost,
            jnp.zeros(NZ),
            jnp.zeros(NX),
            params,
            solver=jiio.JIIO(step_size=0.1),
            projection=jiio.L2Ball(1.0, center=jnp.zeros(NX + 2)),
        )
