"""Small dense linear algebra used inside solver loops.

The Anderson coefficient systems are tiny (memory m <= ~40) and are solved once per iteration
per problem. A batched LAPACK call has a fixed overhead that dominates at this size on CPU, so we
solve by Gauss-Jordan elimination unrolled in Python over the static size m: a handful of fused
elementwise ops that XLA keeps inside the loop body. No pivoting is needed because the systems
are symmetric positive definite after the ridge is added.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def solve_spd_unrolled(a: jax.Array, b: jax.Array) -> jax.Array:
    """Solves ``a @ y = b`` for a small SPD ``a`` of static shape ``[m, m]`` and ``b`` ``[m]``.

    Gauss-Jordan elimination, each step written as a single rank-one update: with
    ``c = a[:, i] - e_i`` and ``r = a[i] / a[i, i]``, ``a - c r^T`` both normalises the pivot row
    and clears column ``i`` elsewhere, so XLA fuses a step into one elementwise kernel (no
    row writes). After ``m`` steps ``a`` is the identity and ``b`` holds the solution.
    """
    m = a.shape[-1]
    eye = jnp.eye(m, dtype=a.dtype)
    for i in range(m):
        inv_pivot = 1.0 / a[i, i]
        col = a[:, i] - eye[i]
        b = b - col * (b[i] * inv_pivot)
        a = a - col[:, None] * (a[i] * inv_pivot)[None, :]
    return b


def affine_lstsq_weights(
    gram: jax.Array, valid: jax.Array, ridge: jax.Array, fallback: jax.Array
) -> jax.Array:
    """Weights ``a`` minimising ``||sum_i a_i g_i||^2 + lam ||a||^2`` subject to ``sum_i a_i = 1``.

    This is the bordered Anderson system ``[[0, 1^T], [1, H]] [nu; a] = [1; 0]`` solved by
    eliminating the multiplier: ``a = y / (1^T y)`` with ``(H + lam I) y = 1``. The ridge is
    *relative*: ``lam = ridge * mean(diag H)`` over the valid slots, so it shrinks with the
    residuals instead of swamping them near convergence.

    Args:
      gram: ``[m, m]`` Gram matrix ``H_ij = <g_i, g_j>`` (entries of invalid slots ignored).
      valid: bool ``[m]``; slots holding history.
      ridge: relative ridge (scalar >= 0).
      fallback: ``[m]`` weights used if the solve is not finite (e.g. one-hot newest slot).

    Returns:
      ``[m]`` weights, zero on invalid slots, summing to one.
    """
    dtype = gram.dtype
    both = valid[:, None] & valid[None, :]
    diag = jnp.where(valid, jnp.diagonal(gram), 0.0)
    scale = jnp.sum(diag) / jnp.maximum(jnp.sum(valid), 1).astype(dtype)
    lam = ridge * jnp.maximum(scale, jnp.finfo(dtype).tiny)
    eye = jnp.eye(gram.shape[-1], dtype=dtype)
    system = jnp.where(both, gram, 0.0) + eye * jnp.where(valid, lam, 1.0)
    y = solve_spd_unrolled(system, valid.astype(dtype))
    total = jnp.sum(y)
    weights = y / total
    ok = jnp.all(jnp.isfinite(weights)) & (total > 0)
    return jnp.where(ok, weights, fallback)
