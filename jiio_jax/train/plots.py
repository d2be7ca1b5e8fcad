"""PNG outputs: image grids from ``Task.images`` and the loss curve.

Uses PIL for grids and matplotlib's object-oriented API (``Figure`` + Agg canvas, no
``pyplot``), so nothing touches global backend state or needs a display.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image


def image_grid(images: np.ndarray, ncols: int | None = None, pad: int = 1) -> np.ndarray:
    """Tiles ``[N, H, W, C]`` images in ``[0, 1]`` into one ``[rows*(H+pad)-pad, ..., C]`` image.

    Args:
      images: ``[N, H, W, C]`` with ``C`` in {1, 3}; values are clipped to ``[0, 1]``.
      ncols: columns; default ``ceil(sqrt(N))``.
      pad: white pixels between tiles.

    Returns:
      uint8 ``[H', W', C]``.
    """
    images = np.asarray(images, np.float32)
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"images must be [N, H, W, C] with C in (1, 3), got {images.shape}.")
    n, h, w, c = images.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    grid = np.ones((nrows * (h + pad) - pad, ncols * (w + pad) - pad, c), np.float32)
    for i, img in enumerate(np.clip(np.nan_to_num(images), 0.0, 1.0)):
        r, col = divmod(i, ncols)
        grid[r * (h + pad) : r * (h + pad) + h, col * (w + pad) : col * (w + pad) + w] = img
    return np.round(grid * 255).astype(np.uint8)


def save_image_grid(path: str, images: np.ndarray, *, min_size: int = 256) -> None:
    """Saves :func:`image_grid` of ``images`` as a PNG, upscaled (nearest) to ``min_size``."""
    grid = image_grid(images)
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    scale = max(1, min_size // max(img.size))
    if scale > 1:
        img = img.resize((img.size[0] * scale, img.size[1] * scale), Image.NEAREST)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)


def save_loss_curve(
    path: str,
    train: Sequence[tuple[int, float]],
    evals: Mapping[str, Sequence[tuple[int, float]]] | None = None,
) -> None:
    """Plots train loss and each eval metric (one panel each) against the step as a PNG.

    Args:
      path: output file.
      train: ``(step, loss)`` pairs.
      evals: eval metric name -> ``(step, value)`` pairs.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    evals = {k: v for k, v in sorted((evals or {}).items()) if v}
    fig = Figure(figsize=(4 * (1 + len(evals)), 3.2), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 1 + len(evals), squeeze=False)[0]
    if train:
        steps, values = zip(*train, strict=True)
        axes[0].plot(steps, values, lw=1)
        if min(values) > 0:
            axes[0].set_yscale("log")
    axes[0].set(xlabel="step", title="train loss")
    # One panel per eval metric: their scales differ (PSNR in dB vs MSE).
    for ax, (name, points) in zip(axes[1:], evals.items(), strict=True):
        steps, values = zip(*points, strict=True)
        ax.plot(steps, values, marker="o", ms=3)
        ax.set(xlabel="step", title=f"eval {name}")
    for ax in axes:
        ax.grid(alpha=0.3)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=100)
