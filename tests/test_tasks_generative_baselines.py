"""Table 1's baselines: the conv decoder, the RAE, and JIIO refinement of encoder latents.

The conv-decoder models compile in seconds; the MDEQ-VAE's JIIO refinement uses a tiny
single-branch MDEQ (8x8x1 images, 4-d latent) as ``test_tasks_generative.py`` does.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_generative_model_config

from jiio_jax.models.conv_decoder import ConvDecoder
from jiio_jax.tasks.generative import task_from_model_config

pytestmark = pytest.mark.usefixtures("fast_compile")

F32 = jnp.float32
SIZE, B = 8, 4
STEP = jnp.asarray(5, jnp.int32)


def model_config(method="vae", decoder="conv", **changes):
    m = tiny_generative_model_config(method)
    m.decoder = decoder
    m.vae.update(encoder_channels=(4,), groups=2, dropout=0.0, kl_warmup_steps=10)
    m.conv_decoder.update(channels=(4, 8), groups=2)
    m.jac_weight = 0.0
    for key, value in changes.items():
        section, _, field = key.rpartition(".")
        (m[section] if section else m)[field] = value
    return m


def make_task(method="vae", decoder="conv", **changes):
    return task_from_model_config(model_config(method, decoder, **changes), SIZE, 1)


def make_images(seed=0, n=B):
    return jax.random.uniform(jax.random.key(seed), (n, SIZE, SIZE, 1), F32, -1.0, 1.0)


# -- the conv decoder ---------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(8, 8, 1), (6, 10, 3)])
def test_conv_decoder_shapes_range_and_independent_samples(shape):
    decoder = ConvDecoder((4, 8), shape, groups=2)
    latents = jax.random.normal(jax.random.key(0), (3, 5))
    params = decoder.init(jax.random.key(1), latents)
    out = decoder.apply(params, latents)
    assert out.shape == (3, *shape)
    assert float(jnp.max(jnp.abs(out))) <= 1.0
    # Per-sample normalisation: an image depends on its own latent only.
    alone = decoder.apply(params, latents[1:2])
    np.testing.assert_allclose(out[1:2], alone, atol=1e-6)


# -- configuration errors -----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("method", "decoder", "changes", "field"),
    [
        ("jiio", "conv", {}, "decoder"),
        ("vae", "dense", {}, "decoder"),
        ("gan", "conv", {}, "method"),
        ("jiio", "mdeq", {"refine_with_jiio": True}, "refine_with_jiio"),
        ("vae", "conv", {"refine_with_jiio": True}, "refine_with_jiio"),
        ("rae", "mdeq", {"rae.decoder_reg": "gradient"}, "decoder_reg"),
        ("rae", "conv", {"rae.decoder_reg": "l1"}, "decoder_reg"),
        ("rae", "conv", {"rae.latent_weight": -1.0}, "latent_weight"),
        ("vae", "conv", {"conv_decoder.groups": 3}, "conv_decoder.groups"),
        ("vae", "conv", {"conv_decoder.channels": ()}, "conv_decoder"),
    ],
)
def test_bad_config_raises_naming_the_field(method, decoder, changes, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_task(method, decoder, **changes)


# -- losses -------------------------------------------------------------------------------------
@functools.cache
def setup(method, decoder, **changes):
    task = make_task(method, decoder, **changes)
    params = task.init_params(jax.random.key(1), {"image": make_images()})
    grad = jax.jit(jax.value_and_grad(task.loss, has_aux=True))
    return task, params, grad


@pytest.mark.parametrize("method", ["vae", "rae"])
def test_conv_models_loss_and_grads(method):
    task, params, grad = setup(method, "conv")
    assert set(params) == {"encoder", "decoder"}
    (loss, metrics), g = grad(params, {"image": make_images()}, jax.random.key(2), STEP)
    assert np.isfinite(float(loss))
    assert float(metrics["solver_steps"]) == 0.0  # No equilibrium in the conv decoder.
    for part in ("encoder", "decoder"):
        norm = sum(float(jnp.sum(jnp.square(x))) for x in jax.tree.leaves(g[part]))
        assert np.isfinite(norm) and norm > 0, part
    if method == "vae":
        assert {"kl", "kl_weight"} <= set(metrics)
    else:
        assert {"latent_loss", "decoder_loss"} <= set(metrics)


def test_rae_terms_match_their_formulas_and_are_deterministic():
    task, params, grad = setup("rae", "conv")
    images = make_images()
    (loss, metrics), _ = grad(params, {"image": images}, jax.random.key(2), STEP)
    mean, _ = task.encoder.apply({"params": params["encoder"]}, images, train=False)
    pixels = SIZE * SIZE
    latent = 0.5 * float(jnp.mean(jnp.sum(jnp.square(mean), -1))) / pixels
    decoder = sum(float(jnp.sum(jnp.square(p))) for p in jax.tree.leaves(params["decoder"]))
    np.testing.assert_allclose(float(metrics["latent_loss"]), latent, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["decoder_loss"]), decoder / pixels, rtol=1e-5)
    out, _ = task.decode(params, mean)
    np.testing.assert_allclose(
        float(metrics["mse"]), float(jnp.mean(jnp.square(out - images))), rtol=1e-5
    )
    total = float(metrics["mse"]) + 1.0 * latent + 1e-3 * decoder / pixels  # defaults
    np.testing.assert_allclose(float(loss), total, rtol=1e-5)
    # Deterministic: another rng gives the same loss (no reparameterisation noise).
    (again, _), _ = grad(params, {"image": images}, jax.random.key(9), STEP)
    np.testing.assert_allclose(float(again), float(loss), rtol=1e-6)


def test_rae_gradient_penalty_is_the_jacobian_norm():
    task, params, grad = setup("rae", "conv", **{"rae.decoder_reg": "gradient"})
    images = make_images()
    mean, _ = task.encoder.apply({"params": params["encoder"]}, images, train=False)

    def decode(z):  # one sample
        return task.decode(params, z[None])[0][0]

    # ||J||_F^2 per sample (forward mode is undefined for the custom-VJP conv: jacrev).
    exact = np.mean([float(jnp.sum(jnp.square(jax.jacrev(decode)(z)))) for z in mean])
    keys = jax.random.split(jax.random.key(0), 400)
    one = jax.jit(jax.vmap(lambda k: task._decoder_regulariser(params, mean, k)))
    estimate = float(jnp.mean(one(keys)))  # unbiased Hutchinson
    np.testing.assert_allclose(estimate, exact, rtol=0.15)
    (_, metrics), g = grad(params, {"image": images}, jax.random.key(2), STEP)
    assert float(metrics["decoder_loss"]) > 0
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(g))


# -- JIIO refinement of the MDEQ-VAE's encoder latents ------------------------------------------
def test_jiio_refinement_of_vae_latents_improves_psnr():
    changes = {"latent_penalty": 0.0, "jiio.max_steps": 20}
    plain = make_task("vae", "mdeq", **changes)
    refined = make_task("vae", "mdeq", refine_with_jiio=True, **changes)
    images = make_images(3)
    params = plain.init_params(jax.random.key(1), {"image": images})
    key = jax.random.key(4)
    before, z_enc, out_enc, _ = jax.jit(plain.reconstruct_and_score)(params, images, key)
    after, z_ref, out_ref, _ = jax.jit(refined.reconstruct_and_score)(params, images, key)
    assert z_ref.shape == z_enc.shape == (B, 4)
    assert out_ref.shape == out_enc.shape == images.shape
    assert after["psnr"].shape == (B,)
    # The start guard: never worse than the encoder's latent (up to the two paths' equilibrium
    # solves: the guard's start solve vs the decoder's 6-step forward solve); and on average
    # JIIO improves on it.
    assert np.all(np.asarray(after["psnr"]) >= np.asarray(before["psnr"]) - 0.02)
    assert float(jnp.mean(after["psnr"])) > float(jnp.mean(before["psnr"])) + 0.1
    assert float(jnp.max(jnp.abs(z_ref - z_enc))) > 1e-3  # The latents moved.


# -- the :small training runs of the new Table 1 rows --------------------------------------------
def _small_run(tmp_path, **model):
    """Trains ``configs/digits_gen.py:small`` (4 steps) with ``model`` fields, then scores it
    with the ``psnr`` evaluation; returns ``(final metrics, psnr results, config)``."""
    import helpers

    from jiio_jax.evaluation import EvalOptions, run_evaluation
    from jiio_jax.train import train_and_evaluate

    config = helpers.load_config("digits_gen", "small")
    config.model.update(model)
    workdir = str(tmp_path / "run")
    final = train_and_evaluate(config, workdir)
    options = EvalOptions(output_dir=str(tmp_path / "eval"), num_examples=8, batch_size=4)
    return final, run_evaluation("psnr", config, workdir, options), config


@pytest.mark.parametrize("method", ["vae", "rae"])
def test_small_conv_decoder_training_run(tmp_path, method):
    final, results, config = _small_run(tmp_path, method=method, decoder="conv")
    assert final["step"] == config.num_train_steps
    assert np.isfinite(final["eval/psnr"]) and np.isfinite(final["train/loss"])
    assert results["method"] == method and results["decoder"] == "conv"
    assert results["num_images"] == 8 and np.isfinite(results["psnr_mean"])
    assert results["residual_mean"] == 0.0  # No equilibrium solve.


@pytest.mark.slow
def test_small_mdeq_vae_run_refined_by_jiio(tmp_path):
    config_changes = {"method": "vae", "jac_weight": 0.0}
    final, plain, config = _small_run(tmp_path, **config_changes)
    assert final["step"] == config.num_train_steps
    from jiio_jax.evaluation import EvalOptions, run_evaluation

    config.model.refine_with_jiio = True
    options = EvalOptions(output_dir=str(tmp_path / "refined"), num_examples=8, batch_size=4)
    refined = run_evaluation("psnr", config, str(tmp_path / "run"), options)
    assert refined["latents_from"] == "VAE encoder means refined by JIIO"
    np.testing.assert_allclose(refined["psnr_encoder_mean"], plain["psnr_mean"], rtol=1e-5)
    assert refined["psnr_mean"] >= refined["psnr_encoder_mean"] - 0.05
