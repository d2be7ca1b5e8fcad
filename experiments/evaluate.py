r"""Evaluates a trained run: a thin command line over ``jiio_jax.evaluation``.

::

  python experiments/evaluate.py --config=configs/digits_gen.py --workdir=/tmp/digits_gen \
      --task=psnr          # also: timing | samples | fid (generative runs)
  python experiments/evaluate.py --config=configs/digits_adv.py --workdir=/tmp/adv_jiio \
      --task=attack --steps=20,100   # PGD-k and JIIO-k robust accuracy (also: timing)
  python experiments/evaluate.py --config=configs/digits_meta.py --workdir=/tmp/meta_jiio \
      --task=meta          # meta-test accuracy with 95% CIs (also: timing)

``--config`` must be the run's config (with the same overrides). Results are printed and
written to ``<output_dir>/<task>.json`` (``--output_dir`` defaults to ``<workdir>/eval``);
``samples`` and ``fid`` also write image folders there. See ``jiio_jax.evaluation`` for what
each evaluation computes.
"""

from __future__ import annotations

import json
import os

from absl import app, flags, logging
from ml_collections import config_flags

from jiio_jax.evaluation import EVALUATIONS, EvalOptions, run_evaluation
from jiio_jax.train.logs import hide_library_info

_CONFIG = config_flags.DEFINE_config_file("config", None, "The run's config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
_TASK = flags.DEFINE_enum("task", None, list(EVALUATIONS), "Which evaluation.", required=True)
_STEP = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Default: <workdir>/eval.")
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None, "Test examples / episodes.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", None, "Examples / episodes per batch.")
_STEPS = flags.DEFINE_list("steps", None, "Attack steps (attack) or JIIO step budgets (timing).")
_ATTACKS = flags.DEFINE_list("attacks", ["pgd", "jiio"], "Attacks (attack).")
_METHODS = flags.DEFINE_list("methods", None, "Inner solvers to compare (meta, timing).")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Generated images (samples, fid).")
_DENSITY = flags.DEFINE_enum("density", "gmm", ["gmm", "gaussian"], "Latent density.")
_NUM_COMPONENTS = flags.DEFINE_integer("num_components", 10, "GMM components.")
_NUM_REPEATS = flags.DEFINE_integer("num_repeats", 5, "Timed repetitions (timing).")
_SEED = flags.DEFINE_integer("seed", 0, "Evaluation rng seed.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    hide_library_info()
    try:
        steps = tuple(int(s) for s in _STEPS.value) if _STEPS.value else None
    except ValueError as e:
        raise app.UsageError(f"--steps must be comma-separated integers: {e}") from e
    options = EvalOptions(
        output_dir=_OUTPUT_DIR.value or os.path.join(_WORKDIR.value, "eval"),
        num_examples=_NUM_EXAMPLES.value,
        batch_size=_BATCH_SIZE.value,
        steps=steps,
        attacks=tuple(_ATTACKS.value),
        methods=tuple(_METHODS.value) if _METHODS.value else None,
        num_samples=_NUM_SAMPLES.value,
        density=_DENSITY.value,
        num_components=_NUM_COMPONENTS.value,
        num_repeats=_NUM_REPEATS.value,
        seed=_SEED.value,
    )
    results = run_evaluation(_TASK.value, _CONFIG.value, _WORKDIR.value, options, step=_STEP.value)
    print(json.dumps(results, indent=2, sort_keys=True))
    logging.info("Wrote %s.", os.path.join(options.output_dir, f"{_TASK.value}.json"))


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
