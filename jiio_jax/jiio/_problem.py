"""Validation of a JIIO problem ``(f, cost, z0, x0, args)`` and closure conversion.

Everything here runs in Python at trace time and raises ``ValueError`` / ``TypeError`` naming the
offending argument and the fix. Closed-over traced arrays (e.g. parameters captured by a lambda
inside ``jax.grad``) are hoisted into explicit arguments with ``jax.closure_convert`` so the
implicit gradient reaches them, as ``jiio_jax.deq.fixed_point`` does for ``f``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jiio_jax.solvers.core import as_state, check_fn_output

PyTree = Any


class Problem(NamedTuple):
    """A validated problem: ``f(z, x, *args) -> z`` and ``cost(z, x, *args) -> []``.

    ``args`` holds the user's ``args`` followed by the hoisted closed-over tracers of ``f`` and
    ``cost``; ``f`` and ``cost`` here take all of them.
    """

    f: Callable
    cost: Callable
    z0: PyTree
    x0: PyTree
    args: tuple


def _common_dtype(z0: PyTree, x0: PyTree):
    dtypes = {jnp.result_type(leaf) for leaf in jax.tree.leaves((z0, x0))}
    if len(dtypes) != 1:
        raise ValueError(
            f"`z0` and `x0` must share one floating dtype, got {sorted(map(str, dtypes))}; "
            "cast x0 (and z0) with .astype(...) so they match."
        )
    return dtypes.pop()


def _eval_shape(fn: Callable, name: str, z0, x0, args):
    try:
        return jax.eval_shape(fn, z0, x0, *args)
    except (TypeError, ValueError) as err:
        shapes = jax.tree.map(lambda a: tuple(a.shape), (z0, x0))
        raise ValueError(
            f"calling `{name}(z0, x0, *args)` failed with z0/x0 shapes {shapes}: {err}. Check "
            f"that `{name}` takes (z, x, *args) (every extra argument goes to both f and cost) "
            "and that x0 and z0 have the shapes of ONE problem (vmap for a batch)."
        ) from err


def _check_cost(cost: Callable, z0, x0, args) -> None:
    if not callable(cost):
        raise TypeError(f"`cost` must be callable, got {type(cost).__name__}.")
    out = _eval_shape(cost, "cost", z0, x0, args)
    leaves = jax.tree.leaves(out)
    if len(leaves) != 1 or tuple(leaves[0].shape) != ():
        shapes = [tuple(leaf.shape) for leaf in leaves]
        raise ValueError(
            "`cost(z, x, *args)` must return a scalar (shape ()) for one problem; got "
            f"{shapes}. Reduce over the pixels/classes of the sample (e.g. jnp.sum) and vmap "
            "`solve` over the batch instead of passing a batched cost."
        )
    if not jnp.issubdtype(leaves[0].dtype, jnp.floating):
        raise ValueError(f"`cost` must return a real floating scalar, got {leaves[0].dtype}.")


def _check_projection(projection: Callable, x0: PyTree) -> None:
    try:
        out = jax.eval_shape(projection, x0)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"`projection(x0)` failed: {err}. Check that the bounds/center match x0's shape."
        ) from err
    check_fn_output(projection, x0, "projection")
    del out


def _closure_convert(fn: Callable, z0, x0, args):
    converted, hoisted = jax.closure_convert(lambda z, x, *a: fn(z, x, *a), z0, x0, *args)
    if not hoisted:
        return fn, ()
    return converted, tuple(hoisted)


def prepare(
    f: Callable, cost: Callable, z0: PyTree, x0: PyTree, args: tuple, projection: Callable
) -> Problem:
    """Validates the problem and returns it with closed-over tracers made explicit.

    Raises:
      TypeError: ``f``/``cost`` not callable, non-floating ``z0``/``x0``.
      ValueError: ``f`` fails on ``(z0, x0)`` or changes the state's structure/shape/dtype,
        ``cost`` is not a scalar, dtypes of ``z0`` and ``x0`` differ, or ``projection``
        changes ``x``'s shapes.
    """
    if not callable(f):
        raise TypeError(f"`f` must be callable, got {type(f).__name__}.")
    z0 = as_state(z0, "z0")
    x0 = as_state(x0, "x0")
    _common_dtype(z0, x0)
    _eval_shape(f, "f", z0, x0, args)
    check_fn_output(lambda z: f(z, x0, *args), z0, "f")
    _check_cost(cost, z0, x0, args)
    _check_projection(projection, x0)
    f_conv, f_hoisted = _closure_convert(f, z0, x0, args)
    c_conv, c_hoisted = _closure_convert(cost, z0, x0, args)
    n_args, n_f = len(args), len(f_hoisted)

    def f_all(z, x, *all_args):
        return f_conv(z, x, *all_args[:n_args], *all_args[n_args : n_args + n_f])

    def cost_all(z, x, *all_args):
        return c_conv(z, x, *all_args[:n_args], *all_args[n_args + n_f :])

    return Problem(f_all, cost_all, z0, x0, (*args, *f_hoisted, *c_hoisted))
