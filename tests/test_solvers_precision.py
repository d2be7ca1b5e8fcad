"""Mixed precision: bfloat16/float16 states keep their dtype, accumulate in float32, and never
report a convergence the dtype cannot resolve."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax.solvers import SOLVERS, Status, core

LOW = [jnp.bfloat16, jnp.float16]


def _problem(d=16, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(d, d))
    w = 0.6 * a / np.max(np.abs(np.linalg.eigvals(a)))
    b = rng.normal(size=d)
    return w, b


def _map(dtype, w, b):
    w_l, b_l = jnp.asarray(w, dtype), jnp.asarray(b, dtype)
    return lambda z: jnp.tanh(w_l @ z + b_l)  # computes in `dtype`


def _true_rel_residual(w, b, z):
    """Relative residual of the float64 map at the returned point."""
    z = np.asarray(z, np.float64)
    fz = np.tanh(w @ z + b)
    return np.linalg.norm(fz - z) / np.linalg.norm(fz)


def test_accumulation_dtype_and_resolution():
    assert core.accumulation_dtype(jnp.bfloat16) == jnp.float32
    assert core.accumulation_dtype(jnp.float16) == jnp.float32
    assert core.accumulation_dtype(jnp.float64) == jnp.float64
    assert core.resolution(jnp.bfloat16) == 2.0**-7 and core.resolution(jnp.float16) == 2.0**-10
    assert core.resolution(jnp.float32) == 0.0 and core.resolution(jnp.float64) == 0.0


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("cls", SOLVERS)
def test_tol_below_resolution_is_never_converged(cls, dtype):
    w, b = _problem()
    sol = cls(max_steps=60, tol=1e-5)(_map(dtype, w, b), jnp.zeros(16, dtype))
    assert sol.value.dtype == dtype
    assert sol.residual.dtype == jnp.float32 and sol.trace.dtype == jnp.float32
    assert int(sol.status) == Status.MAX_STEPS and not bool(sol.converged)
    assert int(sol.num_steps) == 60
    # What it did reach is consistent with the dtype: the float64 residual of the returned
    # point is within a few roundoffs, not the (possibly 0.0) residual of the low-precision map.
    assert _true_rel_residual(w, b, sol.value) < 20 * core.resolution(dtype)


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("cls", SOLVERS)
@pytest.mark.parametrize("stop_mode", ["rel", "abs"])
def test_resolvable_tol_converges_with_an_honest_residual(cls, dtype, stop_mode):
    w, b = _problem(seed=1)
    tol = 4 * core.resolution(dtype) * (1.0 if stop_mode == "rel" else 3.0)
    f = _map(dtype, w, b)
    sol = cls(max_steps=60, tol=tol, stop_mode=stop_mode)(f, jnp.zeros(16, dtype))
    assert int(sol.status) == Status.CONVERGED
    assert float(sol.residual) <= tol
    # The reported residual is f(value) - value of the user's map, computed in float32. (A
    # re-evaluation outside the batched loop may round f's output differently by one ulp.)
    z = sol.value
    fz = f(z).astype(jnp.float32)
    want = jnp.linalg.norm(fz - z.astype(jnp.float32))
    slack = 2 * core.resolution(dtype) * float(jnp.linalg.norm(fz))
    if stop_mode == "rel":
        want, slack = want / jnp.linalg.norm(fz), 2 * core.resolution(dtype)
    assert abs(float(sol.residual) - float(want)) <= slack


@pytest.mark.parametrize("dtype", LOW)
def test_abs_mode_floor_scales_with_the_norm(dtype):
    """abs tol is resolvable only above eps * ||f(z)||: a large-norm fixed point needs more."""
    f = lambda z: 0.5 * z + jnp.asarray(100.0, dtype)  # z* = 200
    z0 = jnp.zeros(4, dtype)
    coarse = core.resolution(dtype) * 400.0 * 4  # eps * ||f|| = eps * 400 at z*
    fine = core.resolution(dtype) * 400.0 / 4
    assert int(SOLVERS[0](max_steps=100, tol=coarse, stop_mode="abs")(f, z0).status) == 0
    sol = SOLVERS[0](max_steps=100, tol=fine, stop_mode="abs")(f, z0)
    assert int(sol.status) == Status.MAX_STEPS


def test_bfloat16_anderson_gram_is_float32():
    """Anderson's history and Gram system, and Broyden's factors, live in float32."""
    from jiio_jax.solvers.anderson import AndersonCore
    from jiio_jax.solvers.broyden import BroydenCore

    seen = {}

    class Spy(AndersonCore):
        def observe(self, hist, x, g, x_new, g_new, k):
            seen["anderson"] = (hist.gram.dtype, hist.images.dtype, x_new.dtype, g_new.dtype)
            return super().observe(hist, x, g, x_new, g_new, k)

    class SpyB(BroydenCore):
        def observe(self, hist, x, g, x_new, g_new, k):
            seen["broyden"] = (hist.u.dtype, hist.v.dtype, hist.direction.dtype)
            return super().observe(hist, x, g, x_new, g_new, k)

    w, b = _problem()
    f = _map(jnp.bfloat16, w, b)
    z0 = jnp.zeros(16, jnp.bfloat16)
    opts = dict(max_steps=10, tol=0.05, stop_mode="rel", divergence_ratio=1e4)
    core.run(Spy(5, 1.0, 1e-6, 5), f, z0, **opts)
    core.run(SpyB(5, "restart"), f, z0, **opts)
    assert set(seen["anderson"]) == {jnp.dtype(jnp.float32)}
    assert set(seen["broyden"]) == {jnp.dtype(jnp.float32)}


def test_mixed_dtype_pytree_state():
    """A bf16 leaf next to a float32 leaf: each keeps its dtype, the floor is the bf16 one."""
    w, b = _problem(d=8)
    wj, bj = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)

    def f(z):
        v = jnp.concatenate([z["lo"].astype(jnp.float32), z["hi"]])
        out = jnp.tanh(jnp.kron(jnp.eye(2, dtype=jnp.float32), wj) @ v + jnp.tile(bj, 2))
        return {"lo": out[:8].astype(jnp.bfloat16), "hi": out[8:]}

    z0 = {"lo": jnp.zeros(8, jnp.bfloat16), "hi": jnp.zeros(8, jnp.float32)}
    sol = SOLVERS[1](max_steps=40, tol=1e-5)(f, z0)
    assert sol.value["lo"].dtype == jnp.bfloat16 and sol.value["hi"].dtype == jnp.float32
    assert int(sol.status) == Status.MAX_STEPS
    sol = SOLVERS[1](max_steps=40, tol=0.05)(f, z0)
    assert int(sol.status) == Status.CONVERGED


def test_float32_path_is_unchanged_by_the_precision_logic():
    w, b = _problem()
    f = _map(jnp.float32, w, b)
    sol = SOLVERS[1](max_steps=60, tol=1e-6)(f, jnp.zeros(16, jnp.float32))
    assert sol.value.dtype == jnp.float32 and sol.residual.dtype == jnp.float32
    assert int(sol.status) == Status.CONVERGED


def test_vmap_and_jit_of_a_bfloat16_solve():
    w, b = _problem()
    f = _map(jnp.bfloat16, w, b)
    z0s = jnp.zeros((3, 16), jnp.bfloat16) + jnp.asarray([[0.0], [0.1], [-0.1]], jnp.bfloat16)
    solve = lambda z: SOLVERS[1](max_steps=30, tol=0.05)(f, z)
    batched = jax.jit(jax.vmap(solve))(z0s)
    for i in range(3):
        one = solve(z0s[i])
        # Same outcome; values agree to bf16 rounding (batched matmuls may round differently).
        assert int(batched.status[i]) == int(one.status) == Status.CONVERGED
        assert abs(int(batched.num_steps[i]) - int(one.num_steps)) <= 2
        np.testing.assert_allclose(
            np.asarray(batched.value[i], np.float32), np.asarray(one.value, np.float32), atol=0.02
        )
