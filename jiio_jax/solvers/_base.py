"""Shared pieces of the fixed-point solvers: result types, validation and the iteration driver.

Every solver works on **one problem**: a pytree ``z`` and a map ``fn(z) -> z`` of the same
structure, shapes and dtypes. Internally the pytree is flattened once into a single vector
(``jax.flatten_util.ravel_pytree``) so the accelerated updates are plain vector algebra; ``fn``
still sees and returns the user's pytree. Batches go through ``jax.vmap``: the batching rule of
``lax.while_loop`` keeps iterating until every sample stops and freezes finished samples with a
select, so each sample keeps its own value, step count and status.

An algorithm supplies three pure functions (see ``_Algorithm``); the driver owns evaluation of
``fn``, residuals, best-iterate tracking, the residual trace and the stopping rule, so the three
solvers agree exactly on what "converged", "diverged" and "non-finite" mean.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any

STOP_MODES = ("abs", "rel")
_RUNNING = -1  # internal status while the loop runs; never returned


class Status(enum.IntEnum):
    """Why a solve ended. ``Solution.status`` holds one of these as an int32 array.

    Compare with ``sol.status == Status.CONVERGED`` (works under jit and vmap) or convert a
    concrete value with ``Status(int(sol.status))``.
    """

    CONVERGED = 0  #: the stop-mode residual reached ``tol``.
    MAX_STEPS = 1  #: ``max_steps`` evaluations of ``fn`` without reaching ``tol``.
    NONFINITE = 2  #: ``fn`` returned NaN/Inf (or the iterate became non-finite).
    DIVERGED = 3  #: the absolute residual grew by more than ``divergence_ratio``.


class Solution(NamedTuple):
    """Result of a fixed-point solve of one problem (add a leading axis per ``vmap``).

    Attributes:
      value: pytree like ``z0``; the best iterate seen (lowest stop-mode residual). On
        convergence this is the iterate that met ``tol``.
      num_steps: int32 ``[]``; number of evaluations of ``fn`` performed (one per iteration,
        the first at ``z0``).
      residual: ``[]``; stop-mode residual of ``value`` (``abs``: ``||f(z)-z||``, ``rel``:
        ``||f(z)-z|| / ||f(z)||``, norms over the whole pytree).
      converged: bool ``[]``; ``status == Status.CONVERGED``. Never true for non-finite values.
      status: int32 ``[]``; a ``Status`` value.
      trace: ``[max_steps]``; stop-mode residual of the k-th evaluated iterate. Entries past
        ``num_steps`` are padded with ``residual`` (the best value), so the array is monotone
        at its tail and static in shape.
      num_fevals: int32 ``[]``; evaluations of ``fn`` (equal to ``num_steps`` for these solvers;
        kept separate so solvers with line searches can report their true cost).
    """

    value: PyTree
    num_steps: jax.Array
    residual: jax.Array
    converged: jax.Array
    status: jax.Array
    trace: jax.Array
    num_fevals: jax.Array


# --------------------------------------------------------------------------------------------
# Validation (Python, at trace time).
# --------------------------------------------------------------------------------------------


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | jnp.integer) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def check_positive_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a positive float, got {value!r}.") from None
    if not v > 0 or v != v or v == float("inf"):
        raise ValueError(f"`{name}` must be a positive finite float, got {value!r}.")
    return v


def check_nonnegative_float(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a float >= 0, got {value!r}.") from None
    if not v >= 0 or v == float("inf"):
        raise ValueError(f"`{name}` must be a finite float >= 0, got {value!r}.")
    return v


def check_stop_mode(stop_mode: Any) -> str:
    if stop_mode not in STOP_MODES:
        raise ValueError(f"`stop_mode` must be one of {STOP_MODES}, got {stop_mode!r}.")
    return stop_mode


def check_common(max_steps: Any, tol: Any, stop_mode: Any, divergence_ratio: Any) -> None:
    check_positive_int("max_steps", max_steps)
    check_positive_float("tol", tol)
    check_stop_mode(stop_mode)
    v = check_positive_float("divergence_ratio", divergence_ratio)
    if v <= 1:
        raise ValueError(f"`divergence_ratio` must be > 1, got {divergence_ratio!r}.")


def as_state(z0: PyTree, name: str = "z0") -> PyTree:
    """Converts leaves to arrays and checks they are real floating point."""
    leaves, treedef = jax.tree.flatten(z0)
    if not leaves:
        raise ValueError(f"`{name}` must contain at least one array, got {z0!r}.")
    out = []
    for path, leaf in zip(_leaf_paths(z0), leaves, strict=True):
        arr = jnp.asarray(leaf)
        if not jnp.issubdtype(arr.dtype, jnp.floating):
            raise TypeError(
                f"`{name}` leaf {path} has dtype {arr.dtype}; fixed-point states must be real "
                "floating point (cast with .astype(jnp.float32))."
            )
        out.append(arr)
    return jax.tree.unflatten(treedef, out)


def _leaf_paths(tree: PyTree) -> list[str]:
    return [
        jax.tree_util.keystr(p) or "<root>" for p, _ in jax.tree_util.tree_leaves_with_path(tree)
    ]


def check_fn_output(fn: Callable, z0: PyTree, name: str = "fn") -> None:
    """Raises ValueError if ``fn(z0)`` differs from ``z0`` in structure, shape or dtype."""
    if not callable(fn):
        raise TypeError(f"`{name}` must be callable, got {type(fn).__name__}.")
    out = jax.eval_shape(fn, z0)
    in_def, out_def = jax.tree.structure(z0), jax.tree.structure(out)
    if in_def != out_def:
        raise ValueError(
            f"`{name}` must return a pytree with the same structure as the state; "
            f"got {out_def} for a state {in_def}."
        )
    for path, a, b in zip(_leaf_paths(z0), jax.tree.leaves(z0), jax.tree.leaves(out), strict=True):
        if tuple(a.shape) != tuple(b.shape):
            raise ValueError(
                f"`{name}` returned shape {tuple(b.shape)} for state leaf {path} of shape "
                f"{tuple(a.shape)}; a fixed-point map must preserve shapes."
            )
        if a.dtype != b.dtype:
            raise ValueError(
                f"`{name}` returned dtype {b.dtype} for state leaf {path} of dtype {a.dtype}; "
                "cast the output (or z0) so they match."
            )


# --------------------------------------------------------------------------------------------
# Algorithms and the driver.
# --------------------------------------------------------------------------------------------


class _Algorithm(Protocol):
    """What an acceleration scheme provides to the driver (all on flat vectors ``[n]``).

    ``init(x0, g0)`` builds the algorithm's history from the first point and its residual
    ``g0 = f(x0) - x0``. ``propose(hist, x, g, k)`` returns the next point to evaluate, given the
    current point, its residual and the number ``k >= 1`` of points evaluated so far.
    ``observe(hist, x, g, x_new, g_new, k)`` updates the history once ``f(x_new)`` is known.
    """

    def init(self, x0: jax.Array, g0: jax.Array) -> PyTree: ...

    def propose(self, hist: PyTree, x: jax.Array, g: jax.Array, k: jax.Array) -> jax.Array: ...

    def observe(
        self, hist: PyTree, x: jax.Array, g: jax.Array, x_new: jax.Array, g_new: jax.Array, k
    ) -> PyTree: ...


class _LoopState(NamedTuple):
    k: jax.Array  # evaluations done
    x: jax.Array  # current point [n]
    g: jax.Array  # f(x) - x [n]
    best_x: jax.Array
    best_res: jax.Array
    abs0: jax.Array  # absolute residual at z0, reference for divergence
    status: jax.Array
    trace: jax.Array
    hist: PyTree


def _residuals(x: jax.Array, fx: jax.Array, stop_mode: str):
    """Returns ``(g, ||g||, stop-mode residual, ||f(x)||)`` with ``g = f(x) - x``."""
    g = fx - x
    abs_res = jnp.linalg.norm(g)
    fnorm = jnp.linalg.norm(fx)
    if stop_mode == "abs":
        return g, abs_res, abs_res, fnorm
    # 0/0 -> 0: z* = 0 is a legitimate fixed point. tiny keeps the ratio finite otherwise.
    rel = abs_res / (fnorm + jnp.finfo(fx.dtype).tiny)
    return g, abs_res, rel, fnorm


def flatten_problem(fn: Callable, z0: PyTree):
    """Returns ``(x0, flat_fn, unravel)`` with ``flat_fn(x) = ravel(fn(unravel(x)))``."""
    x0, unravel = ravel_pytree(z0)

    def flat_fn(x):
        return ravel_pytree(fn(unravel(x)))[0]

    return x0, flat_fn, unravel


def run(
    algo: _Algorithm,
    fn: Callable,
    z0: PyTree,
    *,
    max_steps: int,
    tol: float,
    stop_mode: str,
    divergence_ratio: float,
    unroll: bool = False,
) -> Solution:
    """Runs ``algo`` on ``z = fn(z)`` from ``z0``; see the solvers for the public entry points.

    Args:
      unroll: if False (default) iterate in a ``lax.while_loop`` that stops as soon as the
        problem is done. If True, iterate ``max_steps - 1`` times in a ``lax.scan`` with finished
        steps masked out: same results, reverse-differentiable, always pays ``max_steps``.
    """
    z0 = as_state(z0)
    check_fn_output(fn, z0)
    x0, flat_fn, unravel = flatten_problem(fn, z0)
    dtype = x0.dtype
    fx0 = flat_fn(x0)
    g0, abs0, res0, fnorm0 = _residuals(x0, fx0, stop_mode)
    state = _LoopState(
        k=jnp.asarray(1, jnp.int32),
        x=x0,
        g=g0,
        best_x=x0,
        best_res=jnp.where(jnp.isfinite(res0), res0, jnp.inf).astype(dtype),
        abs0=abs0,
        status=jnp.asarray(_RUNNING, jnp.int32),
        trace=jnp.zeros((max_steps,), dtype).at[0].set(res0),
        hist=algo.init(x0, g0),
    )
    state = state._replace(
        status=_status(fnorm0, abs0, res0, abs0, state.k, max_steps, tol, divergence_ratio)
    )

    def body(s: _LoopState) -> _LoopState:
        x_new = algo.propose(s.hist, s.x, s.g, s.k)
        fx_new = flat_fn(x_new)
        g_new, abs_new, res_new, fnorm_new = _residuals(x_new, fx_new, stop_mode)
        hist = algo.observe(s.hist, s.x, s.g, x_new, g_new, s.k)
        k = s.k + 1
        better = res_new < s.best_res  # False for NaN
        return _LoopState(
            k=k,
            x=x_new,
            g=g_new,
            best_x=jnp.where(better, x_new, s.best_x),
            best_res=jnp.where(better, res_new, s.best_res),
            abs0=s.abs0,
            status=_status(
                fnorm_new, abs_new, res_new, s.abs0, k, max_steps, tol, divergence_ratio
            ),
            trace=s.trace.at[k - 1].set(res_new),
            hist=hist,
        )

    def running(s: _LoopState) -> jax.Array:
        return s.status == _RUNNING

    if unroll:

        def scan_body(s, _):
            new = body(s)
            keep = running(s)
            return jax.tree.map(lambda a, b: jnp.where(keep, a, b), new, s), None

        state, _ = jax.lax.scan(scan_body, state, None, length=max_steps - 1)
    else:
        state = jax.lax.while_loop(running, body, state)

    steps = jnp.arange(max_steps)
    trace = jnp.where(steps < state.k, state.trace, state.best_res)
    return Solution(
        value=unravel(state.best_x),
        num_steps=state.k,
        residual=state.best_res,
        converged=state.status == Status.CONVERGED,
        status=state.status,
        trace=trace,
        num_fevals=state.k,
    )


def _status(fnorm, abs_res, res, abs0, k, max_steps, tol, divergence_ratio) -> jax.Array:
    """Status after the k-th evaluation; ``_RUNNING`` if the loop should go on."""
    # NaN/Inf anywhere in f(x) makes ||f(x)|| non-finite, NaN in x makes ||g|| NaN: two scalar
    # tests instead of an elementwise pass. (An f(x) so large that its norm overflows also
    # counts as non-finite.)
    nonfinite = ~jnp.isfinite(fnorm) | jnp.isnan(abs_res)
    # Watch the absolute residual: a blow-up's relative residual can *fall* (1.5z+1 -> 1/3).
    # A norm that overflows while f(x) is finite (x huge) is a blow-up too.
    tiny = jnp.finfo(abs_res.dtype).tiny
    diverged = ~jnp.isfinite(abs_res) | (abs_res > divergence_ratio * jnp.maximum(abs0, tiny))
    converged = res <= tol
    status = jnp.where(k >= max_steps, Status.MAX_STEPS, _RUNNING)
    status = jnp.where(diverged, Status.DIVERGED, status)
    status = jnp.where(converged, Status.CONVERGED, status)
    status = jnp.where(nonfinite, Status.NONFINITE, status)
    return status.astype(jnp.int32)
