"""Wall-clock timing of compiled JAX programs: the one protocol of evaluations and benchmarks.

The protocol (``jiio_jax.evaluation.timing`` and every script in ``experiments/benchmarks``):

1. **Compile apart.** :func:`compile_ahead` jits, lowers and compiles a function for its
   arguments (``jax.jit(fn).lower(*args).compile()``) and returns the compile seconds separately;
   no timed call ever includes compilation or tracing.
2. **Warm up.** :func:`interleaved_times` calls every program ``warmup`` times untimed first (the
   first run of an executable can be several times slower than later ones on XLA:CPU).
3. **Interleave.** It then runs ``repeats`` rounds; each round calls every program once, in
   order, so load drift on a shared machine hits all of them alike.
4. **One device sync per call.** Each timed call is ``fn()`` followed by ONE
   ``jax.block_until_ready`` on its whole output (no per-iteration syncs, no host transfer):
   the seconds are host wall time (``time.perf_counter``) from the call to the output being ready.
5. **Statistic.** :func:`interleaved_times` returns every sample; :func:`interleaved_medians`
   the median of each program's ``repeats`` samples (robust to the occasional preempted run).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import jax
from absl import logging


def compile_ahead(fn: Callable, *args: Any, **jit_options: Any) -> tuple[Any, float]:
    """``(compiled, seconds)``: ``jax.jit(fn, **jit_options)`` lowered and compiled for ``args``.

    ``compiled(*args)`` then runs the executable with no tracing or compilation; ``seconds`` is
    the wall time of tracing + lowering + compiling (reported apart from every timing).
    """
    start = time.perf_counter()
    compiled = jax.jit(fn, **jit_options).lower(*args).compile()
    return compiled, time.perf_counter() - start


def timed_call(call: Callable[[], Any]) -> tuple[Any, float]:
    """``(output, seconds)`` of one ``call()``: wall time until ``jax.block_until_ready`` of its
    whole output returns (one device sync)."""
    start = time.perf_counter()
    out = jax.block_until_ready(call())
    return out, time.perf_counter() - start


def interleaved_times(
    calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, list[float]]:
    """Wall seconds of each zero-argument ``call`` (see the module docstring).

    Args:
      calls: name -> ``call()``, e.g. ``functools.partial(compiled, *args)`` of a program
        compiled by :func:`compile_ahead`.
      repeats: timed rounds (>= 1); each round calls every program once, in ``calls`` order.
      warmup: untimed calls of each program before the first round (>= 0; 0 when the caller
        already ran each program once after compiling).

    Returns:
      name -> the ``repeats`` samples in seconds, in round order.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(
            f"interleaved_times: repeats={repeats} must be >= 1 and warmup={warmup} >= 0."
        )
    count = "one warm-up call" if warmup == 1 else f"{warmup} warm-up calls"
    logging.info("timing: %d methods, %s and %d timed rounds.", len(calls), count, repeats)
    for call in calls.values():
        for _ in range(warmup):
            timed_call(call)
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for i in range(repeats):
        for name, call in calls.items():
            seconds[name].append(timed_call(call)[1])
        logging.info("timing: round %d/%d done.", i + 1, repeats)
    return seconds


def interleaved_medians(
    calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """name -> median seconds of :func:`interleaved_times` ``(calls, repeats, warmup)``."""
    samples = interleaved_times(calls, repeats, warmup)
    return {name: statistics.median(v) for name, v in samples.items()}


__all__ = ["compile_ahead", "interleaved_medians", "interleaved_times", "timed_call"]
