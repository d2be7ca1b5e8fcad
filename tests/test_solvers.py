"""Fixed-point solvers: closed-form fixed points, vmap/jit behaviour, statuses and validation."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import solvers
from jiio_jax.solvers import Anderson, Broyden, FixedPointIteration, Status
from jiio_jax.solvers.broyden import _Broyden

SOLVER_FNS = {
    "fpi": solvers.fixed_point_iteration,
    "anderson": solvers.anderson,
    "broyden": solvers.broyden,
}


def _affine_problem(seed, d, rho=0.8, symmetric=False):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    if symmetric:
        a = a + a.T
    a = rho * a / np.max(np.abs(np.linalg.eigvals(a)))
    b = rng.normal(size=d)
    z_star = np.linalg.solve(np.eye(d) - a, b)
    return jnp.asarray(a), jnp.asarray(b), z_star


@pytest.mark.parametrize("name", SOLVER_FNS)
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_affine_fixed_point_float64(name, stop_mode):
    a, b, z_star = _affine_problem(0, 12, rho=0.7)
    sol = SOLVER_FNS[name](
        lambda z: a @ z + b, jnp.zeros(12), max_steps=400, tol=1e-11, stop_mode=stop_mode
    )
    assert sol.value.dtype == jnp.float64
    assert int(sol.status) == Status.CONVERGED and bool(sol.converged)
    assert float(sol.residual) <= 1e-11
    np.testing.assert_allclose(sol.value, z_star, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_pytree_state_with_mixed_shapes(name):
    """A dict of a matrix, a vector and a scalar (like multi-resolution MDEQ branches)."""
    d = 3 * 4 + 5 + 1
    a, b, z_star = _affine_problem(1, d, rho=0.6)
    z0 = {"img": jnp.zeros((3, 4)), "vec": jnp.zeros(5), "s": jnp.zeros(())}

    def flat(z):
        return jnp.concatenate([z["img"].ravel(), z["vec"], z["s"][None]])

    def unflat(v):
        return {"img": v[:12].reshape(3, 4), "vec": v[12:17], "s": v[17]}

    sol = SOLVER_FNS[name](lambda z: unflat(a @ flat(z) + b), z0, max_steps=300, tol=1e-11)
    assert bool(sol.converged)
    assert jax.tree.structure(sol.value) == jax.tree.structure(z0)
    assert sol.value["img"].shape == (3, 4) and sol.value["s"].shape == ()
    np.testing.assert_allclose(flat(sol.value), z_star, rtol=1e-9, atol=1e-9)


def test_accelerated_solvers_beat_plain_iteration_on_slow_spectrum():
    a, b, z_star = _affine_problem(2, 40, rho=0.98, symmetric=True)
    kwargs = dict(max_steps=2000, tol=1e-8)
    steps = {
        n: int(fn(lambda z: a @ z + b, jnp.zeros(40), **kwargs).num_steps)
        for n, fn in SOLVER_FNS.items()
    }
    assert steps["anderson"] < steps["fpi"] / 4
    assert steps["broyden"] < steps["fpi"] / 4


@pytest.mark.parametrize("cls", solvers.SOLVERS)
def test_dataclass_matches_function_and_is_static(cls):
    a, b, _ = _affine_problem(3, 8)
    solver = cls(max_steps=200, tol=1e-9)
    assert hash(solver) == hash(cls(max_steps=200, tol=1e-9))
    with pytest.raises(dataclasses_frozen_error()):
        solver.tol = 1.0  # frozen

    fn_name = {FixedPointIteration: "fpi", Anderson: "anderson", Broyden: "broyden"}[cls]
    ref = SOLVER_FNS[fn_name](lambda z: a @ z + b, jnp.zeros(8), max_steps=200, tol=1e-9)

    @functools.partial(jax.jit, static_argnums=0)
    def solve(s, z0):
        return s(lambda z: a @ z + b, z0)

    out = solve(solver, jnp.zeros(8))
    np.testing.assert_allclose(out.value, ref.value, rtol=1e-12)
    assert int(out.num_steps) == int(ref.num_steps)


def dataclasses_frozen_error():
    import dataclasses

    return dataclasses.FrozenInstanceError


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_vmap_equals_per_problem_and_samples_stop_separately(name):
    """Per-sample contraction rates differ, so samples stop at different steps."""
    a, b, _ = _affine_problem(4, 10, rho=1.0)
    scales = jnp.asarray([0.2, 0.6, 0.9, 0.97])
    b_batch = jnp.stack([b * (i + 1) for i in range(4)])

    # Enough Broyden memory that the solve is well conditioned: with restarts every 5 steps it
    # needs hundreds of steps here and batched-vs-single matmul rounding shifts the count.
    extra = {"memory": 25} if name == "broyden" else {}

    def solve(scale, bb):
        return SOLVER_FNS[name](
            lambda z: scale * (a @ z) + bb, jnp.zeros(10), max_steps=1500, tol=1e-10, **extra
        )

    batched = jax.jit(jax.vmap(solve))(scales, b_batch)
    steps = [int(s) for s in batched.num_steps]
    assert len(set(steps)) > 1, steps
    for i in range(4):
        single = solve(scales[i], b_batch[i])
        assert int(single.num_steps) == steps[i]
        np.testing.assert_allclose(batched.value[i], single.value, rtol=1e-10, atol=1e-12)
        # Broyden amplifies batched-vs-single matmul rounding in late residuals a little.
        np.testing.assert_allclose(batched.trace[i], single.trace, rtol=1e-3, atol=1e-14)
        assert bool(batched.converged[i])


def test_finished_samples_are_frozen_under_vmap():
    """An easy sample keeps its own value/steps while a hard one keeps iterating."""
    a, b, _ = _affine_problem(5, 6, rho=1.0)

    def solve(scale):
        return solvers.fixed_point_iteration(
            lambda z: scale * (a @ z) + b, jnp.zeros(6), max_steps=3000, tol=1e-12
        )

    out = jax.vmap(solve)(jnp.asarray([0.1, 0.99]))
    easy = solve(0.1)
    assert int(out.num_steps[0]) == int(easy.num_steps) < int(out.num_steps[1])
    np.testing.assert_array_equal(out.value[0], easy.value)
    # The easy sample's trace is padded with its own best residual after it stopped.
    k = int(easy.num_steps)
    np.testing.assert_array_equal(out.trace[0, k:], out.residual[0])


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_jit_does_not_retrace(name):
    a, b, _ = _affine_problem(6, 5)
    traces = []

    def fn(z):
        traces.append(1)
        return a @ z + b

    solve = jax.jit(lambda z0: SOLVER_FNS[name](fn, z0, max_steps=100, tol=1e-8))
    solve(jnp.zeros(5))
    n = len(traces)
    for k in range(3):
        solve(jnp.zeros(5) + k)
    assert len(traces) == n


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_unrolled_loop_matches_while_loop(name):
    a, b, _ = _affine_problem(7, 6)
    kw = dict(max_steps=60, tol=1e-9)
    w = SOLVER_FNS[name](lambda z: a @ z + b, jnp.zeros(6), **kw)
    u = SOLVER_FNS[name](lambda z: a @ z + b, jnp.zeros(6), unroll=True, **kw)
    assert int(w.num_steps) == int(u.num_steps)
    np.testing.assert_allclose(u.value, w.value, rtol=1e-12)
    np.testing.assert_allclose(u.trace, w.trace, rtol=1e-12)


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_trace_and_best_iterate(name):
    a, b, _ = _affine_problem(8, 6, rho=0.9)
    sol = SOLVER_FNS[name](lambda z: a @ z + b, jnp.zeros(6), max_steps=50, tol=1e-10)
    k = int(sol.num_steps)
    assert sol.trace.shape == (50,)
    assert int(sol.num_fevals) == k
    assert float(sol.residual) == pytest.approx(float(jnp.min(sol.trace[:k])))
    np.testing.assert_array_equal(sol.trace[k:], sol.residual)
    # The reported residual is the residual of the returned value.
    fz = a @ sol.value + b
    rel = jnp.linalg.norm(fz - sol.value) / jnp.linalg.norm(fz)
    assert float(rel) == pytest.approx(float(sol.residual), rel=1e-6)


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_nan_ends_with_nonfinite_status(name):
    a, b, _ = _affine_problem(9, 4, rho=0.9)

    def fn(z):  # becomes NaN once the iterate gets close to the fixed point's first entry
        out = a @ z + b
        return jnp.where(jnp.sum(jnp.abs(z)) > 0.5, jnp.nan, 1.0) * out

    sol = SOLVER_FNS[name](fn, jnp.zeros(4), max_steps=100, tol=1e-12)
    assert int(sol.status) == Status.NONFINITE
    assert not bool(sol.converged)
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    assert np.isfinite(float(sol.residual))


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_nan_at_start_is_never_convergence(name):
    sol = SOLVER_FNS[name](lambda z: z * jnp.nan, jnp.ones(3), max_steps=10, tol=1e-3)
    assert int(sol.status) == Status.NONFINITE
    assert int(sol.num_steps) == 1
    assert not bool(sol.converged)


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_blow_up_is_reported_as_diverged(stop_mode):
    """FPI on z -> 1.5 z + 1 blows up; the relative residual alone would fall towards 1/3."""
    sol = solvers.fixed_point_iteration(
        lambda z: 1.5 * z + 1.0, jnp.zeros(2), max_steps=1000, tol=1e-6, stop_mode=stop_mode
    )
    assert int(sol.status) == Status.DIVERGED
    assert not bool(sol.converged)
    assert int(sol.num_steps) < 60
    assert bool(jnp.all(jnp.isfinite(sol.value)))
    if stop_mode == "abs":  # the absolute residual only grows: the best iterate is the start
        np.testing.assert_array_equal(sol.value, jnp.zeros(2))


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_problem_without_fixed_point_is_not_converged(name):
    """z -> z + 1 + z^2 has no real fixed point."""
    sol = SOLVER_FNS[name](lambda z: z + 1.0 + z**2, jnp.zeros(3), max_steps=200, tol=1e-6)
    assert not bool(sol.converged)
    assert int(sol.status) in (Status.MAX_STEPS, Status.DIVERGED, Status.NONFINITE)
    assert bool(jnp.all(jnp.isfinite(sol.value)))


def test_non_contractive_rotation():
    """A rotation has the fixed point 0 but plain iteration cycles; Anderson/Broyden solve it."""
    r = jnp.asarray([[0.0, -1.0], [1.0, 0.0]])
    z0 = jnp.asarray([1.0, 0.5])
    fpi = solvers.fixed_point_iteration(
        lambda z: r @ z, z0, max_steps=100, tol=1e-8, stop_mode="abs"
    )
    assert int(fpi.status) == Status.MAX_STEPS
    for fn in (solvers.anderson, solvers.broyden):
        sol = fn(lambda z: r @ z, z0, max_steps=100, tol=1e-8, stop_mode="abs")
        assert bool(sol.converged)
        np.testing.assert_allclose(sol.value, 0.0, atol=1e-8)


def test_zero_fixed_point_in_relative_mode():
    """z* = 0: the relative residual 0/0 is defined as 0, not NaN."""
    for fn in SOLVER_FNS.values():
        sol = fn(lambda z: 0.5 * z, jnp.zeros(4), max_steps=20, tol=1e-8)
        assert bool(sol.converged) and int(sol.num_steps) == 1
        assert float(sol.residual) == 0.0


def test_anderson_ridge_is_relative_to_gram_scale():
    """Rescaling the problem (z -> s z) leaves relative-mode iteration counts unchanged."""
    a, b, _ = _affine_problem(10, 20, rho=0.99, symmetric=True)
    steps = []
    for s in (1.0, 1e-6, 1e6):
        sol = solvers.anderson(
            lambda z, s=s: s * (a @ (z / s) + b), jnp.zeros(20), max_steps=500, tol=1e-9, ridge=1e-4
        )
        assert bool(sol.converged)
        steps.append(int(sol.num_steps))
    assert len(set(steps)) == 1, steps


def test_broyden_solves_linear_problem_in_at_most_2n_steps():
    """Gay (1979): good Broyden with full memory terminates in <= 2n steps on linear maps."""
    n = 8
    a, b, z_star = _affine_problem(11, n, rho=0.95)
    sol = solvers.broyden(
        lambda z: a @ z + b, jnp.zeros(n), max_steps=100, tol=1e-10, stop_mode="abs", memory=3 * n
    )
    assert bool(sol.converged)
    assert int(sol.num_steps) <= 2 * n + 2
    np.testing.assert_allclose(sol.value, z_star, atol=1e-8)


def test_broyden_restarts_when_memory_fills():
    """With memory L, update L (0-based) restarts the model: only slot 0 stays valid."""
    memory, n = 3, 5
    rng = np.random.default_rng(0)

    def run(policy):
        algo = _Broyden(memory, policy)
        x, g = jnp.asarray(rng.normal(size=n)), jnp.asarray(rng.normal(size=n))
        hist = algo.init(x, g)
        counts = []
        for k in range(1, memory + 3):
            x_new = algo.propose(hist, x, g, k)
            g_new = jnp.asarray(rng.normal(size=n))
            hist = algo.observe(hist, x, g, x_new, g_new, k)
            x, g = x_new, g_new
            counts.append(int(jnp.sum(hist.valid)))
        return counts

    assert run("restart") == [1, 2, 3, 1, 2]
    assert run("ring") == [1, 2, 3, 3, 3]


def test_broyden_restart_is_the_safe_full_memory_policy():
    """Small memory: restarting converges; overwriting the oldest term (ring) breaks the
    Sherman-Morrison chain and here diverges, which is why restart is the default."""
    a, b, z_star = _affine_problem(12, 30, rho=0.95, symmetric=True)

    def solve(full_memory):
        return solvers.broyden(
            lambda z: a @ z + b,
            jnp.zeros(30),
            max_steps=500,
            tol=1e-10,
            memory=5,
            full_memory=full_memory,
        )

    restart, ring = solve("restart"), solve("ring")
    assert bool(restart.converged)
    np.testing.assert_allclose(restart.value, z_star, atol=1e-7)
    assert not bool(ring.converged)
    assert int(ring.status) == Status.DIVERGED


def test_float32_solves_stay_float32():
    a, b, _ = _affine_problem(13, 16, rho=0.9)
    a, b = a.astype(jnp.float32), b.astype(jnp.float32)
    for fn in SOLVER_FNS.values():
        sol = fn(lambda z: jnp.tanh(a @ z + b), jnp.zeros(16, jnp.float32), max_steps=200, tol=1e-5)
        assert sol.value.dtype == jnp.float32 and sol.trace.dtype == jnp.float32
        assert bool(sol.converged)


# ------------------------------------------------------------------------------------------
# Validation.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_fn_output_mismatches_raise(name):
    solve = functools.partial(SOLVER_FNS[name], max_steps=5, tol=1e-3)
    with pytest.raises(ValueError, match="shape"):
        solve(lambda z: jnp.zeros(4), jnp.zeros(3))
    with pytest.raises(ValueError, match="dtype"):
        solve(lambda z: z.astype(jnp.float32), jnp.zeros(3, jnp.float64))
    with pytest.raises(ValueError, match="structure"):
        solve(lambda z: (z, z), jnp.zeros(3))
    with pytest.raises(TypeError, match="floating"):
        solve(lambda z: z, jnp.zeros(3, jnp.int32))


@pytest.mark.parametrize("name", SOLVER_FNS)
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_steps=0, tol=1e-3), "max_steps"),
        (dict(max_steps=-3, tol=1e-3), "max_steps"),
        (dict(max_steps=2.5, tol=1e-3), "max_steps"),
        (dict(max_steps=10, tol=0.0), "tol"),
        (dict(max_steps=10, tol=-1.0), "tol"),
        (dict(max_steps=10, tol=1e-3, stop_mode="max"), "stop_mode"),
    ],
)
def test_bad_hyperparameters_raise(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SOLVER_FNS[name](lambda z: z, jnp.zeros(2), **kwargs)


@pytest.mark.parametrize(
    "factory, match",
    [
        (
            lambda: solvers.anderson(lambda z: z, jnp.zeros(2), max_steps=3, tol=1, memory=0),
            "memory",
        ),
        (
            lambda: solvers.broyden(lambda z: z, jnp.zeros(2), max_steps=3, tol=1, memory=-1),
            "memory",
        ),
        (lambda: Anderson(memory=0), "memory"),
        (lambda: Broyden(memory=0), "memory"),
        (lambda: Broyden(full_memory="lifo"), "full_memory"),
        (lambda: Anderson(ridge=-1.0), "ridge"),
        (lambda: Anderson(mixing=0.0), "mixing"),
        (lambda: FixedPointIteration(damping=0.0), "damping"),
        (lambda: FixedPointIteration(max_steps=0), "max_steps"),
        (lambda: Anderson(tol=0), "tol"),
        (lambda: Broyden(stop_mode="relative"), "stop_mode"),
    ],
)
def test_bad_solver_specific_arguments_raise(factory, match):
    with pytest.raises(ValueError, match=match):
        factory()


def test_status_enum():
    assert [s.name for s in Status] == ["CONVERGED", "MAX_STEPS", "NONFINITE", "DIVERGED"]
    sol = solvers.anderson(lambda z: 0.5 * z + 1.0, jnp.zeros(2), max_steps=20, tol=1e-8)
    assert Status(int(sol.status)) is Status.CONVERGED
    assert bool(sol.status == Status.CONVERGED)


@pytest.mark.parametrize("name", SOLVER_FNS)
def test_batching_rule_cases(name):
    """The custom batching rule: batched z0 or batched closure only, and nested vmap."""
    a, b, _ = _affine_problem(14, 5, rho=0.8)
    solve = functools.partial(SOLVER_FNS[name], max_steps=200, tol=1e-11)
    bs = jnp.stack([b, 2 * b, -b])
    z0s = jnp.stack([jnp.zeros(5), jnp.ones(5), -jnp.ones(5)])

    # Only the closed-over input is batched; z0 is shared.
    out = jax.vmap(lambda bb: solve(lambda z: a @ z + bb, jnp.zeros(5)))(bs)
    for i in range(3):
        ref = solve(lambda z, bb=bs[i]: a @ z + bb, jnp.zeros(5))
        np.testing.assert_allclose(out.value[i], ref.value, rtol=1e-10, atol=1e-12)
        assert int(out.num_steps[i]) == int(ref.num_steps)

    # Only z0 is batched; the map is shared.
    out = jax.jit(jax.vmap(lambda z0: solve(lambda z: a @ z + b, z0)))(z0s)
    for i in range(3):
        ref = solve(lambda z: a @ z + b, z0s[i])
        np.testing.assert_allclose(out.value[i], ref.value, rtol=1e-10, atol=1e-12)
        assert int(out.num_steps[i]) == int(ref.num_steps)

    # Nested vmap over (z0, input) pairs.
    nested = jax.vmap(
        jax.vmap(lambda z0, bb: solve(lambda z: a @ z + bb, z0), (0, None)), (None, 0)
    )
    out = nested(z0s, bs)
    assert out.value.shape == (3, 3, 5)
    for i in range(3):
        for j in range(3):
            ref = solve(lambda z, bb=bs[i]: a @ z + bb, z0s[j])
            np.testing.assert_allclose(out.value[i, j], ref.value, rtol=1e-10, atol=1e-12)
            assert int(out.num_steps[i, j]) == int(ref.num_steps)


def test_closure_over_integer_and_key_arrays_under_vmap():
    """Non-float captured values (ints, PRNG keys) pass through the batching rule."""
    keys = jax.random.split(jax.random.key(0), 3)

    def solve(key, n):
        noise = jax.random.normal(key, (4,))
        return solvers.anderson(
            lambda z: 0.5 * z + noise * n.astype(z.dtype), jnp.zeros(4), max_steps=50, tol=1e-12
        )

    out = jax.vmap(solve)(keys, jnp.arange(3))
    for i in range(3):
        expected = 2 * jax.random.normal(keys[i], (4,)) * i
        np.testing.assert_allclose(out.value[i], expected, atol=1e-10)


def test_broyden_skips_degenerate_updates():
    """A zero or non-finite Sherman-Morrison denominator leaves the model unchanged."""
    algo = _Broyden(4, "restart")
    x, g = jnp.ones(3), jnp.asarray([0.5, -0.2, 0.1])
    hist = algo.init(x, g)
    # dx = 0 makes v^T dg = 0: the update must be skipped, not stored as NaN/Inf.
    hist = algo.observe(hist, x, g, x, g + 1.0, 1)
    assert not bool(hist.valid[0])
    assert bool(jnp.all(jnp.isfinite(hist.u))) and bool(jnp.all(jnp.isfinite(hist.v)))
    np.testing.assert_allclose(hist.direction, g + 1.0)  # H = -I still: p = -H g_new
    hist = algo.observe(hist, x, g, x + 1.0, jnp.full(3, jnp.nan), 2)
    assert not bool(hist.valid[1])
    assert bool(jnp.all(jnp.isfinite(hist.u)))
