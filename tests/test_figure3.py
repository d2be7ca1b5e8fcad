"""experiments/benchmarks/figure3.py: the Figure 3 report from evaluate.py timing JSONs."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "experiments", "benchmarks"))
import figure3  # noqa: E402


def _timing(workdir, scale):
    os.makedirs(os.path.join(workdir, "eval"))
    timing = {
        "jiio": {
            "20": {"seconds_median": 1.0 * scale, "quality": 3.0},
            "40": {"seconds_median": 2.0 * scale, "quality": 1.9},
        },
        "baseline": {"seconds_median": 6.0, "quality": 2.0, "steps": 40},
        "baseline_warm": {"seconds_median": 5.0, "quality": 2.01, "steps": 40},
        "verdict": "JIIO-40 reaches the baseline's quality in 1/3 of its time",
        "vs_warm": {"verdict": "JIIO-40 reaches the warm baseline's quality in 1/2.5"},
    }
    # An older evaluation at another checkpoint must not be picked.
    for step, t in ((600, timing), (300, {**timing, "jiio": {}})):
        with open(os.path.join(workdir, "eval", f"timing_step{step}.json"), "w") as f:
            json.dump(t, f)


def test_report_from_two_runs(tmp_path):
    a, b, out = (str(tmp_path / n) for n in ("a", "b", "out"))
    _timing(a, 1.0)
    _timing(b, 1.5)
    text = figure3.main([f"--run=T=40:{a}", f"--run=T=100:{b}", f"--out={out}"])
    assert "| T=40 | Adam (cold, paper) | 40 | 2 | 6 |" in text
    assert "| T=100 | Adam (warm start) | 40 | 2.01 | 5 |" in text
    assert "| T=100 | JIIO | 40 | 1.9 | 3 |" in text
    assert os.path.getsize(os.path.join(out, "figure3.png")) > 10_000
    assert open(os.path.join(out, "figure3.md")).read() == text


def test_missing_timing_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="--task=timing"):
        figure3.load_timing(str(tmp_path))
