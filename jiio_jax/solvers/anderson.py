"""Anderson acceleration (Type-II, bordered least squares with a relative ridge), safeguarded."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jiio_jax.solvers import _linalg, core
from jiio_jax.solvers.core import PyTree, Solution


class AndersonHistory(NamedTuple):
    """Ring buffers of the last ``memory`` points (slot of point j is ``j % memory``) + safeguard.

    Attributes:
      images: ``[m, n]``; damped images ``x_j + mixing * g_j`` of the stored points.
      residuals: ``[m, n]``; ``g_j = f(x_j) - x_j``.
      gram: ``[m, m]``; ``<g_i, g_j>``, updated one row/column per step.
      start: int32 ``[]``; index of the first point of the current history (0, or the step of
        the last restart). Slots holding older points are ignored.
      best_sq: ``[]``; smallest ``||g_j||^2`` seen.
      stall: int32 ``[]``; evaluations since ``best_sq`` last decreased (or since a restart).
    """

    images: jax.Array
    residuals: jax.Array
    gram: jax.Array
    start: jax.Array
    best_sq: jax.Array
    stall: jax.Array


class AndersonCore:
    """The ``core.Algorithm`` of ``anderson`` (flat vectors, one problem); see ``anderson``.

    Args:
      memory, mixing, ridge: as in ``anderson``.
      stall_steps: restart after this many evaluations without a new best residual (0: never).
      max_growth: restart when a residual exceeds this multiple of the best one (inf: never).
    """

    def __init__(
        self,
        memory: int,
        mixing: float,
        ridge: float,
        stall_steps: int = 0,
        max_growth: float = math.inf,
    ):
        self.memory, self.mixing, self.ridge = memory, mixing, ridge
        self.stall_steps, self.max_growth = stall_steps, max_growth

    @property
    def safeguarded(self) -> bool:
        return self.stall_steps > 0 or self.max_growth < math.inf

    def init(self, x0, g0):
        m, n = self.memory, x0.shape[0]
        hist = AndersonHistory(
            images=jnp.zeros((m, n), x0.dtype),
            residuals=jnp.zeros((m, n), x0.dtype),
            gram=jnp.zeros((m, m), x0.dtype),
            start=jnp.zeros((), jnp.int32),
            best_sq=g0 @ g0,
            stall=jnp.zeros((), jnp.int32),
        )
        return self._store(hist, 0, x0 + self.mixing * g0, g0)

    def _store(self, hist, slot, image, g):
        # lax.dynamic_update_index_in_dim rather than .at[slot].set: slot is known to be
        # non-negative, and skipping the negative-index fix-up lets XLA update in place.
        put = jax.lax.dynamic_update_index_in_dim
        residuals = put(hist.residuals, g, slot, 0)
        row = residuals @ g
        gram = put(put(hist.gram, row, slot, 0), row[:, None], slot, 1)
        images = put(hist.images, image, slot, 0)
        return hist._replace(images=images, residuals=residuals, gram=gram)

    def propose(self, hist, x, g, k):
        m = self.memory
        # Slot s holds point j_s = the latest index < k with j_s = s (mod m); it belongs to the
        # history if it was evaluated at or after the last restart.
        newest = (k - 1) % m
        index = (k - 1) - (newest - jnp.arange(m)) % m
        valid = index >= jnp.maximum(hist.start, 0)
        weights = _linalg.affine_lstsq_weights(
            hist.gram, valid, self.ridge, jax.nn.one_hot(newest, m, dtype=hist.gram.dtype)
        )
        return weights @ hist.images

    def observe(self, hist, x, g, x_new, g_new, k):
        image = x_new + self.mixing * g_new
        if not self.safeguarded:
            return self._store(hist, k % self.memory, image, g_new)
        sq = g_new @ g_new
        improved = sq < hist.best_sq  # False for NaN
        stall = jnp.where(improved, 0, hist.stall + 1)
        restart = jnp.zeros((), bool)
        if self.stall_steps > 0:
            restart |= stall >= self.stall_steps
        if self.max_growth < math.inf:
            restart |= sq > (self.max_growth**2) * hist.best_sq
        # A restart keeps only the new point, so the next proposal is the plain damped step
        # from it and mixing rebuilds from there.
        hist = hist._replace(
            start=jnp.where(restart, k, hist.start),
            best_sq=jnp.where(improved, sq, hist.best_sq),
            stall=jnp.where(restart, 0, stall),
        )
        return self._store(hist, k % self.memory, image, g_new)


class _Anderson(AndersonCore):
    """Old private name: the *unsafeguarded* core (``JIIO``'s accelerator builds it this way)."""

    def __init__(self, memory: int, mixing: float, ridge: float):
        super().__init__(memory, mixing, ridge)


def _check_safeguard(stall_steps, max_growth):
    core.check_nonnegative_int("stall_steps", stall_steps)
    v = core.check_positive_float("max_growth", max_growth) if max_growth != math.inf else math.inf
    if v <= 1:
        raise ValueError(f"`max_growth` must be > 1 (or math.inf to disable), got {max_growth!r}.")


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
    stall_steps: int = 2,
    max_growth: float = math.inf,
    divergence_ratio: float = 1e4,
    unroll: bool = False,
) -> Solution:
    r"""Solves ``z = fn(z)`` by safeguarded Anderson acceleration (Type-II, Walker & Ni 2011).

    With ``g_j = f(x_j) - x_j`` for the last ``n = min(k, memory)`` iterates (since the last
    restart):

    .. math::
        \alpha = \arg\min_{\sum_j \alpha_j = 1} \Big\|\sum_j \alpha_j g_j\Big\|^2
                 + \lambda \|\alpha\|^2,\qquad
        x_{k+1} = \sum_j \alpha_j \big(x_j + \beta\, g_j\big)

    with :math:`\lambda = \text{ridge}\cdot\operatorname{mean}_j \|g_j\|^2` (relative to the
    Gram scale, unlike jaxopt's absolute ridge that stalls acceleration once residuals drop
    below its square root). The first step is a plain damped step; mixing starts at step 2.
    The Gram matrix is updated by one row/column per step and the small system is solved by
    unrolled elimination, so the per-step overhead is ``O(memory * n)``.

    **Safeguard (restart rule).** Let :math:`b` be the evaluated point with the smallest
    :math:`\|g_b\|` so far. The history is *restarted* when ``stall_steps`` consecutive
    evaluations fail to improve on :math:`\|g_b\|`, or when one evaluation's residual exceeds
    ``max_growth`` times it. A restart forgets the history except :math:`b`, so the next point
    is the plain damped step :math:`x_b + \beta g_b` from the best point and mixing rebuilds
    from there. This breaks the stagnation of Anderson's extrapolation on strongly nonlinear
    maps (e.g. a trained ``tanh`` layer with :math:`\rho(W) > 1` whose fixed point is
    attracting only through saturation, where unsafeguarded Anderson sat at a constant residual
    while plain iteration converged). Per problem, in the batched loop, no host syncs; costs
    a few ``[n]`` selects per step. ``stall_steps=0, max_growth=math.inf`` disables it.

    Args:
      fn: the map, pytree -> pytree of the same structure, shapes and dtypes (one problem).
      z0: initial pytree.
      max_steps: maximum number of evaluations of ``fn``.
      tol: stop when the stop-mode residual is ``<= tol``.
      stop_mode: ``"rel"`` (``||f(z)-z|| / ||f(z)||``) or ``"abs"`` (``||f(z)-z||``).
      memory: number of past iterates mixed (> 0).
      mixing: :math:`\beta`, the damping of the mixed step (> 0; 1 = undamped).
      ridge: relative Tikhonov regularisation of the coefficient system (>= 0).
      stall_steps: restart after this many evaluations without a new best residual (int >= 0;
        0 disables).
      max_growth: restart when a residual exceeds this multiple of the best one (> 1;
        ``math.inf`` disables).
      divergence_ratio: end with ``Status.DIVERGED`` when ``||f(z)-z||`` exceeds this multiple
        of its value at ``z0``.
      unroll: iterate in a masked ``lax.scan`` (reverse-differentiable) instead of a
        ``lax.while_loop``.

    Returns:
      A ``Solution``; ``value`` is the best iterate.
    """
    core.check_common(max_steps, tol, stop_mode, divergence_ratio)
    memory = core.check_positive_int("memory", memory)
    mixing = core.check_positive_float("mixing", mixing)
    ridge = core.check_nonnegative_float("ridge", ridge)
    _check_safeguard(stall_steps, max_growth)
    return core.run(
        AndersonCore(memory, mixing, ridge, int(stall_steps), float(max_growth)),
        fn,
        z0,
        max_steps=max_steps,
        tol=tol,
        stop_mode=stop_mode,
        divergence_ratio=divergence_ratio,
        unroll=unroll,
    )


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class Anderson:
    """Hashable configuration of ``anderson``; ``solver(fn, z0)`` solves.

    A static pytree (no leaves): it can be passed to a jitted function as an argument, and
    equal configurations hit the same compilation cache entry.
    """

    max_steps: int = 50
    tol: float = 1e-4
    stop_mode: str = "rel"
    memory: int = 5
    mixing: float = 1.0
    ridge: float = 1e-6
    stall_steps: int = 2
    max_growth: float = math.inf
    divergence_ratio: float = 1e4

    def __post_init__(self):
        core.check_common(self.max_steps, self.tol, self.stop_mode, self.divergence_ratio)
        core.check_positive_int("memory", self.memory)
        core.check_positive_float("mixing", self.mixing)
        core.check_nonnegative_float("ridge", self.ridge)
        _check_safeguard(self.stall_steps, self.max_growth)

    def __call__(self, fn: Callable[[PyTree], PyTree], z0: PyTree, *, unroll: bool = False):
        return anderson(fn, z0, unroll=unroll, **dataclasses.asdict(self))
