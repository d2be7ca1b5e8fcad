"""Solver configurations: loop options declared once (``core.SolverConfig``), functional forms
built from the dataclasses (``core.functional_form``), the shared instance check."""

from __future__ import annotations

import dataclasses
import inspect

import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import solvers
from jiio_jax.jiio.projections import as_projection
from jiio_jax.solvers import core

FORMS = {
    solvers.FixedPointIteration: solvers.fixed_point_iteration,
    solvers.Anderson: solvers.anderson,
    solvers.Broyden: solvers.broyden,
}


@pytest.mark.parametrize("cls", list(FORMS))
def test_functional_form_signature_is_the_dataclass(cls):
    params = inspect.signature(FORMS[cls]).parameters
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    assert list(params) == ["fn", "z0", *fields, "unroll"]
    # max_steps and tol are required in a direct call; every other default is the dataclass's.
    for name, default in fields.items():
        want = inspect.Parameter.empty if name in ("max_steps", "tol") else default
        assert params[name].default == want, name
    assert {"max_steps", "tol", "stop_mode", "divergence_ratio"} <= set(fields)
    assert FORMS[cls].__name__ in FORMS[cls].__doc__ or cls.__name__ in FORMS[cls].__doc__


@pytest.mark.parametrize("cls", list(FORMS))
def test_functional_form_equals_the_configuration(cls):
    fn = lambda z: 0.5 * jnp.tanh(z) + jnp.array([1.0, -2.0, 0.5])
    z0 = jnp.zeros(3)
    a = FORMS[cls](fn, z0, max_steps=30, tol=1e-9, stop_mode="abs")
    b = cls(max_steps=30, tol=1e-9, stop_mode="abs")(fn, z0)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(TypeError, match=r"unknown option\(s\) \['memroy'\].*fields of"):
        FORMS[cls](fn, z0, max_steps=3, tol=1e-3, memroy=2)
    with pytest.raises(TypeError, match="max_steps"):
        FORMS[cls](fn, z0, tol=1e-3)


def test_fixed_point_iteration_keeps_its_own_default_budget():
    assert solvers.FixedPointIteration().max_steps == 100
    assert solvers.Anderson().max_steps == solvers.Broyden().max_steps == 50
    with pytest.raises(ValueError, match="divergence_ratio"):
        solvers.Broyden(divergence_ratio=1.0)


@pytest.mark.parametrize(
    ("check", "cls", "fix"),
    [
        (solvers.check_solver, solvers.Broyden, r"e.g. Broyden\(\) or Broyden\(max_steps"),
        (as_projection, type("MyBall", (), {}), r"e.g. MyBall\(...\) with its fields"),
    ],
)
def test_class_or_non_callable_instead_of_instance(check, cls, fix):
    with pytest.raises(TypeError, match=rf"got the class {cls.__name__} itself; .*{fix}"):
        check(cls)
    with pytest.raises(TypeError, match="got int: 3"):
        check(3)
    inst = solvers.Broyden() if check is solvers.check_solver else (lambda x: x)
    assert check(inst) is inst
    with pytest.raises(TypeError, match=r"`x` must be a thing, got the class Broyden itself"):
        core.check_callable_instance(
            solvers.Broyden, "x", kind="a thing", example="{cls}()", accepted="callable"
        )
