"""Deprecated alias of ``jiio_jax.solvers.core`` (kept so existing imports keep working).

New code imports the public names from ``jiio_jax.solvers.core``.
"""

from jiio_jax.solvers.core import *  # noqa: F403
from jiio_jax.solvers.core import (  # noqa: F401  (names without a public export)
    STOP_MODES,
    PyTree,
    _Algorithm,
    _LoopState,
    _Options,
    _residuals,
    _status,
)
