"""Solver ergonomics: configs as jit arguments, class-vs-instance errors, readable reprs,
the ``resolve`` registry and the public ``core`` module (with the old private aliases)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import solvers
from jiio_jax.solvers import SOLVERS, Anderson, Broyden, FixedPointIteration, Solution, Status


def _f(z):
    return jnp.tanh(0.5 * z + 1.0)


@pytest.mark.parametrize("cls", SOLVERS)
def test_config_is_a_static_pytree_and_a_jit_argument(cls):
    solver = cls(max_steps=40, tol=1e-8)
    assert jax.tree.leaves(solver) == []
    assert jax.tree.unflatten(jax.tree.structure(solver), []) == solver
    traces = []

    @jax.jit
    def solve(s, z):
        traces.append(1)
        return s(_f, z)

    z0 = jnp.zeros(3)
    sol = solve(solver, z0)
    assert bool(sol.converged)
    np.testing.assert_allclose(sol.value, solver(_f, z0).value, rtol=1e-12)
    solve(cls(max_steps=40, tol=1e-8), z0)  # an equal config: cached
    assert len(traces) == 1
    solve(cls(max_steps=41, tol=1e-8), z0)  # a different config: retraced
    assert len(traces) == 2
    assert hash(solver) == hash(cls(max_steps=40, tol=1e-8))
    # Inside a pytree argument too.
    out = jax.jit(lambda args: args["s"](_f, args["z"]).num_steps)({"s": solver, "z": z0})
    assert int(out) == int(sol.num_steps)


def test_jit_lambda_from_the_issue():
    z0 = jnp.zeros(4)
    sol = jax.jit(lambda s, z: s(_f, z))(Anderson(), z0)
    assert int(sol.status) == Status.CONVERGED


@pytest.mark.parametrize("cls", SOLVERS)
def test_class_instead_of_instance_is_a_type_error(cls):
    with pytest.raises(TypeError, match=rf"pass an instance, e.g. {cls.__name__}\(\)"):
        solvers.check_solver(cls)
    with pytest.raises(TypeError, match=r"`config.solver` must be a solver instance"):
        solvers.check_solver(cls, "config.solver")
    with pytest.raises(TypeError, match="must be a solver instance"):
        solvers.check_solver(3)
    inst = cls()
    assert solvers.check_solver(inst) is inst


def test_class_as_an_int_argument_names_the_fix():
    with pytest.raises(TypeError, match=r"pass an instance, e.g. Anderson\(\)"):
        solvers.anderson(_f, jnp.zeros(2), max_steps=Anderson, tol=1e-3)


def test_status_prints_its_name():
    assert repr(Status(1)) == "Status.MAX_STEPS"
    assert str(Status.CONVERGED) == "Status.CONVERGED"
    assert Status(3) == 3 and Status.NONFINITE == 2  # still an IntEnum


def test_solution_repr_concrete_batched_and_traced():
    sol = FixedPointIteration(max_steps=5, tol=1e-12)(_f, jnp.zeros(3))
    text = repr(sol)
    assert text.startswith("Solution(status=MAX_STEPS, num_steps=5, residual=")
    assert f"residual={float(sol.residual):.1e}" in text and "value=float64[3]" in text
    assert sol.summary() == text

    batched = jax.vmap(
        lambda s: FixedPointIteration(max_steps=30, tol=1e-6)(lambda z: s * z + 1.0, 0.0)
    )(jnp.asarray([0.5, 0.2, 0.99]))
    text = repr(batched)
    assert "status={CONVERGED: 2, MAX_STEPS: 1}" in text
    assert "(min/med/max)" in text

    seen = []

    @jax.jit
    def traced(z):
        s = Anderson(max_steps=5)(_f, z)
        seen.append(repr(s))
        return s.residual

    traced(jnp.zeros(2))
    assert "status=<traced int32[]>" in seen[0]


def test_resolve_instances_mappings_and_names():
    inst = Broyden(memory=3)
    assert solvers.resolve(inst) is inst
    assert solvers.resolve({"name": "anderson", "memory": 3, "tol": 1e-5}) == Anderson(
        memory=3, tol=1e-5
    )
    assert solvers.resolve("fixed_point_iteration") == FixedPointIteration()
    assert solvers.resolve({"name": "broyden"}) == Broyden()
    assert set(solvers.REGISTRY) == {"fixed_point_iteration", "anderson", "broyden"}


def test_resolve_errors_list_valid_names_and_fields():
    with pytest.raises(ValueError, match=r"unknown solver name 'andersen'.*'anderson', 'broyden'"):
        solvers.resolve({"name": "andersen"})
    with pytest.raises(ValueError, match=r"no field\(s\) \['mem'\]; valid fields: \['max_steps'"):
        solvers.resolve({"name": "broyden", "mem": 3})
    with pytest.raises(ValueError, match="needs a 'name' key"):
        solvers.resolve({"memory": 3})
    with pytest.raises(ValueError, match="`memory` must be a positive int"):
        solvers.resolve({"name": "anderson", "memory": 0})
    with pytest.raises(TypeError, match=r"`model.solver` .*pass an instance, e.g. Broyden\(\)"):
        solvers.resolve(Broyden, "model.solver")


def test_public_core_and_old_private_aliases():
    from jiio_jax.solvers import _base, core
    from jiio_jax.solvers.anderson import AndersonCore, _Anderson
    from jiio_jax.solvers.broyden import BroydenCore, _Broyden
    from jiio_jax.solvers.fixed_point_iteration import _FPI, FixedPointCore

    assert _base.run is core.run and _base.Solution is Solution and _base.Status is Status
    assert _base.check_positive_int is core.check_positive_int
    assert _Broyden is BroydenCore and _FPI is FixedPointCore
    assert issubclass(_Anderson, AndersonCore) and not _Anderson(5, 1.0, 1e-6).safeguarded
    for name in core.__all__:
        assert hasattr(core, name), name
    # A user-defined algorithm runs through the public driver.

    class HalfStep:
        def init(self, x0, g0):
            return ()

        def propose(self, hist, x, g, k):
            return x + 0.5 * g

        def observe(self, hist, x, g, x_new, g_new, k):
            return hist

    sol = core.run(
        HalfStep(),
        _f,
        jnp.zeros(2),
        max_steps=200,
        tol=1e-10,
        stop_mode="abs",
        divergence_ratio=1e4,
    )
    ref = solvers.fixed_point_iteration(
        _f, jnp.zeros(2), max_steps=200, tol=1e-10, stop_mode="abs", damping=0.5
    )
    assert int(sol.num_steps) == int(ref.num_steps)
    np.testing.assert_array_equal(sol.value, ref.value)


def test_anderson_safeguard_arguments_are_validated():
    with pytest.raises(ValueError, match="`stall_steps` must be an int >= 0"):
        Anderson(stall_steps=-1)
    with pytest.raises(ValueError, match="`max_growth` must be > 1"):
        Anderson(max_growth=0.5)
    assert Anderson(stall_steps=0, max_growth=math.inf).stall_steps == 0
