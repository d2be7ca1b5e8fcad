"""Differentiation modes of the DEQ layer, as small hashable (static pytree) configurations.

At the equilibrium ``z* = f(z*, theta)`` with ``J = df/dz`` and ``B = df/dtheta`` at
``(z*, theta)``, the implicit function theorem gives the tangent and the cotangent

    t = dz*/dtheta . v = (I - J)^{-1} B v,        dL/dtheta = u^T B,   u = (I - J^T)^{-1} g.

Each mode defines the **tangent** ``t`` as a linear function of ``v``; ``jiio_jax.deq`` wraps it
in a ``jax.custom_jvp``, so forward mode (``jvp``, ``jacfwd``) uses it directly and reverse mode
(``grad``, ``vjp``, ``jacrev``) comes from JAX transposing it. Because the tangent rule is an
ordinary differentiable JAX function of ``(z*, theta)``, derivatives of every order and mode
(``hessian``, ``jvp(grad)``, ``jacfwd(grad)``) follow from the same definition.

- ``Implicit``: exact. ``(I - J)^{-1}`` is a ``jax.lax.custom_linear_solve`` whose ``solve`` runs
  one of our fixed-point solvers on ``t = B v + J t`` (JVPs) and whose ``transpose_solve`` runs it
  on the adjoint ``u = g + J^T u`` (VJPs), warm-started at ``adjoint_init`` when given.
- ``Neumann(k)``: ``(I - J)^{-1} ~ sum_{i<=k} J^i`` (``k`` extra J-products).
- ``OneStep``: ``(I - J)^{-1} ~ I`` (Jacobian-free backprop, JFB; Fung et al. 2022).
- ``Phantom(k, damping)``: differentiates ``k`` damped steps ``z <- (1-d) z + d f(z, theta)`` from
  the constant ``z*`` (Geng et al. 2021); ``Phantom(1, 1.0)`` equals ``OneStep``.
- ``Unrolled``: differentiates through the solver's iterations (a masked ``lax.scan``); the
  reference for tests, memory grows with ``max_steps``.

The approximate modes are exact derivatives *of their stated approximation* in every mode and
order (e.g. ``jax.hessian`` with ``OneStep`` differentiates the JFB tangent).

If ``f`` cannot be differentiated in forward mode (it calls a ``jax.custom_vjp`` function, like
``jiio_jax.models.conv2d``), the layer falls back to a reverse-only ``jax.custom_vjp`` that uses
``args_cotangent`` below: first-order reverse mode is exact, and any forward-mode or higher-order
use raises ``TypeError`` instead of returning a wrong number.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jiio_jax.solvers import Anderson
from jiio_jax.solvers.core import check_positive_float, check_positive_int, check_solver

PyTree = Any
# Called as report(solution, kind) by the layer: applies ``on_failure`` to the solve of the
# linear system ("tangent" or "adjoint") and returns the (possibly NaN-filled) value.
Report = Callable[[Any, str], PyTree]


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


def _tree_sub(a, b):
    return jax.tree.map(jnp.subtract, a, b)


def _z_vjp(f, z_star, args):
    """``u -> u^T df/dz`` at ``(z*, args)`` (linear; f evaluated once)."""
    _, vjp = jax.vjp(lambda z: f(z, *args), z_star)
    return lambda u: vjp(u)[0]


def _args_vjp(f, z_star, args, u):
    _, vjp = jax.vjp(lambda a: f(z_star, *a), args)
    return vjp(u)[0]


def _args_jvp(f, z_star, theta, v):
    """``B v = df/dtheta . v`` at ``(z*, theta)`` for ``f(z, theta)``."""
    return jax.jvp(lambda th: f(z_star, th), (theta,), (v,))[1]


def _static(cls):
    """Registers a frozen dataclass as a pytree with no leaves (all fields static), so backward
    configurations can be passed to jitted functions as ordinary arguments."""
    jax.tree_util.register_static(cls)
    return cls


def _no_report(sol, kind):
    return sol.value


@_static
@dataclasses.dataclass(frozen=True)
class Implicit:
    """Exact implicit differentiation: linear solves with ``I - J`` (tangent) / ``I - J^T``
    (adjoint) by a fixed-point solver.

    Attributes:
      solver: any of our solver configurations (``Anderson``, ``Broyden``,
        ``FixedPointIteration``) or a mapping ``{"name": ..., **fields}`` for
        ``jiio_jax.solvers.resolve``; its ``tol`` is the linear-solve tolerance. The maps
        ``t -> Bv + J t`` and ``u -> g + J^T u`` have ``J``'s spectrum, so what converges
        forward converges here.
      init: start of the adjoint solve when the layer gets no ``adjoint_init``: ``"cotangent"``
        (``u0 = g``, the first Neumann term) or ``"zeros"``. (The tangent solve starts at
        ``B v``.)
      callback: optional ``callback(info)`` called on the host each time the tangent or
        adjoint solve runs (also under ``jit``/``vmap``), with a ``jiio_jax.deq.SolveInfo``
        (``kind``, ``status``, ``num_steps``, ``residual`` as NumPy arrays, batched under
        ``vmap``). Use it to log or assert on the adjoint solve.
    """

    solver: Any = Anderson(max_steps=60, tol=1e-6)
    init: str = "cotangent"
    callback: Callable | None = None

    def __post_init__(self):
        solver = self.solver
        if isinstance(solver, Mapping):
            from jiio_jax import solvers

            solver = solvers.resolve(dict(solver))
            object.__setattr__(self, "solver", solver)
        check_solver(solver, "Implicit.solver")
        if self.init not in ("cotangent", "zeros"):
            raise ValueError(f"`init` must be 'cotangent' or 'zeros', got {self.init!r}.")
        if self.callback is not None and not callable(self.callback):
            raise TypeError(f"`callback` must be callable or None, got {self.callback!r}.")

    def _u0(self, g, adjoint_init):
        if adjoint_init is not None:
            return adjoint_init
        if self.init == "zeros":
            return jax.tree.map(jnp.zeros_like, g)
        return g

    def adjoint(self, f, z_star, args, g, adjoint_init=None):
        """Solves ``u = g + J^T u`` at ``(z*, args)``; returns the solver's ``Solution``.

        ``f(z, *args)``; ``g`` is a cotangent like ``z*``. For diagnostics and for callers that
        need the adjoint itself (e.g. inner-loop baselines).
        """
        vjp_z = _z_vjp(f, z_star, args)
        return self.solver(lambda u: _tree_add(g, vjp_z(u)), self._u0(g, adjoint_init))

    def tangent(self, f, z_star, theta, v, adjoint_init=None, report: Report = _no_report):
        """``(I - J)^{-1} B v`` as a transposable linear solve (see the module docstring)."""
        rhs = _args_jvp(f, z_star, theta, v)
        _, jvp_z = jax.linearize(lambda z: f(z, theta), z_star)

        def matvec(t):
            return _tree_sub(t, jvp_z(t))

        def solve(matvec, b):
            sol = self.solver(lambda t: _tree_add(b, _tree_sub(t, matvec(t))), b)
            return report(sol, "tangent")

        def transpose_solve(vecmat, g):
            sol = self.solver(
                lambda u: _tree_add(g, _tree_sub(u, vecmat(u))), self._u0(g, adjoint_init)
            )
            return report(sol, "adjoint")

        return jax.lax.custom_linear_solve(matvec, rhs, solve, transpose_solve)

    def args_cotangent(self, f, z_star, args, g, adjoint_init=None, report: Report = _no_report):
        """Reverse-only path: ``u^T df/dargs`` with ``u`` from ``adjoint``."""
        u = report(self.adjoint(f, z_star, args, g, adjoint_init), "adjoint")
        return _args_vjp(f, z_star, args, u)


@_static
@dataclasses.dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series ``(I - J)^{-1} ~ sum_{i=0..k} J^i`` (``k`` extra products)."""

    k: int = 5

    def __post_init__(self):
        check_positive_int("k", self.k)

    def tangent(self, f, z_star, theta, v, adjoint_init=None, report: Report = _no_report):
        rhs = _args_jvp(f, z_star, theta, v)
        _, jvp_z = jax.linearize(lambda z: f(z, theta), z_star)
        return _neumann(jvp_z, rhs, self.k)

    def args_cotangent(self, f, z_star, args, g, adjoint_init=None, report: Report = _no_report):
        u = _neumann(_z_vjp(f, z_star, args), g, self.k)
        return _args_vjp(f, z_star, args, u)


def _neumann(apply, first, k):
    def body(_, carry):
        term, total = carry
        term = apply(term)
        return term, _tree_add(total, term)

    # Static trip count: lowers to a scan, which JAX can transpose (reverse mode).
    return jax.lax.fori_loop(0, k, body, (first, first))[1]


@_static
@dataclasses.dataclass(frozen=True)
class OneStep:
    """Jacobian-free backprop: ``(I - J)^{-1} ~ I``, i.e. differentiate one ``f`` at z*."""

    def tangent(self, f, z_star, theta, v, adjoint_init=None, report: Report = _no_report):
        return _args_jvp(f, z_star, theta, v)

    def args_cotangent(self, f, z_star, args, g, adjoint_init=None, report: Report = _no_report):
        return _args_vjp(f, z_star, args, g)


@_static
@dataclasses.dataclass(frozen=True)
class Phantom:
    """Phantom gradient: differentiate ``k`` damped steps ``z <- (1-d) z + d f(z, theta)``.

    The steps start from the constant ``z*``; only the dependence on ``theta`` is
    differentiated.
    """

    k: int = 5
    damping: float = 0.5

    def __post_init__(self):
        check_positive_int("k", self.k)
        check_positive_float("damping", self.damping)

    def _unrolled(self, f, z_star):
        d = self.damping

        def run(theta):
            z = z_star
            for _ in range(self.k):
                fz = f(z, theta)
                z = jax.tree.map(lambda zi, fi: (1 - d) * zi + d * fi, z, fz)
            return z

        return run

    def tangent(self, f, z_star, theta, v, adjoint_init=None, report: Report = _no_report):
        return jax.jvp(self._unrolled(f, z_star), (theta,), (v,))[1]

    def args_cotangent(self, f, z_star, args, g, adjoint_init=None, report: Report = _no_report):
        run = self._unrolled(lambda z, a: f(z, *a), z_star)
        return jax.vjp(run, args)[1](g)[0]


@_static
@dataclasses.dataclass(frozen=True)
class Unrolled:
    """Differentiate through the solver iterations (reference; O(max_steps) memory).

    Attributes:
      solver: solver to unroll; ``None`` unrolls the forward solver passed to ``fixed_point``.
        The loop is a ``lax.scan`` of ``max_steps - 1`` masked steps, so it always pays
        ``max_steps`` evaluations.
    """

    solver: Any = None


BACKWARD_MODES = (Implicit, Neumann, OneStep, Phantom, Unrolled)
_NAMES = {
    "implicit": Implicit,
    "neumann": Neumann,
    "one_step": OneStep,
    "phantom": Phantom,
    "unrolled": Unrolled,
}


def resolve_backward(spec: Any) -> Any:
    """A backward mode from an instance (returned as is) or a mapping ``{"name": ..., **fields}``.

    Names: ``"implicit"``, ``"neumann"``, ``"one_step"``, ``"phantom"``, ``"unrolled"``; the
    other keys are the dataclass's fields (``Implicit``'s ``solver`` may itself be a mapping for
    ``jiio_jax.solvers.resolve``). Used by configs: ``resolve_backward(config.model.backward)``.

    Raises:
      TypeError: a class instead of an instance, or neither instance nor mapping.
      ValueError: unknown name or field (the message lists the valid ones).
    """
    if isinstance(spec, BACKWARD_MODES):
        return spec
    if isinstance(spec, type) and spec in BACKWARD_MODES:
        raise TypeError(
            f"`backward` must be an instance such as {spec.__name__}(), got the class itself."
        )
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"`backward` must be one of {[c.__name__ for c in BACKWARD_MODES]} (an instance, "
            f"from jiio_jax.deq) or a mapping {{'name': ..., **fields}}, got {spec!r}."
        )
    fields = dict(spec)
    name = fields.pop("name", None)
    if name not in _NAMES:
        raise ValueError(f"`backward.name` must be one of {sorted(_NAMES)}, got {name!r}.")
    cls = _NAMES[name]
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
        raise ValueError(
            f"`backward` ({name}) has no field(s) {unknown}; valid fields: {sorted(known)}."
        )
    return cls(**fields)
