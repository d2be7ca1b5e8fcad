"""2-D convolution with hand-written VJPs that stay fast inside solver loops and batch anywhere.

Why: on XLA:CPU the transposed convolution JAX derives for ``d conv / d x`` keeps the kernel in
an ``01oi`` layout. Inside a ``while_loop`` (a DEQ's implicit backward, every JIIO step) XLA
cannot hoist the relayout and the VJP runs ~10x slower than a forward conv of the same size.
Writing the input cotangent as an ordinary ``HWIO`` convolution with the spatially flipped,
in/out-swapped kernel gives the same numbers at forward-conv speed.

The kernel cotangent has the same problem, worse (JAX's own is 50-100x slower inside a loop),
and a second one: under ``jax.vmap`` JAX computes it as a convolution of the input with the
output cotangent, which becomes a grouped convolution once both are batched (e.g. rows of a
row-vmapped map), and JAX 0.10 has no batching rule for a grouped convolution whose cotangent
alone is batched by an outer vmap (Hutchinson probes, a solver's vmapped VJP) when an output
sharding is set, i.e. under the training loop's mesh (``NotImplementedError``). Here:

* unbatched, it is one canonical ``NHWC x HWIO`` convolution of the transposed input
  ``[C_in, H, W, N]`` with the transposed cotangent ``[H', W', N, C_out]`` (fast in and out of
  loops, bit-identical to JAX's);
* under ``vmap`` (any of input / cotangent batched, at any nesting depth) a custom batching
  rule computes it from ``k * k`` strided slices of the padded input and one ``dot_general``,
  whose batching rules have no such gaps.

The three maps -- forward conv, input cotangent, kernel cotangent -- are bilinear and each one's
VJP is made of the other two, so derivatives of any order stay within them (and keep both
properties); forward mode is not defined (``jax.custom_vjp``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_DIMS = ("NHWC", "HWIO", "NHWC")


def _forward(x4: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x4,
        kernel,
        window_strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        dimension_numbers=_DIMS,
    )


def _input_cotangent(
    g: jax.Array, kernel: jax.Array, stride: int, pad: int, in_hw: tuple[int, int]
) -> jax.Array:
    """``d <g, conv(x, kernel)> / dx`` for an ``x`` of spatial size ``in_hw``."""
    k = kernel.shape[0]
    # d/dx of a strided cross-correlation: dilate g by the stride, pad by k - 1 - pad (plus the
    # rows the forward stride dropped), and correlate with the flipped, in/out-swapped kernel.
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    pads = []
    for size in in_hw:
        dropped = (size + 2 * pad - k) % stride
        pads.append((k - 1 - pad, k - 1 - pad + dropped))
    return jax.lax.conv_general_dilated(
        g,
        flipped,
        window_strides=(1, 1),
        padding=tuple(pads),
        lhs_dilation=(stride, stride),
        dimension_numbers=_DIMS,
    )


def _kernel_cotangent_conv(x4: jax.Array, g: jax.Array, stride: int, pad: int, k: int):
    """``d <g, conv(x4, w)> / dw`` as one canonical convolution (unbatched use only).

    ``dw[i, j, c, o] = sum_{n, h, w} xpad[n, s h + i, s w + j, c] g[n, h, w, o]``: a
    correlation of ``x4^T`` (batch ``c``, feature ``n``) with the stride-dilated ``g^T``
    (input feature ``n``, output feature ``o``).
    """
    lhs = jnp.transpose(x4, (3, 1, 2, 0))  # [C, H, W, N]
    rhs = jnp.transpose(g, (1, 2, 0, 3))  # [H', W', N, O]
    pads = tuple(
        (pad, k - 1 + stride * (size_out - 1) + 1 - size - pad)
        for size, size_out in zip(x4.shape[1:3], g.shape[1:3], strict=True)
    )
    out = jax.lax.conv_general_dilated(
        lhs,
        rhs,
        window_strides=(1, 1),
        padding=pads,
        rhs_dilation=(stride, stride),
        dimension_numbers=_DIMS,
    )  # [C, k, k, O]
    return jnp.transpose(out, (1, 2, 0, 3))


def _kernel_cotangent_dot(x4: jax.Array, g: jax.Array, stride: int, pad: int, k: int):
    """The same as ``_kernel_cotangent_conv`` from ``k * k`` strided slices and one dot."""
    xp = jnp.pad(x4, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    span_h = stride * (g.shape[1] - 1) + 1
    span_w = stride * (g.shape[2] - 1) + 1
    patches = jnp.stack(
        [
            xp[:, i : i + span_h : stride, j : j + span_w : stride]
            for i in range(k)
            for j in range(k)
        ]
    )  # [k k, N, H', W', C]
    dw = jnp.einsum("pnhwc,nhwo->pco", patches, g)
    return dw.reshape(k, k, *dw.shape[1:])


@functools.cache
def _kernel_cotangent_batchable(stride: int, pad: int, k: int):
    """``_kernel_cotangent_conv``, with ``_kernel_cotangent_dot`` as its batching rule."""

    @jax.custom_batching.custom_vmap
    def kernel_cotangent(x4, g):
        return _kernel_cotangent_conv(x4, g, stride, pad, k)

    @kernel_cotangent.def_vmap
    def _rule(axis_size, in_batched, x4, g):
        del axis_size
        in_axes = tuple(0 if batched else None for batched in in_batched)
        one = functools.partial(_kernel_cotangent_dot, stride=stride, pad=pad, k=k)
        return jax.vmap(one, in_axes=in_axes)(x4, g), True

    return kernel_cotangent


# The three bilinear maps, each with a VJP made of the other two (so that reverse mode of any
# order goes through them; custom_vmap alone is not reverse-differentiable).


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv4(x4: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    return _forward(x4, kernel, stride, pad)


def _conv4_fwd(x4, kernel, stride, pad):
    return _forward(x4, kernel, stride, pad), (x4, kernel)


def _conv4_bwd(stride, pad, residuals, g):
    x4, kernel = residuals
    dx = _dinput(g, kernel, stride, pad, x4.shape[1:3])
    dkernel = _dkernel(x4, g, stride, pad, kernel.shape[0])
    return dx, dkernel


_conv4.defvjp(_conv4_fwd, _conv4_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dinput(g, kernel, stride, pad, in_hw):
    return _input_cotangent(g, kernel, stride, pad, in_hw)


def _dinput_fwd(g, kernel, stride, pad, in_hw):
    return _input_cotangent(g, kernel, stride, pad, in_hw), (g, kernel)


def _dinput_bwd(stride, pad, in_hw, residuals, ct):
    # <ct, dinput(g, w)> = <conv(ct, w), g> = <w, dkernel(ct, g)>.
    g, kernel = residuals
    return _conv4(ct, kernel, stride, pad), _dkernel(ct, g, stride, pad, kernel.shape[0])


_dinput.defvjp(_dinput_fwd, _dinput_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _dkernel(x4, g, stride, pad, k):
    return _kernel_cotangent_batchable(stride, pad, k)(x4, g)


def _dkernel_fwd(x4, g, stride, pad, k):
    return _dkernel(x4, g, stride, pad, k), (x4, g)


def _dkernel_bwd(stride, pad, k, residuals, ct):
    # <ct, dkernel(x, g)> = <conv(x, ct), g> = <x, dinput(g, ct)>.
    del k
    x4, g = residuals
    return _dinput(g, ct, stride, pad, x4.shape[1:3]), _conv4(x4, ct, stride, pad)


_dkernel.defvjp(_dkernel_fwd, _dkernel_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """2-D cross-correlation with PyTorch padding ``k // 2`` (NHWC input, HWIO kernel).

    Args:
      x: input, any leading batch axes, NHWC.
      kernel: ``[k, k, C_in, C_out]`` (HWIO), ``k`` odd.
      stride: spatial stride; ``H' = (H + 2 (k // 2) - k) // stride + 1``.

    Returns:
      ``y[h, w, o] = sum_{i, j, c} x[s h + i - k//2, s w + j - k//2, c] kernel[i, j, c, o]``.
      Reverse-mode derivatives (any order) w.r.t. both arguments equal
      ``jax.lax.conv_general_dilated``'s; forward mode is not defined (``jax.custom_vjp``).
    """
    k = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != k or k % 2 != 1:
        raise ValueError(f"`kernel` must be [k, k, C_in, C_out] with odd k, got {kernel.shape}.")
    batch_shape = x.shape[:-3]
    x4 = x.reshape(-1, *x.shape[-3:])
    y = _conv4(x4, kernel.astype(x.dtype), stride, k // 2)
    return y.reshape(*batch_shape, *y.shape[-3:])
