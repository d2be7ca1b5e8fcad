"""The training tasks' failure policy (``configs.common.ON_FAILURE``) reaches their MDEQ models
and JIIO; with "nan", a failed adjoint solve makes the gradient NaN and the loop's non-finite
check stops the run at that step (not silently training on a wrong gradient)."""

import pytest
from helpers import load_config

from jiio_jax.configs import common as cc
from jiio_jax.tasks import get_task
from jiio_jax.train import train_and_evaluate


@pytest.mark.parametrize("policy", ["ignore", "nan"])
def test_the_policy_reaches_models_and_jiio(monkeypatch, policy):
    monkeypatch.setattr(cc, "ON_FAILURE", policy)
    for name, jiio_of in [
        ("digits_gen", lambda t: t.jiio),
        ("digits_meta", lambda t: t.jiio),
        ("digits_adv", lambda t: t.settings.jiio),
    ]:
        config = load_config(name, "small")
        task = get_task(config.task)(config)
        assert task.model.on_failure == policy and jiio_of(task).on_failure == policy


def test_with_nan_a_failed_adjoint_stops_training_at_its_step(monkeypatch, tmp_path):
    monkeypatch.setattr(cc, "ON_FAILURE", "nan")
    config = load_config("digits_gen", "small")
    # An adjoint solve that cannot reach its tolerance: 1 step, tol far below float32.
    config.model.backward = {
        "name": "implicit",
        "solver": {"name": "anderson", "max_steps": 1, "tol": 1e-12},
    }
    with pytest.raises(FloatingPointError, match=r"train step 1\b"):
        train_and_evaluate(config, str(tmp_path))
