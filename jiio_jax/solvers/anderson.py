"""Anderson acceleration (Type-II, bordered least squares with a relative ridge)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jiio_jax.solvers import _base, _linalg
from jiio_jax.solvers._base import PyTree, Solution


class AndersonHistory(NamedTuple):
    """Ring buffers of the last ``memory`` points (slot of point j is ``j % memory``).

    Attributes:
      images: ``[m, n]``; damped images ``x_j + mixing * g_j`` of the stored points.
      residuals: ``[m, n]``; ``g_j = f(x_j) - x_j``.
      gram: ``[m, m]``; ``<g_i, g_j>``, updated one row/column per step.
    """

    images: jax.Array
    residuals: jax.Array
    gram: jax.Array


class _Anderson:
    def __init__(self, memory: int, mixing: float, ridge: float):
        self.memory, self.mixing, self.ridge = memory, mixing, ridge

    def init(self, x0, g0):
        m, n = self.memory, x0.shape[0]
        return self._store(
            AndersonHistory(
                images=jnp.zeros((m, n), x0.dtype),
                residuals=jnp.zeros((m, n), x0.dtype),
                gram=jnp.zeros((m, m), x0.dtype),
            ),
            0,
            x0,
            g0,
        )

    def _store(self, hist, slot, x, g):
        # lax.dynamic_update_index_in_dim rather than .at[slot].set: slot is known to be
        # non-negative, and skipping the negative-index fix-up lets XLA update in place.
        put = jax.lax.dynamic_update_index_in_dim
        residuals = put(hist.residuals, g, slot, 0)
        row = residuals @ g
        gram = put(put(hist.gram, row, slot, 0), row[:, None], slot, 1)
        return AndersonHistory(put(hist.images, x + self.mixing * g, slot, 0), residuals, gram)

    def propose(self, hist, x, g, k):
        m = self.memory
        valid = jnp.arange(m) < jnp.minimum(k, m)
        newest = jax.nn.one_hot((k - 1) % m, m, dtype=hist.gram.dtype)
        weights = _linalg.affine_lstsq_weights(hist.gram, valid, self.ridge, newest)
        return weights @ hist.images

    def observe(self, hist, x, g, x_new, g_new, k):
        return self._store(hist, k % self.memory, x_new, g_new)


def anderson(
    fn: Callable[[PyTree], PyTree],
    z0: PyTree,
    *,
    max_steps: int,
    tol: float,
    stop_mode: str = "rel",
    memory: int = 5,
    mixing: float = 1.0,
    ridge: float = 1e-6,
    divergence_ratio: float = 1e4,
    unroll: bool = False,
) -> Solution:
    r"""Solves ``z = fn(z)`` by Anderson acceleration (Type-II, Walker & Ni 2011).

    With ``g_j = f(x_j) - x_j`` for the last ``n = min(k, memory)`` iterates:

    .. math::
        \alpha = \arg\min_{\sum_j \alpha_j = 1} \Big\|\sum_j \alpha_j g_j\Big\|^2
                 + \lambda \|\alpha\|^2,\qquad
        x_{k+1} = \sum_j \alpha_j \big(x_j + \beta\, g_j\big)

    with :math:`\lambda = \text{ridge}\cdot\operatorname{mean}_j \|g_j\|^2` (relative to the
    Gram scale, unlike jaxopt's absolute ridge that stalls acceleration once residuals drop
    below its square root). The first step is a plain damped step; mixing starts at step 2.
    The Gram matrix is updated by one row/column per step and the small system is solved by
    unrolled elimination, so the per-step overhead is ``O(memory * n)``.

    Args:
      fn: the map, pytree -> pytree of the same structure, shapes and dtypes (one problem).
      z0: initial pytree.
      max_steps: maximum number of evaluations of ``fn``.
      tol: stop when the stop-mode residual is ``<= tol``.
      stop_mode: ``"rel"`` (``||f(z)-z|| / ||f(z)||``) or ``"abs"`` (``||f(z)-z||``).
      memory: number of past iterates mixed (> 0).
      mixing: :math:`\beta`, the damping of the mixed step (> 0; 1 = undamped).
      ridge: relative Tikhonov regularisation of the coefficient system (>= 0).
      divergence_ratio: end with ``Status.DIVERGED`` when ``||f(z)-z||`` exceeds this multiple
        of its value at ``z0``.
      unroll: iterate in a masked ``lax.scan`` (reverse-differentiable) instead of a
        ``lax.while_loop``.

    Returns:
      A ``Solution``; ``value`` is the best iterate.
    """
    _base.check_common(max_steps, tol, stop_mode, divergence_ratio)
    memory = _base.check_positive_int("memory", memory)
    mixing = _base.check_positive_float("mixing", mixing)
    ridge = _base.check_nonnegative_float("ridge", ridge)
    return _base.run(
        _Anderson(memory, mixing, ridge),
        fn,
        z0,
        max_steps=max_steps,
        tol=tol,
        stop_mode=stop_mode,
        divergence_ratio=divergence_ratio,
        unroll=unroll,
    )


@dataclasses.dataclass(frozen=True)
class Anderson:
    """Hashable configuration of ``anderson``; ``solver(fn, z0)`` solves."""

    max_steps: int = 50
    tol: float = 1e-4
    stop_mode: str = "rel"
    memory: int = 5
    mixing: float = 1.0
    ridge: float = 1e-6
    divergence_ratio: float = 1e4

    def __post_init__(self):
        _base.check_common(self.max_steps, self.tol, self.stop_mode, self.divergence_ratio)
        _base.check_positive_int("memory", self.memory)
        _base.check_positive_float("mixing", self.mixing)
        _base.check_nonnegative_float("ridge", self.ridge)

    def __call__(self, fn: Callable[[PyTree], PyTree], z0: PyTree, *, unroll: bool = False):
        return anderson(fn, z0, unroll=unroll, **dataclasses.asdict(self))
