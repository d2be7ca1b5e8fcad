"""Test configuration: float64 numerics and 4 virtual CPU devices, set before JAX initialises.

Tests that need float32 behaviour pass dtypes explicitly.
"""

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)
