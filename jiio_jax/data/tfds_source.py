"""TFDS source through ``tfds.data_source`` (array_record files; no TensorFlow import).

tensorflow_datasets is optional and imported only when ``config.data.name == "tfds"``.
"""

from typing import Any

import numpy as np

from jiio_jax.data.config import DataOptions
from jiio_jax.data.images import array_range, preprocess_array

_TFDS_HELP = (
    "tfds reads without TensorFlow only from array_record files: run `pip install "
    "tensorflow-datasets array_record` and, on a machine that can download and has "
    "TensorFlow, `tfds build {name} --data_dir {data_dir} --file_format array_record`, then "
    "set config.data.path to that data_dir. Or convert the data to an image folder or .npz "
    "and use config.data.name='image_folder' or 'npz'."
)


class TfdsSource:
    """A ``tfds.data_source`` whose records go through ``tfds_record_to_example``."""

    def __init__(self, data_source: Any, *, options: DataOptions):
        self._source = data_source
        self._options = options
        self.num_classes = _tfds_num_classes(data_source)

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        return tfds_record_to_example(self._source[index], self._options)


def tfds_record_to_example(record: dict[str, Any], options: DataOptions) -> dict[str, np.ndarray]:
    """Maps a tfds record (``"image"``: ``uint8 [H, W, C]``, optional ``"label"``) to an example.

    Datasets without a ``"label"`` feature (CelebA) get label 0.
    """
    image = np.asarray(record["image"])
    scale, offset = array_range([image], "tfds record 'image'")
    image = preprocess_array(
        image.astype(np.float32) * scale + offset,
        image_size=options.image_size,
        channels=options.channels,
        crop=options.crop,
    )
    return {"image": image, "label": np.int32(record.get("label", 0))}


def _tfds_num_classes(data_source: Any) -> int:
    try:
        return int(data_source.dataset_info.features["label"].num_classes)
    except (AttributeError, KeyError, TypeError):
        return 1  # No class label (e.g. celeb_a): every example gets label 0.


def tfds_source(options: DataOptions, split: str) -> TfdsSource:
    """``tfds.data_source(options.tfds_name, split, data_dir=options.path)``, mapped.

    Raises:
      ImportError: tensorflow_datasets is not installed.
      FileNotFoundError: tfds cannot open the split (not prepared, no such split, ...).
    """
    help_text = _TFDS_HELP.format(name=options.tfds_name, data_dir=options.path or "<data_dir>")
    try:
        import tensorflow_datasets as tfds  # Optional: not a dependency of jiio_jax.
    except ImportError as e:
        raise ImportError(
            f"config.data.name='tfds' needs the tensorflow_datasets package. {help_text}"
        ) from e
    try:
        data_source = tfds.data_source(
            options.tfds_name, split=split, data_dir=options.path or None
        )
    except Exception as e:  # tfds raises several types for "not prepared" / "no such split".
        raise FileNotFoundError(
            f"tfds could not open {options.tfds_name!r} split {split!r} under "
            f"config.data.path={options.path!r}: {e}. {help_text}"
        ) from e
    return TfdsSource(data_source, options=options)
