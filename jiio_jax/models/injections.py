"""Injection maps: what the input (image, latent or task context) contributes to the cell.

Each map works on one sample and returns the per-branch pieces of a ``CellInput``:

- ``ImageStem`` (classifiers, meta learner): 3x3 conv + GN + ReLU layers on the image, injected
  into branch 0 only (the other branches get ``None`` = no injection).
- ``LatentMaps`` (generator): one linear map per branch ``latent -> [H_i, W_i, C_i]``, injected
  into every branch.
- ``FiLM`` (meta learner): splits a task context ``v`` into one equal chunk per branch and maps
  chunk ``i`` linearly to a ``(scale, shift)`` pair applied after the first norm of branch
  ``i``'s block (no ``1 + scale``: as in the reference).

Plain convs use the reference's ``N(0, 0.01)`` init (``config.conv_init_std``); linear maps use
PyTorch's default init (the reference never re-initialises them).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jiio_jax.models import layers

Dtype = Any


def _check_one_sample(arg: str, x: jax.Array, shape: tuple[int, ...], layout: str = "") -> None:
    """``ValueError`` unless argument ``arg`` is one sample of ``shape``: every map works on one
    sample (``layout`` names its axes in the message)."""
    if tuple(x.shape) != tuple(shape):
        raise ValueError(
            f"`{arg}` must have shape {tuple(shape)} (one sample{layout}); got "
            f"{tuple(x.shape)}. Batch with jax.vmap."
        )


def _torch_dense(features: int, fan_in: int, param_dtype: Dtype, name: str) -> nn.Dense:
    """``nn.Dense`` with PyTorch's default ``nn.Linear`` init for ``fan_in`` inputs (the
    reference never re-initialises its linear maps)."""
    return nn.Dense(
        features,
        kernel_init=layers.torch_kernel_init,
        bias_init=layers.torch_bias_init(fan_in),
        param_dtype=param_dtype,
        name=name,
    )


class ImageStem(layers.ArchModule):
    """Image -> injection into branch 0 (the reference's ``downsample`` [+ ``stage0``]).

    ``config.stem_convs`` layers of bias-free 3x3 conv (stride 1) + GroupNorm(``aux_groups``) +
    ReLU, the first mapping ``C_in -> C_0``. With more than two branches a 1x1 conv + GN + ReLU
    (``stage0``) follows, as in the reference's larger classifiers.

    Attributes:
      config: the architecture.
      param_dtype: parameter dtype.
    """

    @nn.compact
    def __call__(self, image: jax.Array) -> tuple[jax.Array | None, ...]:
        """Maps ``image`` ``[H, W, C_in]`` to per-branch injections ``(u_0, None, ...)``.

        Returns:
          A tuple with ``u_0`` of shape ``[H, W, C_0]`` and ``None`` for the other branches.
        """
        cfg = self.config
        _check_one_sample("image", image, cfg.image_shape, ", [H, W, C]")
        c0 = cfg.channels[0]
        u = image
        for s in range(cfg.stem_convs):
            u = layers.conv(
                c0,
                3,
                use_bias=False,
                std=cfg.conv_init_std,
                param_dtype=self.param_dtype,
                name=f"conv{s}",
            )(u)
            u = nn.relu(layers.GroupNorm(cfg.aux_groups, param_dtype=self.param_dtype)(u))
        if cfg.num_branches > 2:
            u = layers.conv(
                c0,
                1,
                use_bias=False,
                std=cfg.conv_init_std,
                param_dtype=self.param_dtype,
                name="stage0_conv",
            )(u)
            u = nn.relu(
                layers.GroupNorm(cfg.aux_groups, param_dtype=self.param_dtype, name="stage0_gn")(u)
            )
        return (u,) + (None,) * (cfg.num_branches - 1)


class LatentMaps(layers.ArchModule):
    """Latent -> one injection per branch: ``u_i = reshape(A_i x + b_i, [H_i, W_i, C_i])``.

    The reference reshapes to ``[C_i, H_i, W_i]``; with random init the order of the output
    units is immaterial (it is a permutation of the rows of ``A_i``).

    Attributes:
      config: the architecture (``latent_dim`` required).
      param_dtype: parameter dtype.
    """

    @nn.compact
    def __call__(self, latent: jax.Array) -> tuple[jax.Array, ...]:
        """Maps ``latent`` ``[latent_dim]`` to per-branch ``[H_i, W_i, C_i]`` injections."""
        cfg = self.config
        cfg.require("latent_dim", by="LatentMaps")
        _check_one_sample("latent", latent, (cfg.latent_dim,))
        out = []
        for i, shape in enumerate(cfg.branch_shapes):
            size = shape[0] * shape[1] * shape[2]
            dense = _torch_dense(size, cfg.latent_dim, self.param_dtype, f"map{i}")
            out.append(dense(latent).reshape(shape))
        return tuple(out)


class FiLM(layers.ArchModule):
    """Task context -> per-branch FiLM ``(scale, shift)`` for the blocks' first norm.

    Chunk ``i`` (of ``context_dim / K`` entries) of the context goes through
    ``Dense(context_dim / K -> 2 * expansion * C_i)``; the first half of the output is the
    scale, the second the shift.

    Attributes:
      config: the architecture (``context_dim`` required).
      param_dtype: parameter dtype.
    """

    @nn.compact
    def __call__(self, context: jax.Array) -> tuple[tuple[jax.Array, jax.Array], ...]:
        """Maps ``context`` ``[context_dim]`` to per-branch ``([E*C_i], [E*C_i])`` pairs."""
        cfg = self.config
        cfg.require("context_dim", by="FiLM")
        _check_one_sample("context", context, (cfg.context_dim,))
        chunks = jnp.split(context, cfg.num_branches)
        chunk = cfg.context_dim // cfg.num_branches
        out = []
        for i, (v, c) in enumerate(zip(chunks, cfg.channels, strict=True)):
            film = _torch_dense(2 * cfg.expansion * c, chunk, self.param_dtype, f"film{i}")(v)
            scale, shift = jnp.split(film, 2)
            out.append((scale, shift))
        return tuple(out)
