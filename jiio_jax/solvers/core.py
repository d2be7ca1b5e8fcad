"""Shared pieces of the fixed-point solvers: result types, validation and the iteration driver.

Every solver works on **one problem**: a pytree ``z`` and a map ``fn(z) -> z`` of the same
structure, shapes and dtypes. Internally the pytree is flattened once into a single vector
(``jax.flatten_util.ravel_pytree``) so the accelerated updates are plain vector algebra; ``fn``
still sees and returns the user's pytree. Batches go through ``jax.vmap``: a custom batching rule
runs the whole batch in one loop until every sample stops, freezing each finished sample's value,
step count, status and trace, so per-sample results equal separate solves.

An algorithm supplies three pure functions (see ``_Algorithm``); the driver owns evaluation of
``fn``, residuals, best-iterate tracking, the residual trace and the stopping rule, so the three
solvers agree exactly on what "converged", "diverged" and "non-finite" mean.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
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
    check_output_shapes(jax.eval_shape(fn, z0), z0, name)


def check_output_shapes(out: PyTree, z0: PyTree, name: str = "fn") -> None:
    """Raises ValueError if ``out`` (shapes of ``fn(z0)``) differs from ``z0``."""
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
    """Loop carry with a leading batch axis ``[B, ...]`` on every field."""

    k: jax.Array  # evaluations done [B]
    x: jax.Array  # current point [B, n]
    g: jax.Array  # f(x) - x [B, n]
    best_x: jax.Array  # [B, n]
    best_res: jax.Array  # [B]
    abs0: jax.Array  # absolute residual at z0, reference for divergence [B]
    status: jax.Array  # [B]
    trace: jax.Array  # [B, max_steps]
    hist: PyTree  # algorithm history, [B, ...] leaves


class _Options(NamedTuple):
    max_steps: int
    tol: float
    stop_mode: str
    divergence_ratio: float


def _residuals(x: jax.Array, fx: jax.Array, stop_mode: str):
    """Returns ``(g, ||g||, stop-mode residual, ||f(x)||)`` with ``g = f(x) - x`` (one problem)."""
    g = fx - x
    abs_res = jnp.linalg.norm(g)
    fnorm = jnp.linalg.norm(fx)
    if stop_mode == "abs":
        return g, abs_res, abs_res, fnorm
    # 0/0 -> 0: z* = 0 is a legitimate fixed point. tiny keeps the ratio finite otherwise.
    rel = abs_res / (fnorm + jnp.finfo(fx.dtype).tiny)
    return g, abs_res, rel, fnorm


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

    One loop implementation serves every case: it iterates a batch ``[B, ...]`` of problems in
    lockstep and masks only the per-problem outputs (step count, status, best iterate, trace)
    once a problem is done. A single problem is a batch of one. Under ``jax.vmap`` a custom
    batching rule (``jax.custom_batching.custom_vmap``) hands the whole batch to the same loop,
    instead of letting vmap's generic ``while_loop`` rule select every carried buffer (the
    Anderson/Broyden histories) on every step; the results are identical, each problem keeps
    its own steps and value.

    Args:
      unroll: if False (default) iterate in a ``lax.while_loop`` that stops as soon as every
        problem is done. If True, iterate ``max_steps - 1`` times in a ``lax.scan`` with
        finished steps masked out entirely: same results, reverse-differentiable, always pays
        ``max_steps``.
    """
    z0 = as_state(z0)
    opts = _Options(max_steps, tol, stop_mode, divergence_ratio)
    if unroll:
        check_fn_output(fn, z0)
        return _solve_one(algo, fn, z0, opts, unroll=True)
    fn_explicit, consts = _explicit_closure(fn, z0)  # traces fn once and validates it
    return _batchable_solve(algo, fn_explicit, opts)(z0, consts)


def _explicit_closure(fn: Callable, z0: PyTree):
    """Rewrites ``fn(z)`` as ``fn_explicit(z, consts)`` with every captured array explicit.

    A custom batching rule only sees its explicit arguments, so arrays ``fn`` closes over
    (weights, the per-sample input under ``vmap``...) are lifted out of its jaxpr.
    """
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
    leaves, treedef = jax.tree.flatten(z0)

    def flat(*ls):
        return fn(jax.tree.unflatten(treedef, list(ls)))

    # One trace gives both the jaxpr and the output shapes used to validate fn.
    closed, out_shapes = jax.make_jaxpr(flat, return_shape=True)(*leaves)
    check_output_shapes(out_shapes, z0)
    jaxpr = closed.jaxpr

    def fn_explicit(z, consts):
        closed_jaxpr = jex_core.ClosedJaxpr(jaxpr, list(consts))
        out = jex_core.jaxpr_as_fun(closed_jaxpr)(*jax.tree.leaves(z))
        return jax.tree.unflatten(treedef, out)

    return fn_explicit, list(closed.consts)


def _batchable_solve(algo, fn_explicit, opts: _Options):
    @jax.custom_batching.custom_vmap
    def solve(z0, consts):
        return _solve_one(algo, lambda z: fn_explicit(z, consts), z0, opts, unroll=False)

    @solve.def_vmap
    def solve_batched(axis_size, in_batched, z0, consts):
        z_batched, consts_batched = in_batched
        z0 = jax.tree.map(
            lambda a, b: a if b else jnp.broadcast_to(a, (axis_size, *a.shape)), z0, z_batched
        )
        axes = [0 if b else None for b in consts_batched]
        fn_b = lambda zb: jax.vmap(fn_explicit, in_axes=(0, axes))(zb, consts)
        sol = _drive(algo, fn_b, z0, opts, unroll=False)
        return sol, jax.tree.map(lambda _: True, sol)

    return solve


def _solve_one(algo, fn, z0, opts: _Options, unroll: bool) -> Solution:
    batched = jax.tree.map(lambda a: a[None], z0)
    sol = _drive(algo, jax.vmap(fn), batched, opts, unroll)
    return jax.tree.map(lambda a: a[0], sol)


def _drive(algo, fn_b: Callable, z0_b: PyTree, opts: _Options, unroll: bool) -> Solution:
    """The loop over a batch: ``fn_b`` maps a batched pytree ``[B, ...]`` to the same."""
    max_steps, tol, stop_mode, divergence_ratio = opts
    _, unravel = ravel_pytree(jax.tree.map(lambda a: a[0], z0_b))
    ravel_b = jax.vmap(lambda z: ravel_pytree(z)[0])
    unravel_b = jax.vmap(unravel)

    def flat_fn(xb):
        return ravel_b(fn_b(unravel_b(xb)))

    residuals = jax.vmap(functools.partial(_residuals, stop_mode=stop_mode))
    status_of = jax.vmap(
        functools.partial(_status, max_steps=max_steps, tol=tol, divergence_ratio=divergence_ratio)
    )
    x0 = ravel_b(z0_b)
    batch, dtype = x0.shape[0], x0.dtype
    fx0 = flat_fn(x0)
    g0, abs0, res0, fnorm0 = residuals(x0, fx0)
    k0 = jnp.ones((batch,), jnp.int32)
    state = _LoopState(
        k=k0,
        x=x0,
        g=g0,
        best_x=x0,
        best_res=jnp.where(jnp.isfinite(res0), res0, jnp.inf).astype(dtype),
        abs0=abs0,
        status=status_of(fnorm0, abs0, res0, abs0, k0),
        trace=jnp.zeros((batch, max_steps), dtype).at[:, 0].set(res0),
        hist=jax.vmap(algo.init)(x0, g0),
    )

    def body(carry):
        # Every running problem has made exactly ``t`` evaluations, so the history slot and the
        # trace column are the same for all of them: an unbatched index keeps those writes
        # in-place dynamic-update-slices instead of per-row scatters. Finished problems keep
        # computing (their lane is paid for anyway) but only their x/g/history change: k,
        # status, best iterate and trace are frozen.
        t, s = carry
        running = s.status == _RUNNING
        x_new = jax.vmap(algo.propose, in_axes=(0, 0, 0, None))(s.hist, s.x, s.g, t)
        fx_new = flat_fn(x_new)
        g_new, abs_new, res_new, fnorm_new = residuals(x_new, fx_new)
        hist = jax.vmap(algo.observe, in_axes=(0, 0, 0, 0, 0, None))(
            s.hist, s.x, s.g, x_new, g_new, t
        )
        k = s.k + running.astype(jnp.int32)
        better = running & (res_new < s.best_res)  # False for NaN
        status = status_of(fnorm_new, abs_new, res_new, s.abs0, k)
        column = jnp.where(running, res_new, s.trace[:, t])
        return t + 1, _LoopState(
            k=k,
            x=x_new,
            g=g_new,
            best_x=jnp.where(better[:, None], x_new, s.best_x),
            best_res=jnp.where(better, res_new, s.best_res),
            abs0=s.abs0,
            status=jnp.where(running, status, s.status),
            trace=jax.lax.dynamic_update_index_in_dim(s.trace, column, t, axis=1),
            hist=hist,
        )

    t0 = jnp.asarray(1, jnp.int32)
    if unroll:

        def scan_body(carry, _):
            keep = carry[1].status == _RUNNING
            t, new = body(carry)

            def select(a, b):
                return jnp.where(keep.reshape((batch,) + (1,) * (a.ndim - 1)), a, b)

            return (t, jax.tree.map(select, new, carry[1])), None

        (_, state), _ = jax.lax.scan(scan_body, (t0, state), None, length=max_steps - 1)
    else:
        _, state = jax.lax.while_loop(lambda c: jnp.any(c[1].status == _RUNNING), body, (t0, state))

    steps = jnp.arange(max_steps)
    trace = jnp.where(steps[None, :] < state.k[:, None], state.trace, state.best_res[:, None])
    return Solution(
        value=unravel_b(state.best_x),
        num_steps=state.k,
        residual=state.best_res,
        converged=state.status == Status.CONVERGED,
        status=state.status,
        trace=trace,
        num_fevals=state.k,
    )


def _status(fnorm, abs_res, res, abs0, k, *, max_steps, tol, divergence_ratio) -> jax.Array:
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
