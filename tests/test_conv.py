"""The hand-written conv VJP equals JAX's, and is what the MDEQ layers use."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax.models.conv import conv2d


def _reference(x, w, stride):
    p = w.shape[0] // 2
    return jax.lax.conv_general_dilated(
        x, w, (stride, stride), ((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@pytest.mark.parametrize(
    "shape,k,stride",
    [((8, 8), 3, 1), ((8, 8), 3, 2), ((7, 9), 3, 2), ((8, 8), 1, 1), ((5, 6), 5, 2)],
)
def test_conv2d_value_and_vjp_match_lax(shape, k, stride):
    x = jax.random.normal(jax.random.key(0), (2, *shape, 3))
    w = jax.random.normal(jax.random.key(1), (k, k, 3, 4))
    y, vjp = jax.vjp(lambda x, w: conv2d(x, w, stride), x, w)
    y_ref, vjp_ref = jax.vjp(lambda x, w: _reference(x, w, stride), x, w)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12, atol=1e-12)
    g = jax.random.normal(jax.random.key(2), y.shape)
    for got, want in zip(vjp(g), vjp_ref(g), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv2d_unbatched_and_second_order():
    x = jax.random.normal(jax.random.key(0), (6, 6, 2))
    w = jax.random.normal(jax.random.key(1), (3, 3, 2, 2))
    np.testing.assert_allclose(conv2d(x, w), _reference(x[None], w, 1)[0], rtol=1e-12)
    # grad of a grad: the bwd rule is itself differentiable (reverse over reverse).
    loss = lambda w: jnp.sum(jax.grad(lambda x: jnp.sum(conv2d(x, w) ** 2))(x) ** 2)
    loss_ref = lambda w: jnp.sum(
        jax.grad(lambda x: jnp.sum(_reference(x[None], w, 1) ** 2))(x) ** 2
    )
    np.testing.assert_allclose(jax.grad(loss)(w), jax.grad(loss_ref)(w), rtol=1e-10)


def test_conv2d_rejects_bad_kernel():
    with pytest.raises(ValueError, match="kernel"):
        conv2d(jnp.zeros((4, 4, 2)), jnp.zeros((2, 2, 2, 2)))
