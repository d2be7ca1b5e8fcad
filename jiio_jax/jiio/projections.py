"""Projections onto simple constraint sets for the optimized input ``x`` (any pytree).

Each projection is a small frozen dataclass registered as a pytree, so its bounds may be
arrays (e.g. a per-sample pixel range) and it can be built inside, or passed through, ``jit``
and ``vmap``. Every projection provides:

- ``proj(x) -> x``: the Euclidean projection onto the set (same structure, shapes, dtypes);
- ``proj.violation(x) -> []``: how far ``x`` lies outside the set (0 inside), for tests and
  diagnostics.

Norms of ``L2Ball`` / ``LinfBall`` are over the *whole* pytree (all leaves flattened together),
as the JIIO reference does per sample. Batches go through ``vmap`` (one problem per call).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jiio_jax.solvers.core import check_callable_instance

PyTree = Any


def _check_concrete(name: str, value: Any, *, positive: bool) -> None:
    """Validates Python/NumPy values; traced values (inside jit/vmap) are passed through."""
    if isinstance(value, numbers.Number | np.ndarray):
        arr = np.asarray(value, dtype=float)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"`{name}` must be finite, got {value!r}.")
        if positive and not np.all(arr > 0):
            raise ValueError(f"`{name}` must be > 0, got {value!r}.")


def _broadcast_like(bound: PyTree, x: PyTree, name: str) -> PyTree:
    """A scalar/array bound applies to every leaf; otherwise it must match ``x``'s structure."""
    if bound is None:
        return None
    x_def = jax.tree.structure(x)
    if jax.tree.structure(bound) == x_def:
        return bound
    leaves = jax.tree.leaves(bound)
    if len(leaves) == 1 and jax.tree.structure(bound).num_leaves == 1:
        return jax.tree.unflatten(x_def, [leaves[0]] * x_def.num_leaves)
    raise ValueError(
        f"`{name}` must be a scalar/array applied to every leaf of x or a pytree with x's "
        f"structure {x_def}; got structure {jax.tree.structure(bound)}."
    )


def _minus(x: PyTree, center: PyTree) -> PyTree:
    if center is None:
        return x
    return jax.tree.map(lambda a, c: a - c, x, center)


def _plus(x: PyTree, center: PyTree) -> PyTree:
    if center is None:
        return x
    return jax.tree.map(lambda a, c: (a + c).astype(a.dtype), x, center)


def _l2_norm(tree: PyTree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree)))


def _linf_norm(tree: PyTree) -> jax.Array:
    return jnp.max(jnp.stack([jnp.max(jnp.abs(leaf)) for leaf in jax.tree.leaves(tree)]))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Unconstrained:
    """No constraint: ``proj(x) = x`` (the same as passing ``projection=None``)."""

    def __call__(self, x: PyTree) -> PyTree:
        return x

    def violation(self, x: PyTree) -> jax.Array:
        leaf = jax.tree.leaves(x)[0]
        return jnp.zeros((), jnp.result_type(leaf))


@dataclasses.dataclass(frozen=True)
class _Ball:
    r"""A norm ball :math:`\{x : \|x - c\| \le r\}` over the whole pytree: the fields, their
    check, the centring and the violation. A subclass gives the norm (``_norm``) and the
    projection of the offset ``d = x - c`` onto the ball around 0 (``_project_offset``)."""

    radius: Any
    center: Any = None

    def __post_init__(self):
        _check_concrete("radius", self.radius, positive=True)

    def __call__(self, x: PyTree) -> PyTree:
        center = _broadcast_like(self.center, x, "center")
        return _plus(self._project_offset(_minus(x, center)), center)

    def violation(self, x: PyTree) -> jax.Array:
        norm = self._norm(_minus(x, _broadcast_like(self.center, x, "center")))
        return jnp.maximum(norm - self.radius, 0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class L2Ball(_Ball):
    r"""The ball :math:`\{x : \|x - c\|_2 \le r\}`; ``proj(x) = c + (x - c) \min(1, r/\|x - c\|)``.

    Points outside land a few ulps inside the sphere, so ``||proj(x) - c|| <= r`` holds exactly
    in floating point.

    Attributes:
      radius: ``r > 0`` (scalar; may be traced).
      center: ``c``; ``None`` (the origin, e.g. an adversarial perturbation), a scalar, or a
        pytree like ``x``.
    """

    _norm = staticmethod(_l2_norm)

    def _project_offset(self, d: PyTree) -> PyTree:
        norm = _l2_norm(d)
        # Shrink by a few ulps so rounding in the scaling and in a later norm cannot put the
        # result outside the ball: callers check ``||x|| <= r`` exactly.
        eps = jnp.finfo(norm.dtype).eps
        shrink = self.radius * (1 - 8 * eps) / jnp.where(norm > 0, norm, 1.0)
        scale = jnp.where(norm > self.radius, shrink, 1.0)
        return jax.tree.map(lambda a: (a * scale).astype(a.dtype), d)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinfBall(_Ball):
    r"""The ball :math:`\{x : \|x - c\|_\infty \le r\}`; ``proj`` clips ``x - c`` to ``[-r, r]``.

    Attributes:
      radius: ``r > 0`` (scalar; may be traced).
      center: ``None`` (origin), a scalar, or a pytree like ``x``.
    """

    _norm = staticmethod(_linf_norm)

    def _project_offset(self, d: PyTree) -> PyTree:
        return jax.tree.map(lambda a: jnp.clip(a, -self.radius, self.radius), d)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Box:
    """The box ``lower <= x <= upper`` elementwise (e.g. a pixel range); ``proj`` clips.

    For an adversarial perturbation ``delta`` of a clean image ``x_clean`` with pixels in
    ``[0, 1]``, use ``Box(-x_clean, 1 - x_clean)``.

    Attributes:
      lower: scalar or array applied to every leaf, or a pytree like ``x``.
      upper: same, ``>= lower``.
    """

    lower: Any
    upper: Any

    def __post_init__(self):
        _check_concrete("lower", self.lower, positive=False)
        _check_concrete("upper", self.upper, positive=False)
        if isinstance(self.lower, numbers.Number | np.ndarray) and isinstance(
            self.upper, numbers.Number | np.ndarray
        ):
            if not np.all(np.asarray(self.lower) <= np.asarray(self.upper)):
                raise ValueError(
                    f"`lower` must be <= `upper` elementwise, got {self.lower!r} and "
                    f"{self.upper!r}."
                )

    def __call__(self, x: PyTree) -> PyTree:
        lower = _broadcast_like(self.lower, x, "lower")
        upper = _broadcast_like(self.upper, x, "upper")
        return jax.tree.map(lambda a, lo, hi: jnp.clip(a, lo, hi).astype(a.dtype), x, lower, upper)

    def violation(self, x: PyTree) -> jax.Array:
        lower = _broadcast_like(self.lower, x, "lower")
        upper = _broadcast_like(self.upper, x, "upper")
        gaps = jax.tree.map(
            lambda a, lo, hi: jnp.max(jnp.maximum(jnp.maximum(lo - a, a - hi), 0.0)),
            x,
            lower,
            upper,
        )
        return jnp.max(jnp.stack(jax.tree.leaves(gaps)))


NORMS = ("l2", "linf")


@functools.partial(
    jax.tree_util.register_dataclass,
    data_fields=["radius", "center", "lower", "upper"],
    meta_fields=["norm", "bisection_steps"],
)
@dataclasses.dataclass(frozen=True)
class BallBox:
    r"""The ball :math:`\{\|x - c\|_p \le r\}` intersected with the box ``lower <= x <= upper``.

    E.g. the threat set of an attack: ``x = delta``, ``c = 0``, the box keeping ``image + delta``
    a valid image (``BallBox.perturbation``); or ``x`` the perturbed image itself, ``c`` the
    clean image and the box the pixel range. ``p`` is 2 or inf over the whole pytree, as in
    ``L2Ball`` / ``LinfBall``. Requires ``lower <= c <= upper`` (the set is then non-empty);
    ``lower`` / ``upper`` ``None``: the ball only.

    ``proj`` is the exact Euclidean projection:

    - linf: the intersection is a box, ``clip(x, max(lower, c - r), min(upper, c + r))``;
    - l2: the KKT conditions of ``min ||d - y||^2`` over the set (``y = x - c``) give
      ``d(t) = clip(t y, lower - c, upper - c)`` with ``t = 1 / (1 + lambda)`` in ``(0, 1]``;
      ``||d(t)||`` is non-decreasing in ``t``, so ``t`` is found by bisection
      (``bisection_steps``; 30 resolve it to float32 precision) when the clipped point lies
      outside the ball. A final scaling a few ulps inside the sphere makes
      ``||proj(x) - c|| <= r`` hold exactly in floating point.

    Attributes:
      radius: ``r > 0`` (scalar; may be traced).
      center: ``c``: ``None`` (the origin), a scalar or a pytree like ``x``.
      lower, upper: box bounds (scalar/array for every leaf or a pytree like ``x``) or ``None``.
      norm: ``"l2"`` or ``"linf"`` (static).
      bisection_steps: l2 bisection iterations (static).
    """

    radius: Any
    center: Any = None
    lower: Any = None
    upper: Any = None
    norm: str = "l2"
    bisection_steps: int = 30

    def __post_init__(self):
        _check_concrete("radius", self.radius, positive=True)
        if self.norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}, got {self.norm!r}.")
        if (self.lower is None) != (self.upper is None):
            raise ValueError("`lower` and `upper` must both be given or both be None.")
        if isinstance(self.bisection_steps, bool) or not isinstance(self.bisection_steps, int):
            raise ValueError(
                f"`bisection_steps` must be a positive int, got {self.bisection_steps!r}."
            )
        if self.bisection_steps < 1:
            raise ValueError(
                f"`bisection_steps` must be a positive int, got {self.bisection_steps!r}."
            )

    @classmethod
    def perturbation(
        cls,
        image: PyTree,
        radius: Any,
        norm: str = "l2",
        pixel_range: tuple[float, float] | None = (-1.0, 1.0),
        bisection_steps: int = 30,
    ) -> BallBox:
        """The set of perturbations ``delta`` of ``image`` with ``||delta||_p <= radius`` and
        ``image + delta`` inside ``pixel_range`` (``None``: the ball only).

        The box is widened to contain 0, so pixels a rounding error outside the range cannot
        empty the set.
        """
        if pixel_range is None:
            return cls(radius, norm=norm, bisection_steps=bisection_steps)
        lo, hi = pixel_range
        lower = jax.tree.map(lambda a: jnp.minimum(lo - a, 0.0).astype(a.dtype), image)
        upper = jax.tree.map(lambda a: jnp.maximum(hi - a, 0.0).astype(a.dtype), image)
        return cls(radius, None, lower, upper, norm, bisection_steps)

    def _offsets(self, x: PyTree):
        """``(center, lower - c, upper - c)`` broadcast to ``x``'s structure."""
        center = _broadcast_like(self.center, x, "center")
        if self.lower is None:
            return center, None, None
        lower = _minus(_broadcast_like(self.lower, x, "lower"), center)
        upper = _minus(_broadcast_like(self.upper, x, "upper"), center)
        return center, lower, upper

    def __call__(self, x: PyTree) -> PyTree:
        center, lower, upper = self._offsets(x)
        y = _minus(x, center)
        leaf = jax.tree.leaves(y)[0]
        r = jnp.asarray(self.radius, jnp.result_type(leaf))

        def clip(d):
            if lower is None:
                return d
            return jax.tree.map(lambda a, lo, hi: jnp.clip(a, lo, hi), d, lower, upper)

        if self.norm == "linf":
            d = jax.tree.map(lambda a: jnp.clip(a, -r, r), clip(y))
            return _plus(jax.tree.map(lambda a, b: b.astype(a.dtype), y, d), center)
        d = clip(y)
        norm = _l2_norm(d)
        if lower is not None:

            def bisect(_, bounds):
                lo, hi = bounds
                mid = 0.5 * (lo + hi)
                inside = _l2_norm(clip(jax.tree.map(lambda a: mid * a, y))) <= r
                return jnp.where(inside, mid, lo), jnp.where(inside, hi, mid)

            zero, one = jnp.zeros((), r.dtype), jnp.ones((), r.dtype)
            _, t = jax.lax.fori_loop(0, self.bisection_steps, bisect, (zero, one))
            shrunk = clip(jax.tree.map(lambda a: t * a, y))
            d = jax.tree.map(lambda a, b: jnp.where(norm > r, b, a), d, shrunk)
            norm = _l2_norm(d)
        # As L2Ball: a few ulps inside, so a later norm computation cannot exceed r. Scaling
        # towards the center stays inside the box (it contains the center).
        eps = jnp.finfo(r.dtype).eps
        inner = r * (1 - 8 * eps)
        scale = jnp.where(norm > inner, inner / jnp.maximum(norm, r), 1.0)
        d = jax.tree.map(lambda a, b: (b * scale).astype(a.dtype), y, d)
        return _plus(d, center)

    def violation(self, x: PyTree) -> jax.Array:
        """How far ``x`` lies outside the set (0 inside): max of the norm and box gaps."""
        center, lower, upper = self._offsets(x)
        d = _minus(x, center)
        norm = _l2_norm(d) if self.norm == "l2" else _linf_norm(d)
        gap = jnp.maximum(norm - self.radius, 0.0)
        if lower is not None:
            gaps = jax.tree.map(
                lambda a, lo, hi: jnp.max(jnp.maximum(lo - a, a - hi)), d, lower, upper
            )
            gap = jnp.maximum(gap, jnp.max(jnp.stack(jax.tree.leaves(gaps))))
        return jnp.maximum(gap, 0.0)

    def sample(self, key: jax.Array, like: PyTree) -> PyTree:
        """A random point of the set shaped like ``like``: uniform in the ball (linf: the cube;
        l2: uniform direction, radius ``r U^(1/D)``), then projected onto the set."""
        flat, unravel = ravel_pytree(like)
        dim = flat.size
        k_dir, k_rad = jax.random.split(key)
        r = jnp.asarray(self.radius, flat.dtype)
        if self.norm == "linf":
            v = jax.random.uniform(k_dir, flat.shape, flat.dtype, -1.0, 1.0) * r
        else:
            v = jax.random.normal(k_dir, flat.shape, flat.dtype)
            v = v / jnp.linalg.norm(v) * r * jax.random.uniform(k_rad, (), flat.dtype) ** (1 / dim)
        center = _broadcast_like(self.center, like, "center")
        return self(_plus(unravel(v), center))


PROJECTIONS = (Unconstrained, L2Ball, LinfBall, Box, BallBox)
"""The projection classes (for isinstance checks and parametrised tests)."""


def as_projection(projection: Any) -> Any:
    """``None`` -> ``Unconstrained()``; a projection or any callable ``x -> x`` is returned."""
    if projection is None:
        return Unconstrained()
    return check_callable_instance(
        projection,
        "projection",
        kind="a projection instance",
        example="{cls}(...) with its fields",
        accepted=f"None, one of {[c.__name__ for c in PROJECTIONS]} (jiio_jax.jiio), or a "
        "callable x -> x",
    )
