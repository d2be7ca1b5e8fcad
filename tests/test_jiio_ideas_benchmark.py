"""Smoke test of the JIIO-variants benchmark at tiny sizes (the real run is in experiments/)."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

pytestmark = [pytest.mark.usefixtures("fast_compile"), pytest.mark.slow]

BENCHMARKS = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "experiments", "benchmarks"
)


@pytest.fixture(scope="module")
def ideas():
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    modules = {}
    for name in ("jiio_vs_inner_loops", "jiio_ideas"):
        spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses resolve their module through sys.modules
        spec.loader.exec_module(module)
        modules[name] = module
    try:
        yield modules["jiio_ideas"]
    finally:
        for name in modules:
            sys.modules.pop(name, None)


def test_quick_run_measures_every_variant_on_both_decoders(ideas, tmp_path):
    ideas.main(["--quick", "--out", str(tmp_path)])
    results = json.loads((tmp_path / "jiio_ideas.json").read_text())
    assert len(results["decoders"]) == 2
    for decoder in results["decoders"].values():
        rows = set(ideas.VARIANTS) | set(ideas.QUASI_NEWTON)
        assert set(decoder["costs"]) == rows
        for costs in decoder["costs"].values():
            assert all(np.isfinite(c) and c >= 0 for c in costs.values())
        assert set(decoder["time_ms"]) == rows | {"cold Adam-40"}
        assert all(ms > 0 for ms in decoder["time_ms"].values())
        assert np.isfinite(decoder["adam_cost"])
    table = (tmp_path / "jiio_ideas_table.md").read_text()
    assert "Barzilai-Borwein x step" in table and "heavy ball 0.3" in table
    assert "block scaling: x block x3" in table and "exact L-BFGS" in table
    # The report part alone reproduces the table from the JSON.
    ideas.main(["--report_only", "--out", str(tmp_path)])
    assert (tmp_path / "jiio_ideas_table.md").read_text() == table
