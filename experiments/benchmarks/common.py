"""What the benchmarks share: the timing protocol, the measure / report split, table formatting.

Timing: ``jiio_jax.evaluation.clock`` (the protocol of ``jiio_jax.evaluation.timing`` too):
compile time measured separately (``compile_ahead``), one untimed warm-up call, then the median
of ``repeats`` warm calls, each ended by one ``block_until_ready``; peers are timed in the same
process, interleaved round-robin, because the shared CPU drifts by +-15% (SOLVER_ANCHORS §4.3).

Measure / report: every benchmark's measuring part writes its raw measurements to a JSON file
(``save_results``) and its report part builds the markdown (and plots) from that JSON alone
(``load_results``); ``--report_only`` (``add_report_only_flag``) re-runs only the report part
from the JSON a measuring run wrote at the same ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jiio_jax.evaluation.clock import (  # noqa: F401  (re-exported for the benchmarks)
    compile_ahead,
    interleaved_medians,
    interleaved_times,
    timed_call,
)


def add_report_only_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="measure nothing: rebuild the report (markdown, plots) from the JSON that a "
        "measuring run wrote at the same --out",
    )


def _scalar(x: Any) -> Any:
    """NumPy / JAX scalars as Python numbers; anything else non-JSON is an error."""
    if isinstance(x, np.generic) or (isinstance(x, np.ndarray | jax.Array) and x.ndim == 0):
        return x.item()
    raise TypeError(f"not JSON-serialisable in the benchmark results: {type(x).__name__} {x!r}")


def as_json(results: dict[str, Any]) -> dict[str, Any]:
    """``results`` as the report part reads them back from the JSON file (a JSON round trip:
    tuples become lists, keys strings), so that a measuring run's report is built from exactly
    what ``--report_only`` would read; ``TypeError`` if something is not JSON."""
    return json.loads(json.dumps(results, default=_scalar))


def save_results(path: str, results: dict[str, Any]) -> dict[str, Any]:
    """Writes ``results`` to ``path`` (creating its folder); returns ``as_json(results)``."""
    text = json.dumps(results, indent=1, default=_scalar)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text + "\n")
    print(f"wrote {path}", flush=True)
    return json.loads(text)


def load_results(path: str) -> dict[str, Any]:
    """The measurements a measuring run saved at ``path``; a clear error if there are none."""
    if not os.path.exists(path):
        raise SystemExit(
            f"--report_only: no measurements at {path}; run the benchmark without --report_only "
            "(same --out) first."
        )
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def fmt(x):
        if isinstance(x, float):
            return f"{x:.3g}"
        return str(x)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def machine_description() -> str:
    """One line naming the device(s), CPU count, and library versions."""
    devices = jax.devices()
    kind = devices[0].device_kind if devices else "?"
    return (
        f"{len(devices)}x {devices[0].platform}:{kind}, {os.cpu_count()} CPU cores, "
        f"{platform.python_version()}, jax {jax.__version__}"
    )
