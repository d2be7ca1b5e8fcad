"""Warm-started inner loops (``warm_start=True``): same answers, fewer f evaluations, exact counts.

The cold (paper) form is pinned to the values the committed code gave before the warm form was
added (same problem, float64; bit-identical with XLA optimisations on, and also with them off).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_jiio import NX, NZ, cost, layer, make_problem

from jiio_jax import jiio
from jiio_jax.deq import Implicit, Neumann
from jiio_jax.solvers import Anderson

TIGHT = Anderson(max_steps=100, tol=1e-13)
LOOSE = Anderson(max_steps=50, tol=1e-4)

pytestmark = pytest.mark.usefixtures("fast_compile")


def tanh_problem(n=24, m=4, o=10, seed=0, scale=0.8):
    """``z = tanh(W z + U x + b)``, cost ``||tanh(V z) - y||^2`` (``||W||_2 = scale``)."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(n, n))
    p = dict(
        W=scale * w / np.linalg.norm(w, 2),
        U=rng.normal(size=(n, m)) / np.sqrt(m),
        b=0.1 * rng.normal(size=n),
        V=rng.normal(size=(o, n)) / np.sqrt(n),
    )
    p = {k: jnp.asarray(v) for k, v in p.items()}
    return p, jnp.asarray(rng.normal(size=o) * 0.5), jnp.zeros(n), jnp.zeros(m)


def tanh_layer(z, x, p, y):
    return jnp.tanh(p["W"] @ z + p["U"] @ x + p["b"])


def tanh_cost(z, x, p, y):
    return jnp.sum((jnp.tanh(p["V"] @ z) - y) ** 2)


def test_cold_form_unchanged():
    """Values of the committed code before ``warm_start`` existed (x to 1e-12, counts exact)."""
    p, y, z0, x0 = tanh_problem()
    bw = Implicit(LOOSE)
    common = dict(forward_solver=LOOSE, backward=bw)
    runs = {
        "inner_adam": lambda: jiio.inner_adam(
            tanh_layer, tanh_cost, z0, x0, p, y, num_steps=10, learning_rate=0.1, **common
        ),
        "inner_adam_neumann": lambda: jiio.inner_adam(
            tanh_layer,
            tanh_cost,
            z0,
            x0,
            p,
            y,
            num_steps=5,
            learning_rate=0.1,
            backward=Neumann(3),
            projection=jiio.Box(-0.3, 0.3),
        ),  # fmt: skip
        "pgd": lambda: jiio.pgd(
            tanh_layer,
            tanh_cost,
            z0,
            x0,
            p,
            y,
            num_steps=7,
            step_size=0.2,
            projection=jiio.L2Ball(0.5),
            **common,
        ),  # fmt: skip
        "projected_adam": lambda: jiio.projected_adam(
            tanh_layer,
            tanh_cost,
            z0,
            x0,
            p,
            y,
            num_steps=8,
            learning_rate=0.1,
            projection=jiio.Box(-0.5, 0.5),
        ),  # fmt: skip
    }
    before = {
        "inner_adam": (
            [0.278829331641503, 0.9601741614535307, -0.949999297978665, 0.4898020605554563],
            1.0422783838831664,
            103,
        ),
        "inner_adam_neumann": ([0.3, 0.3, -0.3, 0.3], 1.947845701439962, 60),
        "pgd": (
            [0.14516626522021972, 0.2659044065631693, -0.3853878816846766, 0.09847732055096964],
            1.9025670996089679,
            80,
        ),
        "projected_adam": (
            [0.3290677880457373, 0.5, -0.5, 0.33740229823671364],
            1.5946113032358953,
            88,
        ),
    }
    for name, run in runs.items():
        sol = jax.jit(run)()
        x, c, fevals = before[name]
        np.testing.assert_allclose(sol.x, x, rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(sol.cost, c, rtol=1e-12, err_msg=name)
        assert int(sol.forward_steps) == fevals, name
        # The jax.grad form cannot report its adjoint count (None); projected_adam can.
        assert (sol.adjoint_steps is None) == (name != "projected_adam"), name


def run_linear(method, warm, p, steps=8):
    z0, x0 = jnp.zeros(NZ), jnp.zeros(NX)
    kw = dict(num_steps=steps, forward_solver=TIGHT, warm_start=warm)
    if method == "inner_adam":
        return jiio.inner_adam(
            layer, cost, z0, x0, p, learning_rate=0.05, backward=Implicit(TIGHT), **kw
        )
    if method == "pgd":
        return jiio.pgd(
            layer, cost, z0, x0, p, step_size=0.06, projection=jiio.L2Ball(0.2),
            backward=Implicit(TIGHT), **kw,
        )  # fmt: skip
    return jiio.projected_adam(
        layer, cost, z0, x0, p, learning_rate=0.05, adjoint=Implicit(TIGHT),
        projection=jiio.Box(-0.1, 0.1), **kw,
    )  # fmt: skip


@pytest.mark.parametrize("method", ["inner_adam", "pgd", "projected_adam"])
def test_warm_equals_cold_when_inner_solves_converge(method):
    """Both forms solve every inner problem to 1e-13, so they run the same outer iterates."""
    p = {k: jnp.asarray(v) for k, v in make_problem().items()}
    cold = jax.jit(lambda: run_linear(method, False, p))()
    warm = jax.jit(lambda: run_linear(method, True, p))()
    np.testing.assert_allclose(warm.x, cold.x, atol=1e-10)
    np.testing.assert_allclose(warm.cost_trace, cold.cost_trace, rtol=1e-9)
    np.testing.assert_allclose(warm.z, cold.z, atol=1e-10)
    assert warm.mu.shape == (NZ,) and int(warm.adjoint_steps) > 0
    if cold.mu is not None:  # projected_adam's cold form also solves the adjoint explicitly
        np.testing.assert_allclose(warm.mu, cold.mu, atol=1e-10)
    # A warm start at a nearby solution needs fewer evaluations, even on a linear layer.
    assert int(warm.forward_steps) < int(cold.forward_steps)


def dense_decoder(hidden=64, latent=8, out=32, batch=4, seed=0):
    """A dense tanh decoder (``||W||_2 = 0.9``) and realizable targets (decoded random latents)."""
    keys = jax.random.split(jax.random.key(seed), 4)
    w = jax.random.normal(keys[0], (hidden, hidden)) / np.sqrt(hidden)
    p = {
        "W": 0.9 * w / jnp.linalg.norm(w, 2),
        "U": jax.random.normal(keys[1], (hidden, latent)) / np.sqrt(latent),
        "b": jnp.zeros(hidden),
        "V": jax.random.normal(keys[2], (out, hidden)) / np.sqrt(hidden),
    }
    z0, x0 = jnp.zeros(hidden), jnp.zeros(latent)
    solve = Anderson(max_steps=300, tol=1e-10)
    x_true = 1.5 * jax.random.normal(keys[3], (batch, latent))
    z_true = jax.vmap(lambda x: solve(lambda z: tanh_layer(z, x, p, None), z0).value)(x_true)
    return p, jnp.tanh(z_true @ p["V"].T), z0, x0


def test_warm_start_saves_f_evaluations_on_dense_tanh_decoder():
    """Adam-20 on a batch of 4 (vmap, jit): warm needs fewer forward and adjoint evaluations
    than the cold form (whose adjoint count comes from ``Implicit(callback=...)``) and reaches
    the same cost."""
    p, targets, z0, x0 = dense_decoder()
    logged = []
    cold_bw = Implicit(LOOSE, callback=lambda info: logged.append((info.kind, info.num_steps)))

    def batch(warm, backward):
        def one(t):
            return jiio.inner_adam(
                tanh_layer, tanh_cost, z0, x0, p, t, num_steps=20, learning_rate=0.1,
                forward_solver=LOOSE, backward=backward, warm_start=warm,
            )  # fmt: skip

        return jax.jit(jax.vmap(one))(targets)

    cold = batch(False, cold_bw)
    jax.effects_barrier()
    cold_adjoint = sum(int(np.sum(n)) for kind, n in logged if kind == "adjoint")
    warm = batch(True, Implicit(LOOSE))
    explicit_cold = jax.jit(
        jax.vmap(
            lambda t: jiio.projected_adam(
                tanh_layer,
                tanh_cost,
                z0,
                x0,
                p,
                t,
                num_steps=20,
                learning_rate=0.1,
                forward_solver=LOOSE,
                adjoint=Implicit(LOOSE),
                warm_start=False,
            )  # fmt: skip
        )
    )(targets)
    cold_fwd, warm_fwd = int(jnp.sum(cold.forward_steps)), int(jnp.sum(warm.forward_steps))
    warm_adj = int(jnp.sum(warm.adjoint_steps))
    # The callback's count of the jax.grad form is the explicit cold form's (same solves).
    assert abs(cold_adjoint - int(jnp.sum(explicit_cold.adjoint_steps))) <= 0.02 * cold_adjoint
    assert int(jnp.sum(explicit_cold.forward_steps)) == cold_fwd
    assert warm_fwd < 0.85 * cold_fwd, (warm_fwd, cold_fwd)
    assert warm_adj < 0.95 * cold_adjoint, (warm_adj, cold_adjoint)
    np.testing.assert_allclose(warm.cost, cold.cost, rtol=2e-2)
    assert float(jnp.mean(warm.cost)) < 0.2 * float(jnp.mean(cold.cost_trace[:, 0]))


class Counter:
    """An ``f`` whose state input is tapped: counts evaluations of ``f`` and VJPs through z."""

    def __init__(self):
        self.calls = {"f": 0, "vjp": 0}

        def bump(kind):
            def add():
                self.calls[kind] += 1

            jax.debug.callback(add)

        @jax.custom_vjp
        def tap(z):
            bump("f")
            return z

        def fwd(z):
            bump("f")
            return z, None

        def bwd(_, ct):
            bump("vjp")
            return (ct,)

        tap.defvjp(fwd, bwd)
        self.layer = lambda z, x, p, y: tanh_layer(tap(z), x, p, y)

    def run(self, fn):
        compiled = jax.jit(fn)
        compiled()  # compile (and a first run) outside the count
        jax.effects_barrier()
        self.calls.update(f=0, vjp=0)
        out = compiled()
        jax.effects_barrier()
        return out, dict(self.calls)


@pytest.mark.parametrize("method", ["inner_adam", "pgd", "projected_adam"])
@pytest.mark.parametrize("warm", [False, True])
def test_f_evaluation_counts_are_exact(method, warm):
    """``forward_steps`` = f calls of the solves; ``adjoint_steps`` = VJPs of f through z.

    Per gradient step, both forms also call ``f`` twice outside the solves (the linearizations
    at ``(z*, x)``), and the ``jax.grad`` form's adjoint VJPs are its (uncounted) solve's.
    """
    p, y, z0, x0 = tanh_problem()
    counter, steps = Counter(), 6
    kw = dict(num_steps=steps, forward_solver=LOOSE, warm_start=warm)
    if method == "inner_adam":
        fn = lambda: jiio.inner_adam(counter.layer, tanh_cost, z0, x0, p, y, **kw)
    elif method == "pgd":
        fn = lambda: jiio.pgd(counter.layer, tanh_cost, z0, x0, p, y, step_size=0.1, **kw)
    else:
        fn = lambda: jiio.projected_adam(
            counter.layer, tanh_cost, z0, x0, p, y, adjoint=Implicit(LOOSE), **kw
        )
    sol, calls = counter.run(fn)
    assert calls["f"] == int(sol.forward_steps) + 2 * steps
    if sol.adjoint_steps is None:  # the jax.grad form: not observable, but the VJPs happen
        assert method != "projected_adam" and not warm and calls["vjp"] > steps
    else:
        assert calls["vjp"] == int(sol.adjoint_steps) > steps


def test_warm_pgd_traced_steps_and_vmap():
    """A traced step count gives the same point; vmap equals per-sample runs."""
    p, targets, z0, x0 = dense_decoder(hidden=16, latent=4, out=8, batch=3)

    def one(t, steps=5):
        return jiio.pgd(
            tanh_layer, tanh_cost, z0, x0, p, t, num_steps=steps, step_size=0.2,
            projection=jiio.L2Ball(1.0), forward_solver=LOOSE, backward=Implicit(LOOSE),
            warm_start=True,
        )  # fmt: skip

    batched = jax.jit(jax.vmap(one))(targets)
    traced = jax.jit(lambda t, k: one(t, k))(targets[1], jnp.int32(5))
    for i in range(3):
        single = jax.jit(one)(targets[i])
        np.testing.assert_allclose(batched.x[i], single.x, atol=1e-12)
        np.testing.assert_allclose(batched.mu[i], single.mu, atol=1e-12)
        assert int(batched.adjoint_steps[i]) == int(single.adjoint_steps)
    np.testing.assert_allclose(traced.x, batched.x[1], atol=1e-12)
    assert int(traced.forward_steps) == int(batched.forward_steps[1])
    assert int(traced.adjoint_steps) == int(batched.adjoint_steps[1])


def test_warm_start_bad_arguments_raise():
    p, y, z0, x0 = tanh_problem()
    with pytest.raises(ValueError, match="`warm_start=True` warm-starts the adjoint"):
        jiio.inner_adam(tanh_layer, tanh_cost, z0, x0, p, y, backward=Neumann(), warm_start=True)
    with pytest.raises(TypeError, match="`warm_start` must be a bool"):
        jiio.pgd(tanh_layer, tanh_cost, z0, x0, p, y, step_size=0.1, warm_start="yes")
