"""Packaging for jiio_jax: deep equilibrium models and joint inference + input optimization."""

import pathlib

from setuptools import find_packages, setup

_HERE = pathlib.Path(__file__).parent
# Peers benchmarked side by side (jaxopt, optimistix), and plotting.
_BENCH = ["jaxopt>=0.8.5", "optimistix>=0.1.0", "matplotlib>=3.8"]

setup(
    name="jiio_jax",
    version="0.1.0",
    description=(
        "Deep equilibrium models and joint inference + input optimization (JIIO) in JAX: "
        "functional fixed-point solvers, implicit differentiation, multiscale DEQs."
    ),
    long_description=(_HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["jiio_jax", "jiio_jax.*"]),
    install_requires=[
        "jax>=0.10.2",
        "jaxlib>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "ml-collections>=1.1.0",
        "orbax-checkpoint>=0.12.0",
        "numpy>=1.26",
        "scikit-learn>=1.3",
        "grain>=0.2.18",
        "pillow>=10",
        "tensorboardX>=2.6",
        "matplotlib>=3.8",
    ],
    extras_require={
        # GPU wheels; pick the one matching the machine's CUDA driver.
        "cuda12": ["jax[cuda12]>=0.10.2"],
        "cuda13": ["jax[cuda13]>=0.10.2"],
        # The benchmark smoke tests run the peers too, so the test extra includes them;
        # nbclient, nbformat and ipykernel execute the quickstart notebook (a slow test).
        "test": _BENCH
        + [
            "pytest>=8",
            "pytest-xdist>=3",
            "ruff>=0.17",
            "nbclient>=0.10",
            "nbformat>=5.10",
            "ipykernel>=6.29",
        ],
        "bench": _BENCH,
    },
    classifiers=[
        "Programming Language :: Python :: 3",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.12",
        "Intended Audience :: Science/Research",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
