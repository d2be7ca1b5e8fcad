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
import numbers
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

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


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class L2Ball:
    r"""The ball :math:`\{x : \|x - c\|_2 \le r\}`; ``proj(x) = c + (x - c) \min(1, r/\|x - c\|)``.

    Points outside land a few ulps inside the sphere, so ``||proj(x) - c|| <= r`` holds exactly
    in floating point.

    Attributes:
      radius: ``r > 0`` (scalar; may be traced).
      center: ``c``; ``None`` (the origin, e.g. an adversarial perturbation), a scalar, or a
        pytree like ``x``.
    """

    radius: Any
    center: Any = None

    def __post_init__(self):
        _check_concrete("radius", self.radius, positive=True)

    def __call__(self, x: PyTree) -> PyTree:
        center = _broadcast_like(self.center, x, "center")
        d = _minus(x, center)
        norm = _l2_norm(d)
        # Shrink by a few ulps so rounding in the scaling and in a later norm cannot put the
        # result outside the ball: callers check ``||x|| <= r`` exactly.
        eps = jnp.finfo(norm.dtype).eps
        shrink = self.radius * (1 - 8 * eps) / jnp.where(norm > 0, norm, 1.0)
        scale = jnp.where(norm > self.radius, shrink, 1.0)
        return _plus(jax.tree.map(lambda a: (a * scale).astype(a.dtype), d), center)

    def violation(self, x: PyTree) -> jax.Array:
        norm = _l2_norm(_minus(x, _broadcast_like(self.center, x, "center")))
        return jnp.maximum(norm - self.radius, 0.0)


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class LinfBall:
    r"""The ball :math:`\{x : \|x - c\|_\infty \le r\}`; ``proj`` clips ``x - c`` to ``[-r, r]``.

    Attributes:
      radius: ``r > 0`` (scalar; may be traced).
      center: ``None`` (origin), a scalar, or a pytree like ``x``.
    """

    radius: Any
    center: Any = None

    def __post_init__(self):
        _check_concrete("radius", self.radius, positive=True)

    def __call__(self, x: PyTree) -> PyTree:
        center = _broadcast_like(self.center, x, "center")
        d = _minus(x, center)
        return _plus(jax.tree.map(lambda a: jnp.clip(a, -self.radius, self.radius), d), center)

    def violation(self, x: PyTree) -> jax.Array:
        norm = _linf_norm(_minus(x, _broadcast_like(self.center, x, "center")))
        return jnp.maximum(norm - self.radius, 0.0)


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


PROJECTIONS = (Unconstrained, L2Ball, LinfBall, Box)
"""The projection classes (for isinstance checks and parametrised tests)."""


def as_projection(projection: Any) -> Any:
    """``None`` -> ``Unconstrained()``; a projection or any callable ``x -> x`` is returned."""
    if projection is None:
        return Unconstrained()
    if isinstance(projection, type):
        raise TypeError(
            f"`projection` must be an instance such as L2Ball(radius=0.5), got the class "
            f"{projection.__name__} itself; call it with its fields."
        )
    if not callable(projection):
        raise TypeError(
            "`projection` must be None, one of "
            f"{[c.__name__ for c in PROJECTIONS]} (jiio_jax.jiio), or a callable x -> x; "
            f"got {type(projection).__name__}."
        )
    return projection
