"""The DEQ layer: a fixed point ``z* = f(z*, *args)`` differentiable w.r.t. ``args``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jiio_jax.deq import backward as bw
from jiio_jax.solvers import Anderson
from jiio_jax.solvers._base import Solution, as_state

PyTree = Any


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _equilibrium(f, backward, z_star, adjoint_init, args):
    return z_star


def _equilibrium_fwd(f, backward, z_star, adjoint_init, args):
    return z_star, (z_star, adjoint_init, args)


def _equilibrium_bwd(f, backward, res, g):
    z_star, adjoint_init, args = res
    args_ct = backward.args_cotangent(f, z_star, args, g, adjoint_init)
    # z* depends on args only through the equilibrium condition (handled above), not on z0.
    zero = functools.partial(jax.tree.map, jnp.zeros_like)
    return zero(z_star), (None if adjoint_init is None else zero(adjoint_init)), args_ct


_equilibrium.defvjp(_equilibrium_fwd, _equilibrium_bwd)


def fixed_point(
    f: Callable[..., PyTree],
    z0: PyTree,
    *args: PyTree,
    solver: Callable = Anderson(),
    backward: Any = bw.Implicit(),
    adjoint_init: PyTree | None = None,
) -> Solution:
    """Solves ``z* = f(z*, *args)`` and makes ``z*`` differentiable w.r.t. ``args``.

    The forward solve runs ``solver`` on ``z -> f(z, *args)`` with gradients stopped. Reverse
    mode then uses the implicit function theorem through ``jax.custom_vjp`` (or the chosen
    approximation, see ``jiio_jax.deq.backward``)::

        dL/dargs = u^T df/dargs,   u^T = u^T df/dz + dL/dz*   (at z*, args)

    **Pass the arrays ``f`` depends on through ``args``** (parameters, injections, inputs). A
    ``custom_vjp`` cannot differentiate w.r.t. values its function closes over; rather than
    return wrong (zero) gradients or JAX's misleading while-loop error, traced arrays that
    ``f`` closes over are hoisted into explicit arguments with ``jax.closure_convert`` (one
    extra trace of ``f``), so their gradients are correct too. Explicit ``args`` avoid the
    extra trace and make the dependence visible. Forward-mode AD (``jax.jvp``,
    ``jax.jacfwd``) through the layer is not supported (``custom_vjp``), except with
    ``backward=Unrolled()``.

    Args:
      f: ``f(z, *args) -> z``; one problem (vmap ``fixed_point`` for batches). Same pytree
        structure, shapes and dtypes in and out.
      z0: initial state (e.g. zeros); receives no gradient.
      *args: pytrees of arrays ``f`` depends on; all receive gradients.
      solver: forward solver configuration (``Anderson``, ``Broyden``,
        ``FixedPointIteration``, or any callable ``(fn, z0) -> Solution``).
      backward: ``Implicit``, ``Neumann``, ``OneStep``, ``Phantom`` or ``Unrolled``.
      adjoint_init: optional warm start of the implicit adjoint solve (pytree like ``z0``),
        e.g. the multiplier ``mu*`` of JIIO when the outer loss equals the inner cost.

    Returns:
      The forward ``Solution`` with ``value`` replaced by the differentiable ``z*``.

    Raises:
      TypeError: if ``backward`` is not a backward mode or ``solver`` is not callable.
      ValueError: if ``f`` changes the state's structure, shapes or dtypes.
    """
    if not isinstance(backward, bw.BACKWARD_MODES):
        raise TypeError(
            f"`backward` must be one of {[c.__name__ for c in bw.BACKWARD_MODES]} "
            f"(from jiio_jax.deq), got {backward!r}."
        )
    if not callable(solver):
        raise TypeError(f"`solver` must be a solver configuration, got {solver!r}.")
    z0 = as_state(z0)
    if isinstance(backward, bw.Unrolled):
        unrolled_solver = backward.solver if backward.solver is not None else solver
        return unrolled_solver(lambda z: f(z, *args), z0, unroll=True)

    f, args = _hoist_closed_over_tracers(f, z0, args)
    frozen_args = jax.lax.stop_gradient(args)
    sol = solver(lambda z: f(z, *frozen_args), jax.lax.stop_gradient(z0))
    value = _equilibrium(f, backward, sol.value, adjoint_init, args)
    return sol._replace(value=value)


def _hoist_closed_over_tracers(f, z0, args):
    """Makes traced values that ``f`` closes over explicit arguments.

    A ``custom_vjp`` cannot differentiate w.r.t. closed-over tracers (JAX errors, or under
    ``grad(jit(...))`` reports a misleading while-loop error). ``jax.closure_convert`` hoists
    exactly the closed-over tracers; appending them to ``args`` gives them correct implicit
    gradients. Concrete closed-over arrays stay constants and ``f`` is returned unchanged.
    """
    converted, hoisted = jax.closure_convert(lambda z, *a: f(z, *a), z0, *args)
    if not hoisted:
        return f, args
    return converted, (*args, *hoisted)
