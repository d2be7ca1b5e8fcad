"""Readable image grids: nearest-upscaled tiles, a title, labelled columns, per-row labels.

Two layouts, both drawn with PIL and its default font (no display, no global state):

- :func:`draw_grid` — ``[N, H, W, C]`` images (e.g. samples) in ``rows x cols`` tiles with
  ``rows * cols == N`` (no blank tiles; see :func:`grid_shape`).
- :func:`draw_panel` — an :class:`ImagePanel`: ``N`` groups of ``K`` images side by side
  (clean | observed | output, or clean | adversarial | ``|delta|``) under ``K`` column labels,
  optionally with integer labels under each group (predicted / true class). The gap between
  groups is several times the gap inside a group, so pairs read as pairs.

Tiles are upscaled by an integer factor (nearest neighbour, no blur) to at least
``min_tile`` pixels (default 64: an 8x8 digit becomes 64x64) and wide enough for the column
labels. :class:`ImagePanel` is a pytree (images and labels are leaves, title and column names
static), so a jitted ``Task.images`` can return it.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "MIN_TILE",
    "ImagePanel",
    "draw_grid",
    "draw_panel",
    "grid_shape",
    "save_images",
    "tile_scale",
]

MIN_TILE = 64
"""Default smallest tile side in pixels after upscaling."""
INNER_GAP = 2
"""Pixels between the images of one group (and between tiles of a plain grid)."""
GROUP_GAP = 18
"""Pixels between groups of an :class:`ImagePanel` (> ``INNER_GAP`` so pairs read as pairs)."""
MARGIN = 8
"""Pixels around the whole figure."""
TITLE_SIZE, LABEL_SIZE = 16, 13
"""Font sizes (pixels) of the title and of column / row labels."""
BACKGROUND, INK, MISMATCH = (255, 255, 255), (0, 0, 0), (200, 0, 0)
"""Figure background, text colour, and the colour of a label that differs from ``"true"``."""


@dataclasses.dataclass(frozen=True)
class ImagePanel:
    """``N`` groups of ``K`` images shown side by side, with column labels and row labels.

    Attributes:
      images: ``[N, K, H, W, C]`` in ``[0, 1]``, ``C`` in {1, 3}.
      columns: ``K`` column labels, e.g. ``("clean", "observed", "output")``.
      title: the figure's title (a caller may append e.g. the step).
      labels: name -> ``[N]`` integers drawn under each group as ``"name value"`` pairs, in
        insertion order (e.g. ``{"true": y, "pred": pred, "adv pred": pred_adv}``); a value that
        differs from ``labels["true"]`` is drawn in red.
    """

    images: Any
    columns: tuple[str, ...] = ()
    title: str = ""
    labels: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def _flatten_panel(panel: ImagePanel):
    # Not register_dataclass: a dict child would come back with sorted keys, and the labels are
    # drawn in the order given.
    names = tuple(panel.labels)
    children = (panel.images, tuple(panel.labels[n] for n in names))
    return children, (panel.columns, panel.title, names)


def _unflatten_panel(aux, children) -> ImagePanel:
    columns, title, names = aux
    images, values = children
    return ImagePanel(images, columns, title, dict(zip(names, values, strict=True)))


jax.tree_util.register_pytree_node(ImagePanel, _flatten_panel, _unflatten_panel)


def grid_shape(n: int, max_aspect: float = 4.0, max_single_row: int = 8) -> tuple[int, int, int]:
    """``(rows, cols, shown)``: a grid with no blank tile for ``n`` images.

    ``rows * cols == shown``, ``cols >= rows``, as square as possible; a count with no such
    factorisation within ``cols / rows <= max_aspect`` (e.g. a prime above
    ``max_single_row``) shows the largest smaller count that has one (``shown < n``).
    """
    if n < 1:
        raise ValueError(f"grid_shape needs at least one image, got n={n}.")
    for m in range(n, 0, -1):
        if m <= max_single_row:
            pairs = [(m // c, c) for c in range(1, m + 1) if m % c == 0 and c >= m // c]
            return (*min(pairs, key=lambda rc: rc[1] - rc[0]), m)
        for rows in range(math.isqrt(m), 0, -1):
            if m % rows == 0 and (m // rows) / rows <= max_aspect:
                return rows, m // rows, m
    raise AssertionError("unreachable: m = 1 always fits")


def tile_scale(height: int, width: int, min_tile: int = MIN_TILE, min_width: int = 0) -> int:
    """Integer upscaling factor so a ``height x width`` image is >= ``min_tile`` px on its
    shorter side and >= ``min_width`` px wide."""
    return max(1, math.ceil(min_tile / min(height, width)), math.ceil(min_width / width))


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    # Pillow >= 10.1 scales its bundled default font; older Pillow ignores size (bitmap font).
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - old Pillow
        return ImageFont.load_default()


def _text_size(font, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return right - left, bottom - top


def _as_uint8_tiles(images: Any, scale: int) -> np.ndarray:
    """``[..., H, W, C]`` in ``[0, 1]`` -> uint8 RGB ``[..., H * scale, W * scale, 3]``."""
    images = np.asarray(images, np.float32)
    if images.shape[-1] not in (1, 3):
        raise ValueError(f"images must end in C in (1, 3) channels, got shape {images.shape}.")
    u8 = np.round(np.clip(np.nan_to_num(images), 0.0, 1.0) * 255).astype(np.uint8)
    if u8.shape[-1] == 1:
        u8 = np.repeat(u8, 3, axis=-1)
    return u8.repeat(scale, axis=-3).repeat(scale, axis=-2)


def _draw_title(draw: ImageDraw.ImageDraw, title: str, width: int) -> None:
    """Draws ``title`` centred in the band of :func:`_title_height` at the top."""
    if title:
        draw.text((width // 2, MARGIN), title, fill=INK, font=_font(TITLE_SIZE), anchor="mt")


def _title_height(title: str) -> int:
    """Height of the title band (0 without a title)."""
    return _text_size(_font(TITLE_SIZE), title)[1] + 10 if title else 0


def draw_grid(images: Any, *, title: str = "", min_tile: int = MIN_TILE) -> Image.Image:
    """``[N, H, W, C]`` images in ``[0, 1]`` as a titled RGB grid with no blank tiles.

    The grid is :func:`grid_shape` ``(N)``; if that shows fewer than ``N`` images, the title
    says ``"(first k of N)"``. Tiles are upscaled (nearest) by :func:`tile_scale`.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, H, W, C], got shape {images.shape}.")
    n, h, w, _ = images.shape
    rows, cols, shown = grid_shape(n)
    if shown < n:
        title = f"{title} (first {shown} of {n})".strip()
    s = tile_scale(h, w, min_tile)
    tiles = _as_uint8_tiles(images[:shown], s)
    th, tw = h * s, w * s
    grid_w = cols * tw + (cols - 1) * INNER_GAP
    width = max(grid_w, _text_size(_font(TITLE_SIZE), title)[0]) + 2 * MARGIN
    top = MARGIN + _title_height(title)
    height = top + rows * th + (rows - 1) * INNER_GAP + MARGIN
    img = Image.new("RGB", (width, height), BACKGROUND)
    _draw_title(ImageDraw.Draw(img), title, width)
    x0 = (width - grid_w) // 2
    for i, tile in enumerate(tiles):
        r, c = divmod(i, cols)
        img.paste(Image.fromarray(tile), (x0 + c * (tw + INNER_GAP), top + r * (th + INNER_GAP)))
    return img


def _panel_columns(n: int, k: int, target_aspect: float = 1.6) -> int:
    """Groups per row: a divisor of ``n`` (no blank group) whose grid is nearest
    ``target_aspect`` (width / height, counted in tiles); ties go to the wider grid."""
    divisors = [g for g in range(1, n + 1) if n % g == 0]
    return min(divisors, key=lambda g: (abs(math.log(g * k / (n // g) / target_aspect)), -g))


def draw_panel(
    panel: ImagePanel, *, title: str | None = None, min_tile: int = MIN_TILE
) -> Image.Image:
    """An :class:`ImagePanel` as an RGB image: title, column labels over every group column,
    groups of ``K`` tiles ``INNER_GAP`` apart and ``GROUP_GAP`` between groups, and the
    group's ``labels`` under it. ``title`` overrides ``panel.title``."""
    images = np.asarray(panel.images)
    if images.ndim != 5:
        raise ValueError(f"ImagePanel.images must be [N, K, H, W, C], got shape {images.shape}.")
    n, k, h, w, _ = images.shape
    columns = tuple(panel.columns)
    if columns and len(columns) != k:
        raise ValueError(f"ImagePanel.columns has {len(columns)} names for K={k} images.")
    labels = {name: np.asarray(v).reshape(-1) for name, v in panel.labels.items()}
    for name, v in labels.items():
        if v.shape[0] != n:
            raise ValueError(f"ImagePanel.labels[{name!r}] has {v.shape[0]} values for N={n}.")
    title = panel.title if title is None else title
    label_font = _font(LABEL_SIZE)
    widest = max((_text_size(label_font, c)[0] for c in columns), default=0)
    # Tiles wide enough for their column label, and groups for their caption.
    caption = max((_caption_width(label_font, _caption(labels, i)) for i in range(n)), default=0)
    caption_tile = math.ceil((caption + 6 - (k - 1) * INNER_GAP) / k)
    s = tile_scale(h, w, min_tile, min_width=max(widest + 6, caption_tile))
    tiles = _as_uint8_tiles(images, s)
    th, tw = h * s, w * s
    group_w = k * tw + (k - 1) * INNER_GAP
    g_cols = _panel_columns(n, k)
    g_rows = n // g_cols
    text_h = _text_size(label_font, "Ag")[1]
    header_h = text_h + 8 if columns else 0
    caption_h = text_h + 8 if labels else 0
    row_h = th + caption_h
    grid_w = g_cols * group_w + (g_cols - 1) * GROUP_GAP
    width = max(grid_w, _text_size(_font(TITLE_SIZE), title)[0]) + 2 * MARGIN
    top = MARGIN + _title_height(title)
    height = top + header_h + g_rows * row_h + (g_rows - 1) * GROUP_GAP + MARGIN
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    _draw_title(draw, title, width)
    x0 = (width - grid_w) // 2
    for gc in range(g_cols):
        for j, name in enumerate(columns):
            cx = x0 + gc * (group_w + GROUP_GAP) + j * (tw + INNER_GAP) + tw // 2
            draw.text((cx, top + 2), name, fill=INK, font=label_font, anchor="mt")
    for i in range(n):
        gr, gc = divmod(i, g_cols)
        gx = x0 + gc * (group_w + GROUP_GAP)
        gy = top + header_h + gr * (row_h + GROUP_GAP)
        for j in range(k):
            img.paste(Image.fromarray(tiles[i, j]), (gx + j * (tw + INNER_GAP), gy))
        if labels:
            _draw_labels(draw, labels, i, gx, gy + th + 4, group_w, label_font)
    return img


def _caption(labels: Mapping[str, np.ndarray], i: int) -> list[tuple[str, bool]]:
    """``[("true 3", False), ("pred 3", False), ("adv pred 8", True)]``: group ``i``'s labels
    and whether each differs from ``labels["true"]``."""
    truth = labels.get("true")
    return [
        (f"{name} {int(v[i])}", truth is not None and name != "true" and v[i] != truth[i])
        for name, v in labels.items()
    ]


CAPTION_SEP = "  "


def _caption_width(font, parts: list[tuple[str, bool]]) -> float:
    return font.getlength(CAPTION_SEP.join(text for text, _ in parts))


def _draw_labels(draw, labels, i, x, y, width, font) -> None:
    """The caption of group ``i`` centred under it; values that differ from true in red."""
    parts = _caption(labels, i)
    cx = x + (width - _caption_width(font, parts)) / 2
    for text, wrong in parts:
        draw.text((cx, y), text, fill=MISMATCH if wrong else INK, font=font, anchor="lt")
        cx += font.getlength(text + CAPTION_SEP)


def save_images(path: str, images: Any, *, title: str = "", min_tile: int = MIN_TILE) -> None:
    """Saves an :class:`ImagePanel` (:func:`draw_panel`) or ``[N, H, W, C]`` images
    (:func:`draw_grid`) as a PNG; ``title`` defaults to the panel's own."""
    if isinstance(images, ImagePanel):
        img = draw_panel(images, title=title or None, min_tile=min_tile)
    else:
        img = draw_grid(images, title=title, min_tile=min_tile)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    img.save(path)
