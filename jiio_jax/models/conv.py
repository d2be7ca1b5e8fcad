"""2-D convolution with a hand-written input VJP that stays fast inside solver loops.

Why: on XLA:CPU the transposed convolution JAX derives for ``d conv / d x`` keeps the kernel in
an ``01oi`` layout. Inside a ``while_loop`` (a DEQ's implicit backward, every JIIO step) XLA
cannot hoist the relayout and the VJP runs ~10x slower than a forward conv of the same size.
Writing the input cotangent as an ordinary ``HWIO`` convolution with the spatially flipped,
in/out-swapped kernel gives the same numbers at forward-conv speed. The kernel cotangent is
JAX's own (it is only needed once per backward pass, outside the loops).
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


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv4(x4: jax.Array, kernel: jax.Array, stride: int, pad: int) -> jax.Array:
    return _forward(x4, kernel, stride, pad)


def _conv4_fwd(x4, kernel, stride, pad):
    return _forward(x4, kernel, stride, pad), (x4, kernel)


def _conv4_bwd(stride, pad, residuals, g):
    x4, kernel = residuals
    k = kernel.shape[0]
    # d/dx of a strided cross-correlation: dilate g by the stride, pad by k - 1 - pad (plus the
    # rows the forward stride dropped), and correlate with the flipped, in/out-swapped kernel.
    flipped = jnp.transpose(kernel[::-1, ::-1], (0, 1, 3, 2))
    pads = []
    for axis in (1, 2):
        dropped = (x4.shape[axis] + 2 * pad - k) % stride
        pads.append((k - 1 - pad, k - 1 - pad + dropped))
    dx = jax.lax.conv_general_dilated(
        g,
        flipped,
        window_strides=(1, 1),
        padding=tuple(pads),
        lhs_dilation=(stride, stride),
        dimension_numbers=_DIMS,
    )
    _, kernel_vjp = jax.vjp(lambda w: _forward(x4, w, stride, pad), kernel)
    (dkernel,) = kernel_vjp(g)
    return dx, dkernel


_conv4.defvjp(_conv4_fwd, _conv4_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """2-D cross-correlation with PyTorch padding ``k // 2`` (NHWC input, HWIO kernel).

    Args:
      x: input, any leading batch axes, NHWC.
      kernel: ``[k, k, C_in, C_out]`` (HWIO), ``k`` odd.
      stride: spatial stride; ``H' = (H + 2 (k // 2) - k) // stride + 1``.

    Returns:
      ``y[h, w, o] = sum_{i, j, c} x[s h + i - k//2, s w + j - k//2, c] kernel[i, j, c, o]``.
      Reverse-mode derivatives w.r.t. both arguments equal ``jax.lax.conv_general_dilated``'s;
      forward mode is not defined (``jax.custom_vjp``).
    """
    k = kernel.shape[0]
    if kernel.ndim != 4 or kernel.shape[1] != k or k % 2 != 1:
        raise ValueError(f"`kernel` must be [k, k, C_in, C_out] with odd k, got {kernel.shape}.")
    batch_shape = x.shape[:-3]
    x4 = x.reshape(-1, *x.shape[-3:])
    y = _conv4(x4, kernel.astype(x.dtype), stride, k // 2)
    return y.reshape(*batch_shape, *y.shape[-3:])
