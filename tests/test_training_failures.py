"""The training tasks run their equilibria with on_failure="nan": a failed adjoint solve makes
the gradient NaN, and the loop's non-finite check stops the run at that step (not silently
training on a wrong gradient)."""

import pytest
from helpers import load_config

from jiio_jax.configs import common as cc
from jiio_jax.train import train_and_evaluate


def test_the_training_tasks_use_nan():
    from jiio_jax.tasks import get_task

    for name, jiio_of in [
        ("digits_gen", lambda t: t.jiio),
        ("digits_meta", lambda t: t.jiio),
        ("digits_adv", lambda t: t.settings.jiio),
    ]:
        config = load_config(name, "small")
        task = get_task(config.task)(config)
        assert cc.ON_FAILURE == "nan"
        assert task.model.on_failure == "nan" and jiio_of(task).on_failure == "nan"


def test_a_failed_adjoint_stops_training_at_its_step(tmp_path):
    config = load_config("digits_gen", "small")
    # An adjoint solve that cannot reach its tolerance: 1 step, tol far below float32.
    config.model.backward = {
        "name": "implicit",
        "solver": {"name": "anderson", "max_steps": 1, "tol": 1e-12},
    }
    with pytest.raises(FloatingPointError, match=r"train step 1\b"):
        train_and_evaluate(config, str(tmp_path))
