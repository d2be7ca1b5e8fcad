"""Limited-memory "good" Broyden's method for fixed points, with restarts."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from jiio_jax.solvers import core

FULL_MEMORY_POLICIES = ("restart", "ring")


class BroydenHistory(NamedTuple):
    """Low-rank inverse-Jacobian model ``H = -I + sum_j valid_j u_j v_j^T`` of ``g = f(x) - x``.

    Attributes:
      u: ``[L, n]`` rank-one factors ``u_j`` (rows).
      v: ``[L, n]`` rank-one factors ``v_j``.
      valid: ``[L]`` bool; slots that belong to the current model. A restart clears this mask
        instead of zeroing the buffers (no full-buffer writes per step).
      direction: ``[n]``; the next step ``p = -H g`` at the current point, kept so each
        iteration needs four ``[L, n]`` matrix-vector products instead of six.
    """

    u: jax.Array
    v: jax.Array
    valid: jax.Array
    direction: jax.Array


class BroydenCore:
    """The ``core.Algorithm`` of ``broyden`` (flat vectors, one problem)."""

    def __init__(self, memory: int, full_memory: str):
        self.memory, self.full_memory = memory, full_memory

    def init(self, x0, g0):
        m, n = self.memory, x0.shape[0]
        zeros = jnp.zeros((m, n), x0.dtype)
        # H0 = -I, so the first step p = -H0 g = g is one plain fixed-point step.
        return BroydenHistory(zeros, zeros, jnp.zeros((m,), bool), g0)

    def propose(self, hist, x, g, k):
        return x + hist.direction

    def observe(self, hist, x, g, x_new, g_new, k):
        j = k - 1  # index of this update
        slot = j % self.memory
        valid = hist.valid
        minus_hg = hist.direction  # -H g of the model in use (the step it proposed)
        if self.full_memory == "restart":
            # Memory full: forget the model (H = -I) rather than overwrite the oldest term;
            # dropping one term of a Sherman-Morrison chain leaves an inconsistent H (it went
            # NaN in float32 in jaxopt's ring buffer, and diverges in our tests).
            restart = (jnp.asarray(slot) == 0) & (jnp.asarray(j) > 0)
            valid = valid & jnp.logical_not(restart)
            minus_hg = jnp.where(restart, g, minus_hg)  # H = -I after a restart
        # The slot being overwritten leaves the model (with "restart" it is already unused).
        valid = jax.lax.dynamic_update_index_in_dim(valid, jnp.asarray(False), slot, 0)
        mask = valid.astype(x.dtype)
        dx = x_new - x
        dg = g_new - g
        h_gnew = -g_new + ((hist.v @ g_new) * mask) @ hist.u  # H g_new
        # H dg = H g_new - H g. Using the model's own -H g (not dx) keeps the secant update
        # exact when a caller modified the proposed step (e.g. projected it).
        h_dg = h_gnew + minus_hg
        vt = -dx + ((hist.u @ dx) * mask) @ hist.v  # dx^T H
        denom = vt @ dg
        u_new = (dx - h_dg) / denom
        ok = jnp.isfinite(denom) & (denom != 0) & jnp.all(jnp.isfinite(u_new))
        ok &= jnp.all(jnp.isfinite(vt))
        u_new = jnp.where(ok, u_new, 0.0)
        vt = jnp.where(ok, vt, 0.0)
        # H' = H + u v^T  =>  next step p = -H' g_new = -(H g_new + u (v . g_new)).
        direction = -(h_gnew + u_new * (vt @ g_new))
        put = jax.lax.dynamic_update_index_in_dim  # in place; slot is non-negative
        return BroydenHistory(
            put(hist.u, u_new, slot, 0),
            put(hist.v, vt, slot, 0),
            put(valid, ok, slot, 0),
            direction,
        )


_Broyden = BroydenCore  # old private name, kept for existing imports


def _check_full_memory(full_memory):
    if full_memory not in FULL_MEMORY_POLICIES:
        raise ValueError(
            f"`full_memory` must be one of {FULL_MEMORY_POLICIES}, got {full_memory!r}."
        )


@core.solver_config
class Broyden(core.SolverConfig):
    r"""Limited-memory good Broyden on ``g(z) = fn(z) - z = 0``; ``solver(fn, z0)`` solves
    ``z = fn(z)``.

    The inverse Jacobian of ``g`` is modelled as :math:`H = -I + \sum_j u_j v_j^\top` (``-I``
    is exact for ``fn`` constant, and makes the first step a plain fixed-point step). Unit steps,
    no line search:

    .. math::
        p_k = -H_k g_k,\quad x_{k+1} = x_k + p_k,\quad
        H_{k+1} = H_k + \frac{(\Delta x - H_k \Delta g)\,\Delta x^\top H_k}
                             {\Delta x^\top H_k \Delta g}

    (Sherman-Morrison form of the good Broyden update). Factors live in fixed ``[memory, n]``
    buffers. Updates whose denominator or factors are not finite or whose denominator is zero
    are skipped (NaN guard).

    **When memory fills** (``full_memory``): ``"restart"`` (default) clears the buffers and
    restarts from ``H = -I``, so every model in use is an exact chain of Broyden updates;
    ``"ring"`` overwrites the oldest factor pair (torchdeq's choice), which keeps more
    curvature but mixes terms from different chains.

    Attributes:
      max_steps, tol, stop_mode, divergence_ratio: the loop options (``core.SolverConfig``).
      memory: number of rank-one updates kept (> 0).
      full_memory: ``"restart"`` or ``"ring"``, see above.
    """

    memory: int = 5
    full_memory: str = "restart"

    def check(self):
        core.check_positive_int("memory", self.memory)
        _check_full_memory(self.full_memory)

    def algorithm(self):
        return BroydenCore(int(self.memory), self.full_memory)


broyden = core.functional_form(Broyden, "broyden")
