"""Package surface: public names, and the solver core importing without Flax."""

import subprocess
import sys

import jiio_jax


def test_solvers_import_without_flax():
    code = (
        "import sys, jiio_jax, jiio_jax.solvers, jiio_jax.deq, jiio_jax.jacobian, jiio_jax.jiio;"
        "assert 'flax' not in sys.modules, 'flax was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_public_names():
    for name in (
        "anderson",
        "broyden",
        "fixed_point_iteration",
        "Anderson",
        "Broyden",
        "FixedPointIteration",
        "Solution",
        "Status",
        "fixed_point",
        "Implicit",
        "Neumann",
        "OneStep",
        "Phantom",
        "Unrolled",
        "jacobian",
        "deq",
        "solvers",
        "jiio",
        "JIIO",
        "L2Ball",
        "LinfBall",
        "Box",
        "Piecewise",
    ):
        assert hasattr(jiio_jax, name), name


def test_lazy_model_exports():
    assert jiio_jax.models.MDEQClassifier is jiio_jax.MDEQClassifier
    assert "MDEQGenerator" in dir(jiio_jax)
