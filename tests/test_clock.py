"""jiio_jax.evaluation.clock: the one timing protocol of the evaluations and the benchmarks."""

from __future__ import annotations

import jax.numpy as jnp
import pytest

from jiio_jax import evaluation
from jiio_jax.evaluation import clock


class FakeTime:
    """A ``perf_counter`` that only moves when a timed call says how long it took."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake_time(monkeypatch):
    fake = FakeTime()
    monkeypatch.setattr(clock.time, "perf_counter", fake)
    return fake


def _call(name, durations, log, fake):
    """A call that logs its name and takes the next of ``durations`` seconds."""
    it = iter(durations)

    def call():
        log.append(name)
        fake.now += next(it)
        return jnp.zeros(())

    return call


def test_warmup_then_interleaved_rounds_and_medians(fake_time):
    log = []
    calls = {
        # The warm-up call (100 s, e.g. a slow first run) is never a sample.
        "a": _call("a", [100.0, 3.0, 1.0, 2.0], log, fake_time),
        "b": _call("b", [100.0, 5.0, 7.0, 6.0], log, fake_time),
    }
    samples = clock.interleaved_times(calls, repeats=3)
    assert log == ["a", "b", "a", "b", "a", "b", "a", "b"]  # warm-ups, then round-robin
    assert samples == {"a": [3.0, 1.0, 2.0], "b": [5.0, 7.0, 6.0]}


def test_medians_and_no_warmup(fake_time):
    log = []
    calls = {"a": _call("a", [3.0, 1.0, 2.0, 9.0], log, fake_time)}
    assert clock.interleaved_medians(calls, repeats=4, warmup=0) == {"a": 2.5}
    assert log == ["a"] * 4


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"repeats": 2, "warmup": -1}])
def test_bad_counts_name_the_argument(kwargs):
    with pytest.raises(ValueError, match="repeats=.*warmup="):
        clock.interleaved_times({"a": lambda: 0.0}, **kwargs)


def test_compile_ahead_excludes_tracing_from_calls():
    traces = []

    def fn(x):
        traces.append(1)  # Runs once per trace, never when the executable runs.
        return jnp.sin(x) * 2

    x = jnp.arange(4.0)
    compiled, seconds = clock.compile_ahead(fn, x)
    assert seconds > 0 and len(traces) == 1
    out, call_seconds = clock.timed_call(lambda: compiled(x))
    assert call_seconds >= 0 and len(traces) == 1
    assert jnp.allclose(out, jnp.sin(x) * 2)


def test_compile_ahead_passes_jit_options():
    compiled, _ = clock.compile_ahead(lambda x, n: x * n, jnp.ones(3), 2, static_argnums=1)
    assert jnp.allclose(compiled(jnp.ones(3)), 2.0)  # the static argument is baked in


def test_public_names_are_one_implementation():
    from jiio_jax.evaluation import timing

    assert evaluation.interleaved_times is clock.interleaved_times is timing.interleaved_times
    assert evaluation.compile_ahead is clock.compile_ahead
