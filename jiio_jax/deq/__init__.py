"""Deep equilibrium layer with implicit differentiation."""

from jiio_jax.deq._layer import fixed_point as fixed_point
from jiio_jax.deq.backward import Implicit as Implicit
from jiio_jax.deq.backward import Neumann as Neumann
from jiio_jax.deq.backward import OneStep as OneStep
from jiio_jax.deq.backward import Phantom as Phantom
from jiio_jax.deq.backward import Unrolled as Unrolled
