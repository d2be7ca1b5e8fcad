"""The run's record: ``workdir/config.json`` is the config a run was trained with.

A workdir belongs to one experiment. The loop writes ``config.json`` only after the config
validated and the state was initialised (or restored), so a failed start never rewrites it.
A rerun in the same workdir must use the same config, except for the loop's cadence fields
(:data:`MUTABLE_FIELDS`: how long to train, how often to log / evaluate / checkpoint), whose
changes are accepted and appended to ``workdir/config_history.jsonl``. Any other difference is
refused with :class:`ConfigConflictError` before anything in the workdir is touched.

``evaluate.py`` reads the record back with :func:`load_run_config`, and with
:func:`evaluation_config` accepts a config given on its command line only where it agrees with
the record on everything but evaluation-time fields (:data:`EVAL_FIELDS`).
"""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Mapping
from typing import Any

import ml_collections
from absl import logging

from jiio_jax.train.metrics import flatten_config as flatten

CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"
# Fields a rerun may change: they set how long and how often, not what is trained (the
# resumed state stays valid; num_devices too, as results do not depend on the device count).
MUTABLE_FIELDS = (
    "num_train_steps",
    "log_every",
    "eval_every",
    "checkpoint_every",
    "keep_checkpoints",
    "tensorboard",
    "num_devices",
    "max_skipped_steps",
)
# Fields an evaluation may set differently from training: how and what it evaluates, not the
# trained model (e.g. a reconstruction run scored on inpainting; fields under "eval.").
EVAL_FIELDS = (
    *MUTABLE_FIELDS,
    "eval_batch_size",
    "num_eval_batches",
    "model.corruption",
    "model.hole",
    "model.noise_sigma",
    "model.eval_methods",
    "model.refine_with_jiio",
    "model.num_samples",
    "model.num_image_examples",
    "data.path",
    "data.num_workers",
    "data.num_test_episodes",
)
EVAL_PREFIXES = ("eval.",)
# Fields only the training loop reads: a --config that differs there (e.g. the run was trained
# with --config.optim.lr=3e-4, not repeated for evaluation) keeps the run's values, silently
# for evaluation's purposes (logged).
TRAINING_ONLY_FIELDS = ("batch_size", "seed")
TRAINING_ONLY_PREFIXES = ("optim.",)
_MAX_NAMED = 4  # Differing fields named in the one-line refusal.


class ConfigConflictError(ValueError):
    """A rerun's config differs from the run's record in a field that may not change."""


def config_record(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """The JSON form of ``config`` as stored in ``config.json`` (tuples become lists)."""
    if isinstance(config, ml_collections.ConfigDict):
        return json.loads(config.to_json_best_effort(sort_keys=True))
    return json.loads(json.dumps(dict(config), sort_keys=True, default=str))


_MISSING = "<absent>"


def differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{dotted field: (old value, new value)}`` for every field that differs (sorted)."""
    a, b = flatten(config_record(old)), flatten(config_record(new))
    return {
        k: (a.get(k, _MISSING), b.get(k, _MISSING))
        for k in sorted(set(a) | set(b))
        if a.get(k, _MISSING) != b.get(k, _MISSING)
    }


def describe(diffs: Mapping[str, tuple[Any, Any]], old_name: str, new_name: str) -> str:
    """``"model.method is 'jiio' in <old_name>, 'vae' in <new_name>; ..."`` (a few fields)."""
    parts = [
        f"config.{k} is {a!r} in {old_name}, {b!r} in {new_name}"
        for k, (a, b) in list(diffs.items())[:_MAX_NAMED]
    ]
    more = len(diffs) - _MAX_NAMED
    return "; ".join(parts) + (f" (and {more} more field{'s' * (more > 1)})" if more > 0 else "")


def read_record(workdir: str) -> dict[str, Any] | None:
    """The stored ``config.json`` of ``workdir`` as a dict, or None if there is none."""
    path = os.path.join(workdir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def check_rerun(
    workdir: str, config: ml_collections.ConfigDict, *, has_checkpoint: bool
) -> dict[str, tuple[Any, Any]]:
    """Compares ``config`` with the run's record; reads only.

    Args:
      workdir: the run's directory.
      config: the config of this (re)run, already validated.
      has_checkpoint: whether ``workdir`` holds a checkpoint. Without one nothing was trained
        and any config may start the run afresh.

    Returns:
      The accepted changes ``{field: (old, new)}`` (only :data:`MUTABLE_FIELDS`).

    Raises:
      ConfigConflictError: another field differs (the one-line message names it).
    """
    old = read_record(workdir)
    if old is None or not has_checkpoint:
        return {}
    diffs = differences(old, config)
    conflicts = {k: v for k, v in diffs.items() if k not in MUTABLE_FIELDS}
    if conflicts:
        raise ConfigConflictError(
            f"{workdir} was trained with another config: "
            f"{describe(conflicts, CONFIG_FILE, 'this config')}. Rerun with the run's config "
            f"(only {', '.join(MUTABLE_FIELDS)} may change) or use a new --workdir; nothing "
            "was changed."
        )
    return diffs


def write_record(
    workdir: str,
    config: ml_collections.ConfigDict,
    *,
    step: int,
    changes: Mapping[str, tuple[Any, Any]],
) -> None:
    """Writes ``config.json`` (atomically) and appends an entry to ``config_history.jsonl``
    when the run starts (``step`` 0) or a rerun changed a field."""
    path = os.path.join(workdir, CONFIG_FILE)
    fresh = step == 0
    if not fresh and not changes and os.path.exists(path):
        return  # Same config: the record is already right.
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    os.replace(tmp, path)
    entry = {
        "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "step": step,
        # "recorded": a run from before config.json was kept, resumed as it is.
        "event": "start" if fresh else "changed" if changes else "recorded",
        "changes": {k: [a, b] for k, (a, b) in changes.items()},
    }
    with open(os.path.join(workdir, HISTORY_FILE), "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def _tuples(value: Any) -> Any:
    # Configs hold sequences as tuples (e.g. model.mdeq.channels); JSON stored them as lists.
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def task_defaults(task: str) -> dict[str, Any]:
    """The current defaults of ``task``'s config, flattened (``{}`` for an unknown task): the
    base config and the task's default ``model`` section (``jiio_jax.configs``)."""
    # Imported here: jiio_jax.configs builds on the library, which the loop imports.
    from jiio_jax.configs import adversarial, common, generative, meta

    models = {
        "generative": generative.default_model_config,
        "adversarial": adversarial.default_model_config,
        "meta": meta.default_model_config,
    }
    if task not in models:
        return {}
    config = common.get_base_config()
    config.model = models[task]()
    return flatten(config_record(config))


# Fields whose ``None`` placeholder meant a library default that the library has since changed
# and the tasks now pin to the old value (JIIO's start guard, on by default since 2026-12-07):
# a record's None there means the task's pinned value. Elsewhere None stays None (it may be an
# explicit value, e.g. ``final_step_size=None``).
PINNED_DEFAULTS = ("model.jiio.no_worse_than_start",)


def _upgrade(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with the fields added to the task's config since the run was trained (absent
    in ``config.json``) set to their current defaults, and the :data:`PINNED_DEFAULTS` that are
    ``None`` set to the task's pinned value."""
    filled = []
    flat = flatten(record)
    for key, value in task_defaults(record.get("task", "")).items():
        missing = key not in flat and not any(k.startswith(key + ".") for k in flat)
        if missing or (key in PINNED_DEFAULTS and flat.get(key, 0) is None):
            _set(record, key, value)
            filled.append(key)
    if filled:
        names = sorted(filled)
        logging.info(
            "config.json predates %d config field(s); using today's defaults for them (%s%s).",
            len(names),
            ", ".join(names[:4]),
            ", ..." if len(names) > 4 else "",
        )
    return record


def load_run_config(workdir: str) -> ml_collections.ConfigDict:
    """The config ``workdir`` was trained with, from its ``config.json``; fields added to the
    configs since then get today's defaults (logged; see :func:`_upgrade`).

    Raises:
      FileNotFoundError: ``workdir`` has no ``config.json`` (not a training run's workdir).
    """
    record = read_record(workdir)
    if record is None:
        raise FileNotFoundError(
            f"{os.path.join(workdir, CONFIG_FILE)} does not exist: --workdir must be a "
            "directory written by experiments/train.py."
        )
    return ml_collections.ConfigDict(_tuples(_upgrade(record)))


def _set(nested: dict[str, Any], key: str, value: Any) -> None:
    *parents, leaf = key.split(".")
    for parent in parents:
        nested = nested.setdefault(parent, {})
    nested[leaf] = value


def evaluation_config(
    workdir: str, given: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
    """The config to evaluate ``workdir``'s run with: its record, updated by ``given`` (a config
    from the command line, with its overrides) in evaluation-time fields only.

    Fields the record lacks (added to the configs after the run was trained) are taken from
    ``given``; training-only fields (:data:`TRAINING_ONLY_FIELDS`, ``optim.*``) stay the run's.

    Raises:
      FileNotFoundError: ``workdir`` has no ``config.json``.
      ConfigConflictError: ``given`` differs from the record in a trained-model field such as
        ``model.method`` or an architecture field (the message names them).
    """
    if given is None:
        return load_run_config(workdir)
    record = read_record(workdir)
    if record is None:
        load_run_config(workdir)  # The FileNotFoundError with its advice.
    diffs = differences(record, given)
    # Absent from the record (added since): --config's value. A PINNED_DEFAULTS field that is
    # None in the record and holds the task's pinned value in --config: that value.
    defaults = task_defaults(record.get("task", ""))
    added = {
        k: b
        for k, (a, b) in diffs.items()
        if b != _MISSING
        and (a == _MISSING or (a is None and k in PINNED_DEFAULTS and defaults.get(k) == b))
    }
    diffs = {k: v for k, v in diffs.items() if _MISSING not in v and k not in added}
    training_only = {
        k for k in diffs if k in TRAINING_ONLY_FIELDS or k.startswith(TRAINING_ONLY_PREFIXES)
    }
    evaluation = {k for k in diffs if k in EVAL_FIELDS or k.startswith(EVAL_PREFIXES)}
    conflicts = {k: v for k, v in diffs.items() if k not in training_only | evaluation}
    if conflicts:
        raise ConfigConflictError(
            f"--config does not match the run in {workdir}: "
            f"{describe(conflicts, CONFIG_FILE, '--config')}. Drop --config (the run's "
            "config.json is used) or change only evaluation fields."
        )
    if training_only:
        logging.info(
            "Evaluating with the run's training fields, not --config's: %s.",
            ", ".join(sorted(training_only)),
        )
    for key in evaluation:
        _set(record, key, diffs[key][1])
    for key, value in added.items():
        _set(record, key, value)
    return ml_collections.ConfigDict(_tuples(record))
