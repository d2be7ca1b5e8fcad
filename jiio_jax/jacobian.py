"""Jacobian diagnostics and regularisers for equilibrium layers (matrix-free).

- ``frobenius_norm_sq``: Hutchinson estimate of ``||df/dz||_F^2`` (Bai et al. 2021,
  "Stabilizing equilibrium models by Jacobian regularization"); differentiable, so it can be
  added to a training loss.
- ``spectral_radius``: power-method estimate of the largest ``|eigenvalue|`` of ``df/dz``, the
  quantity that decides whether fixed-point iteration contracts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from jiio_jax.solvers._base import as_state, check_fn_output, check_positive_int

PyTree = Any


def _normal_like(key: jax.Array, tree: PyTree) -> PyTree:
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef, [jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves, strict=True)]
    )


def _sq_norm(tree: PyTree) -> jax.Array:
    return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def frobenius_norm_sq(
    f: Callable[[PyTree], PyTree],
    z: PyTree,
    key: jax.Array,
    *,
    num_probes: int = 1,
    normalize: bool = True,
) -> jax.Array:
    r"""Hutchinson estimate of :math:`\|\partial f/\partial z\|_F^2` at ``z``.

    .. math:: \|J\|_F^2 = \mathbb{E}_{\epsilon\sim\mathcal N(0,I)} \|\epsilon^\top J\|^2
              \approx \frac1K\sum_{k=1}^K \|\epsilon_k^\top J\|^2

    One VJP per probe. Differentiable w.r.t. everything ``f`` depends on (parameters enter
    through ``f``'s closure or via ``functools.partial``), so it serves as a regulariser.

    Args:
      f: map of one problem, ``z -> f(z)`` (same structure in and out).
      z: the point (e.g. the equilibrium or a trajectory sample).
      key: PRNG key for the probes.
      num_probes: number K of Gaussian probes (> 0).
      normalize: divide by the number of elements of ``z`` (as the DEQ/JIIO references do),
        giving the mean squared Jacobian entry per row.

    Returns:
      Scalar estimate.
    """
    num_probes = check_positive_int("num_probes", num_probes)
    z = as_state(z, "z")
    check_fn_output(f, z, "f")
    _, vjp = jax.vjp(f, z)
    keys = jax.random.split(key, num_probes)
    total = jnp.mean(jax.vmap(lambda k: _sq_norm(vjp(_normal_like(k, z))[0]))(keys))
    if normalize:
        total = total / sum(x.size for x in jax.tree.leaves(z))
    return total


def spectral_radius(
    f: Callable[[PyTree], PyTree],
    z: PyTree,
    key: jax.Array,
    *,
    num_iters: int = 50,
) -> jax.Array:
    r"""Power-method estimate of the spectral radius :math:`\rho(\partial f/\partial z)`.

    Iterates :math:`v \leftarrow J^\top v/\|J^\top v\|` with VJPs (no Jacobian is formed)
    from a random start and returns :math:`\|J^\top v\|` for the final unit vector
    (:math:`J^\top` has the eigenvalues of :math:`J`). VJPs rather than JVPs so that layers
    with a custom VJP (the MDEQ convolutions) work. Exact in the limit for a real dominant
    eigenvalue and for normal Jacobians; for non-normal Jacobians with a complex dominant pair
    it is an estimate of the same order. Not meant to be differentiated.

    Args:
      f: map of one problem.
      z: the point.
      key: PRNG key for the start vector.
      num_iters: power iterations (> 0), one VJP each.

    Returns:
      Scalar estimate of :math:`\max_i |\lambda_i(J)|`.
    """
    num_iters = check_positive_int("num_iters", num_iters)
    z = as_state(z, "z")
    check_fn_output(f, z, "f")
    z_flat, unravel = ravel_pytree(z)
    z = jax.lax.stop_gradient(z)

    _, f_vjp = jax.vjp(f, z)

    def vjp(v_flat):
        (out,) = f_vjp(unravel(v_flat))
        return ravel_pytree(out)[0]

    v0 = jax.random.normal(key, z_flat.shape, z_flat.dtype)
    v0 = v0 / jnp.linalg.norm(v0)

    def body(_, carry):
        v, _ = carry
        w = vjp(v)
        norm = jnp.linalg.norm(w)
        return w / jnp.where(norm > 0, norm, 1.0), norm

    _, estimate = jax.lax.fori_loop(0, num_iters, body, (v0, jnp.zeros((), z_flat.dtype)))
    return estimate
