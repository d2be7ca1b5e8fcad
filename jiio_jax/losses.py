r"""Losses and metrics of the tasks, each with one meaning: per example, reduce at the call site.

- ``cross_entropy(logits, labels)``: softmax cross-entropy with integer labels, per example.
- ``accuracy(logits, labels)``: 1.0 where the argmax prediction is the label, per example (the
  fraction over a batch is ``jnp.mean(accuracy(...))``).
- ``psnr(pred, target)``: per-image PSNR in dB on the ``[0, 1]`` scale of ``[-1, 1]`` images.

All return float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

F32 = jnp.float32

MIN_MSE = 1e-10
"""Floor of the per-image MSE in ``psnr`` (caps a perfect reconstruction at 100 dB)."""


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    r"""Per-example softmax cross-entropy ``-log softmax(logits)[label]`` in float32.

    Computed as optax's ``softmax_cross_entropy_with_integer_labels``,
    ``logsumexp(logits) - logits[label]`` (the library's one formula: the meta task's JIIO
    inner solve amplifies last-bit differences, so its recorded results fix the formula).

    Args:
      logits: ``[..., K]``.
      labels: int ``[...]`` in ``[0, K)``.

    Returns:
      ``[...]``.
    """
    return optax.softmax_cross_entropy_with_integer_labels(
        logits.astype(F32), labels.astype(jnp.int32)
    )


def accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example ``argmax(logits) == label`` as float32 (``[..., K]``, ``[...]`` -> ``[...]``).

    NaN for an example whose logits are not all finite (e.g. a DEQ solve that failed under
    ``on_failure="nan"``): ``argmax`` would pick the first NaN's class and count a guess.
    """
    correct = (jnp.argmax(logits, axis=-1) == labels).astype(F32)
    return jnp.where(jnp.all(jnp.isfinite(logits), axis=-1), correct, jnp.nan)


def psnr(pred: jax.Array, target: jax.Array) -> jax.Array:
    r"""Per-image PSNR in dB on the ``[0, 1]`` scale of images given on the ``[-1, 1]`` scale.

    .. math:: \mathrm{PSNR}_b = -10 \log_{10} \operatorname{mean}_p
              \big((\hat x_{bp}/2 + 1/2) - (x_{bp}/2 + 1/2)\big)^2

    (peak 1 on a range of 1). The reference instead averages batch MSEs on the ``[-1, 1]`` scale
    with peak 1, which reads about 6.02 dB lower (``JIIO_REFERENCE.md`` §5.1). The MSE is
    floored at ``MIN_MSE`` so identical images give 100 dB rather than ``inf``.

    Args:
      pred: ``[B, H, W, C]`` in ``[-1, 1]``.
      target: ``[B, H, W, C]`` in ``[-1, 1]``.

    Returns:
      ``[B]`` PSNR values.
    """
    diff = (pred - target) / 2
    mse = jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))
    return -10.0 * jnp.log10(jnp.maximum(mse, MIN_MSE))
