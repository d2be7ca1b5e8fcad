"""Smoke test of the solver benchmark (experiments/benchmarks/solvers.py --smoke).

Runs the script in a subprocess (its own float32 JAX config and XLA thread flags, unaffected by
this suite's x64 conftest) on a tiny problem and checks that the report and plots are written.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "experiments", "benchmarks", "solvers.py")


def test_solver_benchmark_smoke(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("JAX_ENABLE_X64", "XLA_FLAGS")}
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    md = (tmp_path / "solvers.md").read_text()
    for needle in (
        "## Headline",
        "time / best peer time",
        "fevals min/med/max",
        "| ours | Anderson m=5 | per-sample |",
        "jaxopt",
        "optimistix",
        "## Gradient accuracy",
        "XLA_FLAGS",
        "Time vs the fastest jaxopt configuration meeting eps",
    ):
        assert needle in md, needle
    assert "time / best peer time" in proc.stdout  # tables also go to stdout
    for png in ("solvers_residuals.png", "solvers_time_vs_fevals.png"):
        data = (tmp_path / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000, png
