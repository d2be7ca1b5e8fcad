r"""Corruptions of the inverse problems (inpainting, denoising); the PSNR is ``jiio_jax.losses``.

An inverse problem observes ``y = m * x + n`` of a clean image ``x`` (``[-1, 1]`` scale) and
recovers ``x``; the inner JIIO cost sees only the observed pixels,

.. math:: C(z) = \sum_p \big(m_p\,(h(z)_p - y_p)\big)^2,

while the outer training loss and the metrics compare against the clean ``x``:

- ``"none"`` (reconstruction): ``m = 1``, ``y = x``;
- ``"inpaint"``: per image one ``hole x hole`` square (all channels) is zeroed in ``m`` and in
  ``y`` (0 is mid-grey on the ``[-1, 1]`` scale); its top-left corner is uniform over the
  positions that keep the whole square inside the image;
- ``"denoise"``: ``m = 1``, ``y = x + sigma * eps``, ``eps ~ N(0, I)``, fresh from the key.

Unlike the reference (``JIIO_REFERENCE.md`` §7.14-15), the observation is a new array (the clean
batch is never modified) and the outer target is always the clean image.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

CORRUPTIONS = ("none", "inpaint", "denoise")


class Observation(NamedTuple):
    """A corrupted batch.

    Attributes:
      image: ``[B, H, W, C]``; the observation ``y`` the inner problem (and a VAE encoder) sees.
      mask: ``[B, H, W, 1]``; 1 on observed pixels, 0 in an inpainting hole (broadcast over C).
    """

    image: jax.Array
    mask: jax.Array


def inpaint_mask(key: jax.Array, height: int, width: int, hole: int, dtype=jnp.float32):
    """One image's mask ``[H, W, 1]`` with a single ``hole x hole`` square of zeros.

    The top-left corner ``(r, c)`` is uniform on ``{0..H-hole} x {0..W-hole}``, so the hole
    always lies entirely inside the image (the reference draws centres in ``[10, H - 11]`` for
    its 20-pixel hole, which never touches the last row or column).

    Args:
      key: PRNG key.
      height: ``H``.
      width: ``W``.
      hole: side of the square, ``1 <= hole <= min(H, W)`` (static).
      dtype: mask dtype.

    Returns:
      ``[H, W, 1]`` mask of ones with ``hole**2`` zeros.
    """
    if not 1 <= hole <= min(height, width):
        raise ValueError(
            f"config.model.hole={hole} must be in [1, min(H, W) = {min(height, width)}] for "
            f"{height}x{width} images."
        )
    kr, kc = jax.random.split(key)
    r0 = jax.random.randint(kr, (), 0, height - hole + 1, dtype=jnp.int32)
    c0 = jax.random.randint(kc, (), 0, width - hole + 1, dtype=jnp.int32)
    rows = jnp.arange(height, dtype=jnp.int32)
    cols = jnp.arange(width, dtype=jnp.int32)
    in_rows = (rows >= r0) & (rows < r0 + hole)
    in_cols = (cols >= c0) & (cols < c0 + hole)
    hole_mask = in_rows[:, None] & in_cols[None, :]
    return jnp.where(hole_mask, 0, 1).astype(dtype)[..., None]


def corrupt(
    key: jax.Array, images: jax.Array, kind: str, *, hole: int = 20, noise_sigma: float = 0.2
) -> Observation:
    """Corrupts a batch of clean images (see the module docstring).

    Args:
      key: PRNG key (fresh per step: new holes / new noise every call).
      images: clean ``[B, H, W, C]`` in ``[-1, 1]``.
      kind: ``"none"``, ``"inpaint"`` or ``"denoise"``.
      hole: inpainting square side in pixels.
      noise_sigma: denoising noise standard deviation on the ``[-1, 1]`` scale.

    Returns:
      The ``Observation`` (same dtype as ``images``).
    """
    b, h, w, _ = images.shape
    dtype = images.dtype
    ones = jnp.ones((b, h, w, 1), dtype)
    if kind == "none":
        return Observation(images, ones)
    if kind == "inpaint":
        keys = jax.random.split(key, b)
        mask = jax.vmap(lambda k: inpaint_mask(k, h, w, hole, dtype))(keys)
        return Observation(images * mask, mask)
    if kind == "denoise":
        noise = jax.random.normal(key, images.shape, dtype)
        return Observation(images + jnp.asarray(noise_sigma, dtype) * noise, ones)
    raise ValueError(f"config.model.corruption={kind!r} must be one of {CORRUPTIONS}.")


def to_unit(images: jax.Array) -> jax.Array:
    """``[-1, 1]`` images to ``[0, 1]`` (clipped, for display)."""
    return jnp.clip(images / 2 + 0.5, 0.0, 1.0)
