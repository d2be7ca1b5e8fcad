"""Deep equilibrium layer with implicit differentiation of every order."""

from jiio_jax.deq._layer import ON_FAILURE as ON_FAILURE
from jiio_jax.deq._layer import FixedPointError as FixedPointError
from jiio_jax.deq._layer import SolveInfo as SolveInfo
from jiio_jax.deq._layer import fixed_point as fixed_point
from jiio_jax.deq._layer import implicit_equilibrium as implicit_equilibrium
from jiio_jax.deq.backward import BACKWARD_MODES as BACKWARD_MODES
from jiio_jax.deq.backward import Implicit as Implicit
from jiio_jax.deq.backward import Neumann as Neumann
from jiio_jax.deq.backward import OneStep as OneStep
from jiio_jax.deq.backward import Phantom as Phantom
from jiio_jax.deq.backward import Unrolled as Unrolled
from jiio_jax.deq.backward import resolve_backward as resolve_backward
