r"""Inner-loop baselines for JIIO, built from the same pieces so comparisons are fair.

Each baseline optimizes ``min_{x in S} cost(z*(x), x, *args)`` with ``z*(x) = f(z*, x, *args)``
by an outer first-order loop whose every step solves the DEQ forward and backward:

- ``inner_adam``: optax Adam on ``x``; each step is ``jiio_jax.deq.fixed_point`` (forward
  solve) + ``jax.grad`` through its implicit backward (the paper's generative baseline).
- ``pgd``: projected gradient steps, ``x <- Pi(x - alpha d)`` with ``d = g / ||g||`` (L2),
  ``sign(g)`` (Linf) or ``g`` (the paper's adversarial baseline, PGD-k; the library's one PGD,
  also the attacks' PGD).
- ``projected_adam``: the reference's meta-learning baseline (§1.10): Adam + projection with the
  forward state ``z`` and the adjoint ``mu`` solved explicitly and warm-started from the
  previous step; the gradient is ``grad_x C + J_x^T mu``.

Two forms of the inner solves (``warm_start``):

- **cold** (the paper's; default of ``inner_adam`` and ``pgd``): every forward solve starts at
  ``z0`` and every adjoint solve at ``Implicit.init`` (the cotangent). ``inner_adam`` and ``pgd``
  take the gradient with ``jax.grad`` through ``fixed_point`` (any backward mode).
- **warm** (the strongest inner loop; default of ``projected_adam``): the forward solve of step
  ``k`` starts at ``z_{k-1}``, the adjoint solve at
  ``mu_{k-1} + (grad_z C_k - grad_z C_{k-1})`` (the previous adjoint plus the first Neumann
  term of the change of its right-hand side; the cotangent at step 0), both explicit
  (``jiio_jax.deq.Implicit.adjoint``), so ``backward`` must be ``Implicit``. ``projected_adam``
  keeps the reference's ``mu_{k-1}`` (zeros at step 0). On a random dense tanh decoder (256-d
  state, 16-d latent, ``||W||_2 = 0.9``, Adam-40 at lr 0.1, Anderson at 1e-4) the correction
  saved 12% of the adjoint evaluations over ``mu_{k-1}``; the warm form as a whole 31% of the
  forward and 21% of the adjoint evaluations of the cold one, at the same final cost.

All run their steps in ``lax.scan`` (jit/vmap-safe, one problem per call). Their ``x`` is a
constant for differentiation; the returned ``z`` is ``z*(x)`` from a final forward solve,
differentiable w.r.t. ``args`` by the implicit function theorem (as ``jiio_jax.jiio.solve``).

**Counted f evaluations.** ``forward_steps`` is the number of ``f`` evaluations of every forward
solve (final solve included); ``adjoint_steps`` the number of evaluations of the adjoint map
``u -> grad_z C + J_z^T u`` (one VJP of ``f`` each) of every adjoint solve, for the explicit
forms. The ``jax.grad`` form cannot return its adjoint count (the solve runs inside JAX's
transpose): ``adjoint_steps`` is ``None`` there; log it with ``Implicit(callback=...)`` (its
solves are those of the explicit cold form, ``projected_adam(warm_start=False)``). Not counted,
the same in every form: per step the linearizations of ``f`` at ``(z*, x)`` (two ``f`` calls at
trace level, which XLA may merge) and one VJP for ``J_x^T mu``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from jiio_jax.deq import BACKWARD_MODES, Implicit, Unrolled, fixed_point
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
      forward_steps: int32 ``[]``; evaluations of ``f`` by the forward solves of all steps and
        the final solve.
      mu: the adjoint of the last gradient step (explicit-adjoint forms: ``projected_adam``,
        ``warm_start=True``); else ``None``.
      adjoint_steps: int32 ``[]``; evaluations of the adjoint map (one VJP of ``f`` each) by
        the adjoint solves of all steps (explicit-adjoint forms); else ``None``.
    """

    z: PyTree
    x: PyTree
    cost: jax.Array
    cost_trace: jax.Array
    forward_steps: jax.Array
    mu: Any = None
    adjoint_steps: Any = None


class _Inner(NamedTuple):
    """What one gradient evaluation hands to the next (carried through the outer loop)."""

    z: PyTree  # start of the next forward solve (z0 when cold, the last z* when warm)
    mu: PyTree  # the last adjoint (explicit forms)
    grad_z: PyTree  # the last adjoint's right-hand side grad_z C (explicit forms)
    forward_steps: jax.Array
    adjoint_steps: jax.Array


class _Setup(NamedTuple):
    prob: _problem.Problem
    proj: Callable
    frozen: tuple  # the args, constants inside the loop
    z_start: PyTree
    x_start: PyTree


def _prepare(f, cost, z0, x0, args, projection, forward_solver, warm_start) -> _Setup:
    """Validates what every baseline takes; the starting point of the outer loop."""
    check_solver(forward_solver, "forward_solver")
    if not isinstance(warm_start, bool):
        raise TypeError(f"`warm_start` must be a bool, got {warm_start!r}.")
    proj = as_projection(projection)
    prob = _problem.prepare(f, cost, z0, x0, args, proj)
    frozen = jax.lax.stop_gradient(prob.args)
    x_start = proj(jax.lax.stop_gradient(prob.x0))
    return _Setup(prob, proj, frozen, jax.lax.stop_gradient(prob.z0), x_start)


def _check_backward(backward: Any, warm_start: bool) -> None:
    check_instance("backward", backward, BACKWARD_MODES, "Implicit()")
    if not isinstance(backward, BACKWARD_MODES) or isinstance(backward, Unrolled):
        raise ValueError(
            "`backward` must be Implicit, Neumann, OneStep or Phantom (jiio_jax.deq), got "
            f"{backward!r}."
        )
    if warm_start and not isinstance(backward, Implicit):
        raise ValueError(
            "`warm_start=True` warm-starts the adjoint solve of `backward`, which must be "
            f"Implicit(solver) (jiio_jax.deq), got {backward!r}; use warm_start=False for an "
            "approximate backward mode."
        )


def _start(setup: _Setup) -> _Inner:
    zero, zeros = jnp.zeros((), jnp.int32), jax.tree.map(jnp.zeros_like, setup.z_start)
    return _Inner(setup.z_start, zeros, zeros, zero, zero)


def _grad_gradient(setup: _Setup, forward_solver, backward):
    """The paper's form: ``jax.grad`` through ``fixed_point`` cold-started at ``inner.z``."""
    prob, frozen = setup.prob, setup.frozen

    def reduced(x, z_init):
        sol = fixed_point(prob.f, z_init, x, *frozen, solver=forward_solver, backward=backward)
        return prob.cost(sol.value, x, *frozen), sol.num_fevals

    value_and_grad = jax.value_and_grad(reduced, has_aux=True)

    def gradient(x, inner: _Inner):
        (c, n), g = value_and_grad(x, inner.z)
        return c, g, inner._replace(forward_steps=inner.forward_steps + n)

    return gradient


def _explicit_gradient(
    setup: _Setup, forward_solver, adjoint: Implicit, warm_start: bool, predict: bool = True
):
    r"""``g = grad_x C + J_x^T mu`` from explicit solves of ``z = f(z, x)`` and
    ``mu = grad_z C + J_z^T mu``, started at ``z0`` / ``adjoint.init`` (cold) or, warm, at the
    previous ``z`` and at ``mu_{k-1} + (grad_z C_k - grad_z C_{k-1})`` (``predict``: the first
    Neumann term of the change of the right-hand side; at step 0 the cotangent) or
    ``mu_{k-1}`` (zeros at step 0; the reference's projected Adam)."""
    prob, frozen = setup.prob, setup.frozen
    tree_add = functools.partial(jax.tree.map, jnp.add)

    def adjoint_start(inner, grad_z):
        if not warm_start:
            return None
        if not predict:
            return inner.mu
        return jax.tree.map(lambda m, g, g0: m + (g - g0), inner.mu, grad_z, inner.grad_z)

    def gradient(x, inner: _Inner):
        sol = forward_solver(lambda z_: prob.f(z_, x, *frozen), inner.z)
        z = sol.value
        c, (grad_z, grad_x) = jax.value_and_grad(prob.cost, argnums=(0, 1))(z, x, *frozen)
        mu_init = adjoint_start(inner, grad_z)
        adj = adjoint.adjoint(prob.f, z, (x, *frozen), grad_z, adjoint_init=mu_init)
        _, vjp_x = jax.vjp(lambda x_: prob.f(z, x_, *frozen), x)
        g = tree_add(grad_x, vjp_x(adj.value)[0])
        nxt = _Inner(
            z if warm_start else inner.z,
            adj.value,
            grad_z,
            inner.forward_steps + sol.num_fevals,
            inner.adjoint_steps + adj.num_fevals,
        )
        return c, g, nxt

    return gradient


def _gradient(setup: _Setup, forward_solver, backward, warm_start: bool):
    """``gradient(x, inner) -> (cost, grad_x, inner)`` of the reduced cost at ``x``: the warm
    form solves explicitly, the cold one is ``jax.grad`` (``inner_adam``, ``pgd``)."""
    if warm_start:
        return _explicit_gradient(setup, forward_solver, backward, warm_start=True)
    return _grad_gradient(setup, forward_solver, backward)


def _adam(setup: _Setup, gradient, num_steps: int, learning_rate: float):
    """``num_steps`` projected Adam steps on ``x``; returns ``(x, inner, cost_trace)``."""
    optimizer = optax.adam(learning_rate)

    def step(carry, _):
        x, opt_state, inner = carry
        c, g, inner = gradient(x, inner)
        updates, opt_state = optimizer.update(g, opt_state, x)
        x = setup.proj(optax.apply_updates(x, updates))
        return (x, opt_state, inner), c

    carry = (setup.x_start, optimizer.init(setup.x_start), _start(setup))
    (x, _, inner), trace = jax.lax.scan(step, carry, None, length=num_steps)
    return x, inner, trace


def _finish(setup, x, inner, forward_solver, backward, trace, explicit, final_solve=True):
    """Final forward solve at ``x`` from ``inner.z`` (differentiable w.r.t. ``args``; ``x``
    constant) and the counts."""
    x = jax.lax.stop_gradient(x)
    mu, adjoint_steps = (inner.mu, inner.adjoint_steps) if explicit else (None, None)
    if not final_solve:
        return InnerLoopSolution(None, x, None, trace, inner.forward_steps, mu, adjoint_steps)
    prob = setup.prob
    sol = fixed_point(prob.f, inner.z, x, *prob.args, solver=forward_solver, backward=backward)
    final_cost = jax.lax.stop_gradient(prob.cost(sol.value, x, *prob.args))
    if trace is not None:
        trace = jnp.concatenate([trace, final_cost[None].astype(trace.dtype)])
    fevals = inner.forward_steps + sol.num_fevals
    return InnerLoopSolution(sol.value, x, final_cost, trace, fevals, mu, adjoint_steps)


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
      backward: implicit backward mode used by ``jax.grad`` (``jiio_jax.deq``); with
        ``warm_start`` an ``Implicit`` whose solver solves the adjoint.
      projection: optional projection applied after every Adam step.
      warm_start: ``False`` (the paper's cold start): every forward solve starts at ``z0``,
        the gradient is ``jax.grad`` through ``fixed_point``. ``True`` (the strongest
        baseline): step ``k``'s forward solve starts at ``z_{k-1}`` and its adjoint solve at
        its previous value corrected by the change of ``grad_z C`` (module docstring); returns
        ``mu`` and ``adjoint_steps``.

    Returns:
      An ``InnerLoopSolution``.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    check_positive_float("learning_rate", learning_rate)
    _check_backward(backward, warm_start)
    setup = _prepare(f, cost, z0, x0, args, projection, forward_solver, warm_start)
    gradient = _gradient(setup, forward_solver, backward, warm_start)
    x, inner, trace = _adam(setup, gradient, num_steps, learning_rate)
    return _finish(setup, x, inner, forward_solver, backward, trace, explicit=warm_start)


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
    warm_start: bool = False,
) -> InnerLoopSolution:
    r"""Projected gradient descent on the reduced cost: PGD-``num_steps`` (the one PGD).

    .. math::
        x_{k+1} = \Pi\big(x_k - \alpha_k\, d_k\big),\quad
        d_k = g_k / (\|g_k\|_2 + \epsilon)\ (\texttt{"normalized"}),\
        \operatorname{sign}(g_k)\ (\texttt{"sign"})\ \text{or}\ g_k\ (\texttt{"gradient"})

    with ``g_k = grad_x cost(z*(x_k), x_k)`` through a DEQ forward solve (cold-started at
    ``z0``, or warm with ``warm_start``) and its implicit backward, from ``x_0 = Pi(x0)``.
    Norms are over the whole pytree.

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
      forward_solver, backward, warm_start: as in ``inner_adam``.
      final_solve: solve the DEQ at the returned ``x`` (default). ``False`` skips it for a
        caller that only needs ``x`` (an attack re-scores ``x`` itself): then ``z`` and ``cost``
        are ``None`` and ``cost_trace`` lacks its final entry.

    Returns:
      An ``InnerLoopSolution``; ``forward_steps`` counts the f evaluations of every forward
      solve (the ``num_steps`` gradient steps and, with ``final_solve``, the final solve at
      ``x``), ``adjoint_steps`` (``warm_start``) those of every adjoint solve.
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
    _check_backward(backward, warm_start)
    setup = _prepare(f, cost, z0, x0, args, projection, forward_solver, warm_start)
    gradient = _gradient(setup, forward_solver, backward, warm_start)
    proj = setup.proj

    def step(carry, k):
        x, inner = carry
        c, g, inner = gradient(x, inner)
        alpha = schedule(k, num_steps)
        if direction == "normalized":
            alpha = alpha / (jnp.linalg.norm(ravel_pytree(g)[0]) + normalize_eps)
        elif direction == "sign":
            g = jax.tree.map(jnp.sign, g)
        x = proj(jax.tree.map(lambda xi, gi: (xi - alpha * gi).astype(xi.dtype), x, g))
        return (x, inner), c

    carry = (setup.x_start, _start(setup))
    if static_steps:
        (x, inner), trace = jax.lax.scan(step, carry, jnp.arange(num_steps))
    else:
        x, inner = jax.lax.fori_loop(0, num_steps, lambda k, cr: step(cr, k)[0], carry)
        trace = None
    return _finish(
        setup, x, inner, forward_solver, backward, trace, warm_start, final_solve=final_solve
    )


def projected_adam(
    f: Callable[..., PyTree],
    cost: Callable[..., jax.Array],
    z0: PyTree,
    x0: PyTree,
    *args: PyTree,
    num_steps: int = 20,
    learning_rate: float = 0.1,
    projection: Any = None,
    forward_solver: Callable = Broyden(max_steps=20, tol=1e-5),
    adjoint: Implicit = Implicit(Broyden(max_steps=20, tol=1e-5)),
    warm_start: bool = True,
) -> InnerLoopSolution:
    r"""Adam + projection with explicit forward and adjoint solves (reference §1.10).

    Per step ``k``, from the previous ``(z, mu)``:

    .. math::
        z_k = \mathrm{solve}\; z = f(z, x_k),\quad
        \mu_k = \mathrm{solve}\; \mu = \nabla_z C + J_z^\top \mu,\quad
        g_k = \nabla_x C + J_x^\top \mu_k,\quad x_{k+1} = \Pi(x_k + \mathrm{Adam}(g_k))

    The reference solves the joint ``(z, mu)`` system with one Broyden call; solving ``z`` then
    ``mu`` has the same fixed point. Defaults follow the reference (20 steps, lr 0.1,
    Broyden capped at 20 iterations, warm starts from the previous ``z`` and ``mu``).

    Args:
      f, cost, z0, x0, *args: as in ``jiio_jax.jiio.solve``.
      num_steps: number of Adam steps.
      learning_rate: Adam step size.
      projection: projection after every step.
      forward_solver: solver of the forward ``z``.
      adjoint: ``Implicit`` whose solver computes ``mu``.
      warm_start: ``True`` (the reference): ``z`` and ``mu`` start at the previous step's
        (``mu`` at zeros at step 0); ``False``: at ``z0`` and ``adjoint.init`` every step.

    Returns:
      An ``InnerLoopSolution`` with ``mu`` and ``adjoint_steps``.
    """
    num_steps = check_positive_int("num_steps", num_steps)
    check_positive_float("learning_rate", learning_rate)
    check_instance("adjoint", adjoint, (Implicit,), "Implicit(Broyden())")
    if not isinstance(adjoint, Implicit):
        raise TypeError(f"`adjoint` must be an Implicit(solver) (jiio_jax.deq), got {adjoint!r}.")
    setup = _prepare(f, cost, z0, x0, args, projection, forward_solver, warm_start)
    gradient = _explicit_gradient(setup, forward_solver, adjoint, warm_start, predict=False)
    x, inner, trace = _adam(setup, gradient, num_steps, learning_rate)
    return _finish(setup, x, inner, forward_solver, adjoint, trace, explicit=True)
