"""The paper's evaluation tools as functions of a trained run: PSNR, timing, samples, FID,
attacks and meta-test accuracy.

Each evaluation is ``fn(config, params, options) -> results``: ``config`` is the run's config,
``params`` its trained parameters (``jiio_jax.train.load_state(workdir)["params"]``),
``options`` an :class:`EvalOptions`; ``results`` is a JSON-serialisable dict, and files
(image folders, plots) go under ``options.output_dir``. :func:`run_evaluation` loads the
checkpoint, runs one evaluation and writes ``<output_dir>/<name>_step<N>.json`` (one file per
evaluated checkpoint step); the command line is ``experiments/evaluate.py``, which takes the
config from the run's ``config.json``.

=========  ==============================  ====================================================
name       tasks                           what it measures
=========  ==============================  ====================================================
psnr       generative                      PSNR per test image on [0, 1]: mean and quartiles
timing     generative, adversarial, meta   JIIO vs inner Adam / PGD / projected Adam at equal
                                           quality, device-synced once per timed call
samples    generative                      density fitted to the optimised latents, decoded
                                           samples written as an image folder
fid        generative                      Fréchet distance of samples vs test images
attack     adversarial                     robust accuracy under PGD-k and JIIO-k attacks
meta       meta                            meta-test accuracy with a 95% CI, inner-loop time
=========  ==============================  ====================================================
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from collections.abc import Callable
from typing import Any

import ml_collections

# The timing protocol shared by the evaluations and experiments/benchmarks (light: jax only).
from jiio_jax.evaluation.clock import (
    compile_ahead,
    interleaved_medians,
    interleaved_times,
    timed_call,
)

# name -> ("module:function", tasks it applies to). Modules are imported on use.
_EVALUATIONS: dict[str, tuple[str, tuple[str, ...]]] = {
    "psnr": ("jiio_jax.evaluation.generative:psnr", ("generative",)),
    "samples": ("jiio_jax.evaluation.generative:samples", ("generative",)),
    "fid": ("jiio_jax.evaluation.generative:fid", ("generative",)),
    "timing": ("jiio_jax.evaluation.timing:timing", ("generative", "adversarial", "meta")),
    "attack": ("jiio_jax.evaluation.robustness:attack", ("adversarial",)),
    "meta": ("jiio_jax.evaluation.meta:meta", ("meta",)),
}
EVALUATIONS = tuple(_EVALUATIONS)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """Options shared by the evaluations; ``None`` means the evaluation's default.

    Attributes:
      output_dir: where results and files are written (``<workdir>/eval`` from the CLI).
      num_examples: test images (psnr, attack), training images whose latents are fitted and
        test images compared (samples, fid), or meta-test episodes (meta); default all of
        the split / ``config.data.num_test_episodes``.
      batch_size: examples (or episodes) per batch; default ``config.eval_batch_size``.
      steps: iteration counts: PGD-k / JIIO-k attack steps (attack, at most 1000), or the
        JIIO step budgets to time (timing).
      attacks: attacks to run (``"pgd"``, ``"jiio"``).
      methods: inner solvers to compare (meta, timing).
      num_samples: images to generate (samples, fid).
      density: density fitted to the optimised latents (samples, fid): ``"gmm"`` or
        ``"gaussian"``.
      num_components: mixture components of the ``"gmm"`` density.
      num_repeats: timed repetitions per method (timing).
      seed: rng seed of the evaluation.
    """

    output_dir: str
    num_examples: int | None = None
    batch_size: int | None = None
    steps: tuple[int, ...] | None = None
    attacks: tuple[str, ...] = ("pgd", "jiio")
    methods: tuple[str, ...] | None = None
    num_samples: int = 1000
    density: str = "gmm"
    num_components: int = 10
    num_repeats: int = 5
    seed: int = 0

    def __post_init__(self):
        for name in ("num_examples", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"EvalOptions.{name}={value!r} must be a positive int or None.")
        for name in ("num_samples", "num_components", "num_repeats"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EvalOptions.{name}={value!r} must be a positive int.")
        if self.steps is not None and (
            not self.steps or any(not isinstance(s, int) or s < 1 for s in self.steps)
        ):
            raise ValueError(
                f"EvalOptions.steps={self.steps!r} must be a non-empty tuple of positive ints."
            )
        if self.density not in ("gmm", "gaussian"):
            raise ValueError(f"EvalOptions.density={self.density!r}; use 'gmm' or 'gaussian'.")
        unknown = set(self.attacks) - {"pgd", "jiio"}
        if not self.attacks or unknown:
            raise ValueError(
                f"EvalOptions.attacks={self.attacks!r}: use a non-empty subset of ('pgd', 'jiio')."
            )


def get_evaluation(name: str, task: str) -> Callable[..., dict[str, Any]]:
    """The evaluation function ``name`` after checking it applies to ``task``."""
    if name not in _EVALUATIONS:
        raise ValueError(f"Unknown evaluation {name!r}; choose one of {list(EVALUATIONS)}.")
    target, tasks = _EVALUATIONS[name]
    if task not in tasks:
        raise ValueError(
            f"Evaluation {name!r} applies to config.task in {list(tasks)}, not {task!r}."
        )
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def result_path(output_dir: str, name: str, step: int) -> str:
    """Where :func:`run_evaluation` writes evaluation ``name`` of checkpoint ``step``."""
    return os.path.join(output_dir, f"{name}_step{step}.json")


def run_evaluation(
    name: str,
    config: ml_collections.ConfigDict,
    workdir: str,
    options: EvalOptions,
    *,
    step: int | None = None,
) -> dict[str, Any]:
    """Loads the checkpoint of ``workdir`` (``step`` or the latest), runs evaluation ``name``
    and writes its results to ``<options.output_dir>/<name>_step<N>.json``.

    Args:
      name: the evaluation (:data:`EVALUATIONS`).
      config: the run's config (``jiio_jax.train.record.evaluation_config(workdir)``).
      workdir: the run's workdir.
      options: the evaluation's options.
      step: the checkpoint step; default the latest.

    Returns:
      The results, with ``"checkpoint_step"`` and ``"evaluation"`` added.

    Raises:
      ValueError: ``name`` is unknown or does not apply to ``config.task``.
      FileNotFoundError: no checkpoint (at ``step``): the message lists the available steps.
      jiio_jax.train.checkpoint.CheckpointError: the checkpoint cannot be read.
    """
    from jiio_jax.train.checkpoint import load_state

    fn = get_evaluation(name, config.task)
    state = load_state(workdir, step)
    os.makedirs(options.output_dir, exist_ok=True)
    results = fn(config, state["params"], options)
    results = {"evaluation": name, "checkpoint_step": int(state["step"]), **results}
    path = result_path(options.output_dir, name, results["checkpoint_step"])
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return results


__all__ = [
    "EVALUATIONS",
    "EvalOptions",
    "compile_ahead",
    "get_evaluation",
    "interleaved_medians",
    "interleaved_times",
    "result_path",
    "run_evaluation",
    "timed_call",
]
