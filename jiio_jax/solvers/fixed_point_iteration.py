"""Damped fixed-point (Picard / Krasnosel'skii-Mann) iteration."""

from __future__ import annotations

from jiio_jax.solvers import core


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


@core.solver_config
class FixedPointIteration(core.SolverConfig):
    r"""Damped fixed-point iteration; ``solver(fn, z0)`` solves ``z = fn(z)``.

    .. math:: z_{k+1} = z_k + \tau\,(f(z_k) - z_k)

    Converges for contractive ``fn`` (and, with ``damping < 1``, for some non-expansive maps).

    Attributes:
      max_steps, tol, stop_mode, divergence_ratio: the loop options (``core.SolverConfig``).
      damping: :math:`\tau`, in (0, 1] usually.
    """

    max_steps: int = 100
    damping: float = 1.0

    def check(self):
        core.check_positive_float("damping", self.damping)

    def algorithm(self):
        return FixedPointCore(float(self.damping))


fixed_point_iteration = core.functional_form(FixedPointIteration, "fixed_point_iteration")
