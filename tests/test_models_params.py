"""Parameter counts of the MDEQ models vs the PyTorch reference (locuslab/JIIO-DEQ).

The reference counts are derived by hand below, layer by layer from the PyTorch module
definitions (``lib/models/basic_ops.py``, ``lib/models/mdeq_core.py``), independently of the JAX
code; ours come from ``jax.eval_shape(model.init, key)`` (no allocation, so the 40.8M-parameter
CelebA generator is cheap). Parameter copies that the reference keeps for its backward pass
(``fullstage_copy``, ``*_copy``) are duplicates and not counted. Weight-normed convs count ``v``
(the kernel) plus ``g`` (one scale per output channel).
"""

from __future__ import annotations

import jax
import pytest

from jiio_jax import models


def conv(cin, cout, k, bias=False):
    return cin * cout * k * k + (cout if bias else 0)


def gn(c):
    return 2 * c


def linear(cin, cout):
    return cin * cout + cout


def wn_conv(cin, cout, k):
    return conv(cin, cout, k) + cout


def block(c, e, film_in=None, with_unused_film=False):
    n = wn_conv(c, e * c, 3) + gn(e * c) + wn_conv(e * c, c, 3) + gn(c) + gn(c)
    if film_in is not None:
        n += linear(film_in, 2 * e * c)  # film1 (used)
        if with_unused_film:
            n += 2 * linear(film_in, 2 * c)  # film2, film3 (registered, never called)
    return n


def mdeq_module(channels, e, film_dim=None, with_unused_film=False):
    k = len(channels)
    film_in = None if film_dim is None else film_dim // k
    n = sum(block(c, e, film_in, with_unused_film) for c in channels)
    for i in range(k):
        for j in range(k):
            if j > i:  # UpsampleModule: 1x1 conv + GN
                n += conv(channels[j], channels[i], 1) + gn(channels[i])
            elif j < i:  # DownsampleModule: chain of stride-2 3x3 convs + GN
                for s in range(i - j):
                    out = channels[i] if s == i - j - 1 else channels[j]
                    n += conv(channels[j], out, 3) + gn(out)
        n += wn_conv(channels[i], channels[i], 1) + gn(channels[i])  # post-fuse
    return n


def classifier(image_c, channels, e, head, final, num_classes):
    c0 = channels[0]
    stem = conv(image_c, c0, 3) + gn(c0) + conv(c0, c0, 3) + gn(c0)
    if len(channels) > 2:
        stem += conv(c0, c0, 1) + gn(c0)
    h = 0
    for c, w in zip(channels, head, strict=True):
        h += conv(c, w, 1) + conv(w, w, 3) + conv(w, 4 * w, 1)  # BatchNorm(affine=False): 0
        if c != 4 * w:
            h += conv(c, 4 * w, 1) + gn(4 * w)
    for i in range(len(channels) - 1):
        h += conv(4 * head[i], 4 * head[i + 1], 3, bias=True) + gn(4 * head[i + 1])
    h += conv(4 * head[-1], final, 1, bias=True) + gn(final) + linear(final, num_classes)
    return {"injection": stem, "cell": mdeq_module(channels, e), "head": h}


def generator(image_shape, channels, e, latent_dim):
    hh, ww, cimg = image_shape
    maps = sum(linear(latent_dim, (hh // 2**i) * (ww // 2**i) * c) for i, c in enumerate(channels))
    total, c0 = sum(channels), channels[0]
    interp = conv(total, total, 1, bias=True) + gn(total) + conv(total, c0, 3, bias=True)
    upsample = gn(c0) + conv(c0, c0, 3) + gn(c0) + conv(c0, cimg, 3)  # ConvT, no bias
    return {"injection": maps, "cell": mdeq_module(channels, e), "head": interp + upsample}


def meta(image_shape, channels, e, context_dim, n_way, pool, with_unused_film=False):
    hh, ww, cimg = image_shape
    c0 = channels[0]
    feats = sum(((hh // 2**i) // pool) * ((ww // 2**i) // pool) * c for i, c in enumerate(channels))
    head = sum(gn(c) for c in channels) + linear(feats, n_way)
    film = sum(linear(context_dim // len(channels), 2 * e * c) for c in channels)
    cell = mdeq_module(channels, e, context_dim, with_unused_film)
    return {"injection": conv(cimg, c0, 3) + gn(c0) + film, "cell": cell - film, "head": head}


REFERENCE = {
    "mnist_cls": classifier(1, (24, 24), 5, (8, 16), 200, 10),
    "cifar_cls": classifier(3, (24, 24), 5, (8, 16), 200, 10),
    "celeba_gen": generator((64, 64, 3), (32, 64, 128, 256), 5, 128),
    "celeba_gen_tiny": generator((64, 64, 3), (24, 24), 5, 128),
    "omniglot_meta": meta((28, 28, 1), (64, 128), 5, 400, 5, 7),
}
"""Reference counts split as our parameter dict is (injection / cell / head). The meta learner's
FiLM layers live in the reference's blocks; they are moved to ``injection`` here, as in ours."""

UNUSED_FILM = {
    "omniglot_meta": meta((28, 28, 1), (64, 128), 5, 400, 5, 7, True)["cell"]
    - REFERENCE["omniglot_meta"]["cell"]
}
"""Parameters of the reference's registered-but-unused ``film2``/``film3`` layers."""


def _model(name):
    cfg = models.get_config(name)
    if cfg.num_classes is not None:
        return models.MDEQClassifier(cfg)
    if cfg.latent_dim is not None:
        return models.MDEQGenerator(cfg)
    return models.MDEQMetaLearner(cfg)


@pytest.mark.parametrize("name", sorted(REFERENCE))
def test_parameter_counts_match_reference(name):
    shapes = jax.eval_shape(_model(name).init, jax.random.key(0))
    ours = {part: models.count_params(tree) for part, tree in shapes.items()}
    assert ours == REFERENCE[name]


def test_celeba_latent_maps_size():
    # Linear 128 -> C_i*H_i*W_i for branches 32x64x64, 64x32x32, 128x16x16, 256x8x8.
    shapes = jax.eval_shape(_model("celeba_gen").init, jax.random.key(0))
    assert models.count_params(shapes["injection"]) == 31_703_040
    kernels = [shapes["injection"][f"map{i}"]["kernel"].shape for i in range(4)]
    assert kernels == [(128, 131072), (128, 65536), (128, 32768), (128, 16384)]


def test_unused_film_layers_are_not_built():
    # The reference registers film2/film3 in every meta block but never calls them.
    assert UNUSED_FILM["omniglot_meta"] == 154_368
    shapes = jax.eval_shape(_model("omniglot_meta").init, jax.random.key(0))
    assert set(shapes["injection"]["film"]) == {"film0", "film1"}
