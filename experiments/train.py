r"""Trains a registered task: a thin command line over ``jiio_jax.train.train_and_evaluate``.

Single process (all local devices)::

  python experiments/train.py --config=configs/digits_gen.py:small --workdir=/tmp/run \
      --config.optim.lr=3e-4

Rerunning with the same ``--workdir`` resumes from its latest checkpoint. The workdir's
``config.json`` records the run's config: a rerun must use the same config, except for the
loop's cadence fields (``num_train_steps``, ``log_every``, ``eval_every``,
``checkpoint_every``, ...), whose changes are recorded in ``config_history.jsonl``. Ctrl-C or
SIGTERM saves a checkpoint at the current step; rerun the same command to resume. A checkpoint
that cannot be read stops the run with one line naming it and the previous readable step.

Multi-process (one command per process; all share ``--workdir``)::

  python experiments/train.py --config=... --workdir=/shared/run \
      --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0

or set ``JIIO_JAX_DISTRIBUTED=1`` to let ``jax.distributed.initialize()`` auto-detect the
cluster (Slurm, Open MPI, TPU pods).
"""

from __future__ import annotations

import os
import signal
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

import jiio_jax.train
from jiio_jax.train.checkpoint import CheckpointError, checkpoint_steps
from jiio_jax.train.interrupt import TrainingInterrupted
from jiio_jax.train.logs import hide_library_info
from jiio_jax.train.record import ConfigConflictError

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (e.g. configs/digits_gen.py:small).", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output and checkpoint directory.", required=True)
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "host:port of process 0, for multi-process runs."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "Index of this process.")
_VERBOSE_LIBRARIES = flags.DEFINE_bool(
    "verbose_libraries", False, "Keep orbax's INFO logs (hidden by default)."
)


def _maybe_initialize_distributed() -> None:
    # Must run before anything touches a JAX backend.
    if _COORDINATOR.value is not None:
        jax.distributed.initialize(
            coordinator_address=_COORDINATOR.value,
            num_processes=_NUM_PROCESSES.value,
            process_id=_PROCESS_ID.value,
        )
    elif os.environ.get("JIIO_JAX_DISTRIBUTED", "0") not in ("", "0"):
        jax.distributed.initialize()
    elif _NUM_PROCESSES.value not in (None, 1) or _PROCESS_ID.value not in (None, 0):
        raise app.UsageError("--num_processes/--process_id need --coordinator_address.")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _VERBOSE_LIBRARIES.value:
        hide_library_info()
    _maybe_initialize_distributed()
    logging.info(
        "JAX process %d/%d; %d local devices %s; %d devices in total.",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.local_devices(),
        jax.device_count(),
    )
    overrides = config_flags.get_override_values(flags.FLAGS["config"])
    if overrides:
        logging.info("Config overrides: %s", overrides)
    try:
        final = jiio_jax.train.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except TrainingInterrupted as e:
        # One line instead of a traceback: the state is saved and resuming is the fix.
        _exit(str(e), 128 + e.signum)
    except (ConfigConflictError, CheckpointError, FloatingPointError) as e:
        _exit(f"error: {e}", 1)
    except KeyboardInterrupt:  # Before the loop's handler is installed, or a second Ctrl-C.
        steps = checkpoint_steps(_WORKDIR.value)
        latest = f"the latest checkpoint is step {steps[-1]}" if steps else "no checkpoint yet"
        _exit(f"Interrupted without saving ({latest}).", 128 + signal.SIGINT)
    # The loss and every eval metric; metrics.jsonl has all of them.
    shown = {k: v for k, v in final.items() if k == "train/loss" or k.startswith("eval/")}
    logging.info(
        "Done at step %d: %s. Outputs in %s.",
        final["step"],
        " | ".join(f"{k} {v:.4g}" for k, v in shown.items()),
        _WORKDIR.value,
    )


def _exit(line: str, code: int) -> None:
    logging.flush()
    print(line, file=sys.stderr, flush=True)
    sys.exit(code)


if __name__ == "__main__":
    flags.mark_flags_as_required(["config"])
    app.run(main)
