"""Reads and checks the ``config.data`` section shared by the sources and the pipeline."""

import dataclasses
from typing import Any

NAMES = ("digits", "image_folder", "npz", "tfds")
SPLITS = ("train", "validation", "test")
_REQUIRED = object()


@dataclasses.dataclass(frozen=True)
class DataOptions:
    """The checked fields of ``config.data`` (see ``read_config`` for their meaning)."""

    name: str
    path: str
    tfds_name: str
    image_size: int
    channels: int
    crop: int
    flip: bool
    num_workers: int
    seed: int


def _field(config: Any, field: str, default: Any = _REQUIRED) -> Any:
    value = config.get(field, default)
    if value is _REQUIRED:
        raise ValueError(f"config.data.{field} is required.")
    return value


def _int_field(config: Any, field: str, low: int, default: Any = _REQUIRED) -> int:
    value = _field(config, field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"config.data.{field} must be an integer >= {low}, got {value!r}.")
    return value


def read_config(config: Any) -> DataOptions:
    """Checks ``config.data`` and fills the optional fields.

    Args:
      config: an ``ml_collections.ConfigDict`` (or any mapping) with fields
        ``name`` ("digits" | "image_folder" | "npz" | "tfds"), ``path`` (folder, ``.npz`` file
        or tfds ``data_dir``; default ""), ``tfds_name`` (tfds only), ``image_size`` (output
        H = W), ``channels`` (1 or 3), ``crop`` (centre crop before resizing, 0 = none; default
        0), ``flip`` (random horizontal flip on the train split; default False),
        ``num_workers`` (grain worker processes, 0 = in-process; default 0) and ``seed``
        (split seed; default 0).

    Raises:
      ValueError: naming the offending field and the accepted values.
    """
    if not hasattr(config, "get"):
        raise ValueError(f"config.data must be a ConfigDict or mapping, got {type(config)}.")
    name = _field(config, "name")
    if name not in NAMES:
        raise ValueError(f"config.data.name must be one of {NAMES}, got {name!r}.")
    channels = _field(config, "channels")
    if channels not in (1, 3) or isinstance(channels, bool):
        raise ValueError(f"config.data.channels must be 1 or 3, got {channels!r}.")
    tfds_name = str(_field(config, "tfds_name", ""))
    if name == "tfds" and not tfds_name:
        raise ValueError('config.data.tfds_name is required when config.data.name == "tfds".')
    return DataOptions(
        name=name,
        path=str(_field(config, "path", "")),
        tfds_name=tfds_name,
        image_size=_int_field(config, "image_size", 1),
        channels=int(channels),
        crop=_int_field(config, "crop", 0, 0),
        flip=bool(_field(config, "flip", False)),
        num_workers=_int_field(config, "num_workers", 0, 0),
        seed=_int_field(config, "seed", 0, 0),
    )


def check_split(split: str) -> None:
    """Raises ValueError unless ``split`` is one of ``SPLITS``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
