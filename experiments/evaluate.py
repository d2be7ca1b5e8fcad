r"""Evaluates a trained run: a thin command line over ``jiio_jax.evaluation``.

::

  python experiments/evaluate.py --workdir=/tmp/digits_gen --task=psnr
      # also: timing | samples | fid (generative runs)
  python experiments/evaluate.py --config=configs/digits_gen.py --config.model.method=vae \
      --config.model.refine_with_jiio=True --workdir=/tmp/digits_vae --task=psnr
      # a VAE's / RAE's encoder latents refined by JIIO (MDEQ decoder)
  python experiments/evaluate.py --workdir=/tmp/adv_jiio --task=attack --steps=20,100
      # PGD-k and JIIO-k robust accuracy (also: timing)
  python experiments/evaluate.py --workdir=/tmp/meta_jiio --task=meta
      # meta-test accuracy with 95% CIs (also: timing)

The run's config is read from ``<workdir>/config.json``. ``--config`` (with
``--config.<field>=`` overrides) is optional: it may change evaluation-time fields only (e.g.
``--config.model.corruption=inpaint``, ``eval.*``); a field of the trained model that differs
from the run's record (``model.method``, the architecture, ...) is an error naming it.
``--step`` picks a checkpoint (default the latest; a missing one lists those available).

Results go to ``<output_dir>/<task>_step<N>.json`` (``--output_dir`` defaults to
``<workdir>/eval``) and a summary table is printed; ``samples`` and ``fid`` also write image
folders there. See ``jiio_jax.evaluation`` for what each evaluation computes.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any

from absl import app, flags, logging
from ml_collections import config_flags

from jiio_jax.evaluation import EVALUATIONS, EvalOptions, result_path, run_evaluation
from jiio_jax.train.checkpoint import CheckpointError, checkpoint_steps
from jiio_jax.train.logs import hide_library_info
from jiio_jax.train.progress import format_duration
from jiio_jax.train.record import evaluation_config

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Optional: a config file whose evaluation fields override the run's."
)
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

# Printed first in the summary: the answer, then what was evaluated.
_HEADLINE = ("verdict", "evaluation", "checkpoint_step")
_MAX_COLUMNS = 8  # Wider tables with fewer rows than columns are printed transposed.
_SHORT_LIST = 8  # Longer lists (per-repeat seconds, ...) are only in the JSON file.
HEARTBEAT_SECONDS = 30.0


# -- the summary table -------------------------------------------------------------------------
def _natural(key: str) -> tuple:
    """Numeric keys (step budgets, learning rates) in numeric order, before the others."""
    try:
        return (0, float(key), "")
    except ValueError:
        return (1, 0.0, key)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        if len(value) > _SHORT_LIST:
            return f"[{len(value)} values]"
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


def _rows(section: Mapping[str, Any], label: str = "") -> list[tuple[str, dict[str, Any]]]:
    """``(row label, {column: scalar})`` for a nested result section: its scalars form a row,
    its sub-sections (e.g. step budgets) are walked in numeric order."""
    cells = {k: v for k, v in section.items() if not isinstance(v, Mapping | list)}
    rows = [(label, cells)] if cells else []
    subs = {k: v for k, v in section.items() if isinstance(v, Mapping)}
    for key in sorted(subs, key=_natural):
        rows += _rows(subs[key], f"{label} {key}".strip())
    return rows


def _table(table: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table]


def summary_table(results: Mapping[str, Any]) -> str:
    """The results as text: headline and scalar fields first (one per line), then one table
    per nested section (rows sorted numerically). Long lists and notes stay in the JSON."""
    scalars = {k: v for k, v in results.items() if not isinstance(v, Mapping) and k != "note"}
    order = [k for k in _HEADLINE if k in scalars]
    order += sorted(k for k in scalars if k not in order)
    width = max(map(len, order), default=0)
    lines = [f"{k:<{width}}  {_fmt(scalars[k])}" for k in order]
    for name, section in results.items():
        if not isinstance(section, Mapping) or not section:
            continue
        rows = _rows(section)
        columns = list(dict.fromkeys(c for _, cells in rows for c in cells))
        if not columns:
            continue
        table = [[name, *columns]] + [
            [label, *(_fmt(cells[c]) if c in cells else "" for c in columns)]
            for label, cells in rows
        ]
        if len(columns) > _MAX_COLUMNS and len(rows) < len(columns):
            table = [list(column) for column in zip(*table, strict=True)]  # Fields as rows.
        lines += ["", *_table(table)]
    return "\n".join(line.rstrip() for line in lines)


# -- progress ----------------------------------------------------------------------------------
class Heartbeat:
    """Logs "still running" every ``HEARTBEAT_SECONDS`` so a long evaluation is never silent."""

    def __init__(self, what: str):
        self._what, self._done = what, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        start = time.monotonic()
        while not self._done.wait(HEARTBEAT_SECONDS):
            elapsed = format_duration(time.monotonic() - start)
            logging.info("%s: still running (%s elapsed).", self._what, elapsed)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()


def _fail(line: str) -> None:
    logging.flush()
    print(f"error: {line}", file=sys.stderr, flush=True)
    sys.exit(1)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    hide_library_info()
    try:
        steps = tuple(int(s) for s in _STEPS.value) if _STEPS.value else None
    except ValueError as e:
        raise app.UsageError(f"--steps must be comma-separated integers: {e}") from e
    workdir = os.path.abspath(_WORKDIR.value)
    options = EvalOptions(
        output_dir=_OUTPUT_DIR.value or os.path.join(workdir, "eval"),
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
    try:
        config = evaluation_config(workdir, _CONFIG.value)
        available = checkpoint_steps(workdir)
        if not available:
            _fail(f"no checkpoint in {os.path.join(workdir, 'checkpoints')}.")
        if _STEP.value is not None and _STEP.value not in available:
            _fail(
                f"no checkpoint at --step={_STEP.value} in {workdir}; available steps: "
                f"{', '.join(map(str, available))}."
            )
        step = available[-1] if _STEP.value is None else _STEP.value
        logging.info(
            "Evaluating %r of the %r run in %s at step %d.", _TASK.value, config.task, workdir, step
        )
        with Heartbeat(f"{_TASK.value} evaluation"):
            results = run_evaluation(_TASK.value, config, workdir, options, step=step)
    except (ValueError, FileNotFoundError, CheckpointError) as e:
        # Bad input, one line each: a --config conflicting with the run (ConfigConflictError
        # is a ValueError), an evaluation for another task, missing or unreadable files.
        _fail(" ".join(str(e).split()))
    except KeyboardInterrupt:
        logging.flush()
        print(f"Interrupted; no {_TASK.value} results written.", file=sys.stderr, flush=True)
        sys.exit(130)
    logging.flush()
    print(summary_table(results))
    print(f"\nWrote {result_path(options.output_dir, _TASK.value, results['checkpoint_step'])}")


if __name__ == "__main__":
    app.run(main)
