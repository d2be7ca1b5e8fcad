"""Output heads ``h(z)`` of the MDEQ models (one sample, NHWC branch states).

- ``ImageDecoder`` (generator): align-corners bilinear resize of every branch to branch 0's
  resolution, concat, 1x1 conv + GN + ReLU, 3x3 conv to ``C_0``, then GN + ReLU + 3x3 transposed
  conv twice (stride 1) and ``tanh``.
- ``ClassifierHead`` (HRNet style): a bottleneck per branch widening ``C_i -> 4 * head_i``,
  cumulative stride-2 downsampling from the highest resolution, a final 1x1 conv, global average
  pooling and a linear classifier. The reference normalises inside the bottlenecks with
  ``BatchNorm2d(affine=False)``, which couples the samples of a batch (and updates running
  statistics ~80 times per batch inside the JIIO inner loop); here those norms are
  ``GroupNorm(affine=False)``, per sample and with the same (zero) parameter count.
- ``MetaHead``: per branch GN + average pooling + flatten, concat, linear (``n_way`` logits).

Plain convs use the reference's ``N(0, 0.01)`` init (``config.conv_init_std``); linear layers and
the transposed convs use PyTorch's default init (the reference never re-initialises them).
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jiio_jax.models import layers
from jiio_jax.models.configs import MDEQConfig

Dtype = Any


def _check_z(cfg: MDEQConfig, z) -> None:
    shapes = tuple(tuple(jnp.shape(zi)) for zi in z) if isinstance(z, tuple | list) else None
    if shapes != cfg.branch_shapes:
        raise ValueError(
            f"`z` must be a tuple of branch states with shapes {cfg.branch_shapes} (one sample, "
            f"[H, W, C] each); got {shapes if shapes is not None else type(z).__name__}."
        )


def _transposed_conv_init(features: int):
    """PyTorch's default ``ConvTranspose2d`` weight init: ``U(+-1/sqrt(9 * C_out))`` for 3x3.

    (PyTorch computes the fan-in of a transposed conv's ``[C_in, C_out, k, k]`` weight from its
    second axis.)
    """
    bound = 1.0 / math.sqrt(9 * features)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class ImageDecoder(layers.ArchModule):
    """Branch states -> image in ``[-1, 1]`` (the reference's ``branch_interp`` + ``upsample``).

    A stride-1, padding-1 3x3 transposed conv is an ordinary 3x3 conv with the spatially flipped,
    in/out-swapped kernel; since the kernel is learned, it is implemented as a conv (same
    parameter count, PyTorch's transposed-conv init statistics).

    Attributes:
      config: the architecture (``image_shape[2]`` output channels).
      param_dtype: parameter dtype.
    """

    @nn.compact
    def __call__(self, z: tuple[jax.Array, ...]) -> jax.Array:
        """Decodes ``z`` (per branch ``[H_i, W_i, C_i]``) to an image ``[H, W, C_img]``."""
        cfg = self.config
        _check_z(cfg, z)
        h0, w0, c0 = cfg.branch_shapes[0]
        pd = self.param_dtype
        y = jnp.concatenate([layers.resize_bilinear_align_corners(zi, (h0, w0)) for zi in z], -1)
        total = y.shape[-1]
        y = layers.conv(total, 1, use_bias=True, std=cfg.conv_init_std, param_dtype=pd)(y)
        y = nn.relu(layers.GroupNorm(cfg.num_groups, param_dtype=pd)(y))
        y = layers.conv(c0, 3, use_bias=True, std=cfg.conv_init_std, param_dtype=pd)(y)
        for features, name in ((c0, "deconv0"), (cfg.image_shape[2], "deconv1")):
            y = nn.relu(layers.GroupNorm(cfg.aux_groups, param_dtype=pd)(y))
            y = layers.Conv(
                features,
                3,
                use_bias=False,
                kernel_init=_transposed_conv_init(features),
                param_dtype=pd,
                name=name,
            )(y)
        return jnp.tanh(y)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 bottleneck (``C_in -> width -> 4 * width``) with a projection shortcut.

    Internal norms are ``GroupNorm(norm_groups, affine=False)`` (per sample); the shortcut, when
    ``C_in != 4 * width``, is a 1x1 conv + affine ``GroupNorm(shortcut_groups)``.

    Attributes:
      width: bottleneck width.
      norm_groups: groups of the three internal (non-affine) norms.
      shortcut_groups: groups of the shortcut norm.
      conv_std: std of the conv kernels' normal init.
      param_dtype: parameter dtype.
    """

    width: int
    norm_groups: int
    shortcut_groups: int
    conv_std: float = 0.01
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        """``[H, W, C_in]`` -> ``[H, W, 4 * width]``."""
        pd, std = self.param_dtype, self.conv_std
        norm = lambda: layers.GroupNorm(self.norm_groups, affine=False, param_dtype=pd)
        out = nn.relu(
            norm()(layers.conv(self.width, 1, use_bias=False, std=std, param_dtype=pd)(x))
        )
        out = nn.relu(
            norm()(layers.conv(self.width, 3, use_bias=False, std=std, param_dtype=pd)(out))
        )
        out = norm()(layers.conv(4 * self.width, 1, use_bias=False, std=std, param_dtype=pd)(out))
        if x.shape[-1] != 4 * self.width:
            x = layers.conv(
                4 * self.width, 1, use_bias=False, std=std, param_dtype=pd, name="shortcut_conv"
            )(x)
            x = layers.GroupNorm(self.shortcut_groups, param_dtype=pd, name="shortcut_gn")(x)
        return nn.relu(out + x)


class ClassifierHead(layers.ArchModule):
    """HRNet-style classification head (the reference's ``incre/downsamp/final`` + classifier).

    Attributes:
      config: the architecture (``head_channels``, ``final_channels``, ``num_classes``).
      param_dtype: parameter dtype.
    """

    @nn.compact
    def __call__(self, z: tuple[jax.Array, ...]) -> jax.Array:
        """Maps ``z`` (per branch ``[H_i, W_i, C_i]``) to logits ``[num_classes]``."""
        cfg = self.config
        cfg.require("head_channels", "final_channels", "num_classes", by="ClassifierHead")
        _check_z(cfg, z)
        pd, std = self.param_dtype, cfg.conv_init_std
        incre = [
            Bottleneck(w, cfg.aux_groups, cfg.num_groups, std, pd, name=f"incre{i}")
            for i, w in enumerate(cfg.head_channels)
        ]
        y = incre[0](z[0])
        for i in range(1, cfg.num_branches):
            down = layers.conv(
                4 * cfg.head_channels[i],
                3,
                stride=2,
                use_bias=True,
                std=std,
                param_dtype=pd,
                name=f"down{i - 1}_conv",
            )(y)
            down = nn.relu(
                layers.GroupNorm(cfg.aux_groups, param_dtype=pd, name=f"down{i - 1}_gn")(down)
            )
            y = incre[i](z[i]) + down
        y = layers.conv(
            cfg.final_channels, 1, use_bias=True, std=std, param_dtype=pd, name="final_conv"
        )(y)
        y = nn.relu(layers.GroupNorm(cfg.aux_groups, param_dtype=pd, name="final_gn")(y))
        y = jnp.mean(y, axis=(-3, -2))
        return nn.Dense(
            cfg.num_classes,
            kernel_init=layers.torch_kernel_init,
            bias_init=layers.torch_bias_init(cfg.final_channels),
            param_dtype=pd,
            name="classifier",
        )(y)


class MetaHead(layers.ArchModule):
    """Per-branch GN + ``meta_pool`` average pooling, concat, linear -> ``n_way`` logits.

    Attributes:
      config: the architecture (``n_way``, ``meta_pool``).
      param_dtype: parameter dtype.
    """

    @nn.compact
    def __call__(self, z: tuple[jax.Array, ...]) -> jax.Array:
        """Maps ``z`` (per branch ``[H_i, W_i, C_i]``) to logits ``[n_way]``."""
        cfg = self.config
        cfg.require("n_way", by="MetaHead")
        _check_z(cfg, z)
        p = cfg.meta_pool
        feats = []
        for i, zi in enumerate(z):
            h, w, c = zi.shape
            if h < p or w < p:
                raise ValueError(
                    f"`config.meta_pool`={p} exceeds branch {i}'s resolution {h}x{w}; lower it."
                )
            y = layers.GroupNorm(cfg.num_groups, param_dtype=self.param_dtype, name=f"gn{i}")(zi)
            y = y[: (h // p) * p, : (w // p) * p].reshape(h // p, p, w // p, p, c).mean((1, 3))
            feats.append(y.reshape(-1))
        feats = jnp.concatenate(feats)
        return nn.Dense(
            cfg.n_way,
            kernel_init=layers.torch_kernel_init,
            bias_init=layers.torch_bias_init(feats.shape[0]),
            param_dtype=self.param_dtype,
            name="classifier",
        )(feats)
