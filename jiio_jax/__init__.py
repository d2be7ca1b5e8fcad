"""jiio_jax: deep equilibrium models and joint inference + input optimization in JAX."""

from jiio_jax import deq as deq
from jiio_jax import jacobian as jacobian
from jiio_jax import solvers as solvers
from jiio_jax.deq import Implicit as Implicit
from jiio_jax.deq import Neumann as Neumann
from jiio_jax.deq import OneStep as OneStep
from jiio_jax.deq import Phantom as Phantom
from jiio_jax.deq import Unrolled as Unrolled
from jiio_jax.deq import fixed_point as fixed_point
from jiio_jax.solvers import Anderson as Anderson
from jiio_jax.solvers import Broyden as Broyden
from jiio_jax.solvers import FixedPointIteration as FixedPointIteration
from jiio_jax.solvers import Solution as Solution
from jiio_jax.solvers import Status as Status
from jiio_jax.solvers import anderson as anderson
from jiio_jax.solvers import broyden as broyden
from jiio_jax.solvers import fixed_point_iteration as fixed_point_iteration

__version__ = "0.1.0"
