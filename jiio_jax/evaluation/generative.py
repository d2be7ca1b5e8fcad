r"""Evaluations of ``generative`` runs: test-set PSNR, samples from the latent density, FID.

The counterparts of the reference's ``jiio_vae_test.py --task psnr`` and
``--task get_samples_for_fid`` (``JIIO_REFERENCE.md`` §5.1, §5.3) without their pitfalls
(§7.16): the model runs in eval mode (no dropout; the MDEQ has no train-mode statistics), PSNR
is computed per image on the ``[0, 1]`` scale (peak 1) rather than from per-batch MSEs on the
``[-1, 1]`` scale, and no test image is dropped (the last batch is padded and the padding
masked out, so one compiled program serves every batch).

- :func:`psnr`: JIIO (or the VAE's / RAE's encoder mean, refined by JIIO from there with
  ``config.model.refine_with_jiio``) reconstructs each of the first
  ``options.num_examples`` test images (default all) from its observation under
  ``config.model.corruption``, drawn deterministically from ``options.seed``; per-image PSNR
  (``jiio_jax.losses.psnr``, the same numbers as ``GenerativeTask.evaluate``).
- :func:`samples`: the paper's sampling pipeline. The latents of the first
  ``options.num_examples`` training images (default the whole train split; JIIO latents ``x*``
  or, for VAE / RAE runs, the encoder means, JIIO-refined with ``refine_with_jiio``), inferred
  from the clean images (corruption ``"none"`` whatever the run's corruption) in eval mode, are
  standardised per dimension; a density is
  fitted to them (``options.density``: ``"gmm"``, scikit-learn's full-covariance
  ``GaussianMixture`` with ``options.num_components`` components, or ``"gaussian"``, one
  full-covariance Gaussian), ``options.num_samples`` draws are de-standardised and decoded by the
  MDEQ decoder. Unlike the reference we fit the GMM directly on the standardised latents, without
  its intermediate Keras auxiliary VAE (3x2048 MLPs on the 128-d CelebA latents); our latents are
  16-d on digits. The images go to ``<output_dir>/samples/`` and the first
  ``options.num_examples`` test images (default all) to ``<output_dir>/real/``, one PNG each,
  so external FID tools (pytorch-fid, TTUR) can compare the two folders.
- :func:`fid`: runs :func:`samples` and computes the Fréchet distance between the generated
  images and the real test images in the feature space of a small classifier trained on the
  dataset's labels (``jiio_jax.evaluation.features``; not Inception, so the values are not
  comparable with published FIDs), with the distance between real training and real test images
  as a floor; VAE runs also score draws from the VAE's own prior ``N(0, I)``. Features are taken
  of the images as written to the PNG folders (quantised to 8 bits).
"""

from __future__ import annotations

import os
import re
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from jiio_jax import plotting
from jiio_jax.evaluation import features as features_lib
from jiio_jax.tasks.generative import GenerativeTask

F32 = jnp.float32
GMM_REG_COVAR = 1e-4
"""Ridge on the diagonal of each GMM covariance (standardised latents: 1e-4 of the variance)."""
GAUSSIAN_RIDGE = 1e-6
"""Ridge added to the single Gaussian's covariance (standardised latents)."""
GRID_SIZE = 64
"""Images in ``samples_grid.png``."""

_PNG_NAME = re.compile(r"^\d{6}\.png$")
_STATS = (("mean", None), ("q25", 25), ("median", 50), ("q75", 75))

# Tasks and their jitted functions, per config (so that psnr / samples / fid of one run in one
# process compile once).
_COMPILED: dict[str, dict[str, Any]] = {}


# ---------------------------------------------------------------------------------------------
# Shared pieces.
# ---------------------------------------------------------------------------------------------


def _compiled(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """``{"task", "reconstruct", "decode"}`` for ``config`` (cached)."""
    key = config.to_json_best_effort(sort_keys=True)
    if key in _COMPILED:
        return _COMPILED[key]
    task = GenerativeTask(config)

    entry = {
        "task": task,
        "reconstruct": jax.jit(task.reconstruct_and_score),
        "decode": jax.jit(task.decode),
    }
    if len(_COMPILED) >= 4:
        _COMPILED.pop(next(iter(_COMPILED)))
    _COMPILED[key] = entry
    return entry


def _private_config(config: ml_collections.ConfigDict, **model) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())  # A private, unlocked copy.
    config.model.update(model)
    return config


def _float32(params: Any) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(a, F32), params)


def _batch_size(config: ml_collections.ConfigDict, options) -> int:
    return options.batch_size or config.eval_batch_size


def _check_task(config: ml_collections.ConfigDict) -> None:
    if config.task != "generative":
        raise ValueError(f"this evaluation needs config.task='generative', not {config.task!r}.")


def _run_split(
    config: ml_collections.ConfigDict,
    params: Any,
    split: str,
    limit: int | None,
    batch_size: int,
    seed: int,
    *,
    keep_images: int = 0,
) -> dict[str, np.ndarray]:
    """Eval-mode reconstruction of the first ``limit`` images of ``split``.

    Batch ``i`` uses rng ``fold_in(key(seed), i)`` (observation noise / holes); rows of the
    padded last batch are dropped from the outputs.

    Returns:
      Per image: ``psnr``, ``mse``, ``residual`` (``psnr_corrupted`` for inverse problems),
      ``latents [N, D]``; and the first ``keep_images`` ``clean``, ``observation`` and
      ``output`` images (``[-1, 1]``).
    """
    fns = _compiled(config)
    key = jax.random.key(seed)
    parts: dict[str, list[np.ndarray]] = {}
    kept: dict[str, list[np.ndarray]] = {"clean": [], "observation": [], "output": []}
    num_kept = 0
    for i, (batch, n) in enumerate(
        features_lib.padded_batches(config.data, split, batch_size, limit, seed=config.seed)
    ):
        clean = np.asarray(batch["image"], np.float32)
        metrics, latents, out, obs = jax.device_get(
            fns["reconstruct"](params, clean, jax.random.fold_in(key, i))
        )
        for name, value in {**metrics, "latents": latents}.items():
            parts.setdefault(name, []).append(np.asarray(value)[:n])
        if num_kept < keep_images:
            m = min(n, keep_images - num_kept)
            for name, value in (("clean", clean), ("observation", obs), ("output", out)):
                kept[name].append(np.asarray(value)[:m])
            num_kept += m
    if not parts:
        raise ValueError(f"no {split!r} images for config.data={config.data.to_dict()}.")
    result = {k: np.concatenate(v) for k, v in parts.items()}
    result.update({k: np.concatenate(v) for k, v in kept.items() if v})
    return result


def _decode(
    config: ml_collections.ConfigDict, params: Any, latents: np.ndarray, batch_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """Decodes ``[N, D]`` latents in padded batches: ``(images [N, H, W, C], residual [N])``."""
    decode = _compiled(config)["decode"]
    images, residuals = [], []
    for start in range(0, len(latents), batch_size):
        chunk = np.asarray(latents[start : start + batch_size], np.float32)
        n = len(chunk)
        chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        out, res = jax.device_get(decode(params, chunk))
        images.append(np.asarray(out)[:n])
        residuals.append(np.asarray(res)[:n])
    return np.concatenate(images), np.concatenate(residuals)


def _summary(values: np.ndarray, prefix: str) -> dict[str, float]:
    values = np.asarray(values, np.float64)
    out = {}
    for name, q in _STATS:
        out[f"{prefix}_{name}"] = float(values.mean() if q is None else np.percentile(values, q))
    out[f"{prefix}_min"] = float(values.min())
    out[f"{prefix}_max"] = float(values.max())
    return out


def to_uint8(images: np.ndarray) -> np.ndarray:
    """``[-1, 1]`` images to uint8 ``[0, 255]`` (clipped, rounded), as written to the PNGs."""
    unit = np.clip(np.asarray(images, np.float64) / 2 + 0.5, 0.0, 1.0)
    return np.round(unit * 255).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 images back to float32 ``[-1, 1]``."""
    return (np.asarray(images, np.float32) / 255.0) * 2.0 - 1.0


def _write_folder(folder: str, images_u8: np.ndarray) -> None:
    """One PNG per image (``000000.png``, ...; grayscale for one channel). Earlier PNGs of that
    name pattern in ``folder`` are removed first, so the folder holds exactly these images."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        if _PNG_NAME.match(name):
            os.remove(os.path.join(folder, name))
    for i, img in enumerate(images_u8):
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(
            os.path.join(folder, f"{i:06d}.png")
        )


def _save_histogram(path: str, series: dict[str, np.ndarray], title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5, 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for label, values in series.items():
        ax.hist(values, bins=30, alpha=0.6, label=f"{label} (mean {np.mean(values):.2f} dB)")
    ax.set(xlabel="PSNR per image (dB, [0, 1] scale)", ylabel="images", title=title)
    ax.legend()
    fig.savefig(path, dpi=120)


# ---------------------------------------------------------------------------------------------
# psnr
# ---------------------------------------------------------------------------------------------


def psnr(config: ml_collections.ConfigDict, params: Any, options) -> dict[str, Any]:
    """Per-image test PSNR of eval-mode reconstructions (see the module docstring).

    Writes ``psnr_per_image.csv`` (index, psnr, [psnr_corrupted,] mse, residual),
    ``psnr_hist.png`` and ``reconstructions.png`` (rows: clean | observation | output for
    inverse problems, clean | output otherwise) to ``options.output_dir``.

    Returns:
      ``psnr_{mean,q25,median,q75,min,max}`` (dB on ``[0, 1]``), the same for
      ``psnr_corrupted_*`` (the observation itself) for inverse problems, ``mse_mean`` (on the
      ``[-1, 1]`` scale, as the training loss), ``residual_mean`` (JIIO's forward residual, or
      the decoder solver's for the VAE; 0 for the conv decoder), ``num_images``,
      ``batch_size``, ``method``, ``decoder``, ``latents_from``, ``corruption``, ``seed`` and
      ``seconds`` (wall time including compilation). With ``config.model.refine_with_jiio``
      also ``psnr_encoder_*``: the same images decoded from the unrefined encoder latents.
    """
    _check_task(config)
    start = time.perf_counter()
    fns = _compiled(config)
    task = fns["task"]
    batch_size = _batch_size(config, options)
    res = _run_split(
        config,
        _float32(params),
        "test",
        options.num_examples,
        batch_size,
        options.seed,
        keep_images=16,
    )
    n = len(res["psnr"])
    results: dict[str, Any] = {
        "num_images": n,
        "batch_size": batch_size,
        "method": task.method,
        "decoder": task.decoder,
        "latents_from": latents_from(task),
        "corruption": task.corruption,
        "seed": options.seed,
        **_summary(res["psnr"], "psnr"),
    }
    columns = {"psnr": res["psnr"]}
    if "psnr_corrupted" in res:
        results.update(_summary(res["psnr_corrupted"], "psnr_corrupted"))
        columns["psnr_corrupted"] = res["psnr_corrupted"]
    results["mse_mean"] = float(np.mean(res["mse"], dtype=np.float64))
    results["residual_mean"] = float(np.mean(res["residual"], dtype=np.float64))
    if task.refine_with_jiio:
        # The same images without the refinement (encoder latents decoded), for the gain.
        plain = _run_split(
            _private_config(config, refine_with_jiio=False),
            _float32(params),
            "test",
            options.num_examples,
            batch_size,
            options.seed,
        )
        results.update(_summary(plain["psnr"], "psnr_encoder"))
        columns["psnr_encoder"] = plain["psnr"]
    columns.update(mse=res["mse"], residual=res["residual"])

    out_dir = options.output_dir
    os.makedirs(out_dir, exist_ok=True)
    table = np.column_stack([np.arange(n), *columns.values()])
    np.savetxt(
        os.path.join(out_dir, "psnr_per_image.csv"),
        table,
        delimiter=",",
        header="index," + ",".join(columns),
        comments="",
        fmt=["%d"] + ["%.6g"] * len(columns),
    )
    series = {"output": res["psnr"]}
    if "psnr_corrupted" in res:
        series["observation"] = res["psnr_corrupted"]
    _save_histogram(
        os.path.join(out_dir, "psnr_hist.png"),
        series,
        f"{task.method}, {task.corruption}: {n} test images",
    )
    if task.corruption != "none":
        columns = {"clean": res["clean"], "observed": res["observation"], "output": res["output"]}
    else:
        columns = {"target": res["clean"], "reconstruction": res["output"]}
    tiles = np.clip(np.stack(list(columns.values()), axis=1) / 2 + 0.5, 0, 1)  # [k, cols, H, W, C]
    title = f"{task.method.upper()} test reconstructions"
    if task.corruption != "none":
        title += f" ({task.corruption})"
    plotting.save_images(
        os.path.join(out_dir, "reconstructions.png"),
        plotting.ImagePanel(tiles, tuple(columns), title),
    )
    results["seconds"] = time.perf_counter() - start
    return results


# ---------------------------------------------------------------------------------------------
# samples
# ---------------------------------------------------------------------------------------------


def fit_density(
    latents: np.ndarray, kind: str, num_components: int, seed: int
) -> tuple[Any, dict[str, Any]]:
    """Fits ``kind`` (``"gmm"`` or ``"gaussian"``) to standardised ``[N, D]`` latents.

    Returns:
      ``(draw, details)``: ``draw(n) -> [n, D]`` float64 samples on the latents' own scale
      (in random order: a GMM's draws come grouped by component otherwise), deterministic given
      ``seed``; ``details`` a JSON-serialisable description of the fit.
    """
    latents = np.asarray(latents, np.float64)
    n, d = latents.shape
    mean = latents.mean(axis=0)
    std = latents.std(axis=0)
    std = np.where(std > 1e-8, std, 1.0)
    standard = (latents - mean) / std
    details: dict[str, Any] = {
        "density": kind,
        "num_latents": n,
        "latent_dim": d,
        "latent_std_mean": float(np.mean(latents.std(axis=0))),
        "standardised": True,
    }
    if kind == "gmm":
        from sklearn.mixture import GaussianMixture

        if n < max(2, num_components):
            raise ValueError(
                f"a {num_components}-component GMM needs at least that many latents, got {n}; "
                "use more examples (num_examples) or fewer components."
            )
        gmm = GaussianMixture(
            num_components,
            covariance_type="full",
            reg_covar=GMM_REG_COVAR,
            max_iter=500,
            random_state=seed,
        ).fit(standard)
        details.update(
            num_components=num_components,
            covariance_type="full",
            reg_covar=GMM_REG_COVAR,
            converged=bool(gmm.converged_),
            n_iter=int(gmm.n_iter_),
            weights=[float(w) for w in gmm.weights_],
            mean_log_likelihood=float(gmm.score(standard)),
        )

        def draw_standard(count: int) -> np.ndarray:
            gmm.random_state = seed  # The same draws for the same seed, call after call.
            x, _ = gmm.sample(count)
            return x[np.random.default_rng(seed).permutation(count)]

    elif kind == "gaussian":
        if n < 2:
            raise ValueError(f"a Gaussian needs at least 2 latents, got {n}.")
        cov = np.cov(standard, rowvar=False).reshape(d, d) + GAUSSIAN_RIDGE * np.eye(d)
        chol = np.linalg.cholesky(cov)
        centred = standard - standard.mean(axis=0)
        sol = np.linalg.solve(chol, centred.T)
        loglik = (
            -0.5 * np.sum(sol**2, axis=0)
            - np.sum(np.log(np.diag(chol)))
            - d / 2 * np.log(2 * np.pi)
        )
        details.update(ridge=GAUSSIAN_RIDGE, mean_log_likelihood=float(loglik.mean()))
        mu = standard.mean(axis=0)

        def draw_standard(count: int) -> np.ndarray:
            eps = np.random.default_rng(seed).standard_normal((count, d))
            return mu + eps @ chol.T

    else:
        raise ValueError(f"density={kind!r}; use 'gmm' or 'gaussian'.")

    def draw(count: int) -> np.ndarray:
        return draw_standard(count) * std + mean

    return draw, details


def _generate(config: ml_collections.ConfigDict, params: Any, options) -> dict[str, Any]:
    """The sampling pipeline of :func:`samples`; returns its results plus private arrays
    (``_fake_u8``, ``_real_u8``, ``_latents``) that callers pop before serialising."""
    _check_task(config)
    start = time.perf_counter()
    params = _float32(params)
    batch_size = _batch_size(config, options)
    # Latents of the clean training images, whatever corruption the run was trained with.
    clean_config = _private_config(config, corruption="none")
    task = _compiled(clean_config)["task"]
    train = _run_split(
        clean_config, params, "train", options.num_examples, batch_size, options.seed
    )
    latents = train["latents"]
    t_latents = time.perf_counter()
    draw, density = fit_density(latents, options.density, options.num_components, options.seed)
    draws = draw(options.num_samples)
    t_fit = time.perf_counter()
    fake, residual = _decode(clean_config, params, draws, batch_size)
    t_decode = time.perf_counter()

    out_dir = options.output_dir
    fake_u8 = to_uint8(fake)
    _write_folder(os.path.join(out_dir, "samples"), fake_u8)
    plotting.save_images(
        os.path.join(out_dir, "samples_grid.png"),
        fake_u8[:GRID_SIZE].astype(np.float32) / 255,
        title=f"{task.method.upper()} samples ({options.density})",
    )
    real = [
        batch["image"][:n]
        for batch, n in features_lib.padded_batches(
            config.data, "test", batch_size, options.num_examples, seed=config.seed
        )
    ]
    real_u8 = to_uint8(np.concatenate(real))
    _write_folder(os.path.join(out_dir, "real"), real_u8)
    finish = time.perf_counter()
    return {
        "method": task.method,
        "latents_from": latents_from(task),
        "num_train_latents": len(latents),
        "train_psnr_mean": float(np.mean(train["psnr"], dtype=np.float64)),
        "train_residual_mean": float(np.mean(train["residual"], dtype=np.float64)),
        "num_samples": len(fake_u8),
        "num_real": len(real_u8),
        "samples_dir": os.path.join(out_dir, "samples"),
        "real_dir": os.path.join(out_dir, "real"),
        "image_shape": list(fake_u8.shape[1:]),
        "density": density,
        "decoder_residual_mean": float(np.mean(residual, dtype=np.float64)),
        "decoder_residual_max": float(np.max(residual)),
        "batch_size": batch_size,
        "seed": options.seed,
        "seconds": {
            "latents": t_latents - start,
            "density_fit": t_fit - t_latents,
            "decode": t_decode - t_fit,
            "total": finish - start,
        },
        "_fake_u8": fake_u8,
        "_real_u8": real_u8,
        "_latents": latents,
    }


def latents_from(task: GenerativeTask) -> str:
    """What the latents of ``task``'s reconstructions are, in words."""
    if task.method == "jiio":
        return "JIIO latents x*"
    what = f"{task.method.upper()} encoder means"
    return f"{what} refined by JIIO" if task.refine_with_jiio else what


def _public(results: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in results.items() if not k.startswith("_")}


def samples(config: ml_collections.ConfigDict, params: Any, options) -> dict[str, Any]:
    """Decoded draws from a density fitted to the training latents (module docstring).

    ``options.num_examples`` caps both the training images whose latents are fitted and the
    test images written to ``real/`` (default: all of each split).

    Writes ``samples/000000.png ...`` (``options.num_samples`` images), ``samples_grid.png``
    (the first 64) and ``real/000000.png ...`` under ``options.output_dir``; e.g.
    ``python -m pytorch_fid <output_dir>/real <output_dir>/samples`` compares them.

    Returns:
      Counts, folders, the density's details (``density``), the decoder's solver residual
      over the samples (``decoder_residual_mean`` / ``_max``), the training latents'
      reconstruction PSNR and residual, and ``seconds`` per stage.
    """
    return _public(_generate(config, params, options))


# ---------------------------------------------------------------------------------------------
# fid
# ---------------------------------------------------------------------------------------------


def _train_images_u8(config: ml_collections.ConfigDict, count: int, batch_size: int):
    images = [
        batch["image"][:n]
        for batch, n in features_lib.padded_batches(
            config.data, "train", batch_size, count, seed=config.seed
        )
    ]
    return to_uint8(np.concatenate(images))


def fid(config: ml_collections.ConfigDict, params: Any, options) -> dict[str, Any]:
    """Fréchet distance of :func:`samples`' images to the real test images (module docstring).

    The feature extractor is ``jiio_jax.evaluation.features.load_or_train_classifier``
    (cached as ``<output_dir>/fid_classifier.npz``). The floor ``fid_real_train_vs_test``
    compares ``min(num_samples, train split)`` real training images with the same test images
    (FID is biased upwards at small sample sizes, so the floor uses as many images as the
    samples). The training images also trained the classifier, which can raise the floor a
    little.

    Returns:
      ``fid``, ``fid_real_train_vs_test``, for VAE runs ``fid_vae_prior`` (draws from
      ``N(0, I)`` decoded), ``feature_extractor`` (a description), ``classifier_test_acc``,
      ``num_real``, ``num_fake``, ``num_real_train``, the samples' results under ``samples``
      and ``seconds``.
    """
    _check_task(config)
    start = time.perf_counter()
    info = features_lib.require_labels(config.data)  # Before the slow part.
    gen = _generate(config, params, options)
    fake_u8, real_u8 = gen["_fake_u8"], gen["_real_u8"]
    extractor = features_lib.load_or_train_classifier(config.data, options.output_dir)
    t_classifier = time.perf_counter()
    real_feats = extractor(from_uint8(real_u8))
    real_stats = features_lib.feature_statistics(real_feats)
    fake_feats = extractor(from_uint8(fake_u8))
    value = features_lib.frechet_distance(*features_lib.feature_statistics(fake_feats), *real_stats)
    num_train = min(options.num_samples, info.num_train)
    batch_size = _batch_size(config, options)
    train_u8 = _train_images_u8(config, num_train, batch_size)
    floor = features_lib.frechet_distance(
        *features_lib.feature_statistics(extractor(from_uint8(train_u8))), *real_stats
    )
    results: dict[str, Any] = {
        "fid": value,
        "fid_real_train_vs_test": floor,
        "feature_extractor": extractor.description,
        "classifier_test_acc": extractor.test_accuracy,
        "classifier_file": os.path.join(options.output_dir, features_lib.CLASSIFIER_FILE),
        "num_real": len(real_u8),
        "num_fake": len(fake_u8),
        "num_real_train": len(train_u8),
        "density": options.density,
        "method": gen["method"],
    }
    if gen["method"] == "vae":
        clean_config = _private_config(config, corruption="none")
        d = gen["_latents"].shape[1]
        prior = np.random.default_rng(options.seed).standard_normal((options.num_samples, d))
        prior_images, _ = _decode(clean_config, _float32(params), prior, batch_size)
        prior_feats = extractor(from_uint8(to_uint8(prior_images)))
        results["fid_vae_prior"] = features_lib.frechet_distance(
            *features_lib.feature_statistics(prior_feats), *real_stats
        )
    results["samples"] = _public(gen)
    results["seconds"] = {
        "samples": gen["seconds"]["total"],
        "classifier": t_classifier - start - gen["seconds"]["total"],
        "total": time.perf_counter() - start,
    }
    return results


__all__ = ["fid", "fit_density", "from_uint8", "psnr", "samples", "to_uint8"]
