"""Backward (differentiation) modes of the DEQ layer, as small hashable objects.

Given the equilibrium ``z* = f(z*, *args)`` and an output cotangent ``g = dL/dz*``, the implicit
function theorem gives ``dL/dargs = u^T (df/dargs)`` with the adjoint ``u`` solving

    u^T = u^T J + g^T,   J = df/dz at (z*, args),

i.e. ``u = (I - J^T)^{-1} g``. The modes differ in how they get ``u``:

- ``Implicit``: solves the adjoint fixed point matrix-free with any of our solvers (exact up to
  its tolerance).
- ``Neumann(k)``: truncates ``u = g + g J + ... + g J^k``.
- ``OneStep``: ``u = g`` (Jacobian-free backprop, JFB; Fung et al. 2022).
- ``Phantom(k, damping)``: differentiates k damped steps ``z <- (1-t) z + t f(z)`` started at the
  (constant) ``z*`` (Geng et al. 2021); ``Phantom(1, 1.0)`` equals ``OneStep``.
- ``Unrolled``: differentiates through the solver's iterations (a masked ``lax.scan``); the
  reference for tests, memory grows with ``max_steps``.

Every mode except ``Unrolled`` runs inside ``jax.custom_vjp`` and exposes
``args_cotangent(f, z_star, args, g, adjoint_init)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jiio_jax.solvers import Anderson
from jiio_jax.solvers._base import check_positive_float, check_positive_int

PyTree = Any


def _z_vjp(f, z_star, args):
    """``u -> u^T df/dz`` at ``(z*, args)`` (linear; f evaluated once)."""
    _, vjp = jax.vjp(lambda z: f(z, *args), z_star)
    return lambda u: vjp(u)[0]


def _args_vjp(f, z_star, args, u):
    _, vjp = jax.vjp(lambda a: f(z_star, *a), args)
    return vjp(u)[0]


def _tree_add(a, b):
    return jax.tree.map(jnp.add, a, b)


@dataclasses.dataclass(frozen=True)
class Implicit:
    """Exact implicit gradient: solve ``u = g + J^T u`` with a fixed-point solver.

    Attributes:
      solver: any of our solver configurations (``Anderson``, ``Broyden``,
        ``FixedPointIteration``); its ``tol`` is the adjoint tolerance. The adjoint map is
        linear with the same spectrum as the forward Jacobian, so what converges forward
        converges backward.
      init: starting point of the adjoint solve when ``fixed_point`` gets no ``adjoint_init``:
        ``"cotangent"`` (``u0 = g``, the first Neumann term) or ``"zeros"``.
    """

    solver: Any = Anderson(max_steps=60, tol=1e-6)
    init: str = "cotangent"

    def __post_init__(self):
        if not callable(self.solver):
            raise TypeError(f"`solver` must be a solver configuration, got {self.solver!r}.")
        if self.init not in ("cotangent", "zeros"):
            raise ValueError(f"`init` must be 'cotangent' or 'zeros', got {self.init!r}.")

    def adjoint(self, f, z_star, args, g, adjoint_init=None):
        """Returns the adjoint solve's ``Solution`` (``value`` is ``u``)."""
        vjp_z = _z_vjp(f, z_star, args)
        if adjoint_init is not None:
            u0 = adjoint_init
        elif self.init == "zeros":
            u0 = jax.tree.map(jnp.zeros_like, g)
        else:
            u0 = g
        return self.solver(lambda u: _tree_add(g, vjp_z(u)), u0)

    def args_cotangent(self, f, z_star, args, g, adjoint_init=None):
        u = self.adjoint(f, z_star, args, g, adjoint_init).value
        return _args_vjp(f, z_star, args, u)


@dataclasses.dataclass(frozen=True)
class Neumann:
    """Truncated Neumann series ``u = sum_{i=0..k} g J^i`` (``k`` extra VJPs)."""

    k: int = 5

    def __post_init__(self):
        check_positive_int("k", self.k)

    def args_cotangent(self, f, z_star, args, g, adjoint_init=None):
        vjp_z = _z_vjp(f, z_star, args)

        def body(_, carry):
            term, total = carry
            term = vjp_z(term)
            return term, _tree_add(total, term)

        _, u = jax.lax.fori_loop(0, self.k, body, (g, g))
        return _args_vjp(f, z_star, args, u)


@dataclasses.dataclass(frozen=True)
class OneStep:
    """Jacobian-free backprop: ``u = g``, i.e. differentiate one application of ``f`` at z*."""

    def args_cotangent(self, f, z_star, args, g, adjoint_init=None):
        return _args_vjp(f, z_star, args, g)


@dataclasses.dataclass(frozen=True)
class Phantom:
    """Phantom gradient: differentiate ``k`` damped steps ``z <- (1-t) z + t f(z, args)``.

    The steps start from the constant ``z*``; only the dependence on ``args`` is differentiated.
    """

    k: int = 5
    damping: float = 0.5

    def __post_init__(self):
        check_positive_int("k", self.k)
        check_positive_float("damping", self.damping)

    def args_cotangent(self, f, z_star, args, g, adjoint_init=None):
        t = self.damping

        def unrolled(a):
            z = z_star
            for _ in range(self.k):
                fz = f(z, *a)
                z = jax.tree.map(lambda zi, fi: (1 - t) * zi + t * fi, z, fz)
            return z

        _, vjp = jax.vjp(unrolled, args)
        return vjp(g)[0]


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
