"""Test configuration: float64 numerics and 4 virtual CPU devices, set before JAX initialises.

Tests that need float32 behaviour pass dtypes explicitly.
"""

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_num_cpu_devices", 4)


@pytest.fixture(scope="module")
def fast_compile():
    """Skips most XLA optimisation passes while a module runs.

    Modules that compile many small programs (models, JIIO, benchmark smoke tests) spend about
    half their time in those passes; numerics are unchanged at the tolerances the tests use.
    Opt in with ``pytestmark = pytest.mark.usefixtures("fast_compile")``.
    """
    previous = jax.config.read("jax_disable_most_optimizations")
    jax.config.update("jax_disable_most_optimizations", True)
    yield
    jax.config.update("jax_disable_most_optimizations", previous)
