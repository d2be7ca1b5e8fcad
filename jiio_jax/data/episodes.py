"""N-way K-shot episodes for meta-learning: class pools, seeded class split, grain iterators.

An *episode* (one few-shot task) draws ``n_way`` classes of one split, ``k_shot`` support and
``n_query`` query images of each, and gives the classes the labels ``0 .. n_way - 1`` in the
order drawn. With ``rotate`` every class also gets one random quarter turn in
``{0, 90, 180, 270}`` degrees applied to all of its support *and* query images (the reference's
augmentation, §4.4 of JIIO_REFERENCE.md). A batch holds ``B`` episodes::

    image:    float32 [B, n_way * (k_shot + n_query), H, W, 1] in [-1, 1]
    label:    int32   [B, n_way * (k_shot + n_query)]   in [0, n_way)
    class:    int32   [B, n_way]   global class id of label j
    rotation: int32   [B, n_way]   augmentation quarter turns of label j (0 without rotate)

The first ``n_way * k_shot`` rows are the support set, class-major (label ``j``'s shots at
``j * k_shot ...``), the rest the query set, class-major too.

**Disjoint meta-train / meta-test classes.** Classes are grouped by *character* (the symbol
they show); a seeded permutation (``config.data.seed``) assigns the first
``num_train_characters`` characters to meta-train and the rest to meta-test, so a meta-test
class never shares its character with a meta-training class (the reference's test script drew
its tasks from the training classes, §7.17).

Sources (``config.data.name``):

- ``"omniglot"``: the Omniglot layout ``<path>/images_background`` and/or
  ``<path>/images_evaluation``, each ``alphabet/character/*.png`` (or ``<path>`` itself laid
  out as ``alphabet/character/*.png``); one class per character (1623 with both folders, 20
  drawings each), images resized to ``image_size`` with LANCZOS as the reference (28x28). Both
  folders are pooled before the split, as iMAML's task definitions do (1200 meta-train
  characters, the remaining 423 meta-test).
- ``"digits"`` (built in, no download): scikit-learn's 1797 8x8 digits. Ten classes are too
  few for 5-way tasks on disjoint splits, so every (digit, quarter turn) pair is a class, the
  way rotated Omniglot characters are new classes in Santoro et al. (2016) and Vinyals et al.
  (2016): 40 classes, each showing all ~180 images of its digit turned by its angle. The
  character is the digit, so all four turns of a digit fall in the same split (default 6
  meta-train digits = 24 classes, 4 meta-test digits = 16 classes). Keep ``rotate=False``
  here: a random extra turn per task would make the four classes of a digit interchangeable.
  Digits 0, 1 and 8 look much alike turned by 180 degrees (a linear classifier trained on all
  40 classes confuses each with its half-turn 10-13% of the time; every other class < 8%), so
  some tasks hold two similar classes.

**Determinism.** Episode ``i`` of a split is a pure function of ``(seed, split, i)``
(``numpy.random.default_rng``); the grain iterator's state is a position, so a checkpointed
iterator (``grain.checkpoint.CheckpointSave``) resumes with exactly the next batch.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from typing import Any, NamedTuple

import grain
import numpy as np
from PIL import Image

from jiio_jax.data.images import natural_key, preprocess_array
from jiio_jax.data.pipeline import batched_iterator, check_processes, make_iterator, shard

EPISODE_SOURCES = ("digits", "omniglot")
OMNIGLOT_FOLDERS = ("images_background", "images_evaluation")
# Train episodes are indices into a range this long: effectively endless (no epochs), while
# still a grain MapDataset whose iterator state is a single position.
NUM_TRAIN_EPISODES = 2**40
_SPLIT_CODES = {"train": 0, "test": 1}
# ``make_episode_iterator`` takes ``make_iterator``'s arguments (one declaration of the
# interface the training loop calls) and implements these of them.
_ITERATOR_SIGNATURE = inspect.signature(make_iterator)
_ITERATOR_ARGUMENTS = (
    *("data_config", "split", "batch_size", "seed", "shuffle", "repeat", "drop_remainder"),
    *("process_index", "process_count"),
)
_OMNIGLOT_HELP = (
    "Download images_background.zip and images_evaluation.zip from "
    "https://github.com/brendenlake/omniglot (python/), unzip both into one folder and set "
    "config.data.path to it; or use config.data.name='digits'."
)


@dataclasses.dataclass(frozen=True)
class EpisodeOptions:
    """The checked episode fields of ``config.data`` (see ``read_episode_config``)."""

    name: str
    path: str
    image_size: int
    n_way: int
    k_shot: int
    n_query: int
    rotate: bool
    num_train_characters: int
    num_test_episodes: int
    seed: int
    num_workers: int

    @property
    def episode_size(self) -> int:
        """Images per episode, ``n_way * (k_shot + n_query)``."""
        return self.n_way * (self.k_shot + self.n_query)


class EpisodeInfo(NamedTuple):
    """Static facts about the episodes (what ``train_and_evaluate`` asks of a dataset).

    Attributes:
      image_shape: ``(H, W, 1)`` of every image.
      num_classes: ``n_way`` (labels of an episode).
      num_train: train episodes available (``NUM_TRAIN_EPISODES``: endless in practice).
      num_test: meta-test episodes (``config.data.num_test_episodes``).
      num_train_classes: classes of the meta-train split.
      num_test_classes: classes of the meta-test split.
    """

    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int
    num_train_classes: int
    num_test_classes: int


def _get(config: Any, field: str, default: Any) -> Any:
    return config.get(field, default) if hasattr(config, "get") else default


def _int(config: Any, field: str, low: int, default: Any = None) -> int:
    value = _get(config, field, default)
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < low:
        raise ValueError(f"config.data.{field} must be an integer >= {low}, got {value!r}.")
    return int(value)


def read_episode_config(config: Any) -> EpisodeOptions:
    """Checks the episode fields of ``config.data``; raises ``ValueError`` naming a bad one.

    Fields: ``name`` ("digits" | "omniglot"), ``path`` (Omniglot folder), ``image_size``,
    ``channels`` (must be 1), ``n_way``, ``k_shot``, ``n_query`` (query images per class),
    ``rotate`` (random quarter turn per class and episode), ``num_train_characters``,
    ``num_test_episodes``, ``seed`` (class split seed; default 0), ``num_workers`` (grain
    worker processes; default 0). Whether the splits hold enough classes and images is checked
    when they are built (``episode_info``, ``make_episode_iterator``).
    """
    if not hasattr(config, "get"):
        raise ValueError(f"config.data must be a ConfigDict or mapping, got {type(config)}.")
    name = _get(config, "name", None)
    if name not in EPISODE_SOURCES:
        raise ValueError(f"config.data.name must be one of {EPISODE_SOURCES}, got {name!r}.")
    channels = _get(config, "channels", 1)
    if channels != 1 or isinstance(channels, bool):
        raise ValueError(f"config.data.channels must be 1 (grey episodes), got {channels!r}.")
    rotate = _get(config, "rotate", False)
    if not isinstance(rotate, bool):
        raise ValueError(f"config.data.rotate must be a bool, got {rotate!r}.")
    return EpisodeOptions(
        name=name,
        path=str(_get(config, "path", "")),
        image_size=_int(config, "image_size", 1),
        n_way=_int(config, "n_way", 2),
        k_shot=_int(config, "k_shot", 1),
        n_query=_int(config, "n_query", 1),
        rotate=rotate,
        num_train_characters=_int(config, "num_train_characters", 1),
        num_test_episodes=_int(config, "num_test_episodes", 1),
        seed=_int(config, "seed", 0, 0),
        num_workers=_int(config, "num_workers", 0, 0),
    )


# ---------------------------------------------------------------------------------------------
# Class pools.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ClassPool:
    """The classes of one split and where their images are.

    Attributes:
      class_ids: int32 ``[C]`` global class ids (unique across both splits).
      members: per class, int ``[n_c]`` indices of its images in the store.
      base_rotation: int32 ``[C]`` quarter turns that define the class (digits; else 0).
    """

    class_ids: np.ndarray
    members: tuple[np.ndarray, ...]
    base_rotation: np.ndarray

    def __len__(self) -> int:
        return len(self.class_ids)


@functools.cache
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits: ``float32 [1797, 8, 8]`` in [-1, 1] (from 0..16), ``int [1797]``."""
    from sklearn.datasets import load_digits  # Lazy: sklearn takes ~1 s to import.

    digits = load_digits()
    return digits.images.astype(np.float32) / np.float32(8.0) - np.float32(1.0), digits.target


class DigitsStore:
    """The digits as ``[1797, S, S]`` float32 arrays in [-1, 1], resized once on creation."""

    def __init__(self, image_size: int):
        images, labels = _load_digits()
        if image_size != images.shape[1]:
            images = np.stack(
                [
                    preprocess_array(im, image_size=image_size, channels=1, crop=0)[..., 0]
                    for im in images
                ]
            )
        self.images, self.labels = images, labels

    def __getitem__(self, index: int) -> np.ndarray:
        return self.images[index]


class OmniglotStore:
    """Omniglot PNGs decoded on access: grey, LANCZOS-resized, in [-1, 1] (ink is -1).

    Holds only file names, so grain worker processes can pickle it.
    """

    def __init__(self, root: str, files: list[str], image_size: int):
        self.root, self.files, self.image_size = root, files, image_size

    def __getitem__(self, index: int) -> np.ndarray:
        with Image.open(os.path.join(self.root, self.files[index])) as image:
            image = image.convert("L")
            size = (self.image_size, self.image_size)
            if image.size != size:
                image = image.resize(size, Image.Resampling.LANCZOS)
            pixels = np.asarray(image, dtype=np.float32)
        return pixels / np.float32(127.5) - np.float32(1.0)


def _omniglot_characters(root: str) -> tuple[list[str], list[list[str]]]:
    """``(files, members)``: all PNG paths (relative to ``root``) and per character its files.

    Characters are sorted by ``folder/alphabet/character`` name so the list (and hence the
    seeded split) does not depend on the file system's listing order.
    """
    if not root or not os.path.isdir(root):
        raise FileNotFoundError(f"config.data.path={root!r} is not a folder. {_OMNIGLOT_HELP}")
    tops = [d for d in OMNIGLOT_FOLDERS if os.path.isdir(os.path.join(root, d))] or [""]
    files: list[str] = []
    members: list[list[str]] = []
    for top in tops:
        base = os.path.join(root, top)
        for alphabet in sorted(d for d in os.listdir(base) if not d.startswith(".")):
            adir = os.path.join(base, alphabet)
            if not os.path.isdir(adir):
                continue
            for character in sorted(os.listdir(adir), key=natural_key):
                cdir = os.path.join(adir, character)
                if not os.path.isdir(cdir):
                    continue
                names = sorted(
                    (f for f in os.listdir(cdir) if f.lower().endswith(".png")), key=natural_key
                )
                if names:
                    members.append([os.path.join(top, alphabet, character, f) for f in names])
                    files += members[-1]
    if not members:
        raise FileNotFoundError(
            f"config.data.path={root!r} holds no alphabet/character/*.png images. {_OMNIGLOT_HELP}"
        )
    return files, members


@functools.cache
def _omniglot_index(root: str) -> tuple[list[str], list[np.ndarray]]:
    files, members = _omniglot_characters(root)
    index, start = [], 0
    for m in members:
        index.append(np.arange(start, start + len(m)))
        start += len(m)
    return files, index


def _split_characters(num_characters: int, options: EpisodeOptions) -> dict[str, np.ndarray]:
    """Seeded partition of character indices into ``{"train", "test"}`` (both sorted)."""
    if options.num_train_characters >= num_characters:
        raise ValueError(
            f"config.data.num_train_characters={options.num_train_characters} leaves no "
            f"meta-test characters: the {options.name} data has {num_characters}."
        )
    order = np.random.default_rng(options.seed).permutation(num_characters)
    k = options.num_train_characters
    return {"train": np.sort(order[:k]), "test": np.sort(order[k:])}


def build_pools(options: EpisodeOptions) -> tuple[Any, dict[str, ClassPool]]:
    """The image store and the meta-train / meta-test class pools of ``options``.

    Raises:
      FileNotFoundError: the Omniglot folder is missing or empty.
      ValueError: a split has fewer than ``n_way`` classes, a class fewer than
        ``k_shot + n_query`` images, or ``num_train_characters`` leaves no test characters.
    """
    if options.name == "digits":
        store = DigitsStore(options.image_size)
        split = _split_characters(10, options)
        pools = {}
        for name, digits in split.items():
            ids, members, rotations = [], [], []
            for d in digits:
                for r in range(4):
                    ids.append(4 * d + r)
                    members.append(np.flatnonzero(store.labels == d))
                    rotations.append(r)
            pools[name] = ClassPool(
                np.asarray(ids, np.int32), tuple(members), np.asarray(rotations, np.int32)
            )
    else:
        files, index = _omniglot_index(os.path.abspath(options.path))
        store = OmniglotStore(os.path.abspath(options.path), files, options.image_size)
        split = _split_characters(len(index), options)
        pools = {
            name: ClassPool(
                chars.astype(np.int32),
                tuple(index[c] for c in chars),
                np.zeros(len(chars), np.int32),
            )
            for name, chars in split.items()
        }
    per_class = options.k_shot + options.n_query
    for name, pool in pools.items():
        if len(pool) < options.n_way:
            raise ValueError(
                f"config.data.n_way={options.n_way} exceeds the {len(pool)} meta-{name} classes "
                f"of {options.name} (config.data.num_train_characters="
                f"{options.num_train_characters}); lower n_way or rebalance the split."
            )
        fewest = min(len(m) for m in pool.members)
        if fewest < per_class:
            raise ValueError(
                f"config.data.k_shot + config.data.n_query = {per_class} exceeds the {fewest} "
                f"images of the smallest meta-{name} class."
            )
    return store, pools


# ---------------------------------------------------------------------------------------------
# Episodes.
# ---------------------------------------------------------------------------------------------


class EpisodeSampler:
    """``sampler(index) -> episode``: a pure function of ``(seed, split, index)``.

    Args:
      store: ``store[i] -> float32 [H, W]`` image ``i``.
      pool: the split's classes.
      options: episode shape and augmentation.
      split: "train" or "test" (folded into the seed, so the splits' streams differ).
      seed: the stream seed.
    """

    def __init__(self, store: Any, pool: ClassPool, options: EpisodeOptions, split: str, seed: int):
        self.store, self.pool, self.options = store, pool, options
        self.split_code, self.seed = _SPLIT_CODES[split], seed

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        o, pool = self.options, self.pool
        rng = np.random.default_rng([self.seed, self.split_code, int(index)])
        chosen = rng.choice(len(pool), o.n_way, replace=False)
        rotation = rng.integers(0, 4, o.n_way) if o.rotate else np.zeros(o.n_way, np.int64)
        support, query = [], []
        for c, r in zip(chosen, rotation, strict=True):
            members = pool.members[c]
            picks = members[rng.choice(len(members), o.k_shot + o.n_query, replace=False)]
            turns = int(pool.base_rotation[c] + r) % 4
            images = [np.rot90(self.store[i], turns) for i in picks]
            support += images[: o.k_shot]
            query += images[o.k_shot :]
        labels = np.concatenate(
            [np.repeat(np.arange(o.n_way), o.k_shot), np.repeat(np.arange(o.n_way), o.n_query)]
        )
        return {
            "image": np.stack(support + query)[..., None].astype(np.float32),
            "label": labels.astype(np.int32),
            "class": pool.class_ids[chosen].astype(np.int32),
            "rotation": rotation.astype(np.int32),
        }


def episode_info(data_config: Any) -> EpisodeInfo:
    """Shapes and sizes of the configured episodes (builds both class pools)."""
    options = read_episode_config(data_config)
    _, pools = build_pools(options)
    return EpisodeInfo(
        image_shape=(options.image_size, options.image_size, 1),
        num_classes=options.n_way,
        num_train=NUM_TRAIN_EPISODES,
        num_test=options.num_test_episodes,
        num_train_classes=len(pools["train"]),
        num_test_classes=len(pools["test"]),
    )


def make_episode_iterator(
    data_config: Any, split: str, batch_size: int, **kwargs: Any
) -> grain.DatasetIterator:
    """Batches of episodes of one split for this process, behind ``jiio_jax.data.make_iterator``'s
    interface: the arguments are bound to its signature (same names, same defaults, the same
    ``TypeError`` for a missing or unknown one), so the training loop can use either.

    Train: episodes ``0, 1, 2, ...`` of an endless stream, process ``p`` taking every
    ``process_count``-th. Test: the fixed ``num_test_episodes`` episodes, cut to a multiple of
    ``process_count`` (with ``drop_remainder``) and sharded the same way; ``repeat`` cycles
    through them. Episodes are random draws already, so ``shuffle`` changes nothing.

    Args:
      data_config: ``config.data`` (fields in ``read_episode_config``).
      split: "train" or "test".
      batch_size: episodes per batch on this process.
      **kwargs: ``make_iterator``'s keyword options: ``seed`` (required) seeds the episode
        stream (the class split uses ``config.data.seed``); ``shuffle`` is ignored; ``repeat``
        cycles the test episodes (train episodes never end); ``drop_remainder`` drops a last
        partial batch (and test episodes beyond equal shards); ``process_index`` /
        ``process_count`` default to JAX's.

    Returns:
      A checkpointable grain iterator of episode batches (module docstring); with
      ``config.data.num_workers > 0`` call ``close()`` when done.
    """
    bound = _ITERATOR_SIGNATURE.bind(data_config, split, batch_size, **kwargs)
    bound.apply_defaults()
    o = bound.arguments
    unknown = set(o) - set(_ITERATOR_ARGUMENTS)
    if unknown:  # make_iterator grew an option this iterator does not implement yet
        raise NotImplementedError(f"episode iterators do not implement {sorted(unknown)}.")
    seed, repeat, drop_remainder = o["seed"], o["repeat"], o["drop_remainder"]
    process_index, process_count = o["process_index"], o["process_count"]
    options = read_episode_config(data_config)
    if split not in _SPLIT_CODES:
        raise ValueError(f"episode splits are {tuple(_SPLIT_CODES)}, got split={split!r}.")
    process_index, process_count = check_processes(process_index, process_count, batch_size)
    store, pools = build_pools(options)
    sampler = EpisodeSampler(store, pools[split], options, split, seed)
    if split == "train":
        dataset = grain.MapDataset.range(NUM_TRAIN_EPISODES)
    else:
        count = options.num_test_episodes
        if drop_remainder:
            count -= count % process_count
        dataset = grain.MapDataset.range(count)
        if repeat:
            dataset = dataset.repeat(None)
    dataset = shard(
        dataset,
        process_index,
        process_count,
        f"{split!r} episodes (config.data.num_test_episodes={options.num_test_episodes})",
    )
    return batched_iterator(
        dataset.map(sampler),
        batch_size,
        drop_remainder=drop_remainder,
        num_workers=options.num_workers,
    )


make_episode_iterator.__signature__ = _ITERATOR_SIGNATURE
