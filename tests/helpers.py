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
