"""The loss curve PNG (image grids are drawn by :mod:`jiio_jax.plotting`).

Uses matplotlib's object-oriented API (``Figure`` + Agg canvas, no ``pyplot``), so nothing
touches global backend state or needs a display.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence


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
