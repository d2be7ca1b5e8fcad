"""Test configuration: float64 numerics and 4 virtual CPU devices, set before JAX initialises."""

import os

# Deterministic, single-threaded-per-op XLA on the 2-core CI box keeps timings and results stable.
os.environ.setdefault("XLA_FLAGS", "")

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)
