"""Step-size schedules ``alpha_t`` for the input update of JIIO.

A schedule is called as ``schedule(step, max_steps)`` with ``step`` an int32 array (the index
``t = 0, 1, ...`` of the augmented-map evaluation) and ``max_steps`` the static number of steps
``T``; it returns the step size. ``as_schedule`` also accepts a float (``Constant``) and any
callable ``step -> alpha``.

Schedules are static pytrees (no leaves): they can be passed to ``jax.jit`` as arguments, and
a change of value recompiles. A traced scale of the step (e.g. a warmed-up attack radius) goes
in ``JIIO.step_scale`` instead.
"""

from __future__ import annotations

import dataclasses
import inspect
import numbers
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jiio_jax.jiio._pytree import check_instance, register_config


def _check_step_value(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a positive float, got {value!r}.")
    v = float(value)
    if not v > 0 or v == float("inf"):
        raise ValueError(f"`{name}` must be a positive finite float, got {value!r}.")
    return v


@register_config
@dataclasses.dataclass(frozen=True)
class Constant:
    """``alpha_t = value`` for every step."""

    value: float

    def __post_init__(self):
        object.__setattr__(self, "value", _check_step_value("value", self.value))

    def __call__(self, step: jax.Array, max_steps: int) -> jax.Array:
        del max_steps
        return jnp.asarray(self.value)


def reference_switch_step(max_steps: int) -> int:
    """The reference's switch point ``T_s - 1`` with ``T_s = max(50, floor(5 T / 8))``."""
    return max(50, (5 * max_steps) // 8) - 1


@register_config
@dataclasses.dataclass(frozen=True)
class Piecewise:
    """Piecewise-constant ``alpha_t``: ``values[i]`` for ``boundaries[i-1] <= t < boundaries[i]``.

    With ``boundaries=None`` and two values this is the JIIO reference schedule (§1.4):
    ``alpha_t = values[0]`` for ``t < T_s - 1`` and ``values[1]`` from ``t = T_s - 1`` on, with
    ``T_s = max(50, floor(5 T / 8))`` (``T = 80`` switches at ``t = 49``; ``T = 100`` at 61).

    Attributes:
      values: tuple of positive step sizes, e.g. ``(0.6, 0.2)``.
      boundaries: increasing tuple of ``len(values) - 1`` step indices, or ``None`` (reference
        switch point; requires two values).
    """

    values: tuple[float, ...]
    boundaries: tuple[int, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.values, tuple | list) or len(self.values) < 1:
            raise ValueError(f"`values` must be a non-empty tuple of floats, got {self.values!r}.")
        values = tuple(_check_step_value(f"values[{i}]", v) for i, v in enumerate(self.values))
        object.__setattr__(self, "values", values)
        if self.boundaries is None:
            if len(values) != 2:
                raise ValueError(
                    "`boundaries=None` selects the reference switch point and needs exactly two "
                    f"`values`; got {len(values)}. Pass `boundaries` explicitly."
                )
            return
        bounds = tuple(self.boundaries)
        if len(bounds) != len(values) - 1:
            raise ValueError(
                f"`boundaries` must have len(values) - 1 = {len(values) - 1} entries, got "
                f"{bounds!r}."
            )
        if any(isinstance(b, bool) or not isinstance(b, numbers.Integral) for b in bounds) or any(
            b1 <= b0 for b0, b1 in zip(bounds, bounds[1:], strict=False)
        ):
            raise ValueError(f"`boundaries` must be increasing ints, got {bounds!r}.")
        object.__setattr__(self, "boundaries", tuple(int(b) for b in bounds))

    def __call__(self, step: jax.Array, max_steps: int) -> jax.Array:
        if self.boundaries is None:
            bounds = (reference_switch_step(max_steps),)
        else:
            bounds = self.boundaries
        index = jnp.sum(jnp.asarray(step) >= jnp.asarray(bounds))
        return jnp.asarray(self.values)[index]


@register_config
@dataclasses.dataclass(frozen=True)
class _Callable:
    fn: Callable[[jax.Array], Any]

    def __call__(self, step: jax.Array, max_steps: int) -> jax.Array:
        del max_steps
        return jnp.asarray(self.fn(step))


def as_schedule(step_size: Any) -> Any:
    """Float -> ``Constant``; ``Constant``/``Piecewise`` kept; a callable ``step -> alpha`` wrapped.

    Raises:
      TypeError: the class ``Constant`` / ``Piecewise`` itself instead of an instance.
      ValueError: for non-positive floats or other types.
    """
    check_instance("step_size", step_size, (Constant, Piecewise), "Constant(0.1)")
    if isinstance(step_size, Constant | Piecewise | _Callable):
        return step_size
    if isinstance(step_size, numbers.Real) and not isinstance(step_size, bool):
        return Constant(_check_step_value("step_size", step_size))
    if callable(step_size):
        try:
            n_params = len(inspect.signature(step_size).parameters)
        except (TypeError, ValueError):
            n_params = 1
        if n_params != 1:
            raise ValueError(
                "a callable `step_size` must take one argument (the int32 step index) and return "
                f"the step size; got a callable with {n_params} parameters."
            )
        return _Callable(step_size)
    raise ValueError(
        "`step_size` must be a positive float, Constant, Piecewise (jiio_jax.jiio), or a "
        f"callable step -> alpha; got {step_size!r}."
    )
