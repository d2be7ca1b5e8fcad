"""Timing and reporting helpers shared by the benchmarks.

Protocol (SOLVER_ANCHORS §4.3): compile time is measured separately (``lower().compile()``),
then the median of ``repeats`` warm runs, each ended by ``block_until_ready``. Peers are timed
in the same process, interleaved round-robin, because the shared CPU drifts by +-15%.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax


def compile_fn(fn: Callable, *args: Any) -> tuple[Callable, float]:
    """Jits and compiles ``fn`` for ``args``; returns ``(compiled, seconds)``."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def time_once(compiled: Callable, *args: Any) -> float:
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    return time.perf_counter() - start


def interleaved_medians(
    entries: dict[str, tuple[Callable, tuple]], repeats: int = 20, warmup: int = 1
) -> dict[str, float]:
    """Median wall time (s) of each compiled ``(fn, args)``, timed round-robin."""
    for fn, args in entries.values():
        for _ in range(warmup):
            time_once(fn, *args)
    samples: dict[str, list[float]] = {name: [] for name in entries}
    for _ in range(repeats):
        for name, (fn, args) in entries.items():
            samples[name].append(time_once(fn, *args))
    return {name: statistics.median(v) for name, v in samples.items()}


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
    import os

    devices = jax.devices()
    kind = devices[0].device_kind if devices else "?"
    return (
        f"{len(devices)}x {devices[0].platform}:{kind}, {os.cpu_count()} CPU cores, "
        f"{platform.python_version()}, jax {jax.__version__}"
    )
