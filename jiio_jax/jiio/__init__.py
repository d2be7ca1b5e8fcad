"""JIIO: joint inference and input optimization in equilibrium networks, plus baselines.

``solve`` (configured by ``JIIO``) finds the equilibrium ``z*``, its adjoint ``mu*`` and an
optimized input ``x*`` of ``min_x cost(z*, x)`` s.t. ``z* = f(z*, x)`` in one augmented fixed-point
solve. ``baselines`` holds the inner-loop alternatives (Adam over a DEQ, PGD, projected Adam)
built from the same pieces for fair comparisons.
"""

from jiio_jax.jiio import baselines as baselines
from jiio_jax.jiio._solve import JIIO as JIIO
from jiio_jax.jiio._solve import JIIOSolution as JIIOSolution
from jiio_jax.jiio._solve import Tolerance as Tolerance
from jiio_jax.jiio._solve import solve as solve
from jiio_jax.jiio.baselines import InnerLoopSolution as InnerLoopSolution
from jiio_jax.jiio.baselines import inner_adam as inner_adam
from jiio_jax.jiio.baselines import pgd as pgd
from jiio_jax.jiio.baselines import projected_adam as projected_adam
from jiio_jax.jiio.projections import BallBox as BallBox
from jiio_jax.jiio.projections import Box as Box
from jiio_jax.jiio.projections import L2Ball as L2Ball
from jiio_jax.jiio.projections import LinfBall as LinfBall
from jiio_jax.jiio.projections import Unconstrained as Unconstrained
from jiio_jax.jiio.schedules import Constant as Constant
from jiio_jax.jiio.schedules import Piecewise as Piecewise
