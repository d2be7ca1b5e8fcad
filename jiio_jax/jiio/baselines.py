r"""Inner-loop baselines for JIIO, built from the same pieces so comparisons are fair.

Each baseline optimizes ``min_{x in S} cost(z*(x), x, *args)`` with ``z*(x) = f(z*, x, *args)``
by an outer first-order loop whose every step solves the DEQ forward and backward:

- ``inner_adam``: optax Adam on ``x``; each step is ``jiio_jax.deq.fixed_point`` (forward
  solve) + ``jax.grad`` through its implicit backward (the paper's generative baseline, cold
  start by default).
- ``pgd``: projected gradient steps, ``x <- Pi(x - alpha d)`` with ``d = g / ||g||`` (L2),
  ``sign(g)`` (Linf) or ``g`` (the paper's adversarial baseline, PGD-k; the library's one PGD,
  also the attacks' PGD).
- ``projected_adam``: the reference's meta-learning baseline (§1.10): Adam + projection with the
  forward state ``z`` and the adjoint ``mu`` solved explicitly and warm-started from the
  previous step; the gradient is ``grad_x C + J_x^T mu``.

All run their steps in ``lax.scan`` (jit/vmap-safe, one problem per call). Their ``x`` is a
constant for differentiation; the returned ``z`` is ``z*(x)`` from a final forward solve,
differentiable w.r.t. ``args`` by the implicit function theorem (as ``jiio_jax.jiio.solve``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jiio_jax.deq import Implicit, fixed_point
from jiio_jax.deq.backward import BACKWARD_MODES, Unrolled
from jiio_jax.jiio import _problem
from jiio_jax.jiio._pytree import check_instance
from jiio_jax.jiio.projections import as_projection
from jiio_jax.jiio.schedules import as_schedule
from jiio_jax.solvers import Anderson, Broyden
from jiio_jax.solvers.core import check_positive_float, check_positive_int, check_solver

PyTree = Any


class InnerLoopSolution(NamedTuple):
    """Result of a baseline for one problem (add a leading axis per ``vmap``).

    Attributes:
      z: ``z*(x)`` at the final ``x`` (forward-solved; differentiable w.r.t. ``args``).
      x: the final input (inside the projection's set); a constant.
      cost: ``[]``; ``cost(z, x, *args)`` at the final point.
      cost_trace: ``[num_steps + 1]``; cost at ``(z*(x_k), x_k)`` for ``k = 0..num_steps``
        (entry ``k`` is the point *before* update ``k``; the last is the final point);
        ``None`` for ``pgd`` with a traced ``num_steps``.
      forward_steps: int32 ``[]``; forward-solver evaluations of ``f`` over all steps and the
        final solve (the f-eval count; implicit-backward VJPs are not counted).
      mu: ``projected_adam`` only: the adjoint at the last gradient step; else ``None``.
    """

    z: PyTree
    x: PyTree
    cost: jax.Array
    cost_trace: jax.Array
    forward_steps: jax.Array
    mu: Any = None


def _check_backward(backward: Any) -> None:
    check_instance("backward", backward, BACKWARD_MODES, "Implicit()")
    if not isinstance(backward, BACKWARD_MODES) or isinstance(backward, Unrolled):
        raise ValueError(
            "`backward` must be Implicit, Neumann, OneStep or Phantom (jiio_jax.deq), got "
            f"{backward!r}."
        )


def _finish(prob, x, z_init, args, forward_solver, backward, trace, fevals, mu=None):
    """Final forward solve at ``x`` (differentiable w.r.t. ``args``; ``x`` constant)."""
    x = jax.lax.stop_gradient(x)
    sol = fixed_point(prob.f, z_init, x, *args, solver=forward_solver, backward=backward)
    final_cost = jax.lax.stop_gradient(prob.cost(sol.value, x, *args))
    if trace is not None:
        trace = jnp.concatenate([trace, final_cost[None].astype(trace.dtype)])
    return InnerLoopSolution(sol.value, x, final_cost, trace, fevals + sol.num_fevals, mu)


def _reduced_value_and_grad(prob, args, forward_solver, backward):
    """``(x, z_init) -> ((cost(z*(x), x), (z*, fevals)), grad_x)`` via ``fixed_point``."""

    def reduced(x, z_init):
        sol = fixed_point(prob.f, z_init, x, *args, solver=forward_solver, backward=backward)
        return prob.cost(sol.value, x, *args), (sol.value, sol.num_fevals)

    return jax.value_and_grad(reduced, has_aux=True)


def inner_adam(
    f: Callable[..., PyTree],
    cost: Callable[..., jax.Array],
    z0: PyTree,
    x0: PyTree,
    *args: PyTree,
    num_steps: int = 40,
    learning_rate: float = 0.1,
    forward_solver: Callable = Anderson(max_steps=50, tol=1e-4),
    backward: Any = Implicit(Anderson(max_steps=50, tol=1e-4)),
    projection: Any = None,
    warm_start: bool = False,
) -> InnerLoopSolution:
    r"""Adam over ``x`` of the reduced cost, each step a DEQ forward + implicit backward.

    .. math::
        z_k = \mathrm{solve}_z\, z = f(z, x_k),\quad
        g_k = \nabla_x C(z_k, x_k) + J_x^\top (I - J_z^\top)^{-1} \nabla_z C,\quad
        x_{k+1} = \Pi\big(x_k + \mathrm{Adam}(g_k)\big)

    Args:
      f, cost, z0, x0, *args: as in ``jiio_jax.jiio.solve``.
      num_steps: number of Adam steps (the paper compares with 40).
      learning_rate: Adam step size (paper: 1.0 for its latents; tune per problem).
      forward_solver: solver of each forward DEQ solve.
      backward: implicit backward mode used by ``jax.grad`` (``jiio_jax.deq``).
      projection: optional projection applied after every Adam step.
      warm_start: start each forward solve at the previous ``z*`` (default: at ``z0``, the
        paper's cold start).

    Returns:
      An ``InnerLoopSolution``.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    check_positive_float("learning_rate", learning_rate)
    check_solver(forward_solver, "forward_solver")
    _check_backward(backward)
    proj = as_projection(projection)
    prob = _problem.prepare(f, cost, z0, x0, args, proj)
    frozen = jax.lax.stop_gradient(prob.args)
    z_start = jax.lax.stop_gradient(prob.z0)
    value_and_grad = _reduced_value_and_grad(prob, frozen, forward_solver, backward)
    optimizer = optax.adam(learning_rate)
    x_start = proj(jax.lax.stop_gradient(prob.x0))

    def step(carry, _):
        x, opt_state, z_init, fevals = carry
        (c, (z_star, n)), g = value_and_grad(x, z_init)
        updates, opt_state = optimizer.update(g, opt_state, x)
        x = proj(optax.apply_updates(x, updates))
        z_next = z_star if warm_start else z_start
        return (x, opt_state, z_next, fevals + n), c

    carry = (x_start, optimizer.init(x_start), z_start, jnp.zeros((), jnp.int32))
    (x, _, z_init, fevals), trace = jax.lax.scan(step, carry, None, length=num_steps)
    return _finish(prob, x, z_init, prob.args, forward_solver, backward, trace, fevals)


PGD_DIRECTIONS = ("normalized", "sign", "gradient")


def pgd(
    f: Callable[..., PyTree],
    cost: Callable[..., jax.Array],
    z0: PyTree,
    x0: PyTree,
    *args: PyTree,
    step_size: Any,
    num_steps: int | jax.Array = 20,
    projection: Any = None,
    direction: str = "normalized",
    normalize_eps: float = 1e-8,
    forward_solver: Callable = Anderson(max_steps=50, tol=1e-4),
    backward: Any = Implicit(Anderson(max_steps=50, tol=1e-4)),
    final_solve: bool = True,
) -> InnerLoopSolution:
    r"""Projected gradient descent on the reduced cost: PGD-``num_steps`` (the one PGD).

    .. math::
        x_{k+1} = \Pi\big(x_k - \alpha_k\, d_k\big),\quad
        d_k = g_k / (\|g_k\|_2 + \epsilon)\ (\texttt{"normalized"}),\
        \operatorname{sign}(g_k)\ (\texttt{"sign"})\ \text{or}\ g_k\ (\texttt{"gradient"})

    with ``g_k = grad_x cost(z*(x_k), x_k)`` through a DEQ forward solve cold-started at ``z0``
    and its implicit backward, from ``x_0 = Pi(x0)``. Norms are over the whole pytree.

    For an attack (maximise a loss), pass ``cost = -loss``, the perturbation as ``x`` (``x0``
    zeros, or a random point such as ``BallBox.sample(key, x0)`` for a random start), the threat
    set as ``projection`` (``L2Ball``, ``LinfBall`` or ``BallBox``), ``direction="normalized"``
    (L2) or ``"sign"`` (Linf), and ``step_size = relative_step * radius`` (a traced per-sample
    scalar is fine). One problem per call: ``jax.vmap`` over images, labels and projections.

    Args:
      f, cost, z0, x0, *args: as in ``jiio_jax.jiio.solve``.
      step_size: float or scalar array (may be traced), ``Constant``/``Piecewise`` schedule
        (called with ``(k, num_steps)``) or callable ``k -> alpha``.
      num_steps: number of gradient steps: a Python int, or an int32 scalar array (e.g. traced,
        so one compilation serves every ``k``; then ``cost_trace`` is ``None`` and a schedule
        sees ``num_steps`` as that array).
      projection: projection after every step (e.g. ``L2Ball(eps)``, ``BallBox``).
      direction: ``"normalized"`` (L2 PGD), ``"sign"`` (Linf PGD) or ``"gradient"``.
      normalize_eps: :math:`\epsilon` of the normalized direction.
      forward_solver, backward: as in ``inner_adam``.
      final_solve: solve the DEQ at the returned ``x`` (default). ``False`` skips it for a
        caller that only needs ``x`` (an attack re-scores ``x`` itself): then ``z`` and ``cost``
        are ``None`` and ``cost_trace`` lacks its final entry.

    Returns:
      An ``InnerLoopSolution``; ``forward_steps`` counts the f evaluations of every forward
      solve (the ``num_steps`` gradient steps and, with ``final_solve``, the final solve at
      ``x``; the implicit backward's VJPs are not counted).
    """
    static_steps = isinstance(num_steps, int)
    if static_steps:
        num_steps = check_positive_int("num_steps", num_steps)
    elif not (
        isinstance(num_steps, jax.Array | np.ndarray)
        and jnp.ndim(num_steps) == 0
        and jnp.issubdtype(jnp.result_type(num_steps), jnp.integer)
    ):
        raise ValueError(
            f"`num_steps` must be a positive int or an integer scalar array, got {num_steps!r}."
        )
    if isinstance(step_size, jax.Array | np.ndarray) and jnp.ndim(step_size) == 0:
        schedule = lambda k, n: step_size  # an array (possibly traced, e.g. under vmap)
    else:
        schedule = as_schedule(step_size)
    if direction not in PGD_DIRECTIONS:
        raise ValueError(f"`direction` must be one of {PGD_DIRECTIONS}, got {direction!r}.")
    check_positive_float("normalize_eps", normalize_eps)
    if not isinstance(final_solve, bool):
        raise TypeError(f"`final_solve` must be a bool, got {final_solve!r}.")
    check_solver(forward_solver, "forward_solver")
    _check_backward(backward)
    proj = as_projection(projection)
    prob = _problem.prepare(f, cost, z0, x0, args, proj)
    frozen = jax.lax.stop_gradient(prob.args)
    z_start = jax.lax.stop_gradient(prob.z0)
    value_and_grad = _reduced_value_and_grad(prob, frozen, forward_solver, backward)
    x_start = proj(jax.lax.stop_gradient(prob.x0))

    def step(carry, k):
        x, fevals = carry
        (c, (_, n)), g = value_and_grad(x, z_start)
        alpha = schedule(k, num_steps)
        if direction == "normalized":
            alpha = alpha / (jnp.linalg.norm(ravel_pytree(g)[0]) + normalize_eps)
        elif direction == "sign":
            g = jax.tree.map(jnp.sign, g)
        x = proj(jax.tree.map(lambda xi, gi: (xi - alpha * gi).astype(xi.dtype), x, g))
        return (x, fevals + n), c

    carry = (x_start, jnp.zeros((), jnp.int32))
    if static_steps:
        (x, fevals), trace = jax.lax.scan(step, carry, jnp.arange(num_steps))
    else:
        x, fevals = jax.lax.fori_loop(0, num_steps, lambda k, cr: step(cr, k)[0], carry)
        trace = None
    if not final_solve:
        return InnerLoopSolution(None, jax.lax.stop_gradient(x), None, trace, fevals)
    return _finish(prob, x, z_start, prob.args, forward_solver, backward, trace, fevals)


def projected_adam(
    f: Callable[..., PyTree],
    cost: Callable[..., jax.Array],
    z0: PyTree,
    x0: PyTree,
    *args: PyTree,
    num_steps: int = 20,
    learning_rate: float = 0.1,
    forward_solver: Callable = Broyden(max_steps=20, tol=1e-5),
    adjoint: Implicit = Implicit(Broyden(max_steps=20, tol=1e-5)),
    projection: Any = None,
) -> InnerLoopSolution:
    r"""Adam + projection with warm-started forward and adjoint solves (reference §1.10).

    Per step ``k``, from the previous ``(z, mu)``:

    .. math::
        z_k = \mathrm{solve}\; z = f(z, x_k),\quad
        \mu_k = \mathrm{solve}\; \mu = \nabla_z C + J_z^\top \mu,\quad
        g_k = \nabla_x C + J_x^\top \mu_k,\quad x_{k+1} = \Pi(x_k + \mathrm{Adam}(g_k))

    The reference solves the joint ``(z, mu)`` system with one Broyden call; solving ``z`` then
    ``mu`` has the same fixed point. Defaults follow the reference (20 steps, lr 0.1,
    Broyden capped at 20 iterations).

    Args:
      f, cost, z0, x0, *args: as in ``jiio_jax.jiio.solve``.
      num_steps: number of Adam steps.
      learning_rate: Adam step size.
      forward_solver: solver of the forward ``z`` (warm-started).
      adjoint: ``Implicit`` whose solver computes ``mu`` (warm-started from the previous mu).
      projection: projection after every step.

    Returns:
      An ``InnerLoopSolution`` with ``mu``.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    check_positive_float("learning_rate", learning_rate)
    check_solver(forward_solver, "forward_solver")
    check_instance("adjoint", adjoint, (Implicit,), "Implicit(Broyden())")
    if not isinstance(adjoint, Implicit):
        raise TypeError(f"`adjoint` must be an Implicit(solver) (jiio_jax.deq), got {adjoint!r}.")
    proj = as_projection(projection)
    prob = _problem.prepare(f, cost, z0, x0, args, proj)
    frozen = jax.lax.stop_gradient(prob.args)
    optimizer = optax.adam(learning_rate)
    x_start = proj(jax.lax.stop_gradient(prob.x0))
    z_start = jax.lax.stop_gradient(prob.z0)

    def step(carry, _):
        x, opt_state, z, mu, fevals = carry
        sol = forward_solver(lambda z_: prob.f(z_, x, *frozen), z)
        z = sol.value

        def layer_and_cost(z_, x_):
            return prob.f(z_, x_, *frozen), prob.cost(z_, x_, *frozen)

        (fz, c), vjp = jax.vjp(layer_and_cost, z, x)
        one = jnp.ones_like(c)
        grad_z_cost = vjp((jax.tree.map(jnp.zeros_like, fz), one))[0]
        mu = adjoint.adjoint(prob.f, z, (x, *frozen), grad_z_cost, adjoint_init=mu).value
        g = vjp((mu, one))[1]
        updates, opt_state = optimizer.update(g, opt_state, x)
        x = proj(optax.apply_updates(x, updates))
        return (x, opt_state, z, mu, fevals + sol.num_fevals), c

    mu0 = jax.tree.map(jnp.zeros_like, z_start)
    carry = (x_start, optimizer.init(x_start), z_start, mu0, jnp.zeros((), jnp.int32))
    (x, _, z, mu, fevals), trace = jax.lax.scan(step, carry, None, length=num_steps)
    return _finish(
        prob, x, z, prob.args, forward_solver, Implicit(adjoint.solver), trace, fevals, mu
    )
