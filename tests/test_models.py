"""Tests of the MDEQ layers, cell, heads and full models (shapes, semantics, solves, batching)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jiio_jax import jacobian, models
from jiio_jax.models import layers
from jiio_jax.solvers import Anderson, Status

pytestmark = pytest.mark.usefixtures("fast_compile")

F32 = jnp.float32


def _model_cls(cfg):
    if cfg.num_classes is not None:
        return models.MDEQClassifier
    if cfg.latent_dim is not None:
        return models.MDEQGenerator
    return models.MDEQMetaLearner


def _inputs(model, batch, key=1, dtype=F32):
    example = model._example_input(dtype)
    leaves, treedef = jax.tree.flatten(example)
    keys = jax.random.split(jax.random.key(key), len(leaves))
    return jax.tree.unflatten(
        treedef,
        [jax.random.normal(k, (batch, *x.shape), dtype) for k, x in zip(keys, leaves, strict=True)],
    )


# ---------------------------------------------------------------------------------------------
# Layers.
# ---------------------------------------------------------------------------------------------


def _np_resize_align_corners(x, h_out, w_out):
    """Straightforward loop implementation of torch's bilinear, align_corners=True."""
    h_in, w_in, c = x.shape
    out = np.zeros((h_out, w_out, c))
    for i in range(h_out):
        sy = i * (h_in - 1) / (h_out - 1) if h_out > 1 else 0.0
        y0 = int(np.floor(sy))
        y1 = min(y0 + 1, h_in - 1)
        fy = sy - y0
        for j in range(w_out):
            sx = j * (w_in - 1) / (w_out - 1) if w_out > 1 else 0.0
            x0 = int(np.floor(sx))
            x1 = min(x0 + 1, w_in - 1)
            fx = sx - x0
            top = (1 - fx) * x[y0, x0] + fx * x[y0, x1]
            bot = (1 - fx) * x[y1, x0] + fx * x[y1, x1]
            out[i, j] = (1 - fy) * top + fy * bot
    return out


@pytest.mark.parametrize("shape_in,shape_out", [((4, 4), (16, 16)), ((3, 5), (7, 4))])
def test_resize_align_corners_matches_loop_reference(shape_in, shape_out):
    x = np.random.default_rng(0).normal(size=(*shape_in, 3))
    got = layers.resize_bilinear_align_corners(jnp.asarray(x), shape_out)
    np.testing.assert_allclose(got, _np_resize_align_corners(x, *shape_out), rtol=1e-12, atol=1e-12)


def test_resize_align_corners_keeps_corners_and_differs_from_half_pixel():
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 4, 4, 2)))  # leading batch axis
    y = layers.resize_bilinear_align_corners(x, (8, 8))
    for i, j in [(0, 0), (0, -1), (-1, 0), (-1, -1)]:
        np.testing.assert_allclose(y[:, i, j], x[:, i, j], rtol=1e-12)
    half_pixel = jax.image.resize(x, (2, 8, 8, 2), "bilinear")
    assert not np.allclose(y, half_pixel)
    # A linear ramp is reproduced exactly.
    ramp = jnp.broadcast_to(jnp.arange(4.0)[:, None, None], (4, 4, 1))
    np.testing.assert_allclose(
        layers.resize_bilinear_align_corners(ramp, (7, 4))[:, 0, 0], np.linspace(0, 3, 7)
    )


def test_resize_rejects_bad_size():
    with pytest.raises(ValueError, match="size"):
        layers.resize_bilinear_align_corners(jnp.zeros((4, 4, 1)), (0, 3))


def test_upsample_nearest_repeats_pixels():
    x = jnp.arange(4.0).reshape(2, 2, 1)
    y = layers.upsample_nearest(x, 2)
    np.testing.assert_array_equal(
        y[..., 0], [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]
    )


def test_group_norm_matches_numpy_and_never_couples_samples():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(3, 5, 4, 6)) * 3 + 1
    gn = layers.GroupNorm(3, param_dtype=jnp.float64)
    params = gn.init(jax.random.key(0), x)
    y = gn.apply(params, x)
    xg = x.reshape(3, 5, 4, 3, 2)
    mean = xg.mean(axis=(1, 2, 4), keepdims=True)
    var = xg.var(axis=(1, 2, 4), keepdims=True)
    np.testing.assert_allclose(y, ((xg - mean) / np.sqrt(var + 1e-5)).reshape(x.shape), atol=1e-12)
    x2 = x.copy()
    x2[1:] *= 10.0
    np.testing.assert_allclose(gn.apply(params, x2)[0], y[0], atol=1e-12)  # sample 0 unchanged
    # Unbatched input is one sample.
    np.testing.assert_allclose(gn.apply(params, x[0]), y[0], atol=1e-12)


def test_group_norm_rejects_indivisible_channels():
    with pytest.raises(ValueError, match="num_groups"):
        layers.GroupNorm(4).init(jax.random.key(0), jnp.zeros((2, 2, 6)))


@pytest.mark.parametrize("std", [None, 0.01])
def test_weight_norm_conv_init_does_what_it_says(std):
    init = layers.torch_kernel_init if std is None else layers.normal_init(std)
    conv = layers.WeightNormConv(64, 3, kernel_init=init, param_dtype=jnp.float64)
    params = conv.init(jax.random.key(0), jnp.zeros((6, 6, 32)))["params"]
    v, g = params["v"], params["g"]
    np.testing.assert_allclose(g, jnp.sqrt(jnp.sum(v**2, axis=(0, 1, 2))), rtol=1e-12)
    # The effective kernel at init is v itself, so its statistics are the initialiser's.
    x = jax.random.normal(jax.random.key(1), (6, 6, 32), jnp.float64)
    ref = jax.lax.conv_general_dilated(
        x[None], v, (1, 1), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
    )[0]
    np.testing.assert_allclose(conv.apply({"params": params}, x), ref, rtol=1e-10, atol=1e-12)
    fan_in = 3 * 3 * 32
    expected_std = std if std is not None else 1.0 / np.sqrt(3 * fan_in)  # U(+-1/sqrt(fan_in))
    assert abs(float(jnp.std(v)) / expected_std - 1) < 0.05


# ---------------------------------------------------------------------------------------------
# Configs and validation.
# ---------------------------------------------------------------------------------------------


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="block_groups"):
        models.MDEQConfig(image_shape=(8, 8, 3), channels=(6, 6), block_groups=4)
    with pytest.raises(ValueError, match="image_shape"):
        models.MDEQConfig(image_shape=(6, 6, 3), channels=(4, 4, 4), aux_groups=2, block_groups=2)
    with pytest.raises(ValueError, match="context_dim"):
        models.MDEQConfig(
            image_shape=(8, 8, 1), channels=(4, 4), aux_groups=2, num_groups=2, context_dim=5
        )
    with pytest.raises(ValueError, match="dropout"):
        models.TINY_CLS.replace(dropout=1.0)
    with pytest.raises(ValueError, match="norm1_scale_init"):
        models.TINY_CLS.replace(norm1_scale_init=0.0)
    with pytest.raises(ValueError, match="norm1_bias_init"):
        models.TINY_CLS.replace(norm1_bias_init=float("nan"))
    with pytest.raises(ValueError, match="Unknown config"):
        models.get_config("imagenet")
    with pytest.raises(ValueError, match="latent_dim"):
        models.MDEQGenerator(models.TINY_CLS)
    with pytest.raises(TypeError, match="MDEQConfig"):
        models.MDEQClassifier("tiny_cls")


def test_reference_state_sizes():
    # D_z per sample from the reference (JIIO_REFERENCE.md section 3.5).
    expected = {
        "mnist_cls": 23_520,
        "cifar_cls": 30_720,
        "celeba_gen": 245_760,
        "celeba_gen_tiny": 122_880,
        "omniglot_meta": 75_264,
    }
    assert {k: models.get_config(k).state_size for k in expected} == expected


# ---------------------------------------------------------------------------------------------
# Models: shapes, diagnostics, solves.
# ---------------------------------------------------------------------------------------------

OUTPUT_SHAPES = {  # one reference config per model kind (the tiny ones run for real below)
    "mnist_cls": (2, 10),
    "celeba_gen": (2, 64, 64, 3),
    "omniglot_meta": (2, 5),
}


@pytest.mark.parametrize("name", sorted(OUTPUT_SHAPES))
def test_output_and_diagnostic_shapes(name):
    cfg = models.get_config(name)
    model = _model_cls(cfg)(cfg)
    params = jax.eval_shape(model.init, jax.random.key(0))
    inputs = jax.eval_shape(functools.partial(_inputs, model, 2))
    out, info = jax.eval_shape(model, params, inputs)
    assert out.shape == OUTPUT_SHAPES[name]
    assert [z.shape for z in info.z_star] == [(2, *s) for s in cfg.branch_shapes]
    assert info.num_steps.shape == info.residual.shape == info.status.shape == (2,)
    assert info.converged.dtype == jnp.bool_ and info.jac_loss.shape == ()


@pytest.fixture(scope="module")
def tiny_gen():
    """A tiny generator with dropout, its params, one jitted forward and a jitted residual."""
    cfg = models.TINY_GEN.replace(dropout=0.3)
    model = models.MDEQGenerator(cfg, solver=Anderson(max_steps=40, tol=1e-5))
    params = jax.jit(model.init)(jax.random.key(0))

    @jax.jit
    def forward(params, latents, dropout_key, z0):
        return model(params, latents, dropout_key=dropout_key, z0=z0)

    @jax.jit
    def residual(params, latents, masks, z):
        """Relative residual ||f(z) - z|| / ||f(z)|| of each sample's pure cell."""

        def one(lat, mask, zb):
            x = model.inject(lat, params["injection"])._replace(dropout_mask=mask)
            fz = model.cell(zb, x, params["cell"])
            num = sum(jnp.sum((f - zi) ** 2) for f, zi in zip(fz, zb, strict=True))
            return jnp.sqrt(num / sum(jnp.sum(f**2) for f in fz))

        return jax.vmap(one)(latents, masks, z)

    return model, params, forward, residual


def _eval_masks(model, batch):
    return tuple(jnp.ones((batch, c), F32) for c in model.config.channels)


def _zeros(model, batch):
    return jax.tree.map(lambda a: jnp.zeros((batch, *a.shape), a.dtype), model.z0())


def test_generator_reaches_tolerance_at_init(tiny_gen):
    model, params, forward, residual = tiny_gen
    latents = _inputs(model, 4)
    # dropout_key=None: evaluation (no dropout), the model's state at init.
    images, info = forward(params, latents, None, _zeros(model, 4))
    assert images.shape == (4, 16, 16, 3) and bool(jnp.all(jnp.abs(images) <= 1))
    assert bool(jnp.all(info.converged)), info.residual
    assert bool(jnp.all(info.status == Status.CONVERGED))
    assert bool(jnp.all(info.residual <= 1e-5)) and bool(jnp.all(info.num_steps < 40))
    # The returned state is an equilibrium of the pure cell.
    res = residual(params, latents, _eval_masks(model, 4), info.z_star)
    assert bool(jnp.all(res <= 1.1e-5)), res
    # Warm start from the equilibrium: done after the first evaluation or two.
    _, info2 = forward(params, latents, None, info.z_star)
    assert bool(jnp.all(info2.num_steps <= 2)) and bool(jnp.all(info2.converged))


def test_jit_vmap_and_per_sample_agree(tiny_gen):
    model, params, forward, _ = tiny_gen
    latents = _inputs(model, 3, key=5)
    out_model, info = forward(params, latents, None, _zeros(model, 3))

    def pipeline(lat):
        sol = model.solve(model.inject(lat, params["injection"]), params["cell"])
        return model.head(sol.value, params["head"]), sol

    out_vmap, sol = jax.jit(jax.vmap(pipeline))(latents)
    np.testing.assert_allclose(out_model, out_vmap, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(sol.num_steps, info.num_steps)
    # One sample through the same pipeline without vmap.
    out_one, sol_one = jax.jit(pipeline)(latents[1])
    np.testing.assert_allclose(out_one, out_model[1], rtol=1e-4, atol=1e-5)
    assert int(sol_one.num_steps) == int(info.num_steps[1])


def test_classifier_diagnostics_report_the_solve():
    # 12 steps cannot reach tol=1e-8; the diagnostics must say so rather than claim convergence.
    model = models.MDEQClassifier(models.TINY_CLS, solver=Anderson(max_steps=12, tol=1e-8))
    params = jax.jit(model.init)(jax.random.key(0))
    logits, info = jax.jit(model)(params, _inputs(model, 3))
    assert logits.shape == (3, 10) and bool(jnp.all(jnp.isfinite(logits)))
    assert bool(jnp.all(info.num_steps == 12)) and bool(jnp.all(info.status == Status.MAX_STEPS))
    assert bool(jnp.all(~info.converged)) and bool(jnp.all(info.residual < 1.0))


# Equilibrium at init: every config's cell contracts (MDEQConfig, "Contraction at init").
_TINY = ("tiny_cls", "tiny_gen", "tiny_meta")
_REFERENCE = ("mnist_cls", "cifar_cls", "omniglot_meta", "celeba_gen_tiny", "celeba_gen")


def _equilibrium_at_init(name, batch=2):
    """Anderson (m=5, 60 steps, tol 1e-5) from zeros at init; also rho(df/dz) at sample 0's z*."""
    cfg = models.get_config(name)
    model = _model_cls(cfg)(cfg, solver=Anderson(max_steps=60, tol=1e-5, memory=5))
    params = jax.jit(model.init)(jax.random.key(0))
    inputs = _inputs(model, batch)
    _, info = jax.jit(model)(params, inputs)

    @jax.jit
    def radius(params, inputs, z):
        inp, z0 = jax.tree.map(lambda a: a[0], (inputs, z))
        x = model.inject(inp, params["injection"])
        f = lambda zz: model.cell(zz, x, params["cell"])
        return jacobian.spectral_radius(f, z0, jax.random.key(2), num_iters=60)

    return info, radius(params, inputs, info.z_star)


def _assert_converged(info):
    assert bool(jnp.all(info.status == Status.CONVERGED)), (info.status, info.residual)
    assert bool(jnp.all(info.residual <= 1e-5)) and bool(jnp.all(info.num_steps < 60))


@pytest.mark.parametrize("name", _TINY)
def test_tiny_cells_reach_equilibrium_at_init(name):
    info, rho = _equilibrium_at_init(name)
    _assert_converged(info)
    assert float(rho) < 0.9, rho


@pytest.mark.slow
@pytest.mark.parametrize("name", _REFERENCE)
def test_reference_cells_reach_equilibrium_at_init(name):
    info, rho = _equilibrium_at_init(name)
    _assert_converged(info)
    assert float(rho) < 1.0, rho


def test_block_norm_init_follows_the_config():
    cfg = models.TINY_CLS.replace(norm1_scale_init=0.5, norm1_bias_init=2.0)
    params = jax.jit(models.MDEQClassifier(cfg).init)(jax.random.key(0))["cell"]
    for i in range(cfg.num_branches):
        block = params[f"block{i}"]
        np.testing.assert_array_equal(block["gn1"]["scale"], 0.5)
        np.testing.assert_array_equal(block["gn1"]["bias"], 2.0)
        for name in ("gn2", "gn3"):  # the other block norms keep PyTorch's init
            np.testing.assert_array_equal(block[name]["scale"], 1.0)
            np.testing.assert_array_equal(block[name]["bias"], 0.0)
        np.testing.assert_array_equal(params[f"post{i}_gn"]["scale"], cfg.state_norm_scale)


def test_cell_fn_bridge_is_the_model_cell(tiny_gen):
    model, params, _, _ = tiny_gen
    f = models.cell_fn(model.config)

    @jax.jit
    def both(latent):
        x = model.inject(latent, params["injection"])
        z = jax.tree.map(lambda a: a + 0.1, model.z0())
        return f(z, x, params["cell"]), model.cell(z, x, params["cell"])

    for a, b in zip(*both(jnp.ones((16,), F32)), strict=True):
        np.testing.assert_array_equal(a, b)


def test_model_input_validation(tiny_gen):
    model, params, _, _ = tiny_gen
    with pytest.raises(ValueError, match=r"\[B, 16\]"):
        model(params, jnp.zeros((2, 8), F32))
    with pytest.raises(ValueError, match="one sample"):
        model.inject(jnp.zeros((2, 16), F32), params["injection"])
    with pytest.raises(ValueError, match="z"):
        model.cell(
            model.z0()[:1], model.inject(jnp.zeros(16, F32), params["injection"]), params["cell"]
        )


def test_models_are_hashable_static_args():
    a = models.MDEQClassifier(models.TINY_CLS, solver=Anderson(max_steps=7))
    b = models.MDEQClassifier(models.TINY_CLS, solver=Anderson(max_steps=7))
    assert a == b and hash(a) == hash(b)
    assert a != models.MDEQClassifier(models.TINY_CLS)


# ---------------------------------------------------------------------------------------------
# Dropout.
# ---------------------------------------------------------------------------------------------


def test_dropout_masks_values_and_shapes():
    masks = models.dropout_masks(jax.random.key(0), (8, 400), 0.25)
    assert [m.shape for m in masks] == [(8,), (400,)]
    vals = np.unique(np.concatenate([np.asarray(m) for m in masks]))
    np.testing.assert_allclose(vals, [0.0, 1 / 0.75], rtol=1e-6)
    assert abs(float(jnp.mean(masks[1] == 0)) - 0.25) < 0.07


def test_dropout_mask_is_fixed_across_solver_iterations(tiny_gen):
    model, params, forward, residual = tiny_gen
    latents = _inputs(model, 2)
    z0 = _zeros(model, 2)
    key = jax.random.key(3)
    out_a, info_a = forward(params, latents, key, z0)
    out_b, _ = forward(params, latents, key, z0)
    out_c, _ = forward(params, latents, jax.random.key(4), z0)
    out_eval, _ = forward(params, latents, None, z0)
    np.testing.assert_array_equal(out_a, out_b)  # the cell draws no randomness of its own
    assert not np.allclose(out_a, out_c) and not np.allclose(out_a, out_eval)
    # The solve converged to an equilibrium of the cell *with one fixed mask per sample*; a
    # mask redrawn per iteration would leave no fixed point and f(z*) = z* would fail.
    assert bool(jnp.all(info_a.converged))
    masks = jax.vmap(model.dropout_masks)(jax.random.split(key, 2))
    assert bool(jnp.all(residual(params, latents, masks, info_a.z_star) <= 1.1e-5))
    other = jax.vmap(model.dropout_masks)(jax.random.split(jax.random.key(9), 2))
    assert bool(jnp.all(residual(params, latents, other, info_a.z_star) > 1e-3))


# ---------------------------------------------------------------------------------------------
# Meta learner specifics.
# ---------------------------------------------------------------------------------------------


def test_meta_context_changes_the_output_through_film():
    cfg = models.TINY_META
    model = models.MDEQMetaLearner(cfg, solver=Anderson(max_steps=10, tol=1e-6))
    params = jax.jit(model.init)(jax.random.key(0))
    images = jax.random.normal(jax.random.key(1), (2, *cfg.image_shape), F32)
    fwd = jax.jit(model)
    zero = models.MetaInput(images, jnp.zeros((2, cfg.context_dim), F32))
    other = models.MetaInput(images, jnp.ones((2, cfg.context_dim), F32))
    out0, _ = fwd(params, zero)
    out1, _ = fwd(params, other)
    assert out0.shape == (2, 5) and not np.allclose(out0, out1)
    film = model.film(jnp.ones((cfg.context_dim,), F32), params["injection"])
    assert [(s.shape, t.shape) for s, t in film] == [((16,), (16,)), ((32,), (32,))]
