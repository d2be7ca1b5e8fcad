"""Training framework: data-parallel loop, optimizer, checkpoints, metrics and plots.

Entry point: :func:`train_and_evaluate` (driven by ``experiments/train.py``). It trains any
task registered in :mod:`jiio_jax.tasks` on a ``('data',)`` device mesh, resumes from the
latest checkpoint in its workdir and writes ``metrics.jsonl``, ``config.json``, image grids and
a loss curve there; ``config.json`` is the run's record (:mod:`jiio_jax.train.record`).
"""

from jiio_jax.train.checkpoint import CheckpointError, checkpoint_steps, load_state
from jiio_jax.train.config import get_base_config, validate_config
from jiio_jax.train.interrupt import TrainingInterrupted
from jiio_jax.train.loop import make_eval_step, make_train_step, train_and_evaluate
from jiio_jax.train.mesh import data_sharded, make_data_mesh, replicated, select_devices
from jiio_jax.train.metrics import MetricWriter, read_metrics
from jiio_jax.train.optim import create_learning_rate_fn, create_optimizer
from jiio_jax.train.record import ConfigConflictError, evaluation_config, load_run_config
from jiio_jax.train.state import TrainState, create_train_state

__all__ = [
    "CheckpointError",
    "ConfigConflictError",
    "MetricWriter",
    "TrainState",
    "TrainingInterrupted",
    "checkpoint_steps",
    "create_learning_rate_fn",
    "create_optimizer",
    "create_train_state",
    "data_sharded",
    "evaluation_config",
    "get_base_config",
    "load_run_config",
    "load_state",
    "make_data_mesh",
    "make_eval_step",
    "make_train_step",
    "read_metrics",
    "replicated",
    "select_devices",
    "train_and_evaluate",
    "validate_config",
]
