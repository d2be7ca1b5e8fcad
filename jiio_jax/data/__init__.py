"""Input pipelines: grain over random-access image sources, with no TensorFlow import.

``get_source(config.data, split)`` gives random access to one split of "digits" (built in),
"image_folder" (e.g. CelebA's img_align_celeba), "npz" or "tfds" (array_record, optional);
``make_iterator`` turns it into sharded, shuffled, checkpointable batches; ``dataset_info``
reports shapes and split sizes. Examples are ``{"image": float32 [H, W, C] in [-1, 1],
"label": int32}``.
"""

from jiio_jax.data.episodes import episode_info as episode_info
from jiio_jax.data.episodes import make_episode_iterator as make_episode_iterator
from jiio_jax.data.pipeline import make_iterator as make_iterator
from jiio_jax.data.sources import DatasetInfo as DatasetInfo
from jiio_jax.data.sources import dataset_info as dataset_info
from jiio_jax.data.sources import get_source as get_source
