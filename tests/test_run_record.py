"""A run owns its config: ``config.json`` is the record, conflicting reruns are refused without
touching the workdir, cadence changes are allowed and recorded, finished reruns add nothing.

Runs the toy task of ``train_toy.py`` (a few seconds per run).
"""

from __future__ import annotations

import json
import os
import shutil

import pytest
from train_toy import toy_config

from jiio_jax.train import read_metrics, train_and_evaluate
from jiio_jax.train.record import (
    CONFIG_FILE,
    HISTORY_FILE,
    ConfigConflictError,
    differences,
    load_run_config,
)

pytestmark = pytest.mark.usefixtures("fast_compile")

RUN = {"num_train_steps": 4, "log_every": 1, "eval_every": 2, "checkpoint_every": 2}
RECORD_FILES = (CONFIG_FILE, HISTORY_FILE, "metrics.jsonl", "hparams.json")


def _snapshot(workdir):
    out = {}
    for name in RECORD_FILES:
        with open(os.path.join(workdir, name), "rb") as f:
            out[name] = f.read()
    out["checkpoints"] = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    return out


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-step toy run: (workdir, final metrics)."""
    workdir = str(tmp_path_factory.mktemp("finished"))
    return workdir, train_and_evaluate(toy_config(**RUN), workdir)


@pytest.fixture
def run_copy(finished, tmp_path):
    workdir = str(tmp_path / "run")
    shutil.copytree(finished[0], workdir)
    return workdir


def test_first_run_writes_record_and_history(finished):
    workdir, _ = finished
    assert load_run_config(workdir).toy.hidden == toy_config().toy.hidden
    with open(os.path.join(workdir, HISTORY_FILE)) as f:
        history = [json.loads(line) for line in f]
    assert [(h["event"], h["step"], h["changes"]) for h in history] == [("start", 0, {})]


@pytest.mark.parametrize(
    "overrides, field",
    [({"toy.hidden": 32}, "toy.hidden"), ({"optim.lr": 0.5}, "optim.lr"), ({"seed": 3}, "seed")],
)
def test_conflicting_rerun_is_refused_and_leaves_the_record(run_copy, overrides, field):
    before = _snapshot(run_copy)
    with pytest.raises(ConfigConflictError) as info:
        train_and_evaluate(toy_config(**{**RUN, **overrides}), run_copy)
    message = str(info.value)
    assert "\n" not in message
    assert f"config.{field} is" in message and "new --workdir" in message
    assert _snapshot(run_copy) == before


def test_finished_run_rerun_changes_nothing(finished, run_copy):
    before = _snapshot(run_copy)
    final = train_and_evaluate(toy_config(**RUN), run_copy)
    assert _snapshot(run_copy) == before  # In particular no duplicate eval row.
    assert final == pytest.approx(finished[1])
    steps = [(r["step"], r["split"]) for r in read_metrics(os.path.join(run_copy, "metrics.jsonl"))]
    assert len(steps) == len(set(steps))


def test_longer_rerun_is_allowed_and_recorded(run_copy):
    train_and_evaluate(toy_config(**{**RUN, "num_train_steps": 6, "log_every": 2}), run_copy)
    config = load_run_config(run_copy)
    assert (config.num_train_steps, config.log_every) == (6, 2)
    with open(os.path.join(run_copy, HISTORY_FILE)) as f:
        history = [json.loads(line) for line in f]
    assert history[-1]["event"] == "changed" and history[-1]["step"] == 4
    assert history[-1]["changes"] == {"log_every": [1, 2], "num_train_steps": [4, 6]}
    records = read_metrics(os.path.join(run_copy, "metrics.jsonl"))
    steps = [(r["step"], r["split"]) for r in records]
    assert len(steps) == len(set(steps))
    assert [s for s, split in steps if split == "eval"] == [2, 4, 6]


def test_invalid_config_writes_no_record(tmp_path, run_copy):
    with pytest.raises(ValueError, match="config.num_eval_batches"):
        train_and_evaluate(toy_config(num_eval_batches=0), str(tmp_path / "fresh"))
    assert not (tmp_path / "fresh" / CONFIG_FILE).exists()
    before = _snapshot(run_copy)
    with pytest.raises(ValueError, match="config.task"):
        train_and_evaluate(toy_config(**{**RUN, "task": "no_such_task"}), run_copy)
    assert _snapshot(run_copy) == before


def test_load_run_config_round_trips_tuples(tmp_path):
    config = toy_config()
    config.toy.channels = (16, 32)
    (tmp_path / CONFIG_FILE).write_text(config.to_json_best_effort())
    loaded = load_run_config(str(tmp_path))
    assert loaded.toy.channels == (16, 32) and isinstance(loaded.toy.channels, tuple)
    assert differences(loaded, config) == {}
    with pytest.raises(FileNotFoundError, match="experiments/train.py"):
        load_run_config(str(tmp_path / "nothing"))
