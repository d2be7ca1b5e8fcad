r"""Features for the Fréchet distance (FID) of generated images, and the distance itself.

No Inception weights are available offline, so :func:`load_or_train_classifier` trains a small
CNN classifier (:class:`FeatureCNN`: three 3x3 convolutions, a 64-unit ReLU layer, a linear
class layer) on the training split of the run's own dataset with its class labels, and the
FID features are that penultimate 64-d layer. Values therefore measure distances in a
digit-classifier (or whatever the data is) feature space: they rank models evaluated with the
same extractor but are **not comparable with published (Inception) FIDs**. The classifier is
deterministic (fixed seed :data:`CLASSIFIER_SEED`, whatever the evaluation seed, so every run
of a dataset is scored in the same feature space) and cached as ``fid_classifier.npz``, keyed by
the data config and its training settings.

Datasets without labels (``dataset_info(...).num_classes == 1``, e.g. CelebA image folders)
raise ``ValueError``: a randomly initialised network or a random projection would give a number
without a meaning we could check, so for those, write the folders with the ``samples``
evaluation and run an external tool (pytorch-fid, TTUR) on them.

:func:`frechet_distance` is the standard

.. math:: d^2 = \|\mu_1 - \mu_2\|^2 + \operatorname{tr}\big(\Sigma_1 + \Sigma_2
          - 2 (\Sigma_1 \Sigma_2)^{1/2}\big),

with ``tr (S1 S2)^{1/2}`` computed as ``tr (S1^{1/2} S2 S1^{1/2})^{1/2}`` from symmetric
eigendecompositions (the two traces are equal; the second matrix is symmetric PSD, so round-off
negative eigenvalues are clipped to 0 instead of producing the complex parts ``scipy.linalg.sqrtm``
of a non-symmetric product can return).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jiio_jax.data import DatasetInfo, dataset_info, make_iterator
from jiio_jax.data.config import read_config

CLASSIFIER_FILE = "fid_classifier.npz"
CLASSIFIER_SEED = 0
FEATURE_DIM = 64
# Training settings; part of the cache key.
_TRAIN = {"num_steps": 500, "batch_size": 128, "lr": 2e-3, "widths": (32, 64, 64)}
_CACHE_VERSION = 1
_IN_MEMORY_BYTES = 256 * 2**20  # Train splits up to this size (float32) are loaded at once.


class FeatureCNN(nn.Module):
    """``[B, H, W, C]`` images in ``[-1, 1]`` -> logits ``[B, num_classes]`` (and features).

    Conv 3x3 (stride 1, 2, 2; ReLU) -> flatten -> Dense(``features``, ReLU) -> Dense(classes).
    """

    num_classes: int
    widths: tuple[int, ...] = (32, 64, 64)
    features: int = FEATURE_DIM

    @nn.compact
    def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Returns ``(logits [B, num_classes], features [B, features])``."""
        x = images.astype(jnp.float32)
        for i, width in enumerate(self.widths):
            x = nn.relu(nn.Conv(width, (3, 3), strides=1 if i == 0 else 2)(x))
        x = x.reshape(x.shape[0], -1)
        feats = nn.relu(nn.Dense(self.features)(x))
        return nn.Dense(self.num_classes)(feats), feats


@contextlib.contextmanager
def _local_iterator(
    data_config: Any, split: str, batch_size: int, *, seed: int, train: bool
) -> Iterator[Any]:
    """``make_iterator`` over the whole split on this process alone, closed on exit (it may
    own worker processes). ``train``: shuffled, endless, full batches; else stored order, one
    pass, nothing dropped."""
    it = make_iterator(
        data_config,
        split,
        batch_size,
        seed=seed,
        shuffle=train,
        repeat=train,
        drop_remainder=train,
        process_index=0,
        process_count=1,
    )
    try:
        yield it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def padded_batches(
    data_config: Any, split: str, batch_size: int, limit: int | None, *, seed: int
) -> Iterator[tuple[dict[str, np.ndarray], int]]:
    """The first ``limit`` examples of ``split`` (all when ``None``), in stored order, as
    ``(batch, num_valid)`` with every batch padded to ``batch_size`` by repeating its last
    example (so a jitted function compiles once); rows ``>= num_valid`` are padding.
    No shuffling, no repetition, nothing dropped."""
    seen = 0
    with _local_iterator(data_config, split, batch_size, seed=seed, train=False) as it:
        for batch in it:
            n = len(batch["image"])
            if limit is not None:
                n = min(n, limit - seen)
            if n <= 0:
                break
            pad = batch_size - n
            batch = {
                k: np.concatenate([v[:n], np.repeat(v[n - 1 : n], pad, axis=0)])
                for k, v in batch.items()
            }
            yield batch, n
            seen += n
            if limit is not None and seen >= limit:
                break


@dataclasses.dataclass
class FeatureExtractor:
    """A trained :class:`FeatureCNN`; call it on ``[N, H, W, C]`` images in ``[-1, 1]``.

    Attributes:
      module: the network.
      params: its parameters.
      test_accuracy: top-1 accuracy on the whole test split.
      description: what the features are (for the results file).
    """

    module: FeatureCNN
    params: Any
    test_accuracy: float
    description: str
    batch_size: int = 256

    def __post_init__(self):
        self._apply = jax.jit(lambda p, x: self.module.apply({"params": p}, x))

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """``[N, FEATURE_DIM]`` float64 features of ``images`` (float, ``[-1, 1]``)."""
        images = np.asarray(images, np.float32)
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            n = len(chunk)
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], self.batch_size - n, axis=0)])
            out.append(np.asarray(self._apply(self.params, chunk)[1])[:n])
        if not out:
            return np.zeros((0, self.module.features), np.float64)
        return np.concatenate(out).astype(np.float64)


def _cache_key(data_config: Any, num_classes: int) -> str:
    data = dataclasses.asdict(read_config(data_config))
    data.pop("num_workers")  # Does not change the data.
    key = {
        "version": _CACHE_VERSION,
        "data": data,
        "num_classes": num_classes,
        "seed": CLASSIFIER_SEED,
        "features": FEATURE_DIM,
        **{k: list(v) if isinstance(v, tuple) else v for k, v in _TRAIN.items()},
    }
    return json.dumps(key, sort_keys=True)


def _train_batches(
    data_config: Any, batch_size: int, steps: int, image_shape: tuple[int, ...]
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``steps`` shuffled training batches: from memory when the split is small (digits: one
    pass over the data, then epoch-wise permutations), else streamed from ``make_iterator``."""
    info = dataset_info(data_config)
    if info.num_train * int(np.prod(image_shape)) * 4 <= _IN_MEMORY_BYTES:
        parts = list(padded_batches(data_config, "train", 512, None, seed=CLASSIFIER_SEED))
        images = np.concatenate([b["image"][:n] for b, n in parts]).astype(np.float32)
        labels = np.concatenate([b["label"][:n] for b, n in parts]).astype(np.int32)
        rng = np.random.default_rng(CLASSIFIER_SEED)
        order = np.zeros((0,), np.int64)
        for _ in range(steps):
            if len(order) < batch_size:
                order = np.concatenate([order, rng.permutation(len(images))])
            idx, order = order[:batch_size], order[batch_size:]
            yield images[idx], labels[idx]
        return
    with _local_iterator(data_config, "train", batch_size, seed=CLASSIFIER_SEED, train=True) as it:
        for _, batch in zip(range(steps), it, strict=False):
            yield np.asarray(batch["image"], np.float32), np.asarray(batch["label"], np.int32)


def _train(data_config: Any, module: FeatureCNN, image_shape: tuple[int, ...]) -> Any:
    """Adam on the cross-entropy of shuffled train batches; returns the parameters."""
    steps, batch_size = _TRAIN["num_steps"], _TRAIN["batch_size"]
    key = jax.random.key(CLASSIFIER_SEED)
    params = module.init(key, jnp.zeros((1, *image_shape), jnp.float32))["params"]
    tx = optax.adam(optax.cosine_decay_schedule(_TRAIN["lr"], steps))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, images, labels):
        def loss_fn(p):
            logits, _ = module.apply({"params": p}, images)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        grads = jax.grad(loss_fn)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    for images, labels in _train_batches(data_config, batch_size, steps, image_shape):
        params, opt_state = step(params, opt_state, images, labels)
    return jax.device_get(params)


def _test_accuracy(data_config: Any, module: FeatureCNN, params: Any) -> float:
    predict = jax.jit(lambda p, x: jnp.argmax(module.apply({"params": p}, x)[0], -1))
    correct = total = 0
    for batch, n in padded_batches(data_config, "test", 256, None, seed=CLASSIFIER_SEED):
        pred = np.asarray(predict(params, np.asarray(batch["image"], np.float32)))[:n]
        correct += int(np.sum(pred == batch["label"][:n]))
        total += n
    return correct / total


def require_labels(data_config: Any) -> DatasetInfo:
    """``dataset_info(data_config)``, or ``ValueError`` when the data has no class labels."""
    info = dataset_info(data_config)
    if info.num_classes < 2:
        raise ValueError(
            "fid needs class labels to train its feature extractor, but config.data "
            f"(name={read_config(data_config).name!r}) has none (no Inception weights are "
            "available offline). Run the 'samples' evaluation and an external FID tool "
            "(pytorch-fid, TTUR) on its real/ and samples/ folders instead."
        )
    return info


def load_or_train_classifier(data_config: Any, cache_dir: str) -> FeatureExtractor:
    """The FID feature extractor of a dataset: loaded from ``<cache_dir>/fid_classifier.npz``
    when its key matches ``data_config`` and the training settings, else trained (a few
    hundred Adam steps: seconds for 8x8 digits on a CPU) and saved there.

    Raises:
      ValueError: the dataset has no class labels (see the module docstring).
    """
    info = require_labels(data_config)
    name = read_config(data_config).name
    module = FeatureCNN(info.num_classes, widths=tuple(_TRAIN["widths"]))
    key = _cache_key(data_config, info.num_classes)
    path = os.path.join(cache_dir, CLASSIFIER_FILE)
    params = accuracy = None
    if os.path.exists(path):
        with np.load(path) as cached:
            if str(cached["cache_key"]) == key:
                flat = {k[len("param/") :]: cached[k] for k in cached.files if k[:6] == "param/"}
                params = traverse_util.unflatten_dict(flat, sep="/")
                accuracy = float(cached["test_accuracy"])
    if params is None:
        params = _train(data_config, module, info.image_shape)
        accuracy = _test_accuracy(data_config, module, params)
        flat = traverse_util.flatten_dict(params, sep="/")
        os.makedirs(cache_dir, exist_ok=True)
        np.savez(
            path,
            cache_key=np.asarray(key),
            test_accuracy=np.asarray(accuracy),
            **{f"param/{k}": np.asarray(v) for k, v in flat.items()},
        )
    widths = "-".join(str(w) for w in _TRAIN["widths"])
    description = (
        f"penultimate layer ({FEATURE_DIM}-d, ReLU) of a 3-conv CNN (widths {widths}) trained "
        f"{_TRAIN['num_steps']} Adam steps on the {name} train split, test accuracy "
        f"{accuracy:.3f}; not Inception, so not comparable with published FIDs"
    )
    return FeatureExtractor(module, params, accuracy, description)


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, as pytorch-fid) of ``[N, D]``."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or len(features) < 2:
        raise ValueError(f"need [N >= 2, D] features, got shape {features.shape}.")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((matrix + matrix.T) / 2)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Fréchet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)`` (module docstring),
    in float64, clipped at 0 against round-off."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mu1.shape * 2:
        raise ValueError(
            f"shapes do not match: mu {mu1.shape} / {mu2.shape}, sigma {sigma1.shape} / "
            f"{sigma2.shape}."
        )
    root1 = _sqrt_psd(sigma1)
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) / 2)
    tr_covmean = float(np.sum(np.sqrt(np.clip(eig, 0.0, None))))
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def fid_from_features(features1: np.ndarray, features2: np.ndarray) -> float:
    """:func:`frechet_distance` of the Gaussians fitted to two ``[N, D]`` feature sets."""
    return frechet_distance(*feature_statistics(features1), *feature_statistics(features2))
