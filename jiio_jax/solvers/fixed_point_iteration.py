"""Damped fixed-point (Picard / Krasnosel'skii-Mann) iteration."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax

from jiio_jax.solvers import core
from jiio_jax.solvers.core import PyTree, Solution


class FixedPointCore:
    """The ``core.Algorithm`` of ``fixed_point_iteration`` (flat vectors, one problem)."""

    def __init__(self, damping: float):
        self.damping = damping

    def init(self, x0, g0):
        return ()

    def propose(self, hist, x, g, k):
        return x + self.damping * g

    def observe(self, hist, x, g, x_new, g_new, k):
        return hist


_FPI = FixedPointCore  # old private name, kept for existing imports


def fixed_point_iteration(
    fn: Callable[[PyTree], PyTree],
    z0: PyTree,
    *,
    max_steps: int,
    tol: float,
    stop_mode: str = "rel",
    damping: float = 1.0,
    divergence_ratio: float = 1e4,
    unroll: bool = False,
) -> Solution:
    r"""Solves ``z = fn(z)`` by damped fixed-point iteration.

    .. math:: z_{k+1} = z_k + \tau\,(f(z_k) - z_k)

    Converges for contractive ``fn`` (and, with ``damping < 1``, for some non-expansive maps).

    Args:
      fn: the map, pytree -> pytree of the same structure, shapes and dtypes. One problem; use
        ``jax.vmap`` over the solver for batches.
      z0: initial pytree (real floating leaves).
      max_steps: maximum number of evaluations of ``fn`` (> 0).
      tol: stop when the stop-mode residual is ``<= tol`` (> 0).
      stop_mode: ``"rel"`` for ``||f(z)-z|| / ||f(z)||`` or ``"abs"`` for ``||f(z)-z||``.
      damping: :math:`\tau`, in (0, 1] usually.
      divergence_ratio: end with ``Status.DIVERGED`` once ``||f(z)-z||`` exceeds this multiple
        of its value at ``z0``.
      unroll: iterate in a masked ``lax.scan`` (reverse-differentiable, always ``max_steps``)
        instead of a ``lax.while_loop``.

    Returns:
      A ``Solution`` whose ``value`` is the best iterate.

    Raises:
      ValueError: on invalid hyper-parameters or if ``fn`` changes structure/shape/dtype.
    """
    # Positional: the dataclass's field order.
    return FixedPointIteration(max_steps, tol, stop_mode, damping, divergence_ratio)(
        fn, z0, unroll=unroll
    )


@jax.tree_util.register_static
@dataclasses.dataclass(frozen=True)
class FixedPointIteration(core.SolverConfig):
    """Hashable configuration of ``fixed_point_iteration``; ``solver(fn, z0)`` solves.

    A static pytree (no leaves), so it can be passed to a jitted function as an argument.
    """

    max_steps: int = 100
    tol: float = 1e-4
    stop_mode: str = "rel"
    damping: float = 1.0
    divergence_ratio: float = 1e4

    def check(self):
        core.check_positive_float("damping", self.damping)

    def algorithm(self):
        return FixedPointCore(float(self.damping))
