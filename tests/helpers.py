"""Shared test helpers: loading the experiment configs of ``configs/`` as the command line does."""

from __future__ import annotations

import importlib.util
import os

import ml_collections
import numpy as np
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_NAMES = (
    "digits_gen",
    "celeba_gen",
    "celeba_inpaint",
    "celeba_denoise",
    "cifar_gen",
    "digits_adv",
    "mnist_adv",
    "cifar_adv",
    "digits_meta",
    "omniglot_meta",
)


def config_file(name: str) -> str:
    """The path of ``configs/<name>.py`` (what ``--config=`` takes, before any ``:variant``)."""
    return os.path.join(REPO, "configs", f"{name}.py")


def load_config(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """``configs/<name>.py``'s ``get_config(arg)``, the file loaded by path as
    ``ml_collections.config_flags`` loads ``--config=configs/<name>.py[:arg]`` (a fresh module
    each call, nothing added to ``sys.path``)."""
    spec = importlib.util.spec_from_file_location(f"config_{name}", config_file(name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


OMNIGLOT_ALPHABETS = (("images_background", "Alpha"), ("images_evaluation", "Beta"))


def write_omniglot(root, *, characters: int = 3, drawings: int = 4, size: int = 20) -> None:
    """A tiny Omniglot-layout folder: every drawing a distinct, rotation-asymmetric PNG."""
    rng = np.random.default_rng(0)
    for top, alphabet in OMNIGLOT_ALPHABETS:
        for c in range(characters):
            folder = os.path.join(root, top, alphabet, f"character{c + 1:02d}")
            os.makedirs(folder)
            for d in range(drawings):
                pixels = np.full((size, size), 255, np.uint8)
                pixels[rng.random((size, size)) < 0.3] = 0
                pixels[:3, :6] = 0  # A corner mark: no two quarter turns agree.
                Image.fromarray(pixels).save(os.path.join(folder, f"{c:02d}_{d:02d}.png"))


def tiny_generative_model_config(method: str = "jiio", **mdeq_fields) -> ml_collections.ConfigDict:
    """The generative task's default ``config.model`` shrunk for fast tests: a one-branch,
    4-channel MDEQ with a 4-d latent (``mdeq_fields`` override it), 8 JIIO steps, 6-step
    forward and backward solves."""
    from jiio_jax.configs import generative

    m = generative.default_model_config()
    m.method, m.arch = method, ""
    m.mdeq.update(
        channels=(4,),
        latent_dim=4,
        expansion=1,
        block_groups=2,
        num_groups=2,
        aux_groups=2,
        cell_init_std=0.01,
        **mdeq_fields,
    )
    m.jiio.update(max_steps=8, memory=3, step_size=0.1, final_step_size=None)
    m.forward.max_steps = 6
    m.backward.solver.max_steps = 6
    return m
