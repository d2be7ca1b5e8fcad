"""Random-access image sources: ``len(source)`` and ``source[i] -> {"image", "label"}``.

Every source returns ``{"image": float32 [H, W, C] in [-1, 1], "label": int32 scalar}`` with
``H = W = config.data.image_size`` and ``C = config.data.channels``, decoding lazily in
``__getitem__`` so that grain can spread the work over threads or worker processes. Sources
hold only picklable state (arrays, file names), as grain's worker processes need. Splits are
deterministic; see ``arrays`` (digits, npz), ``folder`` (image folders, CelebA) and
``tfds_source``.
"""

from typing import Any, NamedTuple, Protocol

import numpy as np

from jiio_jax.data.arrays import digits_source, npz_source
from jiio_jax.data.config import check_split, read_config
from jiio_jax.data.folder import folder_source
from jiio_jax.data.tfds_source import tfds_source


class Source(Protocol):
    """What ``get_source`` returns; grain's ``MapDataset.source`` accepts it directly."""

    num_classes: int

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


class DatasetInfo(NamedTuple):
    """Static facts about a configured dataset.

    Attributes:
      image_shape: ``(H, W, C)`` of every example.
      num_classes: number of labels (1 for unlabelled data, whose labels are all 0).
      num_train: examples in the train split.
      num_test: examples in the test split.
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int


_BUILDERS = {
    "digits": digits_source,
    "image_folder": folder_source,
    "npz": npz_source,
    "tfds": tfds_source,
}


def get_source(data_config: Any, split: str) -> Source:
    """Random-access source of one split of the dataset that ``config.data`` describes.

    Args:
      data_config: the ``config.data`` ConfigDict (fields in ``config.read_config``).
      split: "train" or "test"; "validation" where the dataset has one (CelebA folders, npz
        files with ``image_validation``, tfds datasets with that split).

    Returns:
      A source with ``len()``, ``num_classes`` and ``source[i] -> {"image": float32 [H, W, C]
      in [-1, 1], "label": int32 []}``.

    Raises:
      ValueError: unknown ``name``/``split``, bad field values, or a split the data lacks.
      FileNotFoundError: ``config.data.path`` missing or empty (the message says how to
        prepare the data).
      ImportError: ``name="tfds"`` without tensorflow_datasets installed.
    """
    options = read_config(data_config)
    check_split(split)
    return _BUILDERS[options.name](options, split)


def dataset_info(data_config: Any) -> DatasetInfo:
    """Shape, class count and split sizes of the configured dataset (opens both splits)."""
    options = read_config(data_config)
    train = get_source(data_config, "train")
    return DatasetInfo(
        image_shape=(options.image_size, options.image_size, options.channels),
        num_classes=train.num_classes,
        num_train=len(train),
        num_test=len(get_source(data_config, "test")),
    )
