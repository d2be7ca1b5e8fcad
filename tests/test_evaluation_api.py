"""The evaluation registry and options: bad input gets a clear error, names dispatch correctly,
and the adversarial-training benchmark runs end to end (smoke, slow)."""

import importlib.util
import os
import sys

import pytest

from jiio_jax.evaluation import EVALUATIONS, EvalOptions, get_evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_evaluation_resolves_for_its_tasks():
    tasks = {
        "psnr": "generative",
        "samples": "generative",
        "fid": "generative",
        "attack": "adversarial",
        "meta": "meta",
        "timing": "adversarial",
    }
    assert set(tasks) == set(EVALUATIONS)
    for name, task in tasks.items():
        assert callable(get_evaluation(name, task))


@pytest.mark.parametrize(
    ("name", "task", "match"),
    [
        ("attack", "generative", "applies to config.task"),
        ("psnr", "meta", "applies to config.task"),
        ("meta", "adversarial", "applies to config.task"),
        ("fidd", "generative", "Unknown evaluation"),
    ],
)
def test_wrong_evaluation_for_task_raises(name, task, match):
    with pytest.raises(ValueError, match=match):
        get_evaluation(name, task)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"num_examples": 0}, "num_examples"),
        ({"batch_size": -2}, "batch_size"),
        ({"num_samples": 0}, "num_samples"),
        ({"num_repeats": 0}, "num_repeats"),
        ({"steps": ()}, "steps"),
        ({"steps": (5, 0)}, "steps"),
        ({"density": "kde"}, "density"),
        ({"attacks": ("fgsm",)}, "attacks"),
        ({"attacks": ()}, "attacks"),
    ],
)
def test_bad_options_raise(kwargs, field):
    with pytest.raises(ValueError, match=field):
        EvalOptions(output_dir="/tmp/x", **kwargs)


def _load_benchmark():
    path = os.path.join(REPO, "experiments", "benchmarks", "adversarial_training.py")
    spec = importlib.util.spec_from_file_location("adversarial_training", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(spec.name, None)
    return module


def test_benchmark_rejects_bad_methods():
    bench = _load_benchmark()
    for spec in ("adam:3", "pgd", "jiio:x"):
        with pytest.raises(ValueError, match="--methods"):
            bench.parse_method(spec)
    assert bench.parse_method("pgd:20") == ("pgd", 20)
    config = bench.method_config(bench.load_config("small"), "pgd", 10)
    assert config.model.method == "pgd" and config.model.pgd.steps == 10
    assert config.model.pgd.step_size == pytest.approx(0.25)


@pytest.mark.slow
def test_adversarial_training_benchmark_smoke(tmp_path):
    bench = _load_benchmark()
    out = bench.main(["--smoke", "--methods=jiio:3,pgd:2", "--out", str(tmp_path)])
    text = (tmp_path / "adversarial.md").read_text()
    assert "JIIO-3" in text and "PGD-2" in text and "Machine:" in text
    assert (tmp_path / "adversarial_training.png").stat().st_size > 0
    for points in out["history"].values():
        for p in points:
            for key in ("clean_acc", "robust_acc_pgd", "robust_acc_jiio"):
                assert 0.0 <= p[key] <= 1.0
            assert p["train_seconds"] > 0
