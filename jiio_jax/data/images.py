"""Per-example image preprocessing shared by every source: range, crop, resize, channels, flip.

Every source ends in the same format, ``float32 [H, W, C]`` in ``[-1, 1]``. File images are
cropped and resized as ``uint8`` PIL images with the same PIL calls and crop rounding as
torchvision's ``CenterCrop`` then ``Resize`` in the reference CelebA pipeline. Array images
(digits, npz, tfds) are resized per channel as float PIL images (mode ``"F"``), so no precision
is lost to rounding.
PIL's bilinear resize widens its kernel when it downsamples, i.e. it is antialiased.
"""

import re
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

# ITU-R 601-2 luma weights: the ones PIL's ``convert("L")`` uses, so array and file sources
# turn RGB into grey the same way.
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value, so ``"img2.png" < "img10.png"``.

    ``re.split`` with a capturing group alternates text and digit runs, starting with text, so
    the keys of any two names compare ``str`` with ``str`` and ``int`` with ``int``. Case is
    kept, as in the ``natsort.natsorted`` default that the reference CelebA loader used.
    """
    parts = re.split(r"(\d+)", name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts))


def crop_box(height: int, width: int, crop: int) -> tuple[int, int, int, int]:
    """The ``(left, top, right, bottom)`` box of a centred ``crop x crop`` square.

    Rounds the offsets like torchvision's ``CenterCrop`` (CelebA 178x218, crop 148 -> left 15,
    top 35).

    Raises:
      ValueError: if the image is smaller than the crop.
    """
    if crop > min(height, width):
        raise ValueError(
            f"config.data.crop={crop} is larger than the image ({height}x{width}); "
            "use a crop no larger than the shorter side, or 0 for none."
        )
    top = int(round((height - crop) / 2.0))
    left = int(round((width - crop) / 2.0))
    return left, top, left + crop, top + crop


def preprocess_pil(image: Image.Image, *, image_size: int, channels: int, crop: int) -> np.ndarray:
    """Decoded file image -> ``float32 [image_size, image_size, channels]`` in ``[-1, 1]``.

    Args:
      image: any PIL image (palette, grey, RGB, RGBA; alpha is dropped).
      image_size: output height and width. A non-square image without ``crop`` is resized to a
        square without keeping its aspect ratio.
      channels: 1 (luma) or 3 (RGB; grey is repeated).
      crop: side of the centre square taken before resizing; 0 for none.
    """
    image = image.convert("L" if channels == 1 else "RGB")
    if crop:
        image = image.crop(crop_box(image.height, image.width, crop))
    if image.size != (image_size, image_size):
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32).reshape(image_size, image_size, channels)
    return pixels / np.float32(127.5) - np.float32(1.0)


def preprocess_array(image: np.ndarray, *, image_size: int, channels: int, crop: int) -> np.ndarray:
    """Array image in ``[-1, 1]`` -> ``float32 [image_size, image_size, channels]``.

    Args:
      image: ``[H, W]`` or ``[H, W, C]`` with C in {1, 3}, already in ``[-1, 1]``.
      image_size: output height and width (see ``preprocess_pil``).
      channels: 1 or 3.
      crop: side of the centre square taken before resizing; 0 for none.
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 2:
        image = image[:, :, None]
    # Reduce to grey before resizing (a third of the work); repeat grey after it.
    if channels == 1 and image.shape[-1] == 3:
        image = (image @ _LUMA)[:, :, None]
    if crop:
        left, top, right, bottom = crop_box(image.shape[0], image.shape[1], crop)
        image = image[top:bottom, left:right]
    if image.shape[:2] != (image_size, image_size):
        image = np.stack(
            [
                np.asarray(
                    Image.fromarray(np.ascontiguousarray(image[:, :, c])).resize(
                        (image_size, image_size), Image.Resampling.BILINEAR
                    )
                )
                for c in range(image.shape[-1])
            ],
            axis=-1,
        )
    if channels == 3 and image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.ascontiguousarray(image, dtype=np.float32)


def array_range(arrays: Sequence[np.ndarray], where: str) -> tuple[np.float32, np.float32]:
    """``(scale, offset)`` that map image arrays onto ``[-1, 1]``, detected from dtype and range.

    - integer dtypes (``uint8`` and friends): pixel values 0..255;
    - floating dtypes with every value in ``[0, 1]``: treated as ``[0, 1]``;
    - floating dtypes in ``[-1, 1]``: kept.

    The range is taken over all ``arrays`` together (pass every split of a file), so that a
    ``[-1, 1]`` split that happens to hold no negative value is not misread as ``[0, 1]``.

    Args:
      arrays: image arrays ``[N, H, W(, C)]`` of one kind; each is scanned once.
      where: names the arrays in error messages.

    Raises:
      ValueError: for mixed or other dtypes, or values outside those ranges.
    """
    kinds = {a.dtype.kind for a in arrays}
    arrays = [a for a in arrays if a.size]
    if not arrays:
        return np.float32(1.0), np.float32(0.0)
    lo = min(float(a.min()) for a in arrays)
    hi = max(float(a.max()) for a in arrays)
    if kinds <= {"u", "i"}:
        if lo < 0 or hi > 255:
            raise ValueError(f"{where}: integer pixels must lie in 0..255, got {lo:g}..{hi:g}.")
        return np.float32(1 / 127.5), np.float32(-1.0)
    if kinds == {"f"}:
        if 0.0 <= lo and hi <= 1.0:
            return np.float32(2.0), np.float32(-1.0)
        if -1.0 <= lo and hi <= 1.0:
            return np.float32(1.0), np.float32(0.0)
        raise ValueError(
            f"{where}: float pixels must lie in [0, 1] or [-1, 1], got [{lo:g}, {hi:g}]."
        )
    dtypes = sorted({str(a.dtype) for a in arrays})
    raise ValueError(f"{where}: unsupported image dtypes {dtypes} (use uint8 or float).")


class RandomHorizontalFlip(grain.transforms.RandomMap):
    """Mirrors ``example["image"]`` (``[H, W, C]``) left-right with probability 1/2.

    grain seeds the generator from the pipeline seed and the element's index, so the flips are
    reproducible and differ between epochs.
    """

    def random_map(self, element: dict[str, np.ndarray], rng: np.random.Generator):
        if rng.random() < 0.5:
            element = dict(element, image=np.ascontiguousarray(element["image"][:, ::-1]))
        return element
