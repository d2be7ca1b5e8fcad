"""The report part of every benchmark script rebuilds its tables from a saved JSON alone.

Each test writes a small measurements JSON by hand (the shape the measuring part saves), runs
the script with ``--report_only`` and checks the numbers land in the tables: no measuring, no
compilation, so each runs in about a second.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BENCH = ROOT / "experiments" / "benchmarks"


@pytest.fixture
def load(monkeypatch):
    """Imports ``experiments/benchmarks/<name>.py``; solvers.py's XLA_FLAGS default stays local."""
    monkeypatch.setenv("XLA_FLAGS", os.environ.get("XLA_FLAGS", ""))
    loaded = []

    def _load(name: str):
        spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
        loaded.append(spec.name)
        spec.loader.exec_module(module)
        return module

    yield _load
    for name in loaded:
        sys.modules.pop(name, None)


def _write(path: pathlib.Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results))


def test_common_round_trip_and_missing_json(load, tmp_path):
    common = load("common")
    import numpy as np

    saved = common.save_results(
        str(tmp_path / "r.json"), {"steps": {3: np.float32(0.5)}, "v": (1, 2)}
    )
    assert saved == {"steps": {"3": 0.5}, "v": [1, 2]}
    assert common.load_results(str(tmp_path / "r.json")) == saved
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        common.as_json({"x": object()})
    with pytest.raises(SystemExit, match="--report_only: no measurements at"):
        common.load_results(str(tmp_path / "none.json"))


def test_mdeq_report_only(load, tmp_path):
    mdeq = load("mdeq")
    _write(
        tmp_path / "t.json",
        {
            "machine": "test machine",
            "elapsed_s": 12.3,
            "only_equilibrium": False,
            "params": [["tiny_cls", 824, 13504, 8090, 22418, "-"]],
            "equilibrium": [["tiny_cls", 2, 3.0, 0.2184, "MAX_STEPS", "skipped"]],
            "timing": [["tiny_cls", 2, "anderson", "forward", 5.0512, 0.4375, 15.9, 3.0, 0.2184]],
        },
    )
    text = mdeq.main(["--report_only", "--out", str(tmp_path / "t.md")])
    assert (tmp_path / "t.md").read_text() == text + "\n"
    assert "Device: test machine. Total benchmark time 12 s." in text
    assert "| tiny_cls | 824 | 13504 | 8090 | 22418 | - |" in text
    assert "| tiny_cls | 2 | 3 | 0.218 | MAX_STEPS | skipped |" in text
    assert "| tiny_cls | 2 | anderson | forward | 5.05 | 0.438 | 15.9 | 3 | 0.218 |" in text


def test_trained_layer_report_only(load, tmp_path):
    trained_layer = load("trained_layer")
    row = {"rel_err_vs_float64": 4.8e-5, "rel_diff_vs_ours": 0.0, "ms": 11.24, "compile_s": 9.04}
    _write(
        tmp_path / "tl.json",
        {
            "command": "python experiments/benchmarks/trained_layer.py --steps=300 --repeats=20",
            "machine": "test machine",
            "agreement": {
                "steps": 300,
                "repeats": 20,
                "spectral_radius": 1.7012,
                "spectral_norm": 2.5499,
                "batch": 128,
                "reference_residual": 1.23e-15,
                "rows": [{"method": "jiio_jax Anderson + Implicit", **row}],
            },
        },
    )
    trained_layer.main(["--report_only", "--out", str(tmp_path / "tl.md")])
    text = (tmp_path / "tl.md").read_text()
    assert "--repeats=20` on test machine." in text
    assert "radius 1.70, norm 2.55; test batch 128; float64 reference z* residual 1.2e-15" in text
    assert "| jiio_jax Anderson + Implicit | 4.8e-05 | 0.0e+00 | 11.2 | 9.0 |" in text


def test_adversarial_training_report_only(load, tmp_path):
    adv = load("adversarial_training")

    def point(step, seconds, acc):
        return {
            "step": step,
            "train_seconds": seconds,
            "clean_acc": acc,
            "robust_acc_pgd": acc / 2,
            "robust_acc_jiio": acc / 4,
        }

    _write(
        tmp_path / "adversarial.json",
        {
            "command": "python experiments/benchmarks/adversarial_training.py --steps=2",
            "date": "2026-12-07",
            "machine": "test machine",
            "load_end": 1.25,
            "smoke": False,
            "epsilon": 0.5,
            "num_steps": 2,
            "batch_size": 64,
            "num_test": 300,
            "history": {
                "JIIO-20": [point(1, 1.0, 0.5), point(2, 2.0, 0.8)],
                "PGD-20": [point(1, 3.0, 0.4), point(2, 6.0, 0.6)],
            },
            "compile_seconds": {"JIIO-20": 50.0, "PGD-20": 54.0},
            "step_seconds": {"JIIO-20": [1.0, 1.0], "PGD-20": [3.0, 3.0]},
        },
    )
    out = adv.main(["--report_only", "--out", str(tmp_path)])
    text = (tmp_path / "adversarial.md").read_text()
    assert out["table"] in text and "load average at the end 1.2" in text
    # speed-up vs the slowest (PGD: 6 s of steps): 3.00x, with compile (60 / 52) 1.15x.
    assert "| JIIO-20 | 0.8 | 0.4 | 0.2 | 2 | 1.000 | 50 | 3.00x | 1.15x |" in text
    assert "| PGD-20 | 2 | 6 | 0.6 | 0.3 | 0.15 |" in text
    assert (tmp_path / "adversarial_training.png").stat().st_size > 1000


def _recon_section(steps: int, num_params: int | None = None, warm: bool = True) -> dict:
    section = {
        "lr_scores": {"0.1": 37.3},
        "best_lr": 0.1,
        "alpha_scores": {"0.02": 37.2},
        "alpha": 0.02,
        "adam": {str(steps): {"cost": 37.3, "fevals": 41.0, "time": 0.002}},
        "jiio": {str(steps): {"cost": 37.2, "fevals": float(steps), "time": 0.0005}},
        "reference_steps": steps,
        "target": 37.3,
        "first_steps": steps,
        "ratio": 4.0,
        "initial_cost": 42.6,
    }
    if num_params is not None:
        section["num_params"] = num_params
    if warm:  # the warm-start baseline (absent from JSONs that predate it)
        row = {"cost": 37.25, "fevals": 20.0, "adjoint_evals": 15.0, "time": 0.001}
        section["adam_warm"] = {str(steps): row}
        section.update(target_warm=37.25, first_steps_warm=steps, ratio_warm=2.0)
    return section


def _attack_section(warm: bool = True) -> dict:
    row = {"acc": 0.0, "max_norm": 0.49999, "time": 0.001}
    attack = {
        "epsilon": 0.5,
        "clean": {"ce": 2.18, "acc": 0.0},
        "pgd_alpha_scores": {"0.4": 2.62},
        "pgd_alpha": 0.4,
        "jiio_alpha_scores": [[["anderson", 0.8, 0.6], 0.4, 2.59], [["none", 1.0, 1.0], 0.4, 2.5]],
        "jiio_alpha": 0.4,
        "jiio_variant": ["anderson", 0.8, 0.6],
        "select_steps": 4,
        "pgd": {"3": {"ce": 2.62, **row}},
        "jiio": {"4": {"ce": 2.59, **row, "time": 0.004}},
        "reference_steps": 3,
        "first_steps": None,
        "ratio": None,
    }
    if warm:
        counts = {"fevals": 30.0, "adjoint_evals": 20.0}
        attack["pgd_warm"] = {"3": {"ce": 2.55, **row, **counts, "time": 0.016}}
        attack.update(first_steps_warm=4, ratio_warm=4.0)
    return attack


def _write_jiio_json(bench, path, warm: bool) -> None:
    _write(
        path / "jiio.json",
        {
            "command": "/work/venv/bin/python experiments/benchmarks/jiio_vs_inner_loops.py",
            "machine": "test machine",
            "date": "2026-12-07 05:00",
            "config": dataclasses.asdict(bench.BenchConfig.quick()),
            "info": {"decoder_loss": 43.5, "classifier_loss": float("nan"), "mdeq_loss": 55.0},
            "sections": {
                "reconstruction": _recon_section(3, warm=warm),
                "attack": _attack_section(warm),
                "mdeq_reconstruction": _recon_section(2, num_params=1234, warm=warm),
            },
        },
    )


def test_jiio_vs_inner_loops_report_only(load, tmp_path):
    bench = load("jiio_vs_inner_loops")
    _write_jiio_json(bench, tmp_path, warm=True)
    out = bench.main(["--report_only", "--out", str(tmp_path)])
    text = (tmp_path / "jiio.md").read_text()
    assert "Machine: test machine" in text and "Run: 2026-12-07 05:00, float32" in text
    assert "| Adam, cold (paper) | 3 | 37.3 | 2 | 41 | n/a |" in text
    assert "| Adam, warm start | 3 | 37.2 | 1 | 20 | 15 |" in text
    assert "| JIIO | 3 | 37.2 | 0.5 | 3 | 3 |" in text
    # Each baseline's verdict with its bar: cold 10x (dense) / 15x (MDEQ), warm 3x.
    assert "cold Adam-3's cost (37.3)**: JIIO needs 3 steps: 4.0x (**misses** the 10x bar)" in text
    assert "cold Adam-2's cost (37.3)**: JIIO needs 2 steps: 4.0x (**misses** the 15x bar)" in text
    assert "warm-start Adam-3's cost (37.25)**: JIIO needs 3 steps: 2.0x (**misses** the 3x" in text
    assert "anderson 0.8/0.6 a=0.4: 2.59" in text and "-> **anderson, damping 0.8 / 0.6" in text
    assert "| PGD, cold (paper) | 3 | 2.62 | 0 | 0.5 | 1 |" in text and "1234 parameters" in text
    assert "| PGD, warm start | 3 | 2.55 | 0 | 0.5 | 16 |" in text
    assert "as strong as cold PGD-3** (CE >= and accuracy <=): **not reached**" in text
    warm_attack = "as strong as warm-start PGD-3** (CE >= and accuracy <=): from 4 steps: 4.0x"
    assert warm_attack + " (meets the 3.5x bar)" in text
    assert "Warm start: Adam-3's forward f evaluations 41 -> 20 per sample" in text
    assert out["reconstruction"]["jiio"][3]["cost"] == 37.2  # int step keys again
    assert out["attack"]["pgd_warm"][3]["ce"] == 2.55
    for path in out["plots"]:
        assert os.path.getsize(path) > 1000


def test_jiio_vs_inner_loops_report_only_without_warm_rows(load, tmp_path):
    """A JSON measured before the warm-start baselines existed still reports, and says so."""
    bench = load("jiio_vs_inner_loops")
    _write_jiio_json(bench, tmp_path, warm=False)
    bench.main(["--report_only", "--out", str(tmp_path)])
    text = (tmp_path / "jiio.md").read_text()
    assert "| Adam, warm start |" not in text and "| PGD, warm start |" not in text
    assert text.count("Warm-start Adam baseline: not measured in this run") == 2
    assert "Warm-start PGD baseline: not measured in this run" in text


def test_solvers_report_only(load, tmp_path):
    solvers = load("solvers")
    problem = {"family": "S", "rho": 0.9, "d": 16, "batch": 4, "xscale": 0.1, "seed": 0}

    def result(name, lib, ms, fevals):
        return {
            "config": {"name": name, "lib": lib, "mode": "per-sample"},
            "tol": 1e-5,
            "met": True,
            "success": 1.0,
            "fevals": fevals,
            "res": [1e-6, 2e-6, 3e-6, 4e-6],
            "nan": False,
            "compile_s": 0.5,
            "hit_budget": False,
            "ms": ms,
        }

    meta = {
        "argv": ["--smoke"],
        "machine": "test machine",
        "date": "2026-12-07 05:00",
        "code": "abc1234",
        "xla_flags": "--flag",
        "affinity": [0, 1],
        "elapsed": 60.0,
        "cpu": 20.0,
        "load": [1.0, 2.0],
        "max_steps": 200,
        "repeats": 3,
        "plot_label": "S rho=0.99 d=16 B=4 x~0.01N",
        "plot_steps": 40,
    }
    _write(
        tmp_path / "solvers.json",
        {
            "problems": [
                {
                    "problem": problem,
                    "eps": 1e-5,
                    "results": [
                        result("Anderson m=5", "ours", 1.0, [10, 12, 12, 14]),
                        result("Anderson m=5 ridge=1e-10", "jaxopt", 4.0, [20, 24, 24, 30]),
                    ],
                }
            ],
            "per_step": {
                "label": meta["plot_label"],
                "rows": [
                    {"key": "bare f loop", "max_fevals": 200, "seconds": 0.002},
                    {"key": "ours:Anderson m=5:per-sample", "max_fevals": 200, "seconds": 0.01},
                ],
            },
            "n_check": [],
            "grad": [],
            "trained": None,
            "traces": None,
            "meta": meta,
        },
    )
    assert solvers.main(["--report_only", "--out", str(tmp_path)]) == 0
    text = (tmp_path / "solvers.md").read_text()
    assert "- Command: `python experiments/benchmarks/solvers.py --smoke` (60 s wall" in text
    assert "- Code: jiio_jax at abc1234" in text and "CPU affinity [0, 1]" in text
    # ours 1 ms vs the best peer 4 ms; median fevals 12 vs 24.
    assert "| ours | Anderson m=5 | per-sample | 1.0e-05 | 100% | 10/12/14 |" in text
    assert "| 1.00 | 0.25 | 0.50 |" in text and "| **jaxopt** |" in text
    assert "| ours:Anderson m=5:per-sample | 200 | 10.00 | 50 | 5.00 |" in text
    assert not (tmp_path / "solvers_residuals.png").exists()  # no traces saved: no plot


def test_scale_report_only_from_the_saved_cpu_record(load, tmp_path):
    scale = load("scale")
    shutil.copy(ROOT / "experiments" / "results" / "scale_cpu.json", tmp_path / "scale_cpu.json")
    saved = json.loads((tmp_path / "scale_cpu.json").read_text())
    scale.main(["--report_only", "--platform=cpu", f"--out={tmp_path / 'scale.md'}"])
    text = (tmp_path / "scale.md").read_text()
    assert "<!-- scale:cpu:begin -->" in text and "## cpu: cpu (date not recorded)" in text
    assert saved["command"] in text
    first = saved["sections"]["train"][0]
    assert f"| {first['arch']} | {first['batch']} |" in text
    with pytest.raises(SystemExit, match="no measurements"):
        scale.main(["--report_only", "--platform=gpu", f"--out={tmp_path / 'scale.md'}"])
