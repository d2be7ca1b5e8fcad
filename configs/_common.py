"""Shared pieces of the configs: data fields, the generative recipe (``configs/*_gen.py``,
``celeba_inpaint.py``, ``celeba_denoise.py``) and the reference adversarial recipe
(``mnist_adv.py``, ``cifar_adv.py``).

``configs/`` is not a package: each config adds its own folder to ``sys.path`` and imports this
module, which works when ``ml_collections.config_flags`` loads the config by path.
"""

from __future__ import annotations

import ml_collections

from jiio_jax.tasks.gen_config import default_model_config, make_small_loop, override_arch
from jiio_jax.train.config import get_base_config

# The reference's inpainting hole (20 pixels) is for 64x64 images; smaller images get the same
# fraction of the side.
REFERENCE_HOLE, REFERENCE_SIZE = 20, 64


def scaled_hole(image_size: int) -> int:
    """``round(20 * image_size / 64)``, at least 1."""
    return max(1, round(REFERENCE_HOLE * image_size / REFERENCE_SIZE))


def data_config(**fields) -> ml_collections.ConfigDict:
    """``config.data`` with every field the loaders read (``jiio_jax.data.config``)."""
    data = ml_collections.ConfigDict(
        {
            "name": "digits",
            "path": "",
            "tfds_name": "",
            "image_size": 8,
            "channels": 1,
            "crop": 0,
            "flip": False,
            "num_workers": 0,
            "seed": 0,
        }
    )
    data.update(fields)
    return data


def generative_config(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Base loop fields, ``data`` and the ``generative`` task's model defaults (the reference's
    ``celeba_vae``: ``jiio_jax.tasks.gen_config.default_model_config``)."""
    config = get_base_config()
    config.task = "generative"
    config.data = data
    config.model = default_model_config()
    config.model.hole = scaled_hole(data.image_size)
    config.optim.update(
        name="adam",
        lr=1e-3,
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,  # The reference passes WD 0 (and ignores it with Adam).
        schedule="cosine",
        warmup_steps=0,
        grad_clip_norm=0.0,  # The reference does not clip (CLIP = -1).
    )
    config.tensorboard = False
    return config


def make_small(config: ml_collections.ConfigDict, image_size: int = 16) -> None:
    """The ``:small`` CPU variant in place: a tiny MDEQ at ``image_size``, batch 4, 4 steps.

    For smoke tests of the whole pipeline (data, task, loop, checkpoints); nothing is learnt.
    """
    make_small_loop(config, num_train_steps=4)
    config.optim.warmup_steps = 0
    config.data.image_size = image_size
    config.data.num_workers = 0
    m = config.model
    override_arch(m, "tiny_gen")  # channels (8, 16), expansion 2, latent 16
    m.hole = scaled_hole(image_size)
    m.jiio.update(max_steps=8, memory=3, step_size=0.05, final_step_size=None)
    m.forward.update(max_steps=6, memory=3)
    m.backward.update(max_steps=6, memory=3)
    m.vae.encoder_channels = (8, 16)
    m.vae.kl_warmup_steps = 2
    m.num_image_examples = 4
    m.num_samples = 4


def adversarial_reference_config(
    data: ml_collections.ConfigDict,
    *,
    arch: str,
    train_images: int,
    epochs: int,
    jac_at_trajectory: bool,
    batch_size: int = 96,
    epsilon: float = 1.0,
) -> ml_collections.ConfigDict:
    """The reference's ``*_cls.yaml`` adversarial-training recipe (``mnist_adv``,
    ``cifar_adv``): L2 ``epsilon`` on the [0, 1] scale, Jacobian penalty 0.01, batch 96,
    ``epochs`` epochs, evaluation and checkpoints once per epoch on 10 test batches."""
    from jiio_jax.tasks import adv_config

    config = adv_config.experiment_config(data, get_base_config())
    steps_per_epoch = train_images // batch_size
    config.batch_size = batch_size
    config.eval_batch_size = batch_size
    config.num_eval_batches = 10
    config.num_train_steps = epochs * steps_per_epoch
    config.log_every = 50
    config.eval_every = steps_per_epoch
    config.checkpoint_every = steps_per_epoch
    m = config.model
    m.arch = arch
    m.norm = "l2"
    m.epsilon = epsilon
    m.jac_weight = 0.01
    m.jac_at_trajectory = jac_at_trajectory
    return config
