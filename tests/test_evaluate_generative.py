"""The generative evaluations (psnr, samples, fid) on a tiny trained digits run, the Fréchet
distance against closed forms, and the command line.

The trained run (``configs/digits_gen.py:small`` with ``OVERRIDES``) is made once per test
session and shared by the pytest-xdist workers through a lock file in the session's shared
temporary directory.
"""

import fcntl
import json
import os
import subprocess
import sys

import helpers
import jax
import ml_collections
import numpy as np
import pytest
import scipy.linalg
from PIL import Image

from jiio_jax.evaluation import EvalOptions, run_evaluation
from jiio_jax.evaluation import features as features_lib
from jiio_jax.evaluation.generative import fit_density

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = helpers.config_file("digits_gen")
# Two steps; no Jacobian penalty (a training-only term: it triples the train-step compile and
# changes nothing evaluated here). The CLI test passes the same overrides.
OVERRIDES = {"num_train_steps": 2, "model.jac_weight": 0.0}


def load_config(**model) -> ml_collections.ConfigDict:
    """``configs/digits_gen.py:small`` with ``OVERRIDES`` (and ``config.model`` fields)."""
    config = helpers.load_config("digits_gen", "small")
    config.num_train_steps = OVERRIDES["num_train_steps"]
    config.model.jac_weight = OVERRIDES["model.jac_weight"]
    config.model.update(model)
    return config


def _shared_tmp(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _train_once(tmp_path_factory, name: str, **model) -> str:
    """Trains ``load_config(**model)`` into a workdir shared by the xdist workers."""
    from jiio_jax.train import train_and_evaluate

    workdir = _shared_tmp(tmp_path_factory) / name
    with open(f"{workdir}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (workdir / "DONE").exists():
            final = train_and_evaluate(load_config(**model), str(workdir))
            assert final["step"] == OVERRIDES["num_train_steps"]
            (workdir / "DONE").touch()
    return str(workdir)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return _train_once(tmp_path_factory, "gen_eval_jiio")


@pytest.fixture
def optimised_classifier(monkeypatch):
    """Trains the FID classifier with XLA's optimisations on: its 500 steps run ~10x slower
    under ``fast_compile``, which only this module's DEQ programs benefit from."""
    train = features_lib.load_or_train_classifier

    def wrapped(*args, **kwargs):
        previous = jax.config.read("jax_disable_most_optimizations")
        jax.config.update("jax_disable_most_optimizations", False)
        try:
            return train(*args, **kwargs)
        finally:
            jax.config.update("jax_disable_most_optimizations", previous)

    monkeypatch.setattr(features_lib, "load_or_train_classifier", wrapped)


def _finite(results, keys):
    for key in keys:
        assert np.isfinite(results[key]), (key, results[key])


# -- psnr -------------------------------------------------------------------------------------
def test_psnr(run, tmp_path):
    # 6 images in batches of 4: the padded last batch must not add or drop images.
    options = EvalOptions(output_dir=str(tmp_path), num_examples=6, batch_size=4, seed=3)
    results = run_evaluation("psnr", load_config(), run, options)
    assert results["evaluation"] == "psnr" and results["checkpoint_step"] == 2
    assert results["num_images"] == 6 and results["corruption"] == "none"
    stats = ("mean", "q25", "median", "q75", "min", "max")
    _finite(results, [f"psnr_{s}" for s in stats] + ["mse_mean", "residual_mean"])
    assert not any(k.startswith("psnr_corrupted") for k in results)
    assert results["psnr_min"] <= results["psnr_q25"] <= results["psnr_median"]
    assert results["psnr_median"] <= results["psnr_q75"] <= results["psnr_max"]
    table = np.loadtxt(tmp_path / "psnr_per_image.csv", delimiter=",", skiprows=1)
    assert table.shape == (6, 4)  # index, psnr, mse, residual
    np.testing.assert_allclose(table[:, 1].mean(), results["psnr_mean"], rtol=1e-4)
    # PSNR on [0, 1] of the [-1, 1]-scale MSE: psnr = -10 log10(mse / 4) per image.
    np.testing.assert_allclose(table[:, 1], -10 * np.log10(table[:, 2] / 4), rtol=1e-4)
    for name in ("psnr_step2.json", "psnr_hist.png", "reconstructions.png"):
        assert (tmp_path / name).exists(), name
    assert json.loads((tmp_path / "psnr_step2.json").read_text()) == results
    # Deterministic (holes, noise and JIIO all seeded by options.seed).
    again = run_evaluation("psnr", load_config(), run, options)
    assert again["psnr_mean"] == results["psnr_mean"]


# -- samples and fid --------------------------------------------------------------------------
def test_samples_and_fid(run, tmp_path, optimised_classifier):
    config = load_config()
    options = EvalOptions(
        output_dir=str(tmp_path / "s"),
        num_examples=12,
        num_samples=10,
        batch_size=4,
        density="gmm",
        num_components=2,
    )
    results = run_evaluation("samples", config, run, options)
    assert results["num_samples"] == 10 and results["num_real"] == 12
    assert results["num_train_latents"] == 12 and results["latents_from"] == "JIIO latents x*"
    density = results["density"]
    assert density["density"] == "gmm" and density["num_components"] == 2
    assert density["latent_dim"] == 16 and len(density["weights"]) == 2
    _finite(results, ["decoder_residual_mean", "train_psnr_mean"])
    for folder, count in (("samples", 10), ("real", 12)):
        files = sorted(os.listdir(tmp_path / "s" / folder))
        assert files == [f"{i:06d}.png" for i in range(count)], folder
        with Image.open(tmp_path / "s" / folder / files[0]) as img:
            assert img.mode == "L" and img.size == (8, 8)
    assert (tmp_path / "s" / "samples_grid.png").exists()

    options = EvalOptions(
        output_dir=str(tmp_path / "f"),
        num_examples=32,
        num_samples=32,
        batch_size=4,
        density="gaussian",
    )
    results = run_evaluation("fid", config, run, options)
    assert results["num_real"] == results["num_fake"] == results["num_real_train"] == 32
    assert results["samples"]["density"]["density"] == "gaussian"
    assert np.isfinite(results["fid"]) and results["fid"] >= 0
    # A 2-step decoder draws blobs; real training digits are far closer to the test digits.
    assert 0 <= results["fid_real_train_vs_test"] < results["fid"] / 2
    assert results["classifier_test_acc"] > 0.9
    assert "not Inception" in results["feature_extractor"]
    assert "fid_vae_prior" not in results
    cache = tmp_path / "f" / features_lib.CLASSIFIER_FILE
    mtime = cache.stat().st_mtime_ns
    extractor = features_lib.load_or_train_classifier(config.data, str(tmp_path / "f"))
    assert cache.stat().st_mtime_ns == mtime  # Reused, not retrained.
    assert extractor.test_accuracy == results["classifier_test_acc"]
    feats = extractor(np.zeros((3, 8, 8, 1), np.float32))
    assert feats.shape == (3, features_lib.FEATURE_DIM)


@pytest.mark.slow
def test_vae_samples_and_fid(tmp_path_factory, tmp_path, optimised_classifier):
    workdir = _train_once(tmp_path_factory, "gen_eval_vae", method="vae")
    options = EvalOptions(
        output_dir=str(tmp_path), num_examples=32, num_samples=32, batch_size=4, density="gaussian"
    )
    results = run_evaluation("fid", load_config(method="vae"), workdir, options)
    assert results["method"] == "vae"
    assert results["samples"]["latents_from"] == "VAE encoder means"
    _finite(results, ["fid", "fid_vae_prior", "fid_real_train_vs_test"])
    assert len(os.listdir(tmp_path / "samples")) == 32


# -- the command line (and the inpainting path) -----------------------------------------------
def test_cli_psnr_inpaint(run, tmp_path):
    # The trained run's config and overrides, evaluated on inpainting: the corruption changes
    # no parameter, so a reconstruction model can be scored on holes.
    out = tmp_path / "eval"
    cmd = [
        sys.executable,
        os.path.join(REPO, "experiments", "evaluate.py"),
        f"--config={CONFIG}:small",
        *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
        "--config.model.corruption=inpaint",
        f"--workdir={run}",
        "--task=psnr",
        "--num_examples=8",
        f"--output_dir={out}",
    ]
    # As fast_compile in this process: most XLA passes off (numerics unchanged).
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}
    proc = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((out / "psnr_step2.json").read_text())
    assert results["num_images"] == 8 and results["corruption"] == "inpaint"
    stats = ("mean", "q25", "median", "q75", "min", "max")
    _finite(results, [f"psnr_corrupted_{s}" for s in stats] + [f"psnr_{s}" for s in stats])
    assert results["psnr_corrupted_q25"] <= results["psnr_corrupted_q75"]
    table = np.loadtxt(out / "psnr_per_image.csv", delimiter=",", skiprows=1)
    assert table.shape == (8, 5)  # index, psnr, psnr_corrupted, mse, residual


# -- bad requests -----------------------------------------------------------------------------
def test_bad_requests(run, tmp_path):
    config = load_config()
    with pytest.raises(ValueError, match="generative"):
        run_evaluation("attack", config, run, EvalOptions(output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="Unknown evaluation"):
        run_evaluation("inception", config, run, EvalOptions(output_dir=str(tmp_path)))
    with pytest.raises(ValueError, match="density"):
        EvalOptions(output_dir=str(tmp_path), density="kde")
    # Unlabelled data: fid refuses before sampling anything.
    path = tmp_path / "unlabelled.npz"
    rng = np.random.default_rng(0)
    np.savez(
        path,
        image_train=rng.integers(0, 256, (16, 8, 8), dtype=np.uint8),
        image_test=rng.integers(0, 256, (8, 8, 8), dtype=np.uint8),
    )
    config.data.update(name="npz", path=str(path))
    with pytest.raises(ValueError, match="labels"):
        run_evaluation("fid", config, run, EvalOptions(output_dir=str(tmp_path / "f")))
    assert not (tmp_path / "f" / "samples").exists()


# -- density fitting and the Fréchet distance (no model) ----------------------------------------
def test_fit_density():
    rng = np.random.default_rng(0)
    latents = np.concatenate([rng.normal(-3, 0.5, (200, 4)), rng.normal(3, 0.5, (200, 4))])
    latents = latents * np.array([1.0, 10.0, 0.1, 1.0])
    draw, details = fit_density(latents, "gmm", 2, seed=1)
    samples = draw(4000)
    assert samples.shape == (4000, 4) and details["converged"]
    np.testing.assert_allclose(details["weights"], [0.5, 0.5], atol=0.01)
    assert np.all(np.abs(samples.mean(0) - latents.mean(0)) < 0.1 * latents.std(0))
    np.testing.assert_allclose(samples.std(0), latents.std(0), rtol=0.1)
    np.testing.assert_array_equal(draw(10), draw(10))  # Deterministic by seed.
    # Draws are shuffled: not grouped by component.
    assert 0.2 < np.mean(samples[:2000, 0] > 0) < 0.8
    draw, details = fit_density(latents, "gaussian", 2, seed=1)
    np.testing.assert_allclose(draw(4000).std(0), latents.std(0), rtol=0.1)
    with pytest.raises(ValueError, match="at least"):
        fit_density(latents[:3], "gmm", 10, seed=0)
    with pytest.raises(ValueError, match="density"):
        fit_density(latents, "kde", 2, seed=0)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(500, 6)) @ rng.normal(size=(6, 6))
    assert features_lib.fid_from_features(feats, feats) == pytest.approx(0, abs=1e-8)
    # Commuting (diagonal) covariances: sum (sqrt(a) - sqrt(b))^2 plus the squared mean gap.
    mu1, mu2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    got = features_lib.frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-12)
    # General covariances: the textbook formula with scipy's sqrtm of the product.
    s1 = np.cov(rng.normal(size=(50, 5)) @ rng.normal(size=(5, 5)), rowvar=False)
    s2 = np.cov(rng.normal(size=(50, 5)), rowvar=False)
    m1, m2 = rng.normal(size=5), rng.normal(size=5)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    reference = np.sum((m1 - m2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
    assert features_lib.frechet_distance(m1, s1, m2, s2) == pytest.approx(reference, rel=1e-8)
    # Rank-deficient covariances (fewer samples than dimensions) stay finite and >= 0.
    few = rng.normal(size=(3, 8))
    value = features_lib.fid_from_features(few, few + 1e-9)
    assert np.isfinite(value) and 0 <= value < 1e-6
    with pytest.raises(ValueError, match="shapes"):
        features_lib.frechet_distance(m1, s1, m2[:4], s2[:4, :4])
    with pytest.raises(ValueError, match="N >= 2"):
        features_lib.feature_statistics(few[:1])
