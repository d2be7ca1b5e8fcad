"""In-memory array sources: scikit-learn's digits and ``.npz`` files.

- ``digits``: the 1797 8x8 images of ``sklearn.datasets.load_digits`` (values 0..16, 10
  classes), split stratified with 300 test images by ``sklearn.model_selection.
  train_test_split(random_state=config.data.seed)``, leaving 1497 for training.
- ``npz``: arrays ``image_<split>`` (``[N, H, W]`` or ``[N, H, W, C]``, C in {1, 3}) with
  optional ``label_<split>`` (``int [N]``; all 0 when absent) for split in train / test /
  validation; or a single ``image`` (+ optional ``label``) pair, which ``holdout_split``
  divides into train and test. Pixel ranges are detected from the dtype and the values of all
  image arrays in the file: integers are 0..255, floats [0, 1] or [-1, 1] (``array_range``).
"""

import functools
import math
import os

import numpy as np

from jiio_jax.data.config import DataOptions
from jiio_jax.data.images import array_range, crop_box, preprocess_array

DIGITS_NUM_TEST = 300

_NPZ_HELP = (
    "Write it with np.savez(path, image_train=uint8 [N, H, W(, C)], label_train=int [N], "
    "image_test=..., label_test=...) (labels optional; or a single 'image'/'label' pair, "
    "split 90/10), or use config.data.name='digits'."
)


def holdout_split(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic 90/10 split: the last ceil(10%) of each class (in stored order) is test.

    Classes with a single example keep it in train.

    Args:
      labels: ``int [N]`` class of each example, in stored order.

    Returns:
      ``(train_indices, test_indices)``, each sorted ascending.
    """
    test = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        num_test = math.ceil(len(members) / 10) if len(members) > 1 else 0
        test[members[len(members) - num_test :]] = True
    return np.flatnonzero(~test), np.flatnonzero(test)


class ArraySource:
    """Images held in memory, ``[N, H, W]`` or ``[N, H, W, C]`` (C in {1, 3}).

    Args:
      images: raw pixels; ``scale * images + offset`` must lie in ``[-1, 1]``.
      labels: ``int [N]``.
      scale, offset: the affine map onto ``[-1, 1]`` (see ``images.array_range``).
      num_classes: reported by ``dataset_info``.
      options: output size, channels and crop.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        *,
        scale: np.float32,
        offset: np.float32,
        num_classes: int,
        options: DataOptions,
    ):
        if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
            raise ValueError(
                f"images must be [N, H, W] or [N, H, W, C] with C in (1, 3), got {images.shape}."
            )
        if labels.shape != images.shape[:1]:
            raise ValueError(f"labels must be [{len(images)}], got {labels.shape}.")
        if options.crop:
            crop_box(images.shape[1], images.shape[2], options.crop)  # Fail now, not per item.
        self._images = images
        self._labels = labels.astype(np.int32)
        self._scale, self._offset = scale, offset
        self._size, self._channels, self._crop = options.image_size, options.channels, options.crop
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self._images)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        image = self._images[index].astype(np.float32) * self._scale + self._offset
        image = preprocess_array(
            image, image_size=self._size, channels=self._channels, crop=self._crop
        )
        return {"image": image, "label": self._labels[index]}


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``float32 [1797, 8, 8]`` in [-1, 1] and ``int32 [1797]``."""
    from sklearn.datasets import load_digits  # Lazy: sklearn takes ~1 s to import.

    digits = load_digits()
    images = digits.images.astype(np.float32) / np.float32(8.0) - np.float32(1.0)  # 0..16
    return images, digits.target.astype(np.int32)


def digits_source(options: DataOptions, split: str) -> ArraySource:
    """The digits train (1497) or test (300) split; raises ValueError for other splits."""
    from sklearn.model_selection import train_test_split

    if split not in ("train", "test"):
        raise ValueError(f"digits has splits ('train', 'test'), got split={split!r}.")
    images, labels = _digits()
    train, test = train_test_split(
        np.arange(len(labels)),
        test_size=DIGITS_NUM_TEST,
        stratify=labels,
        random_state=options.seed,
    )
    indices = np.sort(train if split == "train" else test)
    return ArraySource(
        images[indices],
        labels[indices],
        scale=np.float32(1.0),  # _digits() already maps onto [-1, 1].
        offset=np.float32(0.0),
        num_classes=10,
        options=options,
    )


def npz_source(options: DataOptions, split: str) -> ArraySource:
    """One split of the ``.npz`` file at ``options.path`` (key conventions: module docstring).

    Raises:
      FileNotFoundError: no such file.
      ValueError: the file lacks the split's keys, or its pixels have an unknown range.
    """
    path = options.path
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(f"config.data.path={path!r} is not an .npz file. {_NPZ_HELP}")
    with np.load(path, allow_pickle=False) as npz:
        # Load every array once: the pixel range and class count come from all splits, so
        # that the splits agree (a [-1, 1] split with no negative pixel is not read as [0, 1]).
        arrays = dict(npz)
    if f"image_{split}" in arrays:
        images = arrays[f"image_{split}"]
        labels = arrays.get(f"label_{split}", np.zeros(len(images), np.int32))
    elif "image" in arrays and split in ("train", "test"):
        images = arrays["image"]
        labels = arrays.get("label", np.zeros(len(images), np.int32))
        train, test = holdout_split(labels)
        indices = train if split == "train" else test
        images, labels = images[indices], labels[indices]
    else:
        raise ValueError(
            f"config.data.path={path!r} has keys {sorted(arrays)} but no 'image_{split}' "
            f"(nor 'image' for train/test). {_NPZ_HELP}"
        )
    scale, offset = array_range(
        [a for k, a in arrays.items() if k == "image" or k.startswith("image_")],
        f"config.data.path={path!r} images",
    )
    label_arrays = [a for k, a in arrays.items() if k == "label" or k.startswith("label_")]
    num_classes = max((int(a.max()) + 1 for a in label_arrays if a.size), default=1)
    return ArraySource(
        images, labels, scale=scale, offset=offset, num_classes=num_classes, options=options
    )
