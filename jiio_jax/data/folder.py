"""Image-file sources: a folder of images decoded with PIL on access (e.g. CelebA).

Files are naturally sorted (``img2.png`` before ``img10.png``). A folder with image files is one
unlabelled class; otherwise each subfolder (sorted by name) is a class. Splits:

- exactly 202,599 images in one class is CelebA's ``img_align_celeba``: its standard partition
  by file index, train = first 162,770, validation = next 19,867, test = the remaining 19,962;
- anything else: ``holdout_split``, the last ceil(10%) of each class is the test split.
"""

import os

import numpy as np
from PIL import Image

from jiio_jax.data.arrays import holdout_split
from jiio_jax.data.config import DataOptions
from jiio_jax.data.images import natural_key, preprocess_pil

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# The standard img_align_celeba partition (list_eval_partition.txt) is by file index.
CELEBA_NUM_IMAGES = 202_599
CELEBA_SPLITS = {"train": (0, 162_770), "validation": (162_770, 182_637), "test": (182_637, None)}

_FOLDER_HELP = (
    "Point config.data.path at a folder of .jpg/.png images, flat or with one subfolder per "
    "class (e.g. CelebA's img_align_celeba, unzipped), or use config.data.name='digits'."
)


class ImageFolderSource:
    """Image files decoded with PIL on access; see ``preprocess_pil`` for crop and resize.

    Args:
      root: folder the ``files`` are relative to.
      files: relative paths, in split order.
      labels: ``int [len(files)]``.
      num_classes: reported by ``dataset_info``.
      options: output size, channels and crop.
    """

    def __init__(
        self,
        root: str,
        files: list[str],
        labels: np.ndarray,
        *,
        num_classes: int,
        options: DataOptions,
    ):
        self._root, self._files, self._labels = root, files, labels.astype(np.int32)
        self._size, self._channels, self._crop = options.image_size, options.channels, options.crop
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self._files)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        with Image.open(os.path.join(self._root, self._files[index])) as image:
            pixels = preprocess_pil(
                image, image_size=self._size, channels=self._channels, crop=self._crop
            )
        return {"image": pixels, "label": self._labels[index]}


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _list_folder(root: str) -> tuple[list[str], np.ndarray, int]:
    """``(files, labels, num_classes)``: flat images (label 0) or one subfolder per class.

    Flat images win when the folder has any; class subfolders are sorted by name and those
    without images are skipped.
    """
    with os.scandir(root) as entries:
        entries = list(entries)
    flat = sorted((e.name for e in entries if e.is_file() and _is_image(e.name)), key=natural_key)
    if flat:
        return flat, np.zeros(len(flat), np.int32), 1
    files, labels, num_classes = [], [], 0
    classes = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    for name in classes:
        members = sorted(
            (f for f in os.listdir(os.path.join(root, name)) if _is_image(f)), key=natural_key
        )
        if members:
            files += [os.path.join(name, f) for f in members]
            labels += [num_classes] * len(members)
            num_classes += 1
    return files, np.asarray(labels, np.int32), num_classes


def folder_source(options: DataOptions, split: str) -> ImageFolderSource:
    """One split of the image folder at ``options.path`` (layouts and splits: module docstring).

    Raises:
      FileNotFoundError: no such folder, or no images in it.
      ValueError: "validation" asked of a folder that is not CelebA.
    """
    root = options.path
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(
            f"config.data.path={root!r} is not a folder of images. {_FOLDER_HELP}"
        )
    files, labels, num_classes = _list_folder(root)
    if not files:
        raise FileNotFoundError(
            f"config.data.path={root!r} holds no images ({', '.join(IMAGE_EXTENSIONS)}). "
            f"{_FOLDER_HELP}"
        )
    if num_classes == 1 and len(files) == CELEBA_NUM_IMAGES:
        start, stop = CELEBA_SPLITS[split]
        indices = np.arange(len(files))[start:stop]
    elif split == "validation":
        raise ValueError(
            f"config.data.path={root!r} has splits ('train', 'test') (only a CelebA folder of "
            f"{CELEBA_NUM_IMAGES} images has 'validation'), got split='validation'."
        )
    else:
        train, test = holdout_split(labels)
        indices = train if split == "train" else test
    return ImageFolderSource(
        root,
        [files[i] for i in indices],
        labels[indices],
        num_classes=num_classes,
        options=options,
    )
