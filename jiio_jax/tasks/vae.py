r"""The VAE baseline's encoder and KL term (the decoder is the same MDEQ generator as JIIO's).

The paper's VAE baseline (``JIIO_REFERENCE.md`` §4.5) amortises the latent inference of the
generative task: an encoder maps the (corrupted) image to a Gaussian posterior
:math:`q(x|y) = \mathcal N(\mu, \operatorname{diag}\sigma^2)`, a latent is drawn by
reparameterisation and decoded by the MDEQ decoder's equilibrium solve. The reference encoder is
a second MDEQ (classifier stem and HRNet head with BatchNorm); here it is a **small conv
encoder**: a stack of stride-2 3x3 convs, each followed by GroupNorm and ReLU, then dropout on the
flattened features and one dense layer to ``(mu, log sigma)``. It is much cheaper than an MDEQ
(no second equilibrium solve and implicit backward per step), which matters on CPU; the baseline
compares the inference mechanism (amortised encoder vs. per-sample JIIO) under the same decoder,
not encoder architectures.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jiio_jax.models import layers

Dtype = Any


class ConvEncoder(nn.Module):
    """Image batch ``[B, H, W, C]`` -> posterior ``(mean, log_sigma)``, each ``[B, latent_dim]``.

    Layer ``i``: ``ReLU(GN(Conv3x3_stride2(h)))`` with ``channels[i]`` outputs (``H`` and ``W``
    halve, rounding up); then ``Dense(2 * latent_dim)`` on the flattened, dropped-out features.

    Attributes:
      channels: conv widths, one stride-2 layer each.
      latent_dim: posterior dimension.
      groups: GroupNorm groups (must divide every width).
      dropout: dropout rate on the flattened features (training only).
      param_dtype: parameter dtype.
    """

    channels: tuple[int, ...]
    latent_dim: int
    groups: int = 4
    dropout: float = 0.0
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        """Encodes a batch; ``train=True`` enables dropout (needs a ``"dropout"`` rng)."""
        h = images
        for c in self.channels:
            h = layers.Conv(c, 3, stride=2, use_bias=False, param_dtype=self.param_dtype)(h)
            h = nn.relu(layers.GroupNorm(self.groups, param_dtype=self.param_dtype)(h))
        h = h.reshape(h.shape[0], -1)
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        out = nn.Dense(2 * self.latent_dim, param_dtype=self.param_dtype)(h)
        mean, log_sigma = jnp.split(out, 2, axis=-1)
        return mean, log_sigma


def kl_divergence(mean: jax.Array, log_sigma: jax.Array) -> jax.Array:
    r"""``KL(N(mean, diag sigma^2) || N(0, I))`` per example.

    .. math:: \mathrm{KL}_b = \tfrac12 \sum_d \big(\mu_{bd}^2 + \sigma_{bd}^2
              - 2 \log\sigma_{bd} - 1\big)

    Args:
      mean: ``[B, D]``.
      log_sigma: ``[B, D]``.

    Returns:
      ``[B]``.
    """
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(2 * log_sigma) - 2 * log_sigma - 1.0, axis=-1)


def kl_weight(step: jax.Array, warmup_steps: int, dtype=jnp.float32) -> jax.Array:
    """Linear KL warm-up ``min(step / warmup_steps, 1)`` (1 when ``warmup_steps == 0``).

    The reference warms up per epoch, ``min(epoch / 10, 1)``; per step is the same ramp at a finer
    grain.
    """
    if warmup_steps == 0:
        return jnp.ones((), dtype)
    return jnp.minimum(jnp.asarray(step).astype(dtype) / warmup_steps, 1.0).astype(dtype)
