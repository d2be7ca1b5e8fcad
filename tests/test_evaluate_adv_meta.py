"""The adversarial and meta evaluations (``attack``, ``meta``, ``timing``) on tiny trained runs.

Two ``:small`` runs of 2 training steps (``configs/digits_adv.py`` undefended,
``configs/digits_meta.py``, one device) are made once per session by ``train_and_evaluate``
and shared by the pytest-xdist workers (a file lock: the second worker waits instead of
training again). Each evaluation runs once, in one test, to keep compilation to a minimum.
Nothing is learnt in 2 steps, so the checks are about feasibility, bookkeeping and the
monotone effects that hold for any model; that the attacks reduce the accuracy of a trained
undefended model is tested in
``tests/test_tasks_adversarial.py`` (``test_attacks_stay_in_threat_set_and_reduce_accuracy``,
the same ``jiio_jax.tasks.attacks`` functions with the evaluation settings).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import subprocess
import sys

import helpers
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from jiio_jax.evaluation import EvalOptions, robustness, run_evaluation, timing
from jiio_jax.train import train_and_evaluate

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The overrides of the tiny runs, also given to the command line (the CLI's config must be the
# run's config). The adversarial run is the undefended model (the cheapest training step).
OVERRIDES = {"num_train_steps": 2, "num_devices": 1}
ADV_OVERRIDES = {**OVERRIDES, "model.method": "clean"}


def load_config(name: str) -> ml_collections.ConfigDict:
    config = helpers.load_config(name, "small")
    config.update(OVERRIDES)
    if name == "digits_adv":
        config.model.method = ADV_OVERRIDES["model.method"]
    return config


def shared_run(tmp_path_factory, worker_id: str, name: str) -> str:
    """The workdir of a 2-step run of ``configs/<name>.py:small``, trained once per session."""
    root = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        root = root.parent  # shared by the xdist workers of this session
    workdir = root / f"eval_run_{name}"
    with open(root / f"eval_run_{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (workdir / "DONE").exists():
            final = train_and_evaluate(load_config(name), str(workdir))
            assert final["step"] == 2
            (workdir / "DONE").touch()
    return str(workdir)


@pytest.fixture(scope="module")
def adv_run(tmp_path_factory, worker_id):
    return shared_run(tmp_path_factory, worker_id, "digits_adv")


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory, worker_id):
    return shared_run(tmp_path_factory, worker_id, "digits_meta")


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def check_timing(results: dict, budgets: tuple[int, ...], repeats: int) -> None:
    """Bookkeeping common to every task's timing."""
    assert results["device"] == jax.devices()[0].device_kind
    assert "compile" in results["note"]
    rows = [results["baseline"], *(results["jiio"][str(k)] for k in budgets)]
    assert sorted(int(k) for k in results["jiio"]) == sorted(budgets)
    for row in rows:
        assert len(row["seconds_all"]) == repeats
        assert all(s > 0 for s in row["seconds_all"])
        assert row["seconds_median"] in row["seconds_all"] or repeats % 2 == 0
        assert finite(row["quality"]) and finite(row["compile_seconds"])
    for k in budgets:
        assert results["jiio"][str(k)]["fevals_per_example"] == k  # fixed-budget JIIO
    check_equal_quality(results, results["baseline"], results["jiio"], budgets)
    # The baseline's other start (issue 14): warm for inner Adam / PGD (whose reference is the
    # paper's cold start), cold for projected Adam (whose reference is warm).
    form = "cold" if results["task"] == "meta" else "warm"
    base, other = results["baseline"], results[f"baseline_{form}"]
    assert base["warm_start"] is (form == "cold") and other["warm_start"] is (form == "warm")
    assert other["name"] == base["name"] and other["steps"] == base["steps"]
    assert len(other["seconds_all"]) == repeats and all(s > 0 for s in other["seconds_all"])
    assert finite(other["quality"]) and finite(other["compile_seconds"])
    assert other["fevals_per_example"] > 0 and other["adjoint_evals_per_example"] > 0
    check_equal_quality(results[f"vs_{form}"], other, results["jiio"], budgets)
    assert f"the {form}-start {base['name']}'s quality" in results[f"vs_{form}"]["verdict"]


def check_equal_quality(comparison: dict, baseline: dict, jiio: dict, budgets) -> None:
    if comparison["reached"]:
        k = comparison["equal_quality_steps"]
        assert k in budgets and comparison["ratio"] > 0
        expected = baseline["seconds_median"] / jiio[str(k)]["seconds_median"]
        assert comparison["ratio"] == pytest.approx(expected)
    else:
        assert comparison["ratio"] is None and comparison["equal_quality_steps"] is None
    assert comparison["quality_target"] == baseline["quality"]


def test_warm_start_baseline_needs_an_implicit_backward():
    from jiio_jax.deq import Implicit, Neumann
    from jiio_jax.solvers import Anderson

    assert timing._no_warm_start(Implicit(Anderson()), "config.model.backward") is None
    reason = timing._no_warm_start(Neumann(), "config.model.backward")
    assert "config.model.backward" in reason and "Neumann" in reason
    rows = {"3": {"quality": 1.0, "seconds_median": 0.1}}
    assert timing._other_form("warm", reason, rows, False) == {
        "baseline_warm": {"not_measured": reason}
    }


# -- attack and adversarial timing -------------------------------------------------------------
def test_attack_and_adversarial_timing(adv_run, tmp_path):
    config = load_config("digits_adv")
    out = str(tmp_path / "eval")
    steps = (1, 3)
    # 12 images in batches of 5: the last batch (2 images) is padded, its padding discarded.
    options = EvalOptions(output_dir=out, num_examples=12, batch_size=5, steps=steps)
    res = run_evaluation("attack", config, adv_run, options)
    with open(os.path.join(out, "attack_step2.json")) as f:
        assert json.load(f) == json.loads(json.dumps(res))
    assert res["checkpoint_step"] == 2 and res["num_examples"] == 12
    assert res["epsilon"] == config.model.epsilon and res["norm"] == "l2"
    assert 0 <= res["clean_acc"] <= 1 and finite(res["clean_ce"])
    assert os.path.getsize(res["plot"]) > 0 and res["plot"].endswith(".png")
    # Accuracy over 12 images moves in steps of 1/12; allow one image either way.
    tol = 1.0 / 12 + 1e-9
    for name in ("pgd", "jiio"):
        assert sorted(res["attacks"][name]) == ["1", "3"]
        for k in steps:
            row = res["attacks"][name][str(k)]
            assert 0 <= row["robust_acc"] <= res["clean_acc"] + tol, (name, k, row)
            assert finite(row["robust_ce"]) and row["seconds"] > 0
            # Never outside the eps-ball (nor the pixel box).
            assert row["max_violation"] <= 1e-5, (name, k, row)
            assert row["delta_norm"] <= config.model.epsilon * (1 + 1e-5)
    pgd, jiio = res["attacks"]["pgd"], res["attacks"]["jiio"]
    assert jiio["3"]["mean_steps"] == 3
    # PGD steps of 0.25 eps (less where the pixel box clips them), from delta = 0.
    assert 0 < pgd["1"]["delta_l2"] <= 0.25 * config.model.epsilon * (1 + 1e-5)
    assert pgd["3"]["delta_l2"] > pgd["1"]["delta_l2"]
    # Gradient ascent on the CE: more PGD steps, higher CE (on average over the images).
    assert pgd["1"]["robust_ce"] >= res["clean_ce"] - 1e-6
    assert pgd["3"]["robust_ce"] >= pgd["1"]["robust_ce"] - 1e-6

    # The timing of the same run (reuses the compiled attacks).
    t_opts = EvalOptions(output_dir=out, batch_size=5, steps=steps, num_repeats=2)
    t = run_evaluation("timing", config, adv_run, t_opts)
    check_timing(t, steps, repeats=2)
    assert t["task"] == "adversarial" and t["batch_size"] == 5
    base = t["baseline"]
    assert base["name"] == "pgd" and base["steps"] == config.eval.pgd_steps
    # PGD-k counts k forward solves, each of at most forward.max_steps cell evaluations.
    assert 0 < base["fevals_per_example"] <= base["steps"] * config.model.forward.max_steps
    assert base["quality"] >= t["quality_clean"] - 1e-6


# -- the command line ---------------------------------------------------------------------------
def test_cli_attack(adv_run, tmp_path):
    out = tmp_path / "cli"
    overrides = [f"--config.{k}={v}" for k, v in ADV_OVERRIDES.items()]
    cmd = [
        sys.executable,
        os.path.join(REPO, "experiments", "evaluate.py"),
        "--config=configs/digits_adv.py:small",
        f"--workdir={adv_run}",
        "--task=attack",
        "--steps=2,3",
        "--num_examples=8",
        f"--output_dir={out}",
        *overrides,
    ]
    env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_DISABLE_MOST_OPTIMIZATIONS="1")
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "attack_step2.json") as f:
        res = json.load(f)
    assert res["evaluation"] == "attack" and res["steps"] == [2, 3]
    assert res["num_examples"] == 8
    for name in ("pgd", "jiio"):
        for k in ("2", "3"):
            assert res["attacks"][name][k]["max_violation"] <= 1e-5
    assert (out / robustness.PLOT_FILE).exists()


# -- meta and meta timing -----------------------------------------------------------------------
def test_meta_and_meta_timing(meta_run, tmp_path):
    config = load_config("digits_meta")
    config.eval.jiio_steps = 5  # meta-testing's budget, not training's (8)
    out = str(tmp_path / "eval")
    options = EvalOptions(output_dir=out, num_examples=8)
    res = run_evaluation("meta", config, meta_run, options)
    assert os.path.exists(os.path.join(out, "meta_step2.json"))
    assert res["num_episodes"] == 8 and res["batch_size"] == config.eval_batch_size
    methods = res["methods"]
    assert sorted(methods) == ["jiio", "projected_adam"]
    for row in methods.values():
        assert 0 <= row["query_acc"] <= 1
        assert row["query_acc_ci95"] > 0
        assert row["inner_seconds_per_batch"] > 0
        assert isinstance(row["overlaps_jiio_ci"], bool)
    assert methods["jiio"]["inner_steps"] == 5
    assert methods["projected_adam"]["inner_steps"] == config.model.adam.num_steps
    assert methods["jiio"]["time_ratio_vs_jiio"] == 1.0
    assert methods["jiio"]["overlaps_jiio_ci"] is True
    adam = methods["projected_adam"]
    assert adam["time_ratio_vs_jiio"] == pytest.approx(
        adam["inner_seconds_per_batch"] / methods["jiio"]["inner_seconds_per_batch"]
    )
    gap = abs(adam["query_acc"] - methods["jiio"]["query_acc"])
    assert adam["overlaps_jiio_ci"] == (
        gap <= adam["query_acc_ci95"] + methods["jiio"]["query_acc_ci95"]
    )

    budgets = (4, config.model.jiio.max_steps)
    t_opts = EvalOptions(output_dir=out, steps=budgets, num_repeats=2)
    t = run_evaluation("timing", config, meta_run, t_opts)
    check_timing(t, budgets, repeats=2)
    assert t["task"] == "meta" and t["baseline"]["name"] == "projected_adam"
    assert t["baseline"]["steps"] == config.model.adam.num_steps
    assert t["configured_jiio_steps"] == config.model.jiio.max_steps
    assert t["meta_test_jiio_steps"] == 5
    configured = t["jiio"][str(config.model.jiio.max_steps)]
    assert configured["support_loss_own"] > 0 and configured["quality"] > 0


# -- generative timing (no training: timing does not need a trained decoder) ---------------------
def test_generative_timing(tmp_path, monkeypatch):
    from jiio_jax.tasks.generative import GenerativeTask

    monkeypatch.setattr(timing, "ADAM_LRS", (0.3,))  # one Adam compilation
    config = helpers.load_config("digits_gen", "small")
    task = GenerativeTask(config)
    params = task.init_params(jax.random.key(0), {"image": jnp.zeros((2, 8, 8, 1))})
    options = EvalOptions(output_dir=str(tmp_path), steps=(3,), num_repeats=1)
    t = timing.timing(config, params, options)
    check_timing(t, (3,), repeats=1)
    assert t["task"] == "generative" and t["baseline"]["name"] == "inner_adam"
    assert t["baseline"]["steps"] == timing.ADAM_STEPS and t["baseline"]["learning_rate"] == 0.3
    # Both lower the cost of the zero latent (where both start).
    assert t["baseline"]["quality"] < t["quality_at_zero_latent"]
    assert t["jiio"]["3"]["quality"] < t["quality_at_zero_latent"]


# -- bad inputs ---------------------------------------------------------------------------------
def test_bad_inputs_raise(tmp_path):
    adv, meta = load_config("digits_adv"), load_config("digits_meta")
    gen = helpers.load_config("digits_gen", "small")
    out = str(tmp_path)
    too_many = EvalOptions(output_dir=out, steps=(2, robustness.MAX_STEPS + 1))
    with pytest.raises(ValueError, match=r"steps .* \[1, 1000\]"):
        robustness.attack(adv, None, too_many)
    with pytest.raises(ValueError, match=r"steps .* \[1, 1000\]"):
        timing.timing(adv, None, too_many)
    with pytest.raises(ValueError, match="config.task"):
        robustness.attack(meta, None, EvalOptions(output_dir=out))
    with pytest.raises(ValueError, match="config.task"):
        run_evaluation("attack", meta, str(tmp_path / "missing"), EvalOptions(output_dir=out))
    with pytest.raises(ValueError, match="config.task"):
        run_evaluation("meta", adv, str(tmp_path / "missing"), EvalOptions(output_dir=out))
    gen.model.method = "vae"
    with pytest.raises(ValueError, match="vae"):
        timing.timing(gen, None, EvalOptions(output_dir=out))
