"""Acceleration of the augmented JIIO iteration on the flattened joint state ``s = [z; x; mu]``.

Each accelerator follows the protocol of ``jiio_jax.solvers.core`` (``init``, ``propose``,
``observe`` on flat vectors), so Type-II Anderson, Broyden and the plain iteration are the
library's own solver cores. Type-I ("good") Anderson, the JIIO reference default, lives here.
With ``G_j = F(X_j) - X_j`` over the last ``m`` points and ``X_k`` the newest, it finds weights
``a`` with

    sum_j a_j = 1,   <X_i - X_k, sum_j a_j G_j> = 0 for all stored i,
    X_{k+1} = sum_j a_j (X_j + beta G_j),

(no least-squares objective, unlike Type-II), i.e. the Galerkin condition of Type-I Anderson
(Fang & Saad 2009) written in the affine form
of the reference: the bordered system ``[[0, 1^T], [1, H]] [nu; a] = [1; 0]`` with
``H_ij = <X_i - X_k, G_j>``. The reference uses ``H_ij = <X_i, G_j>``, which is equivalent in
exact arithmetic (the shift only changes ``nu``) but cancels catastrophically in float32 once
the iterates are far from the origin relative to their residuals. We keep ``H`` relative to
the newest point ``X_k`` and update it in ``O(m n)`` per step: a rank-one shift when the
newest point moves plus one fresh column.

The history stores the steps ``E_j = X_j - X_{j-1}`` rather than the points: then every
``[m, n]`` contraction is a plain matrix-vector product of a stored buffer (the fresh column
``<X_i - X_k, G_k> = -sum_{i < t <= k} <E_t, G_k>`` is one product ``E G_k`` and a masked sum
over ``m`` numbers, with no ``[m, n]`` temporary ``X - X_k``), and the proposal is
``X_k - sum_t c_t E_t + beta sum_j a_j G_j`` with ``c_t`` the weight of the points older than
``t``. Sums of steps, not differences of points, so it is as cancellation-free as before, and
it reads the ``[m, n]`` buffers four times per step instead of five plus a temporary. On
XLA:CPU (``experiments/results/jiio_step_cost.md``) the bookkeeping alone (a cheap ``F``,
``n = 3088``, batch 32) is 1.3x (memory 5) to 1.6x (memory 10) faster; a whole JIIO step of
the dense decoder 2-9% cheaper; the MDEQ generator's step, dominated by ``f``, within noise.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from jiio_jax.solvers.anderson import AndersonBase, AndersonCore
from jiio_jax.solvers.broyden import BroydenCore
from jiio_jax.solvers.fixed_point_iteration import FixedPointCore

ACCELERATORS = ("anderson", "broyden", "none")
ANDERSON_TYPES = ("type1", "type2")


def solve_pivoted(a: jax.Array, b: jax.Array) -> jax.Array:
    """Solves ``a @ y = b`` for a small general ``a`` ``[n, n]`` (static ``n``), ``b`` ``[n]``.

    Gauss-Jordan elimination with partial pivoting in a ``lax.fori_loop`` over the ``n``
    columns (the bordered Type-I system has a zero leading pivot and is not symmetric, so the
    library's unpivoted ``solve_spd_unrolled`` does not apply). A loop rather than Python
    unrolling keeps the compiled size independent of ``n``: unrolled pivoting compiled 2-4x
    slower for ``n = 6..21`` at equal run time on CPU. A singular system gives non-finite output.
    """
    n = a.shape[-1]
    rows = jnp.arange(n)

    def eliminate(i, ab):
        a, b = ab
        magnitude = jnp.where(rows >= i, jnp.abs(a[:, i]), -1.0)
        p = jnp.argmax(magnitude)
        a_i, a_p = a[i], a[p]
        a = a.at[p].set(a_i).at[i].set(a_p)
        b_i, b_p = b[i], b[p]
        b = b.at[p].set(b_i).at[i].set(b_p)
        inv_pivot = 1.0 / a[i, i]
        row = a[i] * inv_pivot
        bi = b[i] * inv_pivot
        col = a[:, i].at[i].set(0.0)
        a = (a - col[:, None] * row[None, :]).at[i].set(row)
        b = (b - col * bi).at[i].set(bi)
        return a, b

    return jax.lax.fori_loop(0, n, eliminate, (a, b))[1]


def type1_weights(
    gram: jax.Array, valid: jax.Array, ridge: float, fallback: jax.Array
) -> jax.Array:
    """Type-I Anderson weights from ``H_ij = <X_i - X_k, G_j>`` (see the module docstring).

    Args:
      gram: ``[m, m]`` matrix ``H`` (entries of invalid slots ignored).
      valid: bool ``[m]``; slots holding history.
      ridge: relative Tikhonov term ``ridge * max|H|`` added to the diagonal of the valid block.
      fallback: ``[m]`` weights used if the solve is not finite (one-hot newest slot).

    Returns:
      ``[m]`` weights, zero on invalid slots, summing to one.
    """
    m = gram.shape[-1]
    dtype = gram.dtype
    both = valid[:, None] & valid[None, :]
    scale = jnp.max(jnp.where(both, jnp.abs(gram), 0.0))
    lam = ridge * jnp.maximum(scale, jnp.finfo(dtype).tiny)
    eye = jnp.eye(m, dtype=dtype)
    h = jnp.where(both, gram, 0.0) + eye * jnp.where(valid, lam, 1.0)
    border = valid.astype(dtype)
    system = jnp.block([[jnp.zeros((1, 1), dtype), border[None, :]], [border[:, None], h]])
    rhs = jnp.zeros((m + 1,), dtype).at[0].set(1.0)
    weights = solve_pivoted(system, rhs)[1:]
    weights = jnp.where(valid, weights, 0.0)
    ok = jnp.all(jnp.isfinite(weights))
    return jnp.where(ok, weights, fallback)


class TypeIHistory(NamedTuple):
    """Ring buffers of the last ``memory`` points (slot of point j is ``j % memory``) + safeguard.

    Attributes:
      steps: ``[m, n]``; ``E_j = X_j - X_{j-1}`` (zero for ``X_0``; the oldest stored step
        reaches back to a point no longer held and is never used).
      residuals: ``[m, n]``; ``G_j = F(X_j) - X_j``.
      gram: ``[m, m]``; ``<X_i - X_newest, G_j>``.
      start: int32 ``[]``; index of the first point of the current history (0, or the step of
        the last restart); slots holding older points are ignored.
      best_sq: ``[]``; smallest ``||G_j||^2`` since the last restart (safeguard only).
      stall: int32 ``[]``; evaluations since ``best_sq`` last decreased (or since a restart).
    """

    steps: jax.Array
    residuals: jax.Array
    gram: jax.Array
    start: jax.Array
    best_sq: jax.Array
    stall: jax.Array


class TypeIAnderson(AndersonBase):
    """Type-I ("good") Anderson acceleration in the solvers' algorithm protocol, safeguarded.

    **Safeguard** (opt-in; ``stall_steps=0, max_growth=inf`` is the reference): with ``b`` the
    point of smallest ``||G_b||`` since the last restart, the history restarts when
    ``stall_steps`` consecutive evaluations fail to improve on it, or when one evaluation's
    ``||G||`` exceeds ``max_growth`` times it. A restart keeps only the *newest* point ``X_k``,
    so the next point is the plain damped augmented step ``X_k + beta G_k`` and mixing
    rebuilds from there. Unlike the solvers' Anderson it does not jump back to ``X_b``: the
    joint residual mixes the moving ``x`` block, whose older points are worse inputs (going
    back to ``X_b`` raised the mean cost of a 40-step latent reconstruction 0.40 -> 0.54).
    Per problem and vmap-friendly: the ring-buffer slots stay the unbatched ``k % m``, a
    restart only moves the per-problem ``start`` index that masks older slots; one dot product
    and a few scalar selects per step, no extra evaluation.
    """

    def init(self, x0, g0):
        m, n = self.memory, x0.shape[0]
        zeros = jnp.zeros((m, n), x0.dtype)
        keep = self.safeguarded
        return TypeIHistory(
            steps=zeros,
            residuals=zeros.at[0].set(g0),
            gram=jnp.zeros((m, m), x0.dtype),
            start=jnp.zeros((), jnp.int32),
            best_sq=g0 @ g0 if keep else jnp.zeros((), x0.dtype),
            stall=jnp.zeros((), jnp.int32),
        )

    def _indices(self, newest: jax.Array) -> jax.Array:
        """``[m]``: the index ``j_s`` of the point in each slot ``s`` when ``newest`` is the
        newest index (the latest ``j <= newest`` with ``j = s mod m``; negative: never written)."""
        m = self.memory
        return newest - (newest % m - jnp.arange(m)) % m

    def propose(self, hist, x, g, k):
        m = self.memory
        index = self._indices(k - 1)  # x = X_{k-1}, the newest point.
        if self.safeguarded:
            # A slot belongs to the history if its point was evaluated at or after the last
            # restart.
            valid = (index >= jnp.maximum(hist.start, 0)) & (index >= 0)
        else:
            valid = jnp.arange(m) < jnp.minimum(k, m)
        one_hot = jax.nn.one_hot((k - 1) % m, m, dtype=hist.gram.dtype)
        weights = type1_weights(hist.gram, valid, self.ridge, one_hot)
        # sum_j a_j X_j = X_newest - sum_t c_t E_t, c_t = sum of a_s over points older than t.
        older = index[None, :] < index[:, None]  # [t, s]: j_s < j_t
        c = jnp.sum(jnp.where(older, weights[None, :], 0.0), axis=1)
        return x - c @ hist.steps + self.mixing * (weights @ hist.residuals)

    def observe(self, hist, x, g, x_new, g_new, k):
        slot = k % self.memory
        if self.safeguarded:
            sq = g_new @ g_new
            improved, stall, restart = self.restart_rule(sq, hist.best_sq, hist.stall)
            # After a restart the residual to beat is the new point's own.
            hist = hist._replace(
                start=jnp.where(restart, k, hist.start),
                best_sq=jnp.where(improved | restart, sq, hist.best_sq),
                stall=jnp.where(restart, 0, stall),
            )
        step = x_new - x
        # Write first, then read only the *updated* buffers: reading the old ones after the
        # write point made XLA copy both [m, n] buffers every step (2x the step overhead).
        steps = jax.lax.dynamic_update_index_in_dim(hist.steps, step, slot, 0)
        residuals = jax.lax.dynamic_update_index_in_dim(hist.residuals, g_new, slot, 0)
        # <X_i - X_new, G_j> = <X_i - X_old, G_j> - <X_new - X_old, G_j>: no cancellation.
        # (Column ``slot`` is rewritten below, so using the new G there is harmless.)
        gram = hist.gram - (residuals @ step)[None, :]
        # <X_s - X_new, G_new> = -sum over the steps t after point s of <E_t, G_new>.
        index = self._indices(k)
        newer = index[None, :] > index[:, None]  # [s, t]: j_t > j_s
        column = -jnp.sum(jnp.where(newer, (steps @ g_new)[None, :], 0.0), axis=1)
        gram = jax.lax.dynamic_update_index_in_dim(gram, jnp.zeros_like(column), slot, 0)
        gram = jax.lax.dynamic_update_index_in_dim(gram, column, slot, 1)
        return hist._replace(steps=steps, residuals=residuals, gram=gram)


def make_accelerator(
    accelerator: str,
    anderson_type: str,
    memory: int,
    mixing: float,
    ridge: float,
    stall_steps: int = 0,
    max_growth: float = math.inf,
):
    """Returns the flat-vector algorithm for a ``JIIO`` configuration (the safeguard applies to
    both Anderson types; Type-II restarts by the solvers' rule, from the best point)."""
    if accelerator == "none":
        return FixedPointCore(1.0)
    if accelerator == "broyden":
        return BroydenCore(memory, "restart")
    if anderson_type == "type1":
        return TypeIAnderson(memory, mixing, ridge, stall_steps, max_growth)
    return AndersonCore(memory, mixing, ridge, stall_steps, max_growth)
