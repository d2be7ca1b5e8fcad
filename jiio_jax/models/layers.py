"""Building blocks of the MDEQ models: weight-normed conv, per-sample GroupNorm, resampling.

All layers act on **one sample** in NHWC layout without a batch axis (``[H, W, C]``); ``jax.vmap``
adds the batch. (``GroupNorm`` and the resampling functions also accept leading batch axes.)

Initialisers follow PyTorch where the reference relies on PyTorch's defaults, so parameter
statistics at init match the reference models:

- ``torch_kernel_init``: PyTorch's default conv/linear weight init, kaiming-uniform with
  ``a = sqrt(5)``, i.e. ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
- ``torch_bias_init(fan_in)``: PyTorch's default bias init, ``U(+-1/sqrt(fan_in))``.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jiio_jax.models.configs import MDEQConfig
from jiio_jax.models.conv import conv2d

Dtype = Any
Initializer = Any

torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
"""PyTorch's default weight init (kaiming-uniform, a=sqrt(5)): ``U(+-1/sqrt(fan_in))``."""


def torch_bias_init(fan_in: int) -> Initializer:
    """PyTorch's default bias init for a layer with ``fan_in`` inputs: ``U(+-1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def normal_init(std: float) -> Initializer:
    """``N(0, std**2)``; ``std = 0`` gives zeros."""
    if std == 0:
        return nn.initializers.zeros
    return nn.initializers.normal(stddev=std)


class ArchModule(nn.Module):
    """Base of the MDEQ modules built from an architecture config (cell, injections, heads).

    Attributes:
      config: the architecture, a ``jiio_jax.models.MDEQConfig``.
      param_dtype: parameter dtype.
    """

    config: MDEQConfig
    param_dtype: Dtype = jnp.float32


class GroupNorm(nn.Module):
    """GroupNorm over the last three axes ``[H, W, C]`` of each sample (PyTorch semantics).

    Statistics are computed per sample and per group of ``C / num_groups`` channels over
    ``H, W`` and the group's channels, with the biased variance and ``epsilon`` inside the
    square root, as ``torch.nn.GroupNorm``. Leading axes (a batch) are never reduced over, so
    samples never couple.

    Attributes:
      num_groups: number of channel groups; must divide ``C``.
      affine: learn a per-channel scale (init ``scale_init``) and shift (init ``bias_init``).
      epsilon: added to the variance.
      scale_init: initial value of the scale (PyTorch: 1).
      bias_init: initial value of the shift (PyTorch: 0).
      param_dtype: dtype of the scale and shift.
    """

    num_groups: int
    affine: bool = True
    epsilon: float = 1e-5
    scale_init: float = 1.0
    bias_init: float = 0.0
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Normalises ``x`` of shape ``[..., H, W, C]``; returns the same shape."""
        if x.ndim < 3:
            raise ValueError(f"GroupNorm expects [..., H, W, C], got shape {x.shape}.")
        c = x.shape[-1]
        if c % self.num_groups:
            raise ValueError(
                f"GroupNorm `num_groups`={self.num_groups} must divide the {c} channels of its "
                f"input (shape {x.shape}); change the config's group count."
            )
        g = self.num_groups
        xg = x.reshape(*x.shape[:-1], g, c // g)
        axes = (-4, -3, -1)
        mean = jnp.mean(xg, axis=axes, keepdims=True)
        var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
        y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
        if self.affine:
            scale_init = nn.initializers.constant(self.scale_init)
            bias_init = nn.initializers.constant(self.bias_init)
            scale = self.param("scale", scale_init, (c,), self.param_dtype)
            bias = self.param("bias", bias_init, (c,), self.param_dtype)
            y = y * scale.astype(y.dtype) + bias.astype(y.dtype)
        return y


class WeightNormConv(nn.Module):
    """Bias-free 2-D conv with weight normalisation ``W = g * v / ||v||`` per output channel.

    The norm is over ``(kh, kw, C_in)`` of each output channel (PyTorch ``weight_norm`` with
    ``dim=0``). ``v`` is drawn from ``kernel_init`` and ``g`` is initialised to ``||v||``, so the
    effective kernel at init **is** the sample from ``kernel_init`` (the reference instead
    overwrites the derived weight with N(0, 0.01), which its next re-normalisation discards).

    Attributes:
      features: output channels.
      kernel_size: spatial kernel size (square).
      kernel_init: initialiser of ``v`` (shape ``[k, k, C_in, C_out]``).
      param_dtype: dtype of ``v`` and ``g``.
    """

    features: int
    kernel_size: int = 3
    kernel_init: Initializer = torch_kernel_init
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """Applies the conv (padding k // 2, stride 1): ``[H, W, C_in]`` -> ``[H, W, C_out]``."""
        k = self.kernel_size
        v = self.param("v", self.kernel_init, (k, k, x.shape[-1], self.features), self.param_dtype)
        g = self.param("g", lambda _key: _out_channel_norm(v))
        kernel = v * (g / _out_channel_norm(v))
        return _conv(x, kernel.astype(x.dtype), stride=1)


def _out_channel_norm(kernel: jax.Array) -> jax.Array:
    """``||kernel[..., o]||`` for each output channel ``o`` of a ``[k, k, C_in, C_out]`` kernel."""
    return jnp.sqrt(jnp.sum(jnp.square(kernel), axis=(0, 1, 2)))


def _conv(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """Cross-correlation of ``[..., H, W, C_in]`` with ``[k, k, C_in, C_out]``, padding k//2."""
    return conv2d(x, kernel, stride)


class Conv(nn.Module):
    """``nn.Conv`` with PyTorch padding ``k // 2`` on ``conv2d`` (fast input VJP in loops).

    Parameters ``kernel`` ``[k, k, C_in, C_out]`` and ``bias`` ``[C_out]``, named as in
    ``nn.Conv`` so parameter trees are unchanged.
    """

    features: int
    kernel_size: int
    stride: int = 1
    use_bias: bool = True
    kernel_init: Initializer = torch_kernel_init
    bias_init: Initializer = nn.initializers.zeros
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[..., H, W, C_in]`` -> ``[..., H', W', features]``."""
        k = self.kernel_size
        shape = (k, k, x.shape[-1], self.features)
        kernel = self.param("kernel", self.kernel_init, shape, self.param_dtype)
        y = conv2d(x, kernel.astype(x.dtype), self.stride)
        if self.use_bias:
            bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            y = y + bias.astype(y.dtype)
        return y


def conv(
    features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    use_bias: bool,
    std: float,
    param_dtype: Dtype,
    name: str | None = None,
) -> Conv:
    """A plain conv with PyTorch padding ``k // 2`` and ``N(0, std**2)`` kernel and bias init.

    Matches the reference's ``nn.Conv2d(..., padding=k // 2)`` after its ``init_weights``
    (weights and biases ~ N(0, 0.01)).
    """
    return Conv(
        features,
        kernel_size,
        stride=stride,
        use_bias=use_bias,
        kernel_init=normal_init(std),
        bias_init=normal_init(std),
        param_dtype=param_dtype,
        name=name,
    )


def upsample_nearest(x: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour upsampling of ``[..., H, W, C]`` by an integer ``factor``.

    Equals ``torch.nn.Upsample(scale_factor=factor, mode='nearest')``.
    """
    if factor == 1:
        return x
    return jnp.repeat(jnp.repeat(x, factor, axis=-3), factor, axis=-2)


def _align_corners_weights(n_in: int, n_out: int, dtype: Dtype):
    """Source indices and weights of 1-D linear interpolation with aligned corners."""
    if n_out == 1 or n_in == 1:
        src = jnp.zeros((n_out,), dtype)
    else:
        src = jnp.arange(n_out, dtype=dtype) * ((n_in - 1) / (n_out - 1))
    lo = jnp.clip(jnp.floor(src).astype(jnp.int32), 0, n_in - 1)
    hi = jnp.minimum(lo + 1, n_in - 1)
    frac = src - lo.astype(dtype)
    return lo, hi, frac


def resize_bilinear_align_corners(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bilinear resize of ``[..., H, W, C]`` to ``[..., size[0], size[1], C]``, corners aligned.

    Output pixel ``i`` samples input coordinate ``i * (H_in - 1) / (H_out - 1)``, so the corner
    pixels of input and output coincide (``torch.nn.functional.interpolate(...,
    mode='bilinear', align_corners=True)``). ``jax.image.resize`` uses half-pixel centres
    (``align_corners=False``) instead, hence this implementation.

    Args:
      x: ``[..., H_in, W_in, C]`` floating-point array.
      size: ``(H_out, W_out)``, positive ints.

    Returns:
      ``[..., H_out, W_out, C]``.
    """
    if len(size) != 2 or any(int(s) <= 0 for s in size):
        raise ValueError(f"`size` must be (H_out, W_out) with positive ints, got {size!r}.")
    if x.ndim < 3:
        raise ValueError(f"`x` must have shape [..., H, W, C], got {x.shape}.")
    h_in, w_in = x.shape[-3], x.shape[-2]
    h_out, w_out = int(size[0]), int(size[1])
    if (h_in, w_in) == (h_out, w_out):
        return x
    lo, hi, fh = _align_corners_weights(h_in, h_out, x.dtype)
    fh = fh[:, None, None]
    x = jnp.take(x, lo, axis=-3) * (1 - fh) + jnp.take(x, hi, axis=-3) * fh
    lo, hi, fw = _align_corners_weights(w_in, w_out, x.dtype)
    fw = fw[:, None]
    return jnp.take(x, lo, axis=-2) * (1 - fw) + jnp.take(x, hi, axis=-2) * fw
