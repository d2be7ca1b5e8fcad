"""JIIO configurations: config sections splat into ``JIIO``; configs are jit arguments; classes
passed where instances are expected are TypeErrors that say so."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import jiio
from jiio_jax.deq import Implicit, Neumann, OneStep
from jiio_jax.solvers import Anderson

pytestmark = pytest.mark.usefixtures("fast_compile")

NZ, NX = 4, 2


def problem(seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(NZ, NZ))
    a *= 0.5 / np.max(np.abs(np.linalg.eigvals(a)))
    return {
        "A": jnp.asarray(a),
        "B": jnp.asarray(rng.normal(size=(NZ, NX))),
        "y": jnp.asarray(rng.normal(size=NZ)),
    }


def layer(z, x, p):
    return p["A"] @ z + p["B"] @ x


def cost(z, x, p):
    return jnp.sum((z - p["y"]) ** 2) + 0.1 * jnp.sum(x**2)


def solve(cfg, p, projection=None):
    return jiio.solve(
        layer, cost, jnp.zeros(NZ), jnp.zeros(NX), p, solver=cfg, projection=projection
    )


# Static configuration: every call compiles once (op-by-op execution is much slower).
solve_jit = jax.jit(solve, static_argnums=0)


# -- A: config sections splat into JIIO -------------------------------------------------------


def test_section_with_final_step_size_is_the_reference_piecewise_schedule():
    section = {"step_size": 0.01, "final_step_size": 0.003, "max_steps": 100, "memory": 40}
    cfg = jiio.JIIO(**section)
    assert cfg.schedule == jiio.Piecewise((0.01, 0.003))
    assert cfg.final_step_size == 0.003 and cfg.step_size == jiio.Constant(0.01)
    sched = cfg.schedule
    assert float(sched(jnp.asarray(60), 100)) == 0.01
    assert float(sched(jnp.asarray(61), 100)) == 0.003
    # Without a final step size the schedule is the step size itself.
    assert jiio.JIIO(step_size=0.5).schedule == jiio.Constant(0.5)
    assert jiio.JIIO(step_size=0.5, final_step_size=None).final_step_size is None


def test_final_step_size_changes_the_solve_like_an_explicit_piecewise():
    p = problem()
    a = solve_jit(jiio.JIIO(step_size=0.2, final_step_size=0.05, max_steps=60), p)
    b = solve_jit(jiio.JIIO(step_size=jiio.Piecewise((0.2, 0.05)), max_steps=60), p)
    c = solve_jit(jiio.JIIO(step_size=0.2, max_steps=60), p)
    np.testing.assert_array_equal(np.asarray(a.x), np.asarray(b.x))
    assert not np.array_equal(np.asarray(a.cost_trace), np.asarray(c.cost_trace))


def test_tol_and_backward_accept_mappings():
    cfg = jiio.JIIO(step_size=0.1, tol={"z": 1e-4, "mu": 1e-3, "x": 1e-2})
    assert cfg.tol == jiio.Tolerance(1e-4, 1e-3, 1e-2)
    assert jiio.JIIO(step_size=0.1, tol={"x": 1e-3}).tol == jiio.Tolerance(x=1e-3)
    assert jiio.JIIO(step_size=0.1, tol=1e-6).tol == jiio.Tolerance(1e-6, 1e-6, 1e-6)
    assert jiio.JIIO(step_size=0.1, backward={"name": "one_step"}).backward == OneStep()
    neumann = jiio.JIIO(step_size=0.1, backward={"name": "neumann", "k": 3}).backward
    assert neumann == Neumann(k=3)
    # Instances still work, unchanged.
    implicit = Implicit(Anderson(max_steps=5))
    assert jiio.JIIO(step_size=0.1, backward=implicit).backward is implicit


def test_config_dict_sections_splat():
    ml_collections = pytest.importorskip("ml_collections")
    section = ml_collections.ConfigDict(
        {"step_size": 0.01, "final_step_size": None, "tol": {"z": 1e-4}, "memory": 3}
    )
    cfg = jiio.JIIO(**section)
    assert cfg.tol == jiio.Tolerance(z=1e-4) and cfg.memory == 3


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(step_size=-1.0), ValueError, "`step_size` must be a positive"),
        (dict(final_step_size=0.0), ValueError, "`final_step_size` must be a positive"),
        (dict(final_step_size=True), ValueError, "`final_step_size` must be a positive"),
        (
            dict(step_size=jiio.Piecewise((0.1, 0.2)), final_step_size=0.1),
            ValueError,
            "`step_size` must be a float when `final_step_size`",
        ),
        (dict(tol={"zz": 1e-3}), ValueError, r"`tol` has no field\(s\) \['zz'\]"),
        (dict(tol={"z": -1.0}), ValueError, "`tol.z` must be a positive"),
        (dict(tol=[1e-3]), ValueError, "`tol` must be None, a float"),
        (dict(backward={"name": "magic"}), ValueError, "`backward.name` must be one of"),
        (dict(backward={"name": "unrolled"}), ValueError, "cannot be unrolled"),
        (dict(step_scale=0.0), ValueError, "`step_scale` must be a positive"),
        (dict(step_scale=jnp.ones(3)), ValueError, "`step_scale` must be a scalar"),
        (dict(step_size=jiio.Constant), TypeError, "got the class Constant itself"),
        (dict(tol=jiio.Tolerance), TypeError, "got the class Tolerance itself"),
        (dict(backward=Implicit), TypeError, "got the class Implicit itself"),
    ],
)
def test_bad_fields_name_the_field(kwargs, error, match):
    with pytest.raises(error, match=match):
        jiio.JIIO(**{"step_size": 0.1, **kwargs})


# -- B: configurations are jit arguments; classes are TypeErrors ------------------------------


def test_configs_are_pytrees_with_static_hyper_parameters():
    cfg = jiio.JIIO(step_size=jiio.Piecewise((0.1, 0.05)), tol=1e-3, backward=OneStep())
    leaves, treedef = jax.tree.flatten(cfg)
    assert leaves == [1.0]  # only step_scale
    assert jax.tree.unflatten(treedef, leaves) == cfg
    for static in (jiio.Tolerance(), jiio.Constant(0.1), jiio.Piecewise((0.1, 0.05))):
        assert jax.tree.leaves(static) == []
    radius = jnp.asarray(0.5)
    assert jax.tree.leaves(jiio.L2Ball(radius))[0] is radius


def test_jiio_config_as_jit_argument_and_traced_step_scale():
    p = problem()
    cfg = jiio.JIIO(step_size=0.1, max_steps=30)
    jitted = jax.jit(lambda c, p_: solve(c, p_))
    a = jitted(cfg, p)
    b = solve_jit(cfg, p)
    np.testing.assert_allclose(np.asarray(a.x), np.asarray(b.x), rtol=1e-12, atol=1e-12)
    # step_scale is a leaf: another value reuses the compilation, and scaling by 2 equals
    # doubling the step size.
    c = jitted(dataclasses.replace(cfg, step_scale=2.0), p)
    assert jitted._cache_size() == 1
    d = solve_jit(jiio.JIIO(step_size=0.2, max_steps=30), p)
    np.testing.assert_allclose(np.asarray(c.x), np.asarray(d.x), rtol=1e-12, atol=1e-12)
    # A traced per-sample scale (e.g. a warmed-up radius) under vmap.
    scales = jnp.asarray([1.0, 2.0])
    batched = jax.jit(jax.vmap(lambda s: solve(dataclasses.replace(cfg, step_scale=s), p).x))(
        scales
    )
    np.testing.assert_allclose(np.asarray(batched[1]), np.asarray(d.x), rtol=1e-12, atol=1e-12)
    # A static field change recompiles.
    jitted(dataclasses.replace(cfg, memory=3), p)
    assert jitted._cache_size() == 2


def test_projection_and_tolerance_as_jit_arguments():
    p = problem()
    cfg = jiio.JIIO(step_size=0.1, max_steps=200, tol=jiio.Tolerance(1e-8, 1e-8, 1e-8))
    run = jax.jit(lambda c, p_, proj: solve(c, p_, proj))
    sol = run(cfg, p, jiio.L2Ball(jnp.asarray(0.05)))
    assert float(jnp.linalg.norm(sol.x)) <= 0.05
    run(cfg, p, jiio.L2Ball(jnp.asarray(0.07)))
    assert run._cache_size() == 1  # the radius is data
    schedule = jax.jit(lambda s, t: s(t, 80))
    assert float(schedule(jiio.Piecewise((0.6, 0.2)), jnp.asarray(49))) == pytest.approx(0.2)


def test_classes_instead_of_instances_are_type_errors():
    p = problem()
    with pytest.raises(TypeError, match="got the class JIIO itself"):
        solve(jiio.JIIO, p)
    cfg = jiio.JIIO(step_size=0.1, max_steps=3)
    for cls in (jiio.L2Ball, jiio.Box, jiio.Unconstrained):
        with pytest.raises(TypeError, match=f"got the class {cls.__name__} itself"):
            solve(cfg, p, projection=cls)
