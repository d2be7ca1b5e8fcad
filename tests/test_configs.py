"""The experiment configs: they load by path (as ``config_flags`` does), carry the training
loop's schema, splat their library sections into the library (every config and its ``:small``),
build their task, and the generative ``:small`` variants train end to end."""

import dataclasses
import json
import os
import re

import ml_collections
import numpy as np
import pytest
from helpers import CONFIG_NAMES, load_config, write_omniglot
from PIL import Image

from jiio_jax import deq, jiio, solvers
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


# -- every config's library sections splat into the library -----------------------------------
@pytest.fixture(scope="module")
def omniglot_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("omniglot")
    write_omniglot(root, characters=10)
    return str(root)


def _build(config, omniglot_root):
    """The config's task, with ``omniglot_meta`` pointed at a tiny Omniglot folder."""
    if config.data.name == "omniglot":
        config.data.update(path=omniglot_root, num_train_characters=12)
    return get_task(config.task)(config)


def _library_objects(task) -> dict:
    """The library objects a task built from its config sections."""
    settings = getattr(task, "settings", None)  # the adversarial task keeps its settings
    jiio_solver = settings.jiio if settings else task.jiio
    return {
        "jiio": jiio_solver,
        "forward": task.model.solver,
        "backward": task.model.backward,
        **({"eval_jiio": settings.eval_jiio} if settings else {}),
        **({"adam": task.adam.solver} if hasattr(task, "adam") else {}),
    }


def _check_splat(section: dict, built, cls) -> None:
    """Each set field reached ``built`` unchanged; each ``None`` field is the library default."""
    defaults = {f.name: f.default for f in dataclasses.fields(cls)}
    for field, value in section.items():
        got = getattr(built, field)
        if value is None:
            assert got == defaults[field], (cls.__name__, field, got)
        elif field == "step_size":
            assert got == jiio.Constant(value), (field, got)
        else:
            assert got == (tuple(value) if isinstance(value, list) else value), (field, got)


@pytest.mark.parametrize("arg", [None, "small"])
@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_library_sections_splat_into_the_library(name, arg, omniglot_root):
    config = load_config(name, arg)
    m = config.model.to_dict()
    objects = _library_objects(_build(config, omniglot_root))
    _check_splat(m["jiio"], objects["jiio"], jiio.JIIO)
    assert objects["jiio"].backward is objects["backward"]
    assert objects["jiio"].normalize_step is (config.task == "adversarial")
    for where in ("forward", "adam"):
        if where in objects:
            section = dict(m[where] if where == "forward" else m[where]["solver"])
            cls = solvers.REGISTRY[section.pop("name")]
            assert type(objects[where]) is cls
            _check_splat(section, objects[where], cls)
    backward = dict(m["backward"])
    assert backward.pop("name") == "implicit" and isinstance(objects["backward"], deq.Implicit)
    solver_section = dict(backward.pop("solver"))
    cls = solvers.REGISTRY[solver_section.pop("name")]
    _check_splat(solver_section, objects["backward"].solver, cls)
    assert not backward

    # The run's record (config.json) rebuilds the same objects.
    again = ml_collections.ConfigDict(json.loads(config.to_json()))
    assert _library_objects(_build(again, omniglot_root)) == objects


@pytest.mark.parametrize("name", ["digits_gen", "digits_adv", "digits_meta"])
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("jiio.max_steps", 0, "config.model.jiio: `max_steps`"),
        ("jiio.final_step_size", -1.0, "config.model.jiio: `final_step_size`"),
        ("jiio.anderson_type", "type3", "config.model.jiio: `anderson_type`"),
        ("forward.name", "newton", "config.model.forward: "),
        ("forward.memory", 0, "config.model.forward: "),
        ("backward.name", "magic", "config.model.backward: "),
        ("backward.solver.tol", -1.0, "config.model.backward: "),
    ],
)
def test_library_errors_name_the_config_field_once(name, field, value, message):
    config = load_config(name, "small")
    section, _, key = f"model.{field}".rpartition(".")
    target = config
    for part in section.split("."):
        target = target[part]
    with target.ignore_type():
        target[key] = value
    with pytest.raises(ValueError, match=re.escape(message)) as err:
        get_task(config.task)(config)
    assert str(err.value).count("config.") == 1, str(err.value)


def test_unknown_library_field_is_an_error_naming_the_section():
    config = load_config("digits_gen", "small")
    config.model.forward.memroy = 3  # A typo in a solver section.
    with pytest.raises(ValueError, match=r"config\.model\.forward: .*memroy"):
        get_task(config.task)(config)
    with pytest.raises(AttributeError):  # Locked, as on the command line: typos are refused.
        config.lock()
        config.model.jiio.z_dampign = 0.5
