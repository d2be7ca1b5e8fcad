"""A run recorded before config fields were added (or before a library default was pinned by
the task) still evaluates: absent fields take today's defaults, None placeholders the task's
explicit default; real conflicts are still refused."""

import json

import pytest
from helpers import load_config

from jiio_jax.train import record


def _old_record(tmp_path, drop=("model.decoder", "model.jiio.start"), nulls=()):
    config = record.config_record(load_config("digits_gen"))
    for key in drop:
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        del node[leaf]
    for key in nulls:
        *parents, leaf = key.split(".")
        node = config
        for p in parents:
            node = node[p]
        node[leaf] = None
    (tmp_path / record.CONFIG_FILE).write_text(json.dumps(config))
    return str(tmp_path)


def test_absent_fields_take_todays_defaults(tmp_path):
    workdir = _old_record(tmp_path, nulls=("model.jiio.no_worse_than_start",))
    config = record.load_run_config(workdir)
    assert config.model.decoder == "mdeq"
    # The task pins JIIO's reference start: an old record's None means the old default.
    assert config.model.jiio.start == "given"
    assert config.model.jiio.no_worse_than_start is False


def test_evaluation_config_accepts_a_pinned_default_and_refuses_real_conflicts(tmp_path):
    workdir = _old_record(tmp_path, nulls=("model.jiio.no_worse_than_start",))
    given = load_config("digits_gen")
    config = record.evaluation_config(workdir, given)
    assert config.model.jiio.no_worse_than_start is False and config.model.decoder == "mdeq"
    given.model.method = "vae"
    with pytest.raises(record.ConfigConflictError, match=r"model\.method"):
        record.evaluation_config(workdir, given)
    # An explicit override of a None placeholder that is not today's default still conflicts.
    given = load_config("digits_gen")
    given.model.mdeq.channels = (3, 5)
    workdir = _old_record(tmp_path, nulls=("model.mdeq.channels",))
    with pytest.raises(record.ConfigConflictError, match=r"model\.mdeq\.channels"):
        record.evaluation_config(workdir, given)


def test_task_defaults_of_an_unknown_task_are_empty():
    assert record.task_defaults("nope") == {}


def test_an_explicit_none_stays_none(tmp_path):
    """digits_gen sets model.jiio.final_step_size=None while the task default is 0.003: a
    record's None there is the run's value, not a placeholder to upgrade."""
    workdir = _old_record(tmp_path, drop=())
    assert record.load_run_config(workdir).model.jiio.final_step_size is None
    given = load_config("digits_gen")
    assert record.evaluation_config(workdir, given).model.jiio.final_step_size is None
