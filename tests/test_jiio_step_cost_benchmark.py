"""Smoke test of the JIIO step-cost benchmark at tiny sizes (the real run is in experiments/)."""

import importlib.util
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("fast_compile")

BENCH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "benchmarks"
)


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("sklearn")
    sys.path.insert(0, BENCH)
    spec = importlib.util.spec_from_file_location(
        "jiio_step_cost", os.path.join(BENCH, "jiio_step_cost.py")
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)
        sys.path.remove(BENCH)


def test_bare_loop_is_the_plain_augmented_arithmetic(bench):
    """The bare program does f + one VJP per step: after one step from z = 0, x = 0, mu = 0
    its state is (f(0, 0), -0.01 grad_x C(0, 0), grad_z C(0, 0))."""
    key = jax.random.key(0)
    w = 0.3 * jax.random.normal(key, (5, 5))
    layer = lambda z, x, p, y: jnp.tanh(p @ z + x.sum())  # noqa: E731
    cost = lambda z, x, p, y: jnp.sum((z - y) ** 2) + jnp.sum(x**2 - x)  # noqa: E731
    y = jnp.arange(5.0)
    z, x, mu = bench.bare_loop(layer, cost, jnp.zeros(5), jnp.zeros(2), 1)(w, y)
    np.testing.assert_allclose(z, layer(jnp.zeros(5), jnp.zeros(2), w, y))
    np.testing.assert_allclose(x, 0.01 * jnp.ones(2), rtol=1e-6)
    np.testing.assert_allclose(mu, -2 * y, rtol=1e-6)


@pytest.mark.slow
def test_quick_run_writes_table(bench, tmp_path):
    results = bench.main(["--quick", "--out", str(tmp_path)])
    text = (tmp_path / "jiio_step_cost_table.md").read_text()
    assert "## Step cost" in text and "--quick" in text
    for model in ("dense", "mdeq"):
        ms = results[model]["ms_per_step"]
        assert set(ms) == {"bare", "jiio_none", "jiio_m2"}
        assert all(np.isfinite(v) and v > 0 for v in ms.values())


@pytest.mark.slow
def test_workdir_adds_the_trained_runs_problem(bench, tmp_path):
    """``--workdir``: a trained generative run's inner problem gets its own rows; a run of
    another task is refused with a message naming the flag."""
    import helpers

    from jiio_jax.train import train_and_evaluate

    config = helpers.load_config("digits_gen", "small")
    config.update(num_train_steps=1)
    config.model.jac_weight = 0.0
    workdir = str(tmp_path / "run")
    train_and_evaluate(config, workdir)

    results = bench.main(["--quick", "--workdir", workdir, "--out", str(tmp_path)])
    trained = results["trained"]
    assert trained["workdir"] == workdir and trained["batch"] == 2 and trained["steps"] == 3
    assert set(trained["ms_per_step"]) == {"bare", "jiio_none", "jiio_m2"}
    assert all(np.isfinite(v) and v > 0 for v in trained["ms_per_step"].values())
    text = (tmp_path / "jiio_step_cost_table.md").read_text()
    assert f"trained run `{workdir}` (batch 2, T=3)" in text

    meta = helpers.load_config("digits_meta", "small")
    meta.update(num_train_steps=1)
    meta_dir = str(tmp_path / "meta")
    train_and_evaluate(meta, meta_dir)
    with pytest.raises(SystemExit, match="--workdir: .* is a 'meta' run"):
        bench.trained_problem(meta_dir, 2)
