"""The training tasks' failure policy (``config.model.on_failure`` / ``failure_ratio``, default
"nan" / a relative residual of 0.1) reaches their MDEQ models and JIIO; with "nan", a failed
adjoint solve makes the gradient NaN and the loop's non-finite check stops the run at that step
(not silently training on a wrong gradient), while the default budgets of every config train
without a false alarm."""

import pytest
from helpers import load_config

from jiio_jax.configs import common as cc
from jiio_jax.tasks import get_task
from jiio_jax.train import train_and_evaluate

TASKS = [
    ("digits_gen", lambda t: t.jiio),
    ("digits_meta", lambda t: t.jiio),
    ("digits_adv", lambda t: t.settings.jiio),
]
# Solver tolerance 1e-4 (generative, adversarial) and 1e-5 (meta): a solve fails when it has
# not reached a relative residual of 0.1.
DEFAULT_RATIOS = {"digits_gen": 1000.0, "digits_meta": 1e4, "digits_adv": 1000.0}


def test_the_default_policy_is_nan_and_reaches_models_and_jiio():
    assert cc.FAILURE_DEFAULTS["on_failure"] == "nan" and cc.FAILURE_RESIDUAL == 0.1
    for name, jiio_of in TASKS:
        config = load_config(name, "small")
        assert config.model.failure_ratio * config.model.forward.tol == pytest.approx(0.1)
        task = get_task(config.task)(config)
        for obj in (task.model, jiio_of(task)):
            assert (obj.on_failure, obj.failure_ratio) == ("nan", DEFAULT_RATIOS[name])


@pytest.mark.parametrize("policy", ["ignore", "raise"])
def test_config_fields_set_the_policy(policy):
    for name, jiio_of in TASKS:
        config = load_config(name, "small")
        config.model.on_failure = policy
        config.model.failure_ratio = 50.0
        task = get_task(config.task)(config)
        for obj in (task.model, jiio_of(task)):
            assert (obj.on_failure, obj.failure_ratio) == (policy, 50.0)


def test_bad_policy_fields_name_the_field():
    config = load_config("digits_gen", "small")
    config.model.on_failure = "warn"
    with pytest.raises(ValueError, match=r"config\.model\.on_failure='warn'"):
        get_task(config.task)(config)
    config = load_config("digits_gen", "small")
    config.model.failure_ratio = 0.5
    with pytest.raises(ValueError, match=r"config\.model\.failure_ratio"):
        get_task(config.task)(config)


def test_with_nan_a_failed_adjoint_stops_training_at_its_step(tmp_path):
    config = load_config("digits_gen", "small")
    # An adjoint solve that cannot reach its tolerance: 1 step, tol far below float32.
    config.model.backward = {
        "name": "implicit",
        "solver": {"name": "anderson", "max_steps": 1, "tol": 1e-12},
    }
    config.max_skipped_steps = 0  # stop at the first non-finite step (default: skip 3)
    with pytest.raises(FloatingPointError, match=r"train step 1\b"):
        train_and_evaluate(config, str(tmp_path))
