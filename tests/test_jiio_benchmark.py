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
    for section in (recon, mdeq):
        for rows in (section["adam"], section["adam_warm"], section["jiio"]):
            for row in rows.values():
                assert np.isfinite(row["cost"]) and row["time"] > 0
        # The warm form counts its adjoint evaluations and takes the cold form's steps.
        assert set(section["adam_warm"]) == set(section["adam"])
        for row in section["adam_warm"].values():
            assert row["fevals"] > 0 and row["adjoint_evals"] > 0
    eps = attack["epsilon"]
    for rows in (attack["pgd"], attack["pgd_warm"], attack["jiio"]):
        for row in rows.values():
            assert row["max_norm"] <= eps * (1 + 1e-6) and 0 <= row["acc"] <= 1
    assert "| Adam, warm start |" in text and "| PGD, warm start |" in text
    assert "warm-start Adam-3's cost" in text and "warm-start PGD-3" in text
