"""The solver core: result types, validation helpers, the algorithm protocol and the loop driver.

This module is the public extension point of ``jiio_jax.solvers``: an acceleration scheme that
implements ``Algorithm`` (see ``anderson.AndersonCore``, ``broyden.BroydenCore``,
``fixed_point_iteration.FixedPointCore``) is run by ``run`` with the same stopping rule, status
codes, best-iterate tracking and batching rule as the built-in solvers.

Every solver works on **one problem**: a pytree ``z`` and a map ``fn(z) -> z`` of the same
structure, shapes and dtypes. Internally the pytree is flattened once into a single vector
(``jax.flatten_util.ravel_pytree``) so the accelerated updates are plain vector algebra; ``fn``
still sees and returns the user's pytree. Batches go through ``jax.vmap``: a custom batching rule
runs the whole batch in one loop until every sample stops, freezing each finished sample's value,
step count, status and trace, so per-sample results equal separate solves.

An algorithm supplies three pure functions (see ``Algorithm``); the driver owns evaluation of
``fn``, residuals, best-iterate tracking, the residual trace and the stopping rule, so the three
solvers agree exactly on what "converged", "diverged" and "non-finite" mean.

**Precision.** The iterate stays in the dtype of ``z0`` (every proposed point is rounded to it
before ``fn`` sees it, so the returned value is a point that was actually evaluated), while
everything the driver and the algorithms *accumulate* -- residuals ``f(x) - x``, norms, the
residual trace, Anderson's histories and Gram system, Broyden's factors -- is computed in the
accumulation dtype ``promote_types(dtype, float32)`` (float32 for bfloat16/float16 states,
unchanged for float32/float64). A low-precision state cannot resolve a relative residual below
its machine epsilon (``2**-8`` for bfloat16, ``2**-11`` for float16 as unit roundoff; we use
``finfo(dtype).eps``): for such states ``CONVERGED`` additionally requires
``tol >= finfo(dtype).eps`` (``rel``) or ``tol >= finfo(dtype).eps * ||f(z)||`` (``abs``);
a smaller ``tol`` runs to ``MAX_STEPS`` instead of reporting a convergence (or a residual of
exactly 0.0 at a rounding coincidence) that the dtype cannot resolve.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
from jax.flatten_util import ravel_pytree

PyTree = Any

__all__ = [
    "STOP_MODES",
    "Algorithm",
    "PyTree",
    "Solution",
    "SolverConfig",
    "Status",
    "accumulation_dtype",
    "as_state",
    "broadcast_unbatched",
    "check_callable_instance",
    "check_common",
    "check_fn_output",
    "check_nonnegative_float",
    "check_nonnegative_int",
    "check_output_shapes",
    "check_positive_float",
    "check_positive_int",
    "check_solver",
    "check_stop_mode",
    "functional_form",
    "lift_consts",
    "resolution",
    "run",
    "solver_config",
]

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

    def __repr__(self) -> str:
        return f"Status.{self.name}"

    __str__ = __repr__


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

    def summary(self) -> str:
        """One line with status names, steps and residual; works for tracers and batches.

        Concrete scalars print as values (``status=MAX_STEPS, num_steps=50, residual=3.2e-03``),
        concrete batches as counts per status and min/median/max, traced fields as their shape
        and dtype.
        """
        parts = [
            f"status={_describe_status(self.status)}",
            f"num_steps={_describe_number(self.num_steps, '{:d}')}",
            f"residual={_describe_number(self.residual, '{:.1e}')}",
            f"num_fevals={_describe_number(self.num_fevals, '{:d}')}",
            f"value={_describe_tree(self.value)}",
        ]
        return f"Solution({', '.join(parts)})"

    def __repr__(self) -> str:
        return self.summary()


def _concrete(x):
    """``x`` as a numpy array, or None for tracers (and anything else without a value)."""
    import numpy as np

    try:
        return np.asarray(x)
    except Exception:  # tracers raise one of several JAX errors here
        return None


def _describe_abstract(x) -> str:
    shape = getattr(x, "shape", None)
    dtype = getattr(x, "dtype", None)
    return f"<traced {dtype}{list(shape) if shape is not None else ''}>"


def _describe_status(status) -> str:
    arr = _concrete(status)
    if arr is None:
        return _describe_abstract(status)
    if arr.ndim == 0:
        return _status_name(int(arr))
    codes, counts = _unique(arr)
    items = [f"{_status_name(c)}: {n}" for c, n in zip(codes, counts, strict=True)]
    return "{" + ", ".join(items) + "}"


def _status_name(code: int) -> str:
    try:
        return Status(code).name
    except ValueError:
        return f"<invalid status {code}>"


def _unique(arr):
    import numpy as np

    codes, counts = np.unique(arr.reshape(-1), return_counts=True)
    return [int(c) for c in codes], [int(n) for n in counts]


def _describe_number(x, fmt: str) -> str:
    arr = _concrete(x)
    if arr is None:
        return _describe_abstract(x)
    import numpy as np

    cast = int if "d" in fmt else float
    if arr.ndim == 0:
        return fmt.format(cast(arr))
    if arr.size == 0:
        return "[]"
    lo, med, hi = np.min(arr), np.median(arr), np.max(arr)
    med_s = fmt.format(cast(med)) if "d" not in fmt or float(med).is_integer() else f"{med:g}"
    return f"{fmt.format(cast(lo))}/{med_s}/{fmt.format(cast(hi))} (min/med/max)"


def _describe_tree(tree) -> str:
    leaves = jax.tree.leaves(tree)
    shapes = [
        f"{getattr(a, 'dtype', type(a).__name__)}{list(getattr(a, 'shape', ()))}" for a in leaves
    ]
    if len(shapes) == 1:
        return shapes[0]
    return f"<{len(shapes)} leaves: {', '.join(shapes[:3])}{', ...' if len(shapes) > 3 else ''}>"


# --------------------------------------------------------------------------------------------
# Validation (Python, at trace time).
# --------------------------------------------------------------------------------------------


def check_positive_int(name: str, value: Any) -> int:
    if isinstance(value, type):
        raise TypeError(
            f"`{name}` must be a positive int, got the class {value.__name__}; if this is a "
            f"solver configuration, pass an instance, e.g. {value.__name__}()."
        )
    if isinstance(value, bool) or not isinstance(value, int | jnp.integer) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
    return int(value)


def check_nonnegative_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | jnp.integer) or value < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {value!r}.")
    return int(value)


def check_solver(obj: Any, name: str = "solver") -> Any:
    """Returns ``obj`` if it is a solver *instance* (a callable ``solver(fn, z0)``).

    Raises:
      TypeError: for a class (``solvers.Anderson`` instead of ``solvers.Anderson()``), naming
        the fix, or for a non-callable.
    """
    return check_callable_instance(
        obj,
        name,
        kind="a solver instance",
        example="{cls}() or {cls}(max_steps=50, tol=1e-4)",
        accepted="a solver instance such as Anderson() (callable as solver(fn, z0))",
    )


def check_callable_instance(obj: Any, name: str, *, kind: str, example: str, accepted: str) -> Any:
    """Returns ``obj`` if it is callable and not a class (a configuration used as a function).

    Args:
      obj: the value of argument ``name``.
      name: the argument (or config field) named in the errors.
      kind: what a class is not, e.g. ``"a solver instance"``.
      example: the instance to suggest for a class, ``{cls}`` standing for its name.
      accepted: what a non-callable is not, e.g. ``"a solver instance such as Anderson()"``.

    Raises:
      TypeError: for a class (``L2Ball`` instead of ``L2Ball(radius=0.5)``), naming the fix, or
        for a non-callable.
    """
    if isinstance(obj, type):
        raise TypeError(
            f"`{name}` must be {kind}, got the class {obj.__name__} itself; pass an instance, "
            f"e.g. {example.format(cls=obj.__name__)}."
        )
    if not callable(obj):
        raise TypeError(f"`{name}` must be {accepted}, got {type(obj).__name__}: {obj!r}.")
    return obj


def _check_float(name: str, value: Any, kind: str, valid) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"`{name}` must be a {kind} float, got {value!r}.") from None
    if not valid(v) or v == float("inf"):  # valid(NaN) is False
        raise ValueError(f"`{name}` must be a {kind} finite float, got {value!r}.")
    return v


def check_positive_float(name: str, value: Any) -> float:
    return _check_float(name, value, "positive", lambda v: v > 0)


def check_nonnegative_float(name: str, value: Any) -> float:
    return _check_float(name, value, "non-negative", lambda v: v >= 0)


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


class Algorithm(Protocol):
    """What an acceleration scheme provides to the driver (all on flat vectors ``[n]``).

    ``init(x0, g0)`` builds the algorithm's history from the first point and its residual
    ``g0 = f(x0) - x0``. ``propose(hist, x, g, k)`` returns the next point to evaluate, given the
    current point, its residual and the number ``k >= 1`` of points evaluated so far.
    ``observe(hist, x, g, x_new, g_new, k)`` updates the history once ``f(x_new)`` is known.

    All three see one problem (the driver vmaps them over the batch) and must be pure and free
    of host syncs. The vectors are in the accumulation dtype (float32 for bfloat16/float16
    states, see the module docstring); ``x`` and ``x_new`` hold values of the state dtype.
    ``propose`` may return any value of the accumulation dtype: the driver rounds it to the
    state dtype before evaluating ``fn``. ``k`` is an unbatched int32 scalar.
    """

    def init(self, x0: jax.Array, g0: jax.Array) -> PyTree: ...

    def propose(self, hist: PyTree, x: jax.Array, g: jax.Array, k: jax.Array) -> jax.Array: ...

    def observe(
        self, hist: PyTree, x: jax.Array, g: jax.Array, x_new: jax.Array, g_new: jax.Array, k
    ) -> PyTree: ...


_Algorithm = Algorithm  # old private name, kept for existing imports


def accumulation_dtype(dtype) -> jnp.dtype:
    """Dtype of residuals, norms and histories for a state of ``dtype`` (at least float32)."""
    return jnp.promote_types(dtype, jnp.float32)


def resolution(dtype) -> float:
    """Smallest relative residual a state of ``dtype`` can resolve; 0 for float32 and wider.

    ``finfo(dtype).eps`` for dtypes less precise than float32 (bfloat16: 2**-7, float16:
    2**-10). float32/float64 callers are trusted to pick a meaningful ``tol``.
    """
    eps = float(jnp.finfo(dtype).eps)
    return eps if eps > float(jnp.finfo(jnp.float32).eps) else 0.0


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
    algo: Algorithm,
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


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Base of the frozen solver configurations (``FixedPointIteration``, ``Anderson``,
    ``Broyden``): the loop options every solver shares, validated here and passed to ``run``.

    A subclass is declared with ``@solver_config``, adds its algorithm's fields (validated in
    ``check``; it may redeclare a default here, e.g. ``max_steps``) and builds its core in
    ``algorithm``. ``solver(fn, z0)`` solves.

    Attributes:
      max_steps: maximum number of evaluations of ``fn`` (> 0).
      tol: stop when the stop-mode residual is ``<= tol`` (> 0).
      stop_mode: ``"rel"`` for ``||f(z)-z|| / ||f(z)||`` or ``"abs"`` for ``||f(z)-z||``.
      divergence_ratio: end with ``Status.DIVERGED`` once ``||f(z)-z||`` exceeds this multiple
        of its value at ``z0`` (> 1).
    """

    max_steps: int = 50
    tol: float = 1e-4
    stop_mode: str = "rel"
    divergence_ratio: float = 1e4

    def __post_init__(self):
        check_common(self.max_steps, self.tol, self.stop_mode, self.divergence_ratio)
        self.check()

    def check(self) -> None:
        """Validates the algorithm's own fields (raise ``ValueError`` naming the field)."""

    def algorithm(self) -> Algorithm:
        raise NotImplementedError

    def __call__(self, fn: Callable[[PyTree], PyTree], z0: PyTree, *, unroll: bool = False):
        """Solves ``z = fn(z)`` from ``z0`` (``unroll``: see ``run``); returns a ``Solution``."""
        options = {name: getattr(self, name) for name in _Options._fields}  # the loop options
        return run(self.algorithm(), fn, z0, unroll=unroll, **options)


def solver_config(cls: type) -> type:
    """Declares a ``SolverConfig`` subclass: a frozen dataclass and a static pytree (no leaves),
    so a configuration is hashable and can be passed to a jitted function as an argument."""
    return jax.tree_util.register_static(dataclasses.dataclass(frozen=True)(cls))


def functional_form(config: type, name: str) -> Callable[..., Solution]:
    """The function ``name(fn, z0, *, max_steps, tol, <fields>, unroll=False)`` that solves with
    ``config(max_steps=max_steps, tol=tol, **fields)``.

    The parameters and their defaults are the configuration's fields (its docstring documents
    them), so they are declared once; ``max_steps`` and ``tol`` have no default here: a direct
    call states its budget.
    """

    fields = [f.name for f in dataclasses.fields(config)]

    def solve(fn, z0, *, max_steps, tol, unroll=False, **options) -> Solution:
        unknown = sorted(set(options) - set(fields))
        if unknown:
            raise TypeError(
                f"{name}() got unknown option(s) {unknown}; the fields of {config.__name__} "
                f"are {fields} (and `unroll`)."
            )
        return config(max_steps=max_steps, tol=tol, **options)(fn, z0, unroll=unroll)

    keyword = inspect.Parameter.KEYWORD_ONLY
    params = [inspect.Parameter(a, inspect.Parameter.POSITIONAL_OR_KEYWORD) for a in ("fn", "z0")]
    for field in dataclasses.fields(config):
        required = field.name in ("max_steps", "tol")
        default = inspect.Parameter.empty if required else field.default
        params.append(inspect.Parameter(field.name, keyword, default=default))
    params.append(inspect.Parameter("unroll", keyword, default=False))
    solve.__signature__ = inspect.Signature(params, return_annotation=Solution)
    solve.__name__ = solve.__qualname__ = name
    solve.__module__ = config.__module__
    solve.__doc__ = (
        f"Solves ``z = fn(z)`` from ``z0`` with ``{config.__name__}(max_steps=max_steps, "
        f"tol=tol, **fields)(fn, z0, unroll=unroll)``.\n\n"
        f"``fn`` maps a pytree to one of the same structure, shapes and dtypes (one problem; "
        f"``jax.vmap`` the call for batches); the fields and the algorithm are documented on "
        f"``{config.__name__}``; ``unroll`` iterates in a masked ``lax.scan`` "
        f"(reverse-differentiable, always ``max_steps``) instead of a ``lax.while_loop``. "
        f"Returns a ``Solution`` whose ``value`` is the best iterate."
    )
    return solve


def lift_consts(fn: Callable, *example_args: PyTree):
    """Rewrites ``fn(*args)`` as ``fn_explicit(consts, *args)`` with every captured array explicit.

    A custom batching rule (``jax.custom_batching.custom_vmap``) only sees its explicit
    arguments, so arrays ``fn`` closes over (weights, the per-sample input under ``vmap``...)
    are lifted out of its jaxpr. ``fn`` is traced once, at ``example_args``.

    Returns:
      ``(fn_explicit, consts, out_shapes)``: ``consts`` a list of arrays (possibly tracers of
      an enclosing transformation), ``out_shapes`` the ``jax.ShapeDtypeStruct`` pytree of
      ``fn``'s output.
    """
    leaves, treedef = jax.tree.flatten(example_args)

    def flat(*ls):
        return fn(*jax.tree.unflatten(treedef, list(ls)))

    closed, out_shapes = jax.make_jaxpr(flat, return_shape=True)(*leaves)
    jaxpr, out_tree = closed.jaxpr, jax.tree.structure(out_shapes)

    def fn_explicit(consts, *args):
        closed_jaxpr = jex_core.ClosedJaxpr(jaxpr, list(consts))
        out = jex_core.jaxpr_as_fun(closed_jaxpr)(*jax.tree.leaves(args))
        return jax.tree.unflatten(out_tree, out)

    return fn_explicit, list(closed.consts), out_shapes


def broadcast_unbatched(axis_size: int, tree: PyTree, batched: PyTree) -> PyTree:
    """``tree`` with every leaf batched along a leading axis of ``axis_size``: the leaves that
    ``batched`` (a custom batching rule's ``in_batched`` for ``tree``) marks False are
    broadcast, the others kept."""
    return jax.tree.map(
        lambda a, b: a if b else jnp.broadcast_to(a, (axis_size, *a.shape)), tree, batched
    )


def _explicit_closure(fn: Callable, z0: PyTree):
    """``fn(z)`` as ``fn_explicit(z, consts)`` (``lift_consts``), validated against ``z0``."""
    if not callable(fn):
        raise TypeError(f"`fn` must be callable, got {type(fn).__name__}.")
    # One trace gives both the jaxpr and the output shapes used to validate fn.
    explicit, consts, out_shapes = lift_consts(fn, z0)
    check_output_shapes(out_shapes, z0)
    return (lambda z, consts_: explicit(consts_, z)), consts


def _batchable_solve(algo, fn_explicit, opts: _Options):
    @jax.custom_batching.custom_vmap
    def solve(z0, consts):
        return _solve_one(algo, lambda z: fn_explicit(z, consts), z0, opts, unroll=False)

    @solve.def_vmap
    def solve_batched(axis_size, in_batched, z0, consts):
        z_batched, consts_batched = in_batched
        z0 = broadcast_unbatched(axis_size, z0, z_batched)
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
    template = jax.tree.map(lambda a: a[0], z0_b)
    x0_one, unravel = ravel_pytree(template)
    state_dtypes = [a.dtype for a in jax.tree.leaves(template)]
    dtype = accumulation_dtype(x0_one.dtype)
    floor = max(resolution(d) for d in state_dtypes)
    low_precision = any(d != dtype for d in state_dtypes)
    ravel_b = jax.vmap(lambda z: ravel_pytree(z)[0].astype(dtype))

    def unravel_one(x):
        # Rounds the accumulation-dtype vector to the state dtypes (identity for float32/64).
        return unravel(x.astype(x0_one.dtype))

    unravel_b = jax.vmap(unravel_one)

    def flat_fn(xb):
        return ravel_b(fn_b(unravel_b(xb)))

    def round_b(xb):
        # Keeps the iterate on the state dtype's grid, so the point stored, reported and
        # returned is exactly the one fn evaluated.
        return ravel_b(unravel_b(xb)) if low_precision else xb

    residuals = jax.vmap(functools.partial(_residuals, stop_mode=stop_mode))
    status_of = jax.vmap(
        functools.partial(
            _status,
            max_steps=max_steps,
            tol=tol,
            divergence_ratio=divergence_ratio,
            floor=floor,
            stop_mode=stop_mode,
        )
    )
    x0 = ravel_b(z0_b)
    batch = x0.shape[0]
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
        x_new = round_b(x_new.astype(dtype))
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


def _status(
    fnorm, abs_res, res, abs0, k, *, max_steps, tol, divergence_ratio, floor=0.0, stop_mode="rel"
) -> jax.Array:
    """Status after the k-th evaluation; ``_RUNNING`` if the loop should go on.

    ``floor`` is the state dtype's ``resolution``: below it a residual (even 0.0) is a rounding
    coincidence, so ``tol`` under it cannot be met (see the module docstring).
    """
    # NaN/Inf anywhere in f(x) makes ||f(x)|| non-finite, NaN in x makes ||g|| NaN: two scalar
    # tests instead of an elementwise pass. (An f(x) so large that its norm overflows also
    # counts as non-finite.)
    nonfinite = ~jnp.isfinite(fnorm) | jnp.isnan(abs_res)
    # Watch the absolute residual: a blow-up's relative residual can *fall* (1.5z+1 -> 1/3).
    # A norm that overflows while f(x) is finite (x huge) is a blow-up too.
    tiny = jnp.finfo(abs_res.dtype).tiny
    diverged = ~jnp.isfinite(abs_res) | (abs_res > divergence_ratio * jnp.maximum(abs0, tiny))
    converged = res <= tol
    if floor:
        resolvable = floor if stop_mode == "rel" else floor * fnorm
        converged &= tol >= resolvable
    status = jnp.where(k >= max_steps, Status.MAX_STEPS, _RUNNING)
    status = jnp.where(diverged, Status.DIVERGED, status)
    status = jnp.where(converged, Status.CONVERGED, status)
    status = jnp.where(nonfinite, Status.NONFINITE, status)
    return status.astype(jnp.int32)
