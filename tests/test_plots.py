"""Image grids (``jiio_jax.plotting``): tile sizes, no blank tiles, titles, labelled columns,
pair spacing and predicted / true labels, measured on the drawn pixels."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jiio_jax import plotting

# Tiles of one colour, which no (grey, anti-aliased) text pixel has.
COLOUR = np.array([0.2, 0.6, 0.4], np.float32)


def _tiles(*shape):
    return np.broadcast_to(COLOUR, (*shape, 3)).copy()


def _runs(mask_1d):
    """``[(start, length)]`` of consecutive True runs."""
    runs, start = [], None
    for i, v in enumerate(list(mask_1d) + [False]):
        if v and start is None:
            start = i
        elif not v and start is not None:
            runs.append((start, i - start))
            start = None
    return runs


def _tile_mask(img: Image.Image) -> np.ndarray:
    return np.all(np.asarray(img) == np.round(COLOUR * 255), axis=-1)


def _has_text(region: np.ndarray) -> bool:
    """Dark (text) pixels in an RGB region."""
    return bool(np.any(np.asarray(region).max(axis=-1) < 100))


@pytest.mark.parametrize(
    "n, expected",
    [(1, (1, 1, 1)), (7, (1, 7, 7)), (10, (2, 5, 10)), (16, (4, 4, 16)), (64, (8, 8, 64))],
)
def test_grid_shape_examples(n, expected):
    assert plotting.grid_shape(n) == expected


def test_grid_shape_never_leaves_blank_tiles():
    for n in range(1, 130):
        rows, cols, shown = plotting.grid_shape(n)
        assert rows * cols == shown and 1 <= rows <= cols, n
        assert shown == n or n > 8, n  # Up to 8 always fit in one row.
        assert shown >= 0.9 * n, (n, shown)
    assert plotting.grid_shape(61) == (6, 10, 60)  # Prime: the title says "first 60 of 61".


def test_sample_grid_tiles_are_64px_with_title_and_no_blank_tile():
    images = _tiles(12, 8, 8)
    img = plotting.draw_grid(images, title="samples, step 600")
    mask = _tile_mask(img)
    cols = _runs(mask.any(axis=0))
    rows = _runs(mask.any(axis=1))
    assert (len(rows), len(cols)) == (3, 4)  # 12 = 3 x 4: every tile drawn, none blank.
    assert all(length == 64 for _, length in cols + rows)  # 8 px x 8 (nearest, integer).
    first_tile_row = rows[0][0]
    assert first_tile_row > 20 and _has_text(np.asarray(img)[:first_tile_row])  # Title band.
    # Nearest upscaling: each 8x8 pixel becomes one uniform 8x8 block.
    checker = (np.indices((8, 8)).sum(0) % 2).astype(np.float32)[None, :, :, None]
    tile = np.asarray(plotting.draw_grid(checker))[8:72, 8:72, 0]
    np.testing.assert_array_equal(tile, np.kron(checker[0, :, :, 0] * 255, np.ones((8, 8))))


def test_grid_scales_any_size_to_at_least_min_tile():
    assert plotting.tile_scale(8, 8) == 8
    assert plotting.tile_scale(28, 28) == 3  # 84 px
    assert plotting.tile_scale(64, 64) == 1
    assert plotting.tile_scale(8, 8, min_width=90) == 12  # Wide enough for a column label.
    img = plotting.draw_grid(_tiles(4, 28, 28))
    assert all(length == 84 for _, length in _runs(_tile_mask(img).any(axis=0)))


def test_grid_of_a_prime_count_says_what_it_shows():
    img = plotting.draw_grid(_tiles(11, 8, 8), title="samples")
    mask = _tile_mask(img)
    assert len(_runs(mask.any(axis=0))) * len(_runs(mask.any(axis=1))) == 10


def test_panel_pairs_are_labelled_and_separated():
    n, k = 16, 3
    panel = plotting.ImagePanel(
        _tiles(n, k, 8, 8),
        ("clean", "observed", "output"),
        "JIIO reconstructions (inpaint)",
    )
    img = plotting.draw_panel(panel)
    mask = _tile_mask(img)
    cols = _runs(mask.any(axis=0))
    rows = _runs(mask.any(axis=1))
    assert len(cols) * len(rows) == n * k  # Every group drawn, no blank group.
    assert len(cols) % k == 0
    assert all(length >= 64 for _, length in cols + rows)
    gaps = [b[0] - (a[0] + a[1]) for a, b in zip(cols[:-1], cols[1:], strict=True)]
    inside = [g for i, g in enumerate(gaps) if (i + 1) % k]
    between = [g for i, g in enumerate(gaps) if not (i + 1) % k]
    assert set(inside) == {plotting.INNER_GAP}
    assert between and min(between) >= 4 * max(inside)  # Groups read as groups.
    pixels = np.asarray(img)
    top = rows[0][0]
    # A title band, then a header with a label over every column of every group.
    assert _has_text(pixels[: top // 2])
    for start, length in cols:
        assert _has_text(pixels[top - 18 : top, start : start + length]), start


def test_panel_tiles_are_wide_enough_for_their_labels():
    panel = plotting.ImagePanel(_tiles(4, 2, 8, 8), ("target", "reconstruction"), "recon")
    img = plotting.draw_panel(panel)
    mask = _tile_mask(img)
    cols = _runs(mask.any(axis=0))
    top = _runs(mask.any(axis=1))[0][0]
    assert all(length > 64 for _, length in cols)  # Widened (integer scale) for the label.
    # Each column label's ink lies within its own tile's extent: labels never run together.
    header = np.asarray(img)[top - 18 : top].max(axis=-1) < 100
    for start, length in cols:
        inked = np.flatnonzero(header[:, start - 1 : start + length + 1].any(axis=0))
        assert inked.size and 0 < inked.min() and inked.max() < length + 1, (start, inked)
    outside = np.ones(header.shape[1], bool)
    for start, length in cols:
        outside[start : start + length] = False
    assert not header[:, outside].any()


def test_attack_panel_shows_labels_and_marks_wrong_predictions_in_red():
    images = _tiles(4, 3, 8, 8)
    true = np.array([0, 1, 2, 3])

    def red_pixels(adv):
        panel = plotting.ImagePanel(
            images,
            ("clean", "adversarial", "|delta|"),
            "attack",
            {"true": true, "pred": true, "adv pred": adv},
        )
        px = np.asarray(plotting.draw_panel(panel)).astype(int)
        return np.sum((px[..., 0] > 150) & (px[..., 1] < 80) & (px[..., 2] < 80))

    assert red_pixels(true) == 0
    assert red_pixels(np.array([0, 7, 2, 3])) > 0
    # Labels sit in a band under each group (the rows of tiles are further apart).
    with_labels = plotting.draw_panel(
        plotting.ImagePanel(images, ("a", "b", "c"), "", {"true": true})
    )
    without = plotting.draw_panel(plotting.ImagePanel(images, ("a", "b", "c"), ""))
    assert with_labels.size[1] > without.size[1]


def test_group_captions_fit_under_their_group():
    labels = {"true": np.arange(4), "pred": np.arange(4), "adv pred": np.arange(4) + 1}
    img = plotting.draw_panel(plotting.ImagePanel(_tiles(4, 1, 8, 8), ("x",), "", labels))
    mask = _tile_mask(img)
    cols = _runs(mask.any(axis=0))
    bottom = sum(_runs(mask.any(axis=1))[0])
    band = np.asarray(img)[bottom : bottom + 18]
    ink = (band.min(axis=-1) < 100) | ((band[..., 0] > 150) & (band[..., 1] < 80))
    inked = ink.any(axis=0)
    assert inked.any()
    inside = np.zeros_like(inked)
    for start, length in cols:
        inside[start : start + length] = True
    assert not (inked & ~inside).any()  # Widened tiles: no caption runs into its neighbour.


def test_panel_is_a_pytree_returned_by_jit():
    def images_fn(x):
        return {
            "p": plotting.ImagePanel(
                jnp.stack([x, 1 - x], 1), ("a", "b"), "t", {"true": jnp.arange(2)}
            )
        }

    out = jax.jit(images_fn)(jnp.zeros((2, 4, 4, 1)))
    panel = jax.device_get(out)["p"]
    assert panel.columns == ("a", "b") and panel.title == "t"
    assert panel.images.shape == (2, 2, 4, 4, 1) and list(panel.labels["true"]) == [0, 1]
    # Labels keep their order (drawn left to right), not the sorted order of a dict pytree.
    order = {"true": jnp.zeros(2), "pred": jnp.ones(2), "adv pred": jnp.ones(2)}
    out = jax.jit(lambda x: plotting.ImagePanel(x, ("a",), "t", order))(jnp.zeros((2, 1, 4, 4, 1)))
    assert list(out.labels) == ["true", "pred", "adv pred"]


def test_bad_shapes_name_the_field():
    with pytest.raises(ValueError, match=r"\[N, H, W, C\]"):
        plotting.draw_grid(np.zeros((8, 8, 1)))
    with pytest.raises(ValueError, match="ImagePanel.columns"):
        plotting.draw_panel(plotting.ImagePanel(np.zeros((2, 3, 8, 8, 1)), ("a", "b")))
    with pytest.raises(ValueError, match=r"ImagePanel.labels\['true'\]"):
        plotting.draw_panel(
            plotting.ImagePanel(np.zeros((2, 1, 8, 8, 1)), ("a",), "", {"true": [1]})
        )


def test_save_images_writes_a_png(tmp_path):
    path = tmp_path / "images" / "reconstruction_6.png"
    panel = plotting.ImagePanel(np.zeros((2, 2, 8, 8, 1)), ("target", "reconstruction"), "x")
    plotting.save_images(str(path), panel, title="JIIO reconstructions, step 6")
    with Image.open(path) as img:
        assert img.size[0] >= 2 * 64 and img.mode == "RGB"
