"""Shared test helpers: loading the experiment configs of ``configs/`` as the command line does."""

from __future__ import annotations

import importlib.util
import os

import ml_collections

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
