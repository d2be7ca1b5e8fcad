"""Generative / inverse-problem task: corruptions, PSNR, losses and gradients, eval, images.

One tiny single-branch MDEQ (8x8x1 images, 4-d latent) and a batch of 4; the jitted functions
are built once per (method, corruption) and shared, since compiling them dominates the runtime.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import tiny_generative_model_config

from jiio_jax import losses
from jiio_jax.configs import generative as gen_config
from jiio_jax.tasks import corruption, get_task, vae
from jiio_jax.tasks.generative import GenerativeTask, task_from_model_config

pytestmark = pytest.mark.usefixtures("fast_compile")

F32 = jnp.float32
SIZE, B = 8, 4


def tiny_model_config(method="jiio", corruption_kind="none"):
    m = tiny_generative_model_config(method)
    m.corruption = corruption_kind
    m.hole = 3
    m.noise_sigma = 0.2
    m.vae.update(encoder_channels=(4,), groups=2, dropout=0.1, kl_warmup_steps=10)
    m.num_image_examples = 3
    m.num_samples = 5
    return m


def make_task(method="jiio", corruption_kind="none", **changes):
    m = tiny_model_config(method, corruption_kind)
    for key, value in changes.items():
        section, _, field = key.rpartition(".")
        (m[section] if section else m)[field] = value
    return task_from_model_config(m, SIZE, 1)


def make_batch(seed=0):
    images = jax.random.uniform(jax.random.key(seed), (B, SIZE, SIZE, 1), F32, -1.0, 1.0)
    return {"image": images, "label": jnp.zeros((B,), jnp.int32)}


@functools.cache
def setup(method, corruption_kind):
    """Task, params and the jitted value-and-grad / evaluate / images (compiled lazily)."""
    task = make_task(method, corruption_kind)
    params = task.init_params(jax.random.key(1), make_batch())
    grad = jax.jit(jax.value_and_grad(task.loss, has_aux=True))
    return task, params, grad, jax.jit(task.evaluate), jax.jit(task.images)


STEP = jnp.asarray(5, jnp.int32)


# -- corruptions and metrics ------------------------------------------------------------------
def test_psnr_matches_hand_computation():
    rng = np.random.default_rng(0)
    target = rng.uniform(-1, 1, (3, 4, 5, 2)).astype(np.float32)
    pred = np.clip(target + rng.normal(0, 0.1, target.shape), -1, 1).astype(np.float32)
    pred[1] = target[1] + 0.2  # [0, 1] error 0.1 everywhere: MSE 0.01, exactly 20 dB
    pred[2] = target[2]  # identical: capped at 100 dB
    out = np.asarray(losses.psnr(jnp.asarray(pred), jnp.asarray(target)))
    a, b = pred[0] / 2 + 0.5, target[0] / 2 + 0.5
    expected0 = 10 * np.log10(1.0 / np.mean((a - b) ** 2))
    np.testing.assert_allclose(out, [expected0, 20.0, 100.0], rtol=1e-5)


def test_inpaint_mask_is_one_square_inside_the_image():
    h, w, hole = 10, 7, 4
    keys = jax.random.split(jax.random.key(0), 400)
    masks = np.asarray(jax.vmap(lambda k: corruption.inpaint_mask(k, h, w, hole))(keys))
    assert masks.shape == (400, h, w, 1) and masks.dtype == np.float32
    assert set(np.unique(masks)) == {0.0, 1.0}
    corners = []
    for m in masks[..., 0]:
        rows, cols = np.nonzero(m == 0)
        assert len(rows) == hole * hole
        r0, c0 = rows.min(), cols.min()
        assert rows.max() - r0 == hole - 1 and cols.max() - c0 == hole - 1  # one solid square
        corners.append((r0, c0))
    r0s, c0s = zip(*corners, strict=True)
    # Every position that keeps the hole inside is reachable, including the last ones.
    assert set(r0s) == set(range(h - hole + 1)) and set(c0s) == set(range(w - hole + 1))


def test_corrupt_inpaint_masks_each_image_differently_and_keeps_clean():
    clean = make_batch()["image"]
    before = np.asarray(clean).copy()
    obs = corruption.corrupt(jax.random.key(3), clean, "inpaint", hole=3)
    np.testing.assert_array_equal(np.asarray(clean), before)
    assert obs.mask.shape == (B, SIZE, SIZE, 1)
    np.testing.assert_array_equal(np.asarray(obs.image), before * np.asarray(obs.mask))
    assert len({np.asarray(m).tobytes() for m in obs.mask}) > 1


def test_denoise_noise_has_the_configured_sigma():
    clean = jax.random.uniform(jax.random.key(0), (64, 16, 16, 3), F32, -1, 1)
    for sigma in (0.2, 0.4):
        obs = corruption.corrupt(jax.random.key(1), clean, "denoise", noise_sigma=sigma)
        noise = np.asarray(obs.image - clean)
        assert obs.image.dtype == F32 and np.all(np.asarray(obs.mask) == 1)
        assert abs(noise.std() - sigma) < 0.01 * sigma and abs(noise.mean()) < 0.01 * sigma
    other = corruption.corrupt(jax.random.key(2), clean, "denoise", noise_sigma=0.2)
    assert not np.allclose(np.asarray(other.image), np.asarray(obs.image))


def test_kl_divergence_and_warmup():
    mean = jnp.asarray([[0.5, -1.0], [0.0, 0.0]], F32)
    log_sigma = jnp.asarray([[0.1, -0.3], [0.0, 0.0]], F32)
    s2 = np.exp(2 * np.asarray(log_sigma))
    expected = 0.5 * np.sum(np.asarray(mean) ** 2 + s2 - 2 * np.asarray(log_sigma) - 1, -1)
    np.testing.assert_allclose(np.asarray(vae.kl_divergence(mean, log_sigma)), expected, 1e-6)
    weights = [float(vae.kl_weight(jnp.asarray(s, jnp.int32), 10)) for s in (0, 5, 10, 50)]
    assert weights == [0.0, 0.5, 1.0, 1.0]
    assert float(vae.kl_weight(jnp.asarray(0, jnp.int32), 0)) == 1.0


# -- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "changes, field",
    [
        ({"method": "gan"}, "config.model.method"),
        ({"corruption": "blur"}, "config.model.corruption"),
        ({"corruption": "inpaint", "hole": SIZE + 1}, "config.model.hole"),
        ({"noise_sigma": 0.0}, "config.model.noise_sigma"),
        ({"arch": "nope"}, "config.model.arch"),
        ({"mdeq.bogus": 3}, "config.model.mdeq"),
        ({"mdeq.block_groups": 3}, "config.model.mdeq"),
        ({"jiio.max_steps": 0}, "config.model.jiio: `max_steps`"),
        ({"jiio.anderson_type": "type3"}, "config.model.jiio"),
        ({"forward.name": "newton"}, "config.model.forward: "),
        ({"backward.name": "magic"}, "config.model.backward: "),
        ({"jac_weight": -1.0}, "config.model.jac_weight"),
        ({"jac_point": "anywhere"}, "config.model.jac_point"),
        ({"latent_penalty": -1.0}, "config.model.latent_penalty"),
        ({"method": "vae", "vae.groups": 3}, "config.model.vae.groups"),
    ],
)
def test_bad_config_raises_naming_the_field(changes, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        make_task(**changes)


def test_registered_and_checks_image_shape():
    assert get_task("generative") is GenerativeTask
    task = make_task()
    bad = {"image": jnp.zeros((B, SIZE, SIZE, 3), F32), "label": jnp.zeros((B,), jnp.int32)}
    with pytest.raises(ValueError, match="config.data"):
        task.init_params(jax.random.key(0), bad)


def test_named_arch_with_overrides():
    m = gen_config.default_model_config()
    m.arch = "tiny_gen"
    m.mdeq.latent_dim = 6
    task = task_from_model_config(m, 16, 1)
    assert task.arch.channels == (8, 16) and task.arch.latent_dim == 6
    assert task.arch.image_shape == (16, 16, 1)


# -- losses and gradients ---------------------------------------------------------------------
def _check_loss_and_grads(method, corruption_kind):
    task, params, grad, _, _ = setup(method, corruption_kind)
    (loss, metrics), grads = grad(params, make_batch(), jax.random.key(2), STEP)
    assert loss.shape == () and loss.dtype == F32 and np.isfinite(float(loss))
    expected = {"mse", "jac_loss", "solver_steps", "residual"}
    expected |= {"kl", "kl_weight"} if method == "vae" else {"inner_cost", "stationarity"}
    assert expected <= set(metrics)
    for name, value in metrics.items():
        assert value.shape == () and value.dtype == F32 and np.isfinite(float(value)), name
    assert float(metrics["jac_loss"]) > 0
    parts = {f"decoder/{k}": v for k, v in grads["decoder"].items()}
    if method == "vae":
        parts["encoder"] = grads["encoder"]
        assert float(metrics["kl_weight"]) == 0.5  # step 5 of a 10-step warm-up
    for name, tree in parts.items():
        leaves = jax.tree.leaves(tree)
        assert all(leaf.dtype == F32 for leaf in leaves), name
        assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in leaves), name
        assert sum(float(jnp.sum(jnp.square(leaf))) for leaf in leaves) > 0, name


@pytest.mark.parametrize("method, corruption_kind", [("jiio", "inpaint"), ("vae", "denoise")])
def test_loss_and_grads_finite_and_nonzero(method, corruption_kind):
    _check_loss_and_grads(method, corruption_kind)


@pytest.mark.slow
@pytest.mark.parametrize(
    "method, corruption_kind",
    [("jiio", "none"), ("jiio", "denoise"), ("vae", "none"), ("vae", "inpaint")],
)
def test_loss_and_grads_other_corruptions(method, corruption_kind):
    _check_loss_and_grads(method, corruption_kind)


@pytest.mark.slow
def test_decoder_dropout_equilibrium_jacobian_and_other_solvers():
    task = make_task(
        "jiio",
        "denoise",
        **{
            "mdeq.dropout": 0.25,
            "jac_point": "equilibrium",
            "backward": {"name": "one_step"},
            "forward.name": "broyden",
        },
    )
    params = task.init_params(jax.random.key(1), make_batch())
    grad = jax.jit(jax.value_and_grad(task.loss, has_aux=True))
    (loss, metrics), grads = grad(params, make_batch(), jax.random.key(2), STEP)
    assert np.isfinite(float(loss)) and float(metrics["jac_loss"]) > 0
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


@pytest.mark.slow
def test_latent_penalty_shrinks_the_latents():
    batch = make_batch()
    norms = []
    for penalty in (0.0, 2.0):
        task = make_task("jiio", "none", latent_penalty=penalty)
        params = task.init_params(jax.random.key(1), batch)
        _, _, latents, _ = jax.jit(task._reconstruct)(params, batch["image"], jax.random.key(3))
        norms.append(float(jnp.mean(jnp.linalg.norm(latents, axis=-1))))
    assert norms[1] < 0.5 * norms[0], norms


def test_inpaint_outer_loss_uses_the_clean_image():
    task, params, grad, _, _ = setup("jiio", "inpaint")
    batch, key = make_batch(), jax.random.key(2)
    # The hidden pixels of this key's holes (loss splits the key: observation first).
    mask = task._observe(jax.random.split(key)[0], batch["image"]).mask
    hidden = np.asarray(mask) == 0
    changed = dict(batch, image=jnp.where(jnp.asarray(hidden), -batch["image"], batch["image"]))
    (_, m1), _ = grad(params, batch, key, STEP)
    (_, m2), _ = grad(params, changed, key, STEP)
    # The inner problem never sees the hidden pixels; the outer MSE does.
    np.testing.assert_allclose(float(m1["inner_cost"]), float(m2["inner_cost"]), rtol=1e-6)
    assert abs(float(m1["mse"]) - float(m2["mse"])) > 1e-4


def test_jiio_reconstruction_beats_the_zero_latent():
    """On images the decoder can produce, JIIO's x* (from x = 0) gets much closer than x = 0."""
    task, params, _, evaluate, _ = setup("jiio", "inpaint")
    decode = jax.jit(task.model)
    truth = 2 * jax.random.normal(jax.random.key(5), (B, task.arch.latent_dim), F32)
    images, _ = decode(params["decoder"], truth)
    batch = {"image": images, "label": jnp.zeros((B,), jnp.int32)}
    at_zero, _ = decode(params["decoder"], jnp.zeros_like(truth))
    mse0 = np.asarray(jnp.mean(jnp.square(at_zero - images), axis=(1, 2, 3)))
    mse = np.asarray(evaluate(params, batch, jax.random.key(3))["mse"])
    assert np.all(mse < 0.5 * mse0) and mse.mean() < 0.3 * mse0.mean(), (mse, mse0)


# -- evaluation and images --------------------------------------------------------------------
def test_evaluate_per_example_metrics():
    _, params, _, evaluate, _ = setup("jiio", "inpaint")
    metrics = evaluate(params, make_batch(), jax.random.key(3))
    assert set(metrics) == {"psnr", "mse", "residual", "psnr_corrupted"}
    for name, value in metrics.items():
        assert value.shape == (B,) and value.dtype == F32, name
        assert bool(jnp.all(jnp.isfinite(value))), name
    # [0, 1]-scale PSNR of the [-1, 1]-scale MSE: the MSE shrinks by 4.
    np.testing.assert_allclose(
        np.asarray(metrics["psnr"]), -10 * np.log10(np.asarray(metrics["mse"]) / 4), rtol=1e-5
    )


@pytest.mark.parametrize(
    "method, corruption_kind",
    [("jiio", "inpaint"), pytest.param("vae", "denoise", marks=pytest.mark.slow)],
)
def test_images_shapes_and_range(method, corruption_kind):
    _, params, _, _, images = setup(method, corruption_kind)
    out = images(params, make_batch(), jax.random.key(4))
    panel = out["reconstruction"]
    assert panel.columns == ("clean", "observed", "output")
    assert panel.images.shape == (3, 3, SIZE, SIZE, 1)
    assert out["samples"].shape == (5, SIZE, SIZE, 1)
    for name, value in {"reconstruction": panel.images, "samples": out["samples"]}.items():
        assert value.dtype == F32, name
        assert float(jnp.min(value)) >= 0.0 and float(jnp.max(value)) <= 1.0, name
    # The first column is the clean image mapped to [0, 1].
    np.testing.assert_allclose(
        np.asarray(panel.images[:, 0]),
        np.asarray(make_batch()["image"][:3]) / 2 + 0.5,
        atol=1e-6,
    )


def test_gaussian_latent_samples_follow_the_latents():
    task = make_task(num_samples=4000)
    latents = jax.random.normal(jax.random.key(0), (64, 4), F32) * jnp.asarray([3, 1, 1, 0.5])
    latents = latents + 2.0
    draws = np.asarray(task._sample_latents(jax.random.key(1), latents))
    np.testing.assert_allclose(draws.mean(0), np.asarray(latents.mean(0)), atol=0.15)
    np.testing.assert_allclose(draws.std(0), np.asarray(latents.std(0)), rtol=0.08)
    # Fewer latents than dimensions: the ridge keeps the covariance factorisable.
    few = np.asarray(task._sample_latents(jax.random.key(2), latents[:2]))
    assert np.all(np.isfinite(few))


@pytest.mark.slow
def test_loss_under_a_data_mesh():
    """The loss jits over a 4-device ('data',) mesh with the batch sharded (as the loop does)."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jiio_jax.train.mesh import make_data_mesh

    task, params, grad, _, images = setup("jiio", "inpaint")
    mesh = make_data_mesh(jax.devices()[:4])
    batch = jax.device_put(make_batch(), NamedSharding(mesh, P("data")))
    params = jax.device_put(params, NamedSharding(mesh, P()))
    (loss, _), grads = grad(params, batch, jax.random.key(2), STEP)
    (ref, _), _ = grad(jax.device_get(params), make_batch(), jax.random.key(2), STEP)
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-4)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    out = images(params, batch, jax.random.key(4))
    assert bool(jnp.all(jnp.isfinite(out["samples"])))
