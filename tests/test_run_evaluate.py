"""``experiments/evaluate.py`` on a run's workdir: the config comes from ``config.json``,
conflicting overrides and wrong evaluations are one-line errors, a missing ``--step`` lists the
available ones, results go to ``eval/<task>_step<N>.json`` with a summary table.

The command-line checks that fail before any evaluation runs use the toy run of
``train_toy.py``; the end-to-end one trains a tiny generative run (slow).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import helpers
import pytest
from train_toy import toy_config

from jiio_jax.evaluation.timing import interleaved_times
from jiio_jax.train import train_and_evaluate
from jiio_jax.train.record import ConfigConflictError, evaluation_config

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY_CONFIG = os.path.join(REPO, "tests", "train_toy_config.py")
RUN = {"num_train_steps": 4, "log_every": 2, "eval_every": 4, "checkpoint_every": 2}
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DISABLE_MOST_OPTIMIZATIONS": "1"}

sys.path.insert(0, os.path.join(REPO, "experiments"))
import evaluate as evaluate_cli  # noqa: E402


def _evaluate(*args, timeout=300):
    cmd = [sys.executable, os.path.join(REPO, "experiments", "evaluate.py"), *args]
    return subprocess.run(cmd, env=ENV, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _one_error_line(proc):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    return errors[0]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("toy"))
    train_and_evaluate(toy_config(**RUN), workdir)
    return workdir


# -- the config: the run's record, overridable in evaluation fields only ------------------------
def test_evaluation_config_is_the_record(toy_run):
    config = evaluation_config(toy_run)
    assert config.task == toy_config().task and config.num_train_steps == 4
    assert config.toy.to_dict() == toy_config().toy.to_dict()


def test_evaluation_config_allows_evaluation_fields_only(toy_run):
    given = toy_config(**{**RUN, "eval_batch_size": 8, "num_eval_batches": 1})
    config = evaluation_config(toy_run, given)
    assert (config.eval_batch_size, config.num_eval_batches) == (8, 1)
    with pytest.raises(ConfigConflictError, match=r"config\.toy\.hidden is 16 in config\.json"):
        evaluation_config(toy_run, toy_config(**{**RUN, "toy.hidden": 32}))
    # Training-only fields not repeated for evaluation keep the run's values.
    config = evaluation_config(toy_run, toy_config(**{"optim.lr": 0.5, "batch_size": 8}))
    assert (config.optim.lr, config.batch_size) == (toy_config().optim.lr, 16)
    # A field the record lacks (added to the configs later) comes from --config.
    given = toy_config(**RUN)
    given.toy.new_field = 3
    assert evaluation_config(toy_run, given).toy.new_field == 3


def test_generative_record_refuses_another_method(tmp_path):
    # A VAE run must not be evaluated as JIIO (or the reverse) because --config says so.
    run_config = helpers.load_config("digits_gen", "small")
    run_config.model.method = "vae"
    (tmp_path / "config.json").write_text(run_config.to_json_best_effort())
    assert evaluation_config(str(tmp_path)).model.method == "vae"
    with pytest.raises(ConfigConflictError, match=r"config\.model\.method is 'vae'"):
        evaluation_config(str(tmp_path), helpers.load_config("digits_gen", "small"))
    inpaint = helpers.load_config("digits_gen", "small")
    inpaint.model.update(method="vae", corruption="inpaint")
    assert evaluation_config(str(tmp_path), inpaint).model.corruption == "inpaint"


# -- one-line errors of the command line ---------------------------------------------------------
def test_missing_step_lists_the_available_steps(toy_run):
    line = _one_error_line(_evaluate(f"--workdir={toy_run}", "--task=psnr", "--step=3"))
    assert line.endswith("available steps: 2, 4.")


def test_evaluation_of_another_task_is_one_line(toy_run):
    line = _one_error_line(_evaluate(f"--workdir={toy_run}", "--task=attack"))
    assert "'attack' applies to config.task in ['adversarial']" in line


def test_conflicting_override_is_one_line(toy_run):
    proc = _evaluate(
        f"--workdir={toy_run}", "--task=psnr", f"--config={TOY_CONFIG}", "--config.toy.hidden=32"
    )
    assert "config.toy.hidden is 16 in config.json, 32 in --config" in _one_error_line(proc)


def test_not_a_run_is_one_line(tmp_path):
    line = _one_error_line(_evaluate(f"--workdir={tmp_path}", "--task=psnr"))
    assert "config.json does not exist" in line


# -- the summary ---------------------------------------------------------------------------------
def test_summary_table_verdict_first_and_budgets_numeric():
    results = {
        "evaluation": "timing",
        "checkpoint_step": 600,
        "budgets": [5, 10, 60],
        "note": "a long note kept in the JSON only",
        "verdict": "reached at 40 steps",
        "baseline": {"name": "inner_adam", "quality": 2.12686, "seconds_all": [1.0] * 5},
        "jiio": {
            str(k): {"quality": 10.0 / k, "seconds_median": k / 100, "seconds_all": [0.1] * 5}
            for k in (5, 10, 60, 15)
        },
    }
    lines = evaluate_cli.summary_table(results).splitlines()
    assert lines[0].split() == ["verdict", "reached", "at", "40", "steps"]
    assert lines[1].split() == ["evaluation", "timing"]
    assert not any("long note" in line or "seconds_all" in line for line in lines)
    jiio = lines.index(next(line for line in lines if line.startswith("jiio")))
    assert lines[jiio].split() == ["jiio", "quality", "seconds_median"]
    assert [line.split()[0] for line in lines[jiio + 1 :]] == ["5", "10", "15", "60"]
    assert "baseline  name        quality" in "\n".join(lines)
    assert len(lines) < 15


# -- end to end ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_evaluate_with_only_workdir(tmp_path):
    workdir = str(tmp_path / "gen")
    config = helpers.load_config("digits_gen", "small")
    config.num_train_steps, config.model.jac_weight = 2, 0.0
    train_and_evaluate(config, workdir)
    proc = _evaluate(f"--workdir={workdir}", "--task=psnr", "--num_examples=8")
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = os.path.join(workdir, "eval", "psnr_step2.json")
    results = json.loads(open(path).read())
    assert results["checkpoint_step"] == 2 and results["num_images"] == 8
    assert results["method"] == "jiio"
    out = proc.stdout.splitlines()
    assert out[0].split() == ["evaluation", "psnr"] and out[-1] == f"Wrote {path}"
    assert len(out) < 30
    assert "WARNING" not in proc.stderr  # No orbax restore warnings.
    # A VAE override is refused in one line, naming the field; nothing is evaluated.
    proc = _evaluate(
        f"--workdir={workdir}",
        "--task=psnr",
        f"--config={helpers.config_file('digits_gen')}:small",
        "--config.model.method=vae",
    )
    assert "config.model.method is 'jiio'" in _one_error_line(proc)


# -- progress of long evaluations ----------------------------------------------------------------
def test_heartbeat_and_timing_rounds_are_logged(monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    monkeypatch.setattr(evaluate_cli, "HEARTBEAT_SECONDS", 0.05)
    with evaluate_cli.Heartbeat("timing evaluation"):
        time.sleep(0.3)
        interleaved_times({"a": lambda: 1.0, "b": lambda: 2.0}, repeats=2)
    messages = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("timing evaluation: still running (") for m in messages)
    assert "timing: 2 methods, one warm-up call and 2 timed rounds." in messages
    assert "timing: round 2/2 done." in messages
