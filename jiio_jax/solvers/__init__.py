"""Functional fixed-point solvers on pytrees: ``z* = fn(z*)`` for one problem (vmap for batches).

All solvers run in ``jax.lax.while_loop``, are jit/vmap-safe, never sync with the host, track
the best iterate, and report ``Status`` (converged / max_steps / nonfinite / diverged).
"""

from jiio_jax.solvers._base import Solution as Solution
from jiio_jax.solvers._base import Status as Status
from jiio_jax.solvers.anderson import Anderson as Anderson
from jiio_jax.solvers.anderson import anderson as anderson
from jiio_jax.solvers.broyden import Broyden as Broyden
from jiio_jax.solvers.broyden import broyden as broyden
from jiio_jax.solvers.fixed_point_iteration import FixedPointIteration as FixedPointIteration
from jiio_jax.solvers.fixed_point_iteration import fixed_point_iteration as fixed_point_iteration

SOLVERS = (FixedPointIteration, Anderson, Broyden)
"""The solver configuration classes, for isinstance checks and parametrised tests."""
