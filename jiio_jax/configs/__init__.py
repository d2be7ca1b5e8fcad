"""Experiment-config builders (``ml_collections``), one module per task family.

``configs/*.py`` at the repository root are plain ``get_config()`` files built from these:
``common`` (the loop's fields, ``config.data``, the reference optimiser, the ``:small`` loop and
the readers of the shared model sections), ``generative``, ``adversarial`` and ``meta`` (each
task's ``config.model`` schema with its defaults and its ``:small`` variant).
"""

from jiio_jax.configs.common import data_config as data_config
from jiio_jax.configs.common import get_base_config as get_base_config
