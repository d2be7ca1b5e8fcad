r"""Projected Adam over a shared input of independent equilibrium rows (the meta baseline).

The reference's meta-learning baseline (§1.10 of JIIO_REFERENCE.md; ``jiio.projected_adam``):
Adam on the task context ``x``, each step a warm-started forward solve of the states and of
their adjoints, the gradient being ``grad_x C + J_x^T mu``. Here the state is a stack of ``S``
rows (support examples) that share ``x`` but not their equilibria,

.. math:: z_i = f(z_i, x, a_i),\qquad \mu_i = \nabla_{z_i} C + J_{z_i}^\top \mu_i,\qquad
          g = \nabla_x C + \textstyle\sum_i J_{x,i}^\top \mu_i,

so every forward and adjoint solve is per row, vmapped over the rows *outside* the solver.
That is the same fixed point as ``jiio.projected_adam`` on the stacked state (the Jacobian is
block diagonal), with per-row stopping. ``jiio.projected_adam`` itself cannot be used with a
row-vmapped map under the training loop's mesh: its adjoint solver vmaps the VJP of that map,
and JAX 0.10 has no batching rule for the resulting kernel-gradient convolution
(NotImplementedError in ``_conv_general_dilated_batch_rule`` when an output sharding is set).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax

from jiio_jax.deq import Implicit
from jiio_jax.jiio import InnerLoopSolution

PyTree = Any


def projected_adam_rows(
    row_fn: Callable[..., PyTree],
    cost: Callable[..., jax.Array],
    z0: PyTree,
    x0: jax.Array,
    row_args: PyTree,
    shared_args: tuple,
    *,
    num_steps: int,
    learning_rate: float,
    solver: Any,
) -> InnerLoopSolution:
    """Adam on ``x`` of ``cost(z*(x), x)`` with ``z*_i = row_fn(z*_i, x, a_i, *shared)``.

    Args:
      row_fn: one row's map ``row_fn(z_i, x, a_i, *shared_args) -> z_i``.
      cost: ``cost(z, x, row_args, *shared_args) -> []`` over all rows (leading axis ``S``).
      z0: initial states, leading axis ``S`` (the first forward solve's warm start).
      x0: initial shared input.
      row_args: per-row arguments ``a_i`` (pytree, leading axis ``S``).
      shared_args: arguments shared by all rows (e.g. parameters); constants.
      num_steps: Adam steps.
      learning_rate: Adam step size.
      solver: forward and adjoint solver configuration (e.g. ``Broyden(max_steps=20)``).

    Returns:
      An ``InnerLoopSolution`` (``x``, ``z`` at the final ``x`` and ``mu`` are constants;
      ``forward_steps`` counts the forward solves' row evaluations, summed over rows).
    """
    shared_args = jax.lax.stop_gradient(shared_args)
    row_args = jax.lax.stop_gradient(row_args)
    adjoint = Implicit(solver)
    optimizer = optax.adam(learning_rate)

    def solve_rows(z, x):
        def one(zi, ai):
            return solver(lambda zz: row_fn(zz, x, ai, *shared_args), zi)

        sol = jax.vmap(one)(z, row_args)
        return sol.value, jnp.sum(sol.num_fevals, dtype=jnp.int32)

    def stacked(z, x):
        return jax.vmap(lambda zi, ai: row_fn(zi, x, ai, *shared_args))(z, row_args)

    def step(carry, _):
        x, opt_state, z, mu, fevals = carry
        z, n = solve_rows(z, x)
        (fz, c), vjp = jax.vjp(
            lambda z_, x_: (stacked(z_, x_), cost(z_, x_, row_args, *shared_args)), z, x
        )
        one = jnp.ones_like(c)
        grad_z = vjp((jax.tree.map(jnp.zeros_like, fz), one))[0]

        def adjoint_one(zi, ai, gi, mi):
            f_i = lambda zz, xx: row_fn(zz, xx, ai, *shared_args)
            return adjoint.adjoint(f_i, zi, (x,), gi, adjoint_init=mi).value

        mu = jax.vmap(adjoint_one)(z, row_args, grad_z, mu)
        g = vjp((mu, one))[1]
        updates, opt_state = optimizer.update(g, opt_state, x)
        x = optax.apply_updates(x, updates)
        return (x, opt_state, z, mu, fevals + n), c

    z0 = jax.lax.stop_gradient(z0)
    x0 = jax.lax.stop_gradient(x0)
    mu0 = jax.tree.map(jnp.zeros_like, z0)
    carry = (x0, optimizer.init(x0), z0, mu0, jnp.zeros((), jnp.int32))
    (x, _, z, mu, fevals), trace = jax.lax.scan(step, carry, None, length=num_steps)
    z, n = solve_rows(z, x)
    final = cost(z, x, row_args, *shared_args)
    trace = jnp.concatenate([trace, final[None].astype(trace.dtype)])
    return InnerLoopSolution(z, x, final, trace, fevals + n, mu)
