"""Smoke test of experiments/benchmarks/mdeq.py (its --quick mode)."""

from __future__ import annotations

import importlib.util
import pathlib
import sys

import pytest

pytestmark = pytest.mark.usefixtures("fast_compile")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_benchmark():
    spec = importlib.util.spec_from_file_location(
        "mdeq_benchmark", ROOT / "experiments" / "benchmarks" / "mdeq.py"
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_quick_benchmark_writes_report(tmp_path):
    bench = _load_benchmark()
    out = tmp_path / "mdeq.md"
    report = bench.main(["--quick", "--out", str(out)])
    assert out.read_text().strip() == report.strip()
    assert (
        "Parameter counts" in report
        and "| mnist_cls | 5496 | 111792 | 41266 | 158554 | 158554 |" in report
    )
    assert "| tiny_cls | 2 | 3 |" in report and "MAX_STEPS" in report and "rho(df/dz)" in report
    assert "| tiny_cls | 2 | anderson | forward |" in report
    assert "| tiny_cls | 2 | anderson | one-step |" in report
