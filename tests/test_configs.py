"""The generative experiment configs: they load by path (as ``config_flags`` does), carry the
training loop's schema, build their task, and their ``:small`` variants train end to end."""

import os

import numpy as np
import pytest
from helpers import load_config
from PIL import Image

from jiio_jax.data.config import read_config
from jiio_jax.tasks import get_task
from jiio_jax.train.config import validate_config

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ("digits_gen", "celeba_gen", "celeba_inpaint", "celeba_denoise", "cifar_gen")
TOP_LEVEL = {
    "task": str,
    "seed": int,
    "batch_size": int,
    "eval_batch_size": int,
    "num_train_steps": int,
    "log_every": int,
    "eval_every": int,
    "checkpoint_every": int,
    "keep_checkpoints": int,
    "num_eval_batches": int,
    "tensorboard": bool,
}
OPTIM = ("name", "lr", "b1", "b2", "weight_decay", "schedule", "warmup_steps", "grad_clip_norm")
DATA = ("name", "path", "tfds_name", "image_size", "channels", "crop", "flip", "num_workers")


@pytest.mark.parametrize("arg", [None, "small"])
@pytest.mark.parametrize("name", CONFIGS)
def test_config_schema(name, arg):
    config = load_config(name, arg)
    for field, kind in TOP_LEVEL.items():
        assert isinstance(config[field], kind), field
    assert config.task == "generative"
    assert set(OPTIM) <= set(config.optim) and config.optim.name in ("adam", "adamw")
    assert config.optim.schedule in ("cosine", "constant")
    assert set(DATA) <= set(config.data) and "seed" in config.data
    validate_config(config, num_devices=1, process_count=1)
    read_config(config.data)
    task = get_task(config.task)(config)  # validates config.model
    assert task.arch.image_shape == (config.data.image_size,) * 2 + (config.data.channels,)
    # Overrides as on the command line (config_flags locks the config first).
    config.lock()
    config.model.method = "vae"
    get_task(config.task)(config)
    with pytest.raises(AttributeError):
        config.model.no_such_field = 1


@pytest.mark.parametrize("name", CONFIGS)
def test_small_variant_is_small(name):
    full, small = load_config(name), load_config(name, "small")
    assert small.batch_size <= 8 and small.eval_batch_size <= 8
    assert 2 <= small.num_train_steps <= 20 and small.num_eval_batches == 1
    assert small.model.jiio.max_steps <= 10 and small.data.num_workers == 0
    small_task, full_task = (get_task("generative")(c) for c in (small, full))
    assert small_task.arch.state_size <= 4096
    assert small_task.arch.state_size <= full_task.arch.state_size
    assert small.model.hole <= small.data.image_size


def test_reference_settings():
    celeba = load_config("celeba_gen")
    assert celeba.data.name == "image_folder" and celeba.data.crop == 148
    assert celeba.data.image_size == 64 and celeba.data.flip
    assert celeba.model.arch == "celeba_gen" and celeba.model.jac_weight == 2.0
    assert (celeba.model.jiio.max_steps, celeba.model.jiio.memory) == (100, 40)
    assert celeba.optim.name == "adam" and celeba.optim.schedule == "cosine"
    inpaint, denoise = load_config("celeba_inpaint"), load_config("celeba_denoise")
    assert (inpaint.model.corruption, inpaint.model.hole) == ("inpaint", 20)
    assert (denoise.model.corruption, denoise.model.noise_sigma) == ("denoise", 0.2)
    cifar = load_config("cifar_gen")
    assert cifar.data.tfds_name == "cifar10" and cifar.data.image_size == 32
    assert load_config("digits_gen").data.name == "digits"
    with pytest.raises(ValueError, match="variant"):
        load_config("digits_gen", "huge")


# -- end to end through the training loop -----------------------------------------------------
def _image_folder(root, count=40, size=150):
    """``count`` random RGB PNGs of ``size``x``size`` (>= the CelebA configs' 148 crop)."""
    os.makedirs(root)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(root, f"img{i}.png"))
    return str(root)


def _npz(path, size=32):
    rng = np.random.default_rng(0)
    np.savez(
        path,
        image_train=rng.integers(0, 256, (16, size, size, 3), dtype=np.uint8),
        image_test=rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8),
    )
    return str(path)


def _run_small(name, tmp_path, method="jiio"):
    from jiio_jax.train import train_and_evaluate

    config = load_config(name, "small")
    if name.startswith("celeba"):
        config.data.path = _image_folder(tmp_path / "images")
    elif name == "cifar_gen":
        config.data.update(name="npz", path=_npz(tmp_path / "cifar.npz"))
    config.model.method = method
    config.num_train_steps = 2
    final = train_and_evaluate(config, str(tmp_path / "work"))
    assert final["step"] == 2
    for key in ("eval/psnr", "eval/mse", "train/loss", "train/mse"):
        assert np.isfinite(final[key]), key
    images = os.listdir(tmp_path / "work" / "images")
    assert any(f.startswith("reconstruction_") for f in images), images
    assert any(f.startswith("samples_") for f in images), images
    return final


# The README's main job (digits_gen) runs in the default suite; the others are slow.
def test_digits_small_trains_end_to_end(tmp_path):
    _run_small("digits_gen", tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["celeba_gen", "celeba_inpaint", "celeba_denoise", "cifar_gen"])
def test_small_variant_trains_end_to_end(name, tmp_path):
    final = _run_small(name, tmp_path)
    if name in ("celeba_inpaint", "celeba_denoise"):
        assert np.isfinite(final["eval/psnr_corrupted"])


@pytest.mark.slow
def test_digits_small_vae_trains_end_to_end(tmp_path):
    _run_small("digits_gen", tmp_path, method="vae")
