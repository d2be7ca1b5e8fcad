"""Anderson acceleration (Type-II, bordered least squares with a relative ridge), safeguarded."""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jiio_jax.solvers import _linalg, core


class AndersonHistory(NamedTuple):
    """Ring buffers of the last ``memory`` points (slot of point j is ``j % memory``) + safeguard.

    Attributes:
      images: ``[m, n]``; damped images ``x_j + mixing * g_j`` of the stored points.
      residuals: ``[m, n]``; ``g_j = f(x_j) - x_j``.
      gram: ``[m, m]``; ``<g_i, g_j>``, updated one row/column per step.
      start: int32 ``[]``; index of the first point of the current history (0, or the index of
        the point kept at the last restart). Slots holding older points are ignored.
      best_sq: ``[]``; smallest ``||g_j||^2`` seen.
      stall: int32 ``[]``; evaluations since ``best_sq`` last decreased (or since a restart).
    """

    images: jax.Array
    residuals: jax.Array
    gram: jax.Array
    start: jax.Array
    best_sq: jax.Array
    stall: jax.Array


class AndersonBase:
    """The hyper-parameters every Anderson core shares (this Type-II one and JIIO's Type-I):
    history ``memory``, ``mixing``, relative ``ridge`` and the restart safeguard
    (``stall_steps``, ``max_growth``; see ``AndersonCore``)."""

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

    def restart_rule(self, sq, best_sq, stall):
        """The safeguard for a new squared residual ``sq``: returns ``(improved, stall,
        restart)`` -- a new best (False for NaN), the evaluations since the last best, and
        whether to restart the history (``stall_steps`` reached or ``sq`` above
        ``max_growth**2 * best_sq``)."""
        improved = sq < best_sq
        stall = jnp.where(improved, 0, stall + 1)
        restart = jnp.zeros((), bool)
        if self.stall_steps > 0:
            restart |= stall >= self.stall_steps
        if self.max_growth < math.inf:
            restart |= sq > (self.max_growth**2) * best_sq
        return improved, stall, restart


class AndersonCore(AndersonBase):
    """The ``core.Algorithm`` of ``anderson`` (flat vectors, one problem); see ``anderson``.

    The defaults (``stall_steps=0``, ``max_growth=inf``) are the unsafeguarded method; the
    ``Anderson`` configuration and ``anderson`` turn the safeguard on.

    Args:
      memory, mixing, ridge: as in ``anderson``.
      stall_steps: restart after this many evaluations without a new best residual (0: never).
      max_growth: restart when a residual exceeds this multiple of the best one (inf: never).
    """

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
        slot = k % self.memory
        hist = self._store(hist, slot, x_new + self.mixing * g_new, g_new)
        if not self.safeguarded:
            return hist
        # ||g_new||^2 is the new Gram diagonal entry: no extra pass over the vector. A restart
        # only moves ``start`` to the new point's index, so the next proposal is the plain damped
        # step from it and mixing rebuilds from there.
        sq = jax.lax.dynamic_index_in_dim(hist.gram[slot], slot, keepdims=False)
        improved, stall, restart = self.restart_rule(sq, hist.best_sq, hist.stall)
        return hist._replace(
            start=jnp.where(restart, k, hist.start),
            best_sq=jnp.where(improved, sq, hist.best_sq),
            stall=jnp.where(restart, 0, stall),
        )


class _Anderson(AndersonCore):
    """Old private name: the *unsafeguarded* core (``JIIO``'s accelerator builds it this way)."""

    def __init__(self, memory: int, mixing: float, ridge: float):
        super().__init__(memory, mixing, ridge)


def _check_safeguard(stall_steps, max_growth):
    core.check_nonnegative_int("stall_steps", stall_steps)
    v = core.check_positive_float("max_growth", max_growth) if max_growth != math.inf else math.inf
    if v <= 1:
        raise ValueError(f"`max_growth` must be > 1 (or math.inf to disable), got {max_growth!r}.")


@core.solver_config
class Anderson(core.SolverConfig):
    r"""Safeguarded Anderson acceleration (Type-II, Walker & Ni 2011); ``solver(fn, z0)``
    solves ``z = fn(z)``.

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

    **Safeguard (restart rule).** Let :math:`r^\ast` be the smallest :math:`\|g_j\|` of all
    points evaluated so far. After ``stall_steps`` consecutive evaluations that do not go below
    :math:`r^\ast` (or one whose :math:`\|g\|` exceeds ``max_growth`` times it; off by
    default), the history is *restarted*: only the newest point is kept, so the next point is
    the plain damped step :math:`x_k + \beta g_k` and mixing rebuilds from there. Where the
    extrapolation helps, residuals keep reaching new lows and the rule never fires (the solver
    benchmark's f-evaluation counts are unchanged); where it does not, Anderson degrades to
    short-memory mixing instead of stagnating. This is what unsafeguarded Anderson did on
    saturated ``tanh`` layers (:math:`\rho(W) > 1`, fixed point attracting only through
    saturation): it sat at a residual of 2e-2 for 300 steps with memory 5 or 10 where plain
    iteration converged in 24-63 (``tests/test_solvers_safeguard.py``). ``stall_steps=2`` was
    picked on such layers: within twice plain iteration's steps on all 7 test layers and 47
    held-out ones at ``d=64``; 2 of 23 held-out layers at ``d=128`` still took 2.6x and 5.5x
    (without the safeguard: 5 of 47 and 2 of 23 failed). It is a heuristic, not a guarantee.
    Per problem inside the batched loop, no host syncs; costs one ``[n]`` dot product and a few
    scalar selects per step. ``stall_steps=0, max_growth=math.inf`` disables it.

    Attributes:
      max_steps, tol, stop_mode, divergence_ratio: the loop options (``core.SolverConfig``).
      memory: number of past iterates mixed (> 0).
      mixing: :math:`\beta`, the damping of the mixed step (> 0; 1 = undamped).
      ridge: relative Tikhonov regularisation of the coefficient system (>= 0).
      stall_steps: restart after this many evaluations without a new best residual (int >= 0;
        0 disables).
      max_growth: restart when a residual exceeds this multiple of the best one (> 1;
        ``math.inf`` disables).
    """

    memory: int = 5
    mixing: float = 1.0
    ridge: float = 1e-6
    stall_steps: int = 2
    max_growth: float = math.inf

    def check(self):
        core.check_positive_int("memory", self.memory)
        core.check_positive_float("mixing", self.mixing)
        core.check_nonnegative_float("ridge", self.ridge)
        _check_safeguard(self.stall_steps, self.max_growth)

    def algorithm(self):
        return AndersonCore(
            int(self.memory),
            float(self.mixing),
            float(self.ridge),
            int(self.stall_steps),
            float(self.max_growth),
        )


anderson = core.functional_form(Anderson, "anderson")
