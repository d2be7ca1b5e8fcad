r"""A conventional convolutional decoder: the baseline generators of the paper's Table 1.

The paper compares its MDEQ decoder (trained by JIIO or as a VAE) with a VAE and an RAE
(Ghosh et al. 2020) whose decoders are ordinary feed-forward conv nets. This is that decoder,
the mirror image of ``jiio_jax.tasks.vae.ConvEncoder``: one dense layer maps the latent to a
``ceil(H / 2^n) x ceil(W / 2^n)`` map with the widest of the ``n`` widths, then each stage
doubles the resolution (nearest-neighbour upsampling followed by a 3x3 conv, which avoids the
checkerboard artefacts of stride-2 transposed convs), with GroupNorm and ReLU; the map is
cropped to ``H x W`` and a last 3x3 conv with ``tanh`` gives the image in ``[-1, 1]`` (the
range of the MDEQ's ``ImageDecoder``). No equilibrium solve: one forward pass per image.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jiio_jax.models import layers

Dtype = Any


class ConvDecoder(nn.Module):
    """Latents ``[B, latent_dim]`` -> images ``[B, H, W, C]`` in ``[-1, 1]``.

    With ``channels = (c_1, ..., c_n)`` (ordered from the image side, as the encoder's):
    ``Dense(latent -> h_0 w_0 c_n)`` reshaped to ``[h_0, w_0, c_n]`` with
    ``h_0 = ceil(H / 2^n)``, then for ``c = c_n, ..., c_1``:
    ``h <- ReLU(GN(Conv3x3_c(Upsample2(h))))``; crop to ``[H, W]``;
    ``tanh(Conv3x3_C(h))``. Samples never interact (per-sample GroupNorm).

    Attributes:
      channels: widths, one upsampling stage each, ordered from the image side.
      image_shape: ``(H, W, C)`` of the output.
      groups: GroupNorm groups (must divide every width).
      param_dtype: parameter dtype.
    """

    channels: tuple[int, ...]
    image_shape: tuple[int, int, int]
    groups: int = 4
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, latents: jax.Array) -> jax.Array:
        """Decodes a batch of latents ``[B, D]``."""
        if not self.channels:
            raise ValueError("ConvDecoder.channels must hold at least one width.")
        h, w, c = self.image_shape
        n = len(self.channels)
        h0, w0 = -(-h // 2**n), -(-w // 2**n)
        pd = self.param_dtype
        y = nn.Dense(h0 * w0 * self.channels[-1], param_dtype=pd)(latents)
        y = nn.relu(y).reshape(latents.shape[0], h0, w0, self.channels[-1])
        for width in reversed(self.channels):
            y = layers.upsample_nearest(y, 2)
            y = layers.Conv(width, 3, use_bias=False, param_dtype=pd)(y)
            y = nn.relu(layers.GroupNorm(self.groups, param_dtype=pd)(y))
        y = y[:, :h, :w, :]
        return jnp.tanh(layers.Conv(c, 3, param_dtype=pd)(y))
