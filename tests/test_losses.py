"""``jiio_jax.losses``: one meaning per name, per example, against closed forms."""

import jax.numpy as jnp
import numpy as np
import optax

from jiio_jax import losses
from jiio_jax.tasks import meta


def _logits_labels(shape=(3, 5, 7), seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=shape).astype(np.float32) * 3
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    return logits, labels


def test_cross_entropy_is_per_example_log_sum_exp_minus_label_logit():
    logits, labels = _logits_labels()
    got = np.asarray(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels)))
    x = logits.astype(np.float64)
    lse = np.log(np.sum(np.exp(x - x.max(-1, keepdims=True)), -1)) + x.max(-1)
    expected = lse - np.take_along_axis(x, labels[..., None], -1)[..., 0]
    assert got.shape == labels.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    # One implementation: the meta task's is this one, optax's formula bit for bit.
    assert meta.cross_entropy is losses.cross_entropy
    optax_ce = optax.softmax_cross_entropy_with_integer_labels(jnp.asarray(logits), labels)
    np.testing.assert_array_equal(got, np.asarray(optax_ce))


def test_accuracy_is_per_example():
    logits = jnp.asarray([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    labels = jnp.asarray([1, 2, 2])
    got = np.asarray(losses.accuracy(logits, labels))
    np.testing.assert_array_equal(got, [1.0, 0.0, 1.0])
    assert got.dtype == np.float32
    batched = losses.accuracy(jnp.stack([logits, logits]), jnp.stack([labels, labels]))
    assert batched.shape == (2, 3)


def test_accuracy_of_non_finite_logits_is_nan_not_a_guess():
    # A failed solve's NaN logits: argmax would return class 0 and count a correct guess.
    logits = jnp.asarray([[jnp.nan, 0.0, 0.0], [0.0, jnp.inf, 0.0], [1.0, 0.0, 0.0]])
    got = np.asarray(losses.accuracy(logits, jnp.asarray([0, 1, 0])))
    assert np.isnan(got[0]) and np.isnan(got[1]) and got[2] == 1.0
    assert got.dtype == np.float32


def test_psnr_on_the_unit_scale_with_a_floor():
    target = jnp.zeros((2, 4, 4, 1))
    pred = target.at[0].set(0.2)  # [-1, 1] scale: an error of 0.1 on [0, 1], 20 dB
    got = np.asarray(losses.psnr(pred, target))
    np.testing.assert_allclose(got, [20.0, 100.0], rtol=1e-5)
