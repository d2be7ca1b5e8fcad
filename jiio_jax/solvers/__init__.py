"""Functional fixed-point solvers on pytrees: ``z* = fn(z*)`` for one problem (vmap for batches).

All solvers run in ``jax.lax.while_loop``, are jit/vmap-safe, never sync with the host, track
the best iterate, and report ``Status`` (converged / max_steps / nonfinite / diverged). The
configurations (``FixedPointIteration``, ``Anderson``, ``Broyden``) are hashable static pytrees,
so they can be passed to jitted functions as arguments; ``resolve`` builds one from a config
mapping. ``jiio_jax.solvers.core`` holds the driver and the ``Algorithm`` protocol for new
acceleration schemes.
"""

from jiio_jax.solvers import core as core
from jiio_jax.solvers.anderson import Anderson as Anderson
from jiio_jax.solvers.anderson import AndersonCore as AndersonCore
from jiio_jax.solvers.anderson import anderson as anderson
from jiio_jax.solvers.broyden import Broyden as Broyden
from jiio_jax.solvers.broyden import BroydenCore as BroydenCore
from jiio_jax.solvers.broyden import broyden as broyden
from jiio_jax.solvers.core import Algorithm as Algorithm
from jiio_jax.solvers.core import Solution as Solution
from jiio_jax.solvers.core import Status as Status
from jiio_jax.solvers.core import check_solver as check_solver
from jiio_jax.solvers.fixed_point_iteration import FixedPointCore as FixedPointCore
from jiio_jax.solvers.fixed_point_iteration import FixedPointIteration as FixedPointIteration
from jiio_jax.solvers.fixed_point_iteration import fixed_point_iteration as fixed_point_iteration
from jiio_jax.solvers.registry import REGISTRY as REGISTRY
from jiio_jax.solvers.registry import resolve as resolve

SOLVERS = (FixedPointIteration, Anderson, Broyden)
"""The solver configuration classes, for isinstance checks and parametrised tests."""
