"""grain pipeline: shuffle, flip, shard across processes, repeat, batch; checkpointable.

The whole pipeline is a ``grain.MapDataset`` until the last step, so every element is a pure
function of ``(seed, position)``: the iterator state is just a position, ``get_state`` /
``set_state`` resume at exactly the next batch, and orbax saves it with
``grain.checkpoint.CheckpointSave(iterator)`` next to the train state.
"""

from typing import Any

import grain
import jax
import numpy as np
from absl import flags

from jiio_jax.data.config import check_split, read_config
from jiio_jax.data.images import RandomHorizontalFlip
from jiio_jax.data.sources import get_source


def make_iterator(
    data_config: Any,
    split: str,
    batch_size: int,
    *,
    seed: int,
    shuffle: bool = True,
    repeat: bool = True,
    drop_remainder: bool = True,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DatasetIterator:
    """Batches of one split for this process.

    Order of operations, and why:

    1. global shuffle, reshuffled every epoch (grain folds the epoch into the seed);
    2. random horizontal flip (train split, ``config.data.flip``), seeded per element, so
       flips are reproducible and change between epochs;
    3. shard ``[process_index::process_count]`` of the shuffled order: within an epoch the
       processes see disjoint examples that together cover it. With ``drop_remainder`` the
       epoch is first cut to a multiple of ``process_count`` so every process has the same
       number of examples (and, with ``repeat=False``, of batches);
    4. repeat, then batch, so batches run across epoch boundaries and no example is dropped
       when repeating.

    Args:
      data_config: the ``config.data`` ConfigDict (see ``jiio_jax.data.get_source``).
      split: "train", "test" or (where available) "validation".
      batch_size: examples per batch on THIS process (global batch / process count).
      seed: seeds the shuffle and the flips; the same seed gives the same batches.
      shuffle: shuffle each epoch; turn off for evaluation.
      repeat: cycle through epochs forever; otherwise stop after one epoch.
      drop_remainder: drop the last partial batch (and the examples that would make
        process shards unequal). With ``False`` the last batch may be short and, with several
        processes, shards may differ by one example.
      process_index: this process; defaults to ``jax.process_index()``.
      process_count: number of processes; defaults to ``jax.process_count()``.

    Returns:
      A grain ``DatasetIterator`` of ``{"image": float32 [batch_size, H, W, C] in [-1, 1],
      "label": int32 [batch_size], "index": int32 [batch_size]}`` (``index``: each example's
      position in ``split``, the same in every epoch and process). With
      ``config.data.num_workers > 0`` batches are built in that many worker processes; call
      ``iterator.close()`` when done with it.

    Raises:
      ValueError: bad arguments, or a shard with no examples.
    """
    options = read_config(data_config)
    check_split(split)
    process_index, process_count = check_processes(process_index, process_count, batch_size)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}.")

    # Each record carries its position in the split, the key of per-example state carried
    # across epochs (``Task.example_cache``). Added by the source itself, not by a dataset
    # transformation: an extra transformation before the shuffle changed grain's shuffle
    # order (every run's data order, hence its numbers).
    source = _IndexedSource(get_source(data_config, split))
    dataset = grain.MapDataset.source(source).seed(seed)
    if shuffle:
        dataset = dataset.shuffle()
    if options.flip and split == "train":
        dataset = dataset.random_map(RandomHorizontalFlip())
    if drop_remainder:
        dataset = dataset[: len(dataset) - len(dataset) % process_count]
    dataset = shard(
        dataset,
        process_index,
        process_count,
        f"{split!r} examples (config.data.path={options.path!r})",
    )
    if repeat:
        dataset = dataset.repeat(None)
    return batched_iterator(
        dataset, batch_size, drop_remainder=drop_remainder, num_workers=options.num_workers
    )


class _IndexedSource:
    """A random-access source whose record ``i`` also holds ``"index": int32(i)``."""

    def __init__(self, source):
        self._source = source

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {**self._source[index], "index": np.int32(index)}

    def __repr__(self) -> str:
        return f"_IndexedSource({self._source!r})"


# -- the steps every iterator of this package shares (images here, episodes in ``episodes``) --


def check_processes(
    process_index: int | None, process_count: int | None, batch_size: int
) -> tuple[int, int]:
    """``(process_index, process_count)``, by default JAX's; ``ValueError`` unless
    ``0 <= process_index < process_count`` and ``batch_size >= 1``."""
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if not 0 <= process_index < process_count:
        raise ValueError(
            f"need 0 <= process_index < process_count, got {process_index}, {process_count}."
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}.")
    return process_index, process_count


def shard(
    dataset: grain.MapDataset, process_index: int, process_count: int, what: str
) -> grain.MapDataset:
    """This process's elements ``dataset[process_index::process_count]``; ``ValueError``
    saying it has no ``what`` when that is empty."""
    dataset = dataset[process_index::process_count]
    if len(dataset) == 0:
        raise ValueError(f"process {process_index} of {process_count} has no {what}.")
    return dataset


def batched_iterator(
    dataset: grain.MapDataset, batch_size: int, *, drop_remainder: bool, num_workers: int
) -> grain.DatasetIterator:
    """An iterator over batches of ``dataset``, built in ``num_workers`` worker processes when
    positive (then call ``close()`` on it when done)."""
    iter_dataset = dataset.batch(batch_size, drop_remainder=drop_remainder).to_iter_dataset()
    if num_workers:
        # grain 0.2.18 reads an absl flag when it starts workers with JAX loaded, which raises
        # UnparsedFlagAccessError outside absl.app (tests, notebooks); google/grain#1355, fixed
        # after 0.2.18. Unparsed flags hold their defaults, so marking them parsed changes none.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_dataset = iter_dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=num_workers)
        )
    return iter(iter_dataset)
