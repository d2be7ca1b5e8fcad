"""The DEQ layer ``z* = f(z*, *args)`` and the implicit-equilibrium primitive.

How derivatives are defined (see ``jiio_jax.deq.backward`` for the maths):

1. ``f``'s closure is made explicit once: ``f`` is traced to a jaxpr and every array it closes
   over (weights, a vmapped input, an integer index, a value traced by jit/grad/scan) becomes an
   explicit input next to ``args``. Inexact inputs are differentiable; integer/bool ones are
   carried as constants. So closed-over values get exactly the derivatives of explicit ones.
2. The solve is a ``jax.custom_jvp`` whose rule calls the solve itself (so outer transforms see
   ``z*`` as a function of the inputs again) and returns the backward mode's tangent, a linear
   function of the input tangents built from JVPs and a transposable ``custom_linear_solve``.
   Reverse mode is JAX's transpose of that rule, and derivatives of every order compose.
3. If ``f`` contains a ``jax.custom_vjp`` (no forward mode, e.g. ``jiio_jax.models.conv2d``), the
   rule above cannot be traced; the layer then uses a reverse-only ``jax.custom_vjp`` with the
   same adjoint solve. First-order reverse mode is exact; forward-mode and higher-order use
   raises ``TypeError`` rather than return a wrong number.

Failures (``on_failure``): the forward solve and the linear (tangent / adjoint) solves count as
failed when their status is ``NONFINITE`` or ``DIVERGED``, or ``MAX_STEPS`` with a residual above
``failure_ratio * tol`` (the solver's ``tol``; solvers without ``tol`` never fail on
``MAX_STEPS``). ``"ignore"`` returns the best iterate anyway (the historical behaviour);
``"nan"`` makes the value (forward failure) and every derivative (forward or linear failure) NaN;
``"raise"`` raises ``FixedPointError`` at run time, also under ``jit`` (a host callback), naming
the solve, status, step count and residual.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from jiio_jax.deq import backward as bw
from jiio_jax.solvers import Anderson
from jiio_jax.solvers.core import Solution, Status, as_state, check_output_shapes, check_solver

PyTree = Any
ON_FAILURE = ("ignore", "nan", "raise")


class FixedPointError(RuntimeError):
    """A fixed-point, tangent or adjoint solve failed under ``on_failure="raise"``."""


class SolveInfo(NamedTuple):
    """What ``Implicit(callback=...)`` receives on the host (NumPy arrays; batched under vmap).

    Attributes:
      kind: ``"tangent"`` (forward mode) or ``"adjoint"`` (reverse mode).
      status: int32; ``jiio_jax.solvers.Status`` values.
      num_steps: int32; iterations of the linear solve.
      residual: the solve's stop-mode residual.
      failed: bool; whether it counts as failed (see ``fixed_point``'s ``failure_ratio``).
    """

    kind: str
    status: np.ndarray
    num_steps: np.ndarray
    residual: np.ndarray
    failed: np.ndarray


# --------------------------------------------------------------------------------------------
# Failure handling.
# --------------------------------------------------------------------------------------------


def _failed(sol: Solution, tol: float | None, failure_ratio: float) -> jax.Array:
    bad = (sol.status == Status.NONFINITE) | (sol.status == Status.DIVERGED)
    if tol is not None:
        bad = bad | ((sol.status == Status.MAX_STEPS) & ~(sol.residual <= failure_ratio * tol))
    return bad


def _describe(what: str, failed, status, steps, residual, tol, failure_ratio) -> str:
    failed, status = np.asarray(failed).ravel(), np.asarray(status).ravel()
    steps, residual = np.asarray(steps).ravel(), np.asarray(residual).ravel()
    i = int(np.flatnonzero(failed)[0])
    try:
        name = Status(int(status[i])).name
    except ValueError:
        name = str(int(status[i]))
    where = (
        f" (problem {i}; {int(failed.sum())} of {failed.size} failed)" if failed.size > 1 else ""
    )
    limit = "" if tol is None else f"; counted as failed above {failure_ratio:g} x tol {tol:g}"
    return (
        f"{what} failed{where}: status {name} after {int(steps[i])} steps, residual "
        f"{float(residual[i]):.3e}{limit}. Raise the solver's max_steps, loosen tol, check that "
        "f is contractive near the solution, or pass on_failure='nan' / 'ignore'."
    )


@dataclasses.dataclass(frozen=True)
class _Policy:
    """Static failure policy of one layer call (hashable; closes over nothing traced)."""

    on_failure: str
    failure_ratio: float
    forward_tol: float | None
    linear_tol: float | None
    callback: Callable | None

    def apply(self, sol: Solution, what: str, tol: float | None, kind: str | None = None):
        value = sol.value
        if self.on_failure == "ignore" and (kind is None or self.callback is None):
            return value
        failed = _failed(sol, tol, self.failure_ratio)
        if kind is not None and self.callback is not None:
            callback = self.callback

            def call(status, steps, residual, failed):
                callback(SolveInfo(kind, *map(np.asarray, (status, steps, residual, failed))))

            jax.debug.callback(call, sol.status, sol.num_steps, sol.residual, failed)
        if self.on_failure == "nan":
            value = jax.tree.map(lambda v: jnp.where(failed, jnp.nan, v), value)
        elif self.on_failure == "raise":
            ratio = self.failure_ratio

            def check(failed, status, steps, residual):
                if np.any(failed):
                    raise FixedPointError(
                        _describe(what, failed, status, steps, residual, tol, ratio)
                    )

            jax.debug.callback(check, failed, sol.status, sol.num_steps, sol.residual)
        return value

    def report(self, sol: Solution, kind: str):
        return self.apply(sol, f"fixed_point: the {kind} solve", self.linear_tol, kind)


# --------------------------------------------------------------------------------------------
# Explicit closure.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Explicit:
    """``f(z, *args)`` as ``call(z, diff, nondiff)`` with every closed-over array explicit.

    ``diff`` holds the inexact inputs (closed-over constants first, then ``args``' leaves),
    ``nondiff`` the integer / bool ones; ``is_diff`` records the interleaving.
    """

    jaxpr: Any
    num_consts: int
    is_diff: tuple[bool, ...]
    z_treedef: Any

    def merge(self, diff, nondiff):
        diff, nondiff = iter(diff), iter(nondiff)
        return [next(diff) if d else next(nondiff) for d in self.is_diff]

    def __call__(self, z, diff, nondiff):
        inputs = self.merge(diff, nondiff)
        consts, leaves = inputs[: self.num_consts], inputs[self.num_consts :]
        fun = jex_core.jaxpr_as_fun(jex_core.ClosedJaxpr(self.jaxpr, consts))
        return jax.tree.unflatten(self.z_treedef, fun(*jax.tree.leaves(z), *leaves))

    def has_custom_vjp(self) -> bool:
        return _contains_custom_vjp(self.jaxpr)


def _explicit(f: Callable, z0: PyTree, args: tuple):
    """Traces ``f`` once; returns ``(call, diff, nondiff)`` (see ``_Explicit``)."""
    if not callable(f):
        raise TypeError(f"`f` must be callable, got {type(f).__name__}.")
    arg_leaves, arg_def = jax.tree.flatten(args)

    def flat(z, *leaves):
        return f(z, *jax.tree.unflatten(arg_def, list(leaves)))

    closed, out = jax.make_jaxpr(flat, return_shape=True)(z0, *arg_leaves)
    check_output_shapes(out, z0, "f")
    inputs = [*closed.consts, *arg_leaves]
    is_diff = tuple(jnp.issubdtype(jnp.result_type(x), jnp.inexact) for x in inputs)
    diff = [x for x, d in zip(inputs, is_diff, strict=True) if d]
    nondiff = [x for x, d in zip(inputs, is_diff, strict=True) if not d]
    call = _Explicit(closed.jaxpr, len(closed.consts), is_diff, jax.tree.structure(z0))
    return call, diff, nondiff


def _subjaxprs(eqn):
    for value in eqn.params.values():
        items = value if isinstance(value, tuple | list) else (value,)
        for item in items:
            if isinstance(item, jex_core.ClosedJaxpr):
                yield item.jaxpr
            elif isinstance(item, jex_core.Jaxpr):
                yield item


def _contains_custom_vjp(jaxpr) -> bool:
    for eqn in jaxpr.eqns:
        if "custom_vjp" in eqn.primitive.name:
            return True
        if any(_contains_custom_vjp(sub) for sub in _subjaxprs(eqn)):
            return True
    return False


# --------------------------------------------------------------------------------------------
# The differentiable solve.
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Spec:
    call: _Explicit
    solver: Callable | None  # None: z0 is already the equilibrium (implicit_equilibrium)
    backward: Any
    policy: _Policy


def _given(z0) -> Solution:
    zero = jnp.zeros((), jnp.int32)
    dtype = jnp.result_type(*jax.tree.leaves(z0))
    res = jnp.zeros((), dtype)
    return Solution(z0, zero, res, jnp.asarray(True), zero, jnp.zeros((1,), dtype), zero)


def _forward(spec: _Spec, z0, diff, nondiff) -> Solution:
    if spec.solver is None:
        return _given(z0)
    sol = spec.solver(lambda z: spec.call(z, diff, nondiff), z0)
    value = spec.policy.apply(sol, "fixed_point: the forward solve", spec.policy.forward_tol)
    return sol._replace(value=value)


def _zero_tangent(x):
    x = jnp.asarray(x)
    if jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros_like(x)
    return np.zeros(x.shape, jax.dtypes.float0)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _solve_jvp(spec: _Spec, z0, diff, nondiff, adjoint_init):
    return _forward(spec, z0, diff, nondiff)


@_solve_jvp.defjvp
def _solve_jvp_rule(spec: _Spec, primals, tangents):
    z0, diff, nondiff, adjoint_init = primals
    d_diff = tangents[1]
    # Recursive call: under an outer transform z* is again this custom_jvp of the inputs.
    sol = _solve_jvp(spec, z0, diff, nondiff, adjoint_init)
    f = lambda z, theta: spec.call(z, theta, nondiff)
    t = spec.backward.tangent(f, sol.value, diff, d_diff, adjoint_init, spec.policy.report)
    return sol, jax.tree.map(_zero_tangent, sol)._replace(value=t)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _solve_vjp(spec: _Spec, z0, diff, nondiff, adjoint_init):
    return _forward(spec, z0, diff, nondiff)


def _solve_vjp_fwd(spec, z0, diff, nondiff, adjoint_init):
    sol = _forward(spec, z0, diff, nondiff)
    return sol, (sol.value, diff, nondiff, adjoint_init, z0)


def _solve_vjp_bwd(spec, res, ct):
    z_star, diff, nondiff, adjoint_init, z0 = res
    f = lambda z, theta: spec.call(z, theta, nondiff)
    g = _reverse_only(ct.value)
    d_diff = spec.backward.args_cotangent(f, z_star, (diff,), g, adjoint_init, spec.policy.report)
    zeros = functools.partial(jax.tree.map, _zero_tangent)
    init_ct = None if adjoint_init is None else zeros(adjoint_init)
    return zeros(z0), d_diff[0], zeros(nondiff), init_ct


_solve_vjp.defvjp(_solve_vjp_fwd, _solve_vjp_bwd)


@jax.custom_jvp
def _reverse_only(g):
    return g


@_reverse_only.defjvp
def _reverse_only_rule(primals, tangents):
    raise TypeError(
        "This fixed point's f calls a jax.custom_vjp function (e.g. jiio_jax.models.conv2d), "
        "which has no forward mode, so fixed_point supports first-order reverse mode only "
        "(grad / vjp / jacrev). Forward-mode and higher-order derivatives (jvp, jacfwd, "
        "hessian, grad of grad) need an f without custom_vjp."
    )


def _solve(spec: _Spec, z0, diff, nondiff, adjoint_init) -> Solution:
    core = _solve_vjp if spec.call.has_custom_vjp() else _solve_jvp
    return core(spec, z0, diff, nondiff, adjoint_init)


# --------------------------------------------------------------------------------------------
# Public entry points.
# --------------------------------------------------------------------------------------------


def _check_common(solver, backward, on_failure, failure_ratio):
    if isinstance(backward, type):
        raise TypeError(
            f"`backward` must be an instance such as {backward.__name__}(), got the class itself."
        )
    backward = bw.resolve_backward(backward)
    if solver is not None:
        check_solver(solver, "solver")
    if on_failure not in ON_FAILURE:
        raise ValueError(f"`on_failure` must be one of {ON_FAILURE}, got {on_failure!r}.")
    try:
        ratio = float(failure_ratio)
    except (TypeError, ValueError):
        ratio = float("nan")
    if not ratio >= 1 or ratio == float("inf"):
        raise ValueError(f"`failure_ratio` must be a finite float >= 1, got {failure_ratio!r}.")
    return backward, ratio


def _make_spec(call, solver, backward, on_failure, ratio) -> _Spec:
    linear_solver = getattr(backward, "solver", None)
    policy = _Policy(
        on_failure=on_failure,
        failure_ratio=ratio,
        forward_tol=getattr(solver, "tol", None),
        linear_tol=getattr(linear_solver, "tol", None),
        callback=getattr(backward, "callback", None),
    )
    return _Spec(call, solver, backward, policy)


def fixed_point(
    f: Callable[..., PyTree],
    z0: PyTree,
    *args: PyTree,
    solver: Callable = Anderson(),
    backward: Any = bw.Implicit(),
    adjoint_init: PyTree | None = None,
    on_failure: str = "ignore",
    failure_ratio: float = 100.0,
) -> Solution:
    """Solves ``z* = f(z*, *args)`` and makes ``z*`` differentiable w.r.t. ``args``.

    The forward solve runs ``solver`` on ``z -> f(z, *args)``. Derivatives follow the implicit
    function theorem (or the chosen approximation, ``jiio_jax.deq.backward``)::

        dz* = (I - df/dz)^{-1} df/dargs . dargs          (tangent; forward mode)
        dL/dargs = u^T df/dargs,  u = (I - df/dz^T)^{-1} dL/dz*   (reverse mode, transposed)

    defined once as a JVP rule, so ``grad``, ``jvp``, ``jacfwd``, ``jacrev``, ``hessian`` and
    ``jvp(grad)`` are all exact for ``Implicit`` (up to the linear solve's ``tol``). Arrays
    ``f`` closes over (float or integer, batched by ``vmap`` or traced by ``jit`` / ``grad`` /
    ``scan``) get the same derivatives as if passed in ``args``. If ``f`` calls a
    ``jax.custom_vjp`` function (e.g. ``jiio_jax.models.conv2d``), only first-order reverse
    mode is available and other uses raise ``TypeError``.

    Args:
      f: ``f(z, *args) -> z``; one problem (vmap ``fixed_point`` for batches). Same pytree
        structure, shapes and dtypes in and out.
      z0: initial state (e.g. zeros); receives no gradient.
      *args: pytrees ``f`` depends on; their inexact leaves receive derivatives, integer
        leaves are constants.
      solver: forward solver configuration (``Anderson()``, ``Broyden()``,
        ``FixedPointIteration()``, or any callable ``(fn, z0) -> Solution``).
      backward: ``Implicit()``, ``Neumann()``, ``OneStep()``, ``Phantom()``, ``Unrolled()`` or
        a mapping for ``jiio_jax.deq.resolve_backward``.
      adjoint_init: optional warm start of the adjoint solve (pytree like ``z0``), e.g. JIIO's
        multiplier ``mu*`` when the outer loss equals the inner cost. Receives no gradient.
      on_failure: ``"ignore"`` (default: return the best iterate; check ``status``), ``"nan"``
        (value and derivatives NaN after a failed forward or linear solve) or ``"raise"``
        (``FixedPointError`` at run time, also under jit). See the module docstring for what
        counts as failed.
      failure_ratio: ``MAX_STEPS`` counts as failed when the residual exceeds
        ``failure_ratio * tol`` (>= 1).

    Returns:
      The forward ``Solution`` with ``value`` the differentiable ``z*`` (NaN on failure with
      ``on_failure="nan"``).

    Raises:
      TypeError: ``solver`` / ``backward`` not instances (e.g. a class), ``f`` not callable.
      ValueError: ``f`` changes the state's structure, shapes or dtypes; bad ``on_failure``.
    """
    backward, ratio = _check_common(solver, backward, on_failure, failure_ratio)
    z0 = as_state(z0)
    if isinstance(backward, bw.Unrolled):
        unrolled_solver = backward.solver if backward.solver is not None else solver
        return unrolled_solver(lambda z: f(z, *args), z0, unroll=True)
    z0 = jax.lax.stop_gradient(z0)
    call, diff, nondiff = _explicit(f, z0, args)
    spec = _make_spec(call, solver, backward, on_failure, ratio)
    if adjoint_init is not None:
        adjoint_init = jax.lax.stop_gradient(adjoint_init)
    return _solve(spec, z0, diff, nondiff, adjoint_init)


def implicit_equilibrium(
    f: Callable[..., PyTree],
    z_star: PyTree,
    *args: PyTree,
    backward: Any = bw.Implicit(),
    adjoint_init: PyTree | None = None,
    on_failure: str = "ignore",
    failure_ratio: float = 100.0,
) -> PyTree:
    """Returns ``z_star`` (an equilibrium of ``f(., *args)`` found elsewhere) made
    differentiable w.r.t. ``args`` by the implicit function theorem.

    For algorithms that compute the fixed point themselves (JIIO's augmented solve, a warm
    started or custom loop): the value is ``z_star`` unchanged, and its derivatives of every
    order are those of ``fixed_point`` (same ``backward``, ``adjoint_init``, ``on_failure``
    and closure handling). ``z_star`` itself receives no gradient; the result is only as exact
    as ``z_star`` is an equilibrium.
    """
    backward, ratio = _check_common(None, backward, on_failure, failure_ratio)
    if isinstance(backward, bw.Unrolled):
        raise ValueError(
            "`backward=Unrolled()` differentiates a solver's iterations; implicit_equilibrium "
            "has none. Use Implicit, Neumann, OneStep or Phantom."
        )
    z_star = jax.lax.stop_gradient(as_state(z_star, "z_star"))
    call, diff, nondiff = _explicit(f, z_star, args)
    spec = _make_spec(call, None, backward, on_failure, ratio)
    if adjoint_init is not None:
        adjoint_init = jax.lax.stop_gradient(adjoint_init)
    return _solve(spec, z_star, diff, nondiff, adjoint_init).value
