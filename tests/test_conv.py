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


# -- vmap and mesh ----------------------------------------------------------------------------


def _vjp(conv, x, w, g, stride):
    return jax.vjp(lambda x, w: conv(x, w, stride), x, w)[1](g)


@pytest.mark.parametrize(
    "in_axes",
    [(None, None, 0), (None, 0, None), (None, 0, 0), (0, None, 0), (0, 0, None), (0, 0, 0)],
    ids=["cotangent", "kernel", "kernel+cotangent", "input+cotangent", "input+kernel", "all"],
)
def test_conv2d_vjp_under_vmap_matches_lax(in_axes):
    """VJPs vmapped over any combination of input / kernel / cotangent (e.g. over probes)."""
    stride = 2  # with a dropped row and column (7 x 9 input)
    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    g = jax.random.normal(jax.random.key(2), _reference(x, w, stride).shape)
    args = [
        a if ax is None else jnp.stack([a, -0.5 * a + 1.0, a**2])
        for a, ax in zip((x, w, g), in_axes, strict=True)
    ]
    got = jax.jit(jax.vmap(lambda x, w, g: _vjp(conv2d, x, w, g, stride), in_axes))(*args)
    want = jax.vmap(lambda x, w, g: _vjp(_reference, x, w, g, stride), in_axes)(*args)
    for a, b in zip(got, want, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_conv2d_vmapped_grad_over_kernels_matches_lax():
    """A loss gradient vmapped over kernels only (input shared, cotangent batched)."""
    x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
    ws = jax.random.normal(jax.random.key(1), (4, 3, 3, 3, 2))

    def grads(conv):
        loss = lambda x, w: jnp.sum(jnp.sin(conv(x, w, 1)))
        return jax.vmap(jax.grad(loss, (0, 1)), (None, 0))(x, ws)

    for a, b in zip(jax.jit(lambda: grads(conv2d))(), grads(_reference), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_higher_order_matches_lax(stride):
    """Second and third reverse-mode derivatives w.r.t. input, kernel and cotangent."""
    x = jax.random.normal(jax.random.key(0), (2, 7, 9, 3))
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    g = jax.random.normal(jax.random.key(2), _reference(x, w, stride).shape)

    def second(conv):
        def scalar(x, w, g):
            dx, dw = _vjp(conv, x, w, g, stride)
            return jnp.sum(jnp.sin(dx)) + jnp.sum(dw**3)

        return jax.grad(scalar, (0, 1, 2))

    def third(conv):
        return jax.grad(lambda *a: sum(jnp.sum(jnp.cos(t)) for t in second(conv)(*a)), (0, 1, 2))

    for order in (second, third):
        for a, b in zip(order(conv2d)(x, w, g), order(_reference)(x, w, g), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-9)


def _rows_then_probes(conv, z, w, probes):
    """VJP of a row-vmapped conv (kernel shared by the rows) vmapped over probe cotangents."""
    f = lambda z, w: jax.vmap(lambda zi: conv(zi, w))(z)
    return jax.vmap(jax.vjp(f, z, w)[1])(probes)


def _kernels_then_rows(conv, z, ws, gs):
    """VJP of a row-vmapped conv, vmapped over kernels (with their cotangents)."""
    f = lambda z, w: jax.vmap(lambda zi: conv(zi, w))(z)
    return jax.vmap(lambda w, g: jax.vjp(f, z, w)[1](g))(ws, gs)


def _hutchinson_grad(conv, z, w, probes):
    """Kernel gradient of a vmapped-probe Hutchinson estimate of ``||J_z||_F^2`` (2nd order)."""
    f = lambda z, w: jax.vmap(lambda zi: conv(zi, w))(z)

    def estimate(w):
        vjp = jax.vjp(lambda z: f(z, w), z)[1]
        return jnp.mean(jax.vmap(lambda p: jnp.sum(vjp(p)[0] ** 2))(probes))

    return jax.grad(estimate)(w)


@pytest.mark.parametrize(
    "pattern,rows_sharding",
    [
        (_rows_then_probes, "replicated"),
        (_rows_then_probes, "data_sharded"),
        (_kernels_then_rows, "replicated"),
        (_hutchinson_grad, "data_sharded"),
    ],
)
def test_conv2d_nested_vmap_under_data_mesh(pattern, rows_sharding):
    """Nested vmaps inside jit under the training loop's ``('data',)`` mesh.

    An inner vmap with input and cotangent both batched makes JAX's kernel cotangent a grouped
    convolution; an outer vmap over the cotangent alone then raised NotImplementedError in JAX
    0.10's conv batching rule once an output sharding was set (state placed on the mesh).
    """
    from jiio_jax.train import mesh as mesh_lib

    z = jax.random.normal(jax.random.key(0), (4, 6, 6, 3))  # rows of unbatched [H, W, C] inputs
    w = jax.random.normal(jax.random.key(1), (3, 3, 3, 3))
    if pattern is _kernels_then_rows:
        w = jnp.stack([w, 2.0 * w - 1.0])
    # probes, or one cotangent per kernel
    extra = jax.random.normal(jax.random.key(2), (w.shape[0] if w.ndim == 5 else 3, *z.shape))
    want = pattern(lambda zi, w: _reference(zi[None], w, 1)[0], z, w, extra)  # no mesh

    mesh = mesh_lib.make_data_mesh()
    row_sharding = getattr(mesh_lib, rows_sharding)(mesh)
    z, (w, extra) = (
        jax.device_put(z, row_sharding),
        jax.device_put((w, extra), mesh_lib.replicated(mesh)),
    )
    with jax.set_mesh(mesh):
        got = jax.jit(lambda z, w, e: pattern(conv2d, z, w, e))(z, w, extra)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
