"""Smoke test of the JIIO benchmark script at tiny sizes (the real run is in experiments/)."""

import importlib.util
import os
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.usefixtures("fast_compile")

SCRIPT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "experiments",
    "benchmarks",
    "jiio_vs_inner_loops.py",
)


@pytest.fixture(scope="module")
def bench():
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    spec = importlib.util.spec_from_file_location("jiio_vs_inner_loops", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(spec.name, None)


def test_quick_run_writes_report_and_plots(bench, tmp_path):
    results = bench.main(["--quick", "--out", str(tmp_path)])
    text = (tmp_path / "jiio.md").read_text()
    assert "## (a) Latent reconstruction" in text and "## (b) L2 attack vs PGD" in text
    assert "## (c) Latent reconstruction with the MDEQ generator" in text
    assert "Machine:" in text and "--quick" in text
    for path in results["plots"]:
        assert os.path.getsize(path) > 1000
    recon, attack = results["reconstruction"], results["attack"]
    mdeq = results["mdeq_reconstruction"]
    for rows in (recon["adam"], recon["jiio"], mdeq["adam"], mdeq["jiio"]):
        for row in rows.values():
            assert np.isfinite(row["cost"]) and row["time"] > 0
    eps = attack["epsilon"]
    for rows in (attack["pgd"], attack["jiio"]):
        for row in rows.values():
            assert row["max_norm"] <= eps * (1 + 1e-6) and 0 <= row["acc"] <= 1
