"""jiio_jax: deep equilibrium models and joint inference + input optimization in JAX.

``jiio_jax.solvers``, ``jiio_jax.deq`` and ``jiio_jax.jacobian`` depend on JAX alone,
``jiio_jax.jiio`` (the augmented DEQ and its inner-loop baselines) on JAX and optax. The Flax
modules (``jiio_jax.models`` and the names re-exported from it) are imported lazily, on first
access, so importing the solvers never loads Flax.
"""

import importlib

from jiio_jax import deq as deq
from jiio_jax import jacobian as jacobian
from jiio_jax import jiio as jiio
from jiio_jax import solvers as solvers
from jiio_jax.deq import Implicit as Implicit
from jiio_jax.deq import Neumann as Neumann
from jiio_jax.deq import OneStep as OneStep
from jiio_jax.deq import Phantom as Phantom
from jiio_jax.deq import Unrolled as Unrolled
from jiio_jax.deq import fixed_point as fixed_point
from jiio_jax.jiio import JIIO as JIIO
from jiio_jax.jiio import Box as Box
from jiio_jax.jiio import Constant as Constant
from jiio_jax.jiio import JIIOSolution as JIIOSolution
from jiio_jax.jiio import L2Ball as L2Ball
from jiio_jax.jiio import LinfBall as LinfBall
from jiio_jax.jiio import Piecewise as Piecewise
from jiio_jax.jiio import Tolerance as Tolerance
from jiio_jax.jiio import Unconstrained as Unconstrained
from jiio_jax.solvers import Anderson as Anderson
from jiio_jax.solvers import Broyden as Broyden
from jiio_jax.solvers import FixedPointIteration as FixedPointIteration
from jiio_jax.solvers import Solution as Solution
from jiio_jax.solvers import Status as Status
from jiio_jax.solvers import anderson as anderson
from jiio_jax.solvers import broyden as broyden
from jiio_jax.solvers import fixed_point_iteration as fixed_point_iteration

__version__ = "0.1.0"

_LAZY_MODULES = ("models",)
_LAZY_MODEL_NAMES = (
    "MDEQClassifier",
    "MDEQGenerator",
    "MDEQMetaLearner",
    "MDEQConfig",
    "CellInput",
    "DEQInfo",
    "MetaInput",
)


def __getattr__(name):
    if name in _LAZY_MODULES:
        return importlib.import_module(f"jiio_jax.{name}")
    if name in _LAZY_MODEL_NAMES:
        return getattr(importlib.import_module("jiio_jax.models"), name)
    raise AttributeError(f"module 'jiio_jax' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY_MODULES) + list(_LAZY_MODEL_NAMES))
