"""Registration of the JIIO configuration dataclasses as pytrees (pass them to ``jit``).

Hyper-parameters are static (pytree auxiliary data: hashed, a change recompiles); the few fields
that may hold traced arrays are children (leaves), so a configuration is an ordinary argument
of a jitted function: ``jax.jit(lambda cfg, x: ...)(JIIO(step_size=0.1), x)``.
"""

from __future__ import annotations

import dataclasses

import jax


def register_config(cls: type, data_fields: tuple[str, ...] = ()) -> type:
    """Registers the frozen dataclass ``cls``: ``data_fields`` are children, the rest static.

    Unflattening bypasses ``__init__``: the values were validated when the configuration was
    built, and JAX unflattens with placeholders (tracers, ``object()``, ``None``) that the
    validation would reject. Returns ``cls`` (usable as a decorator via ``functools.partial``).
    """
    names = tuple(f.name for f in dataclasses.fields(cls))
    unknown = set(data_fields) - set(names)
    if unknown:
        raise ValueError(f"{cls.__name__} has no field(s) {sorted(unknown)}.")
    static = tuple(n for n in names if n not in data_fields)

    def flatten_with_keys(obj):
        children = [(jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in data_fields]
        return children, tuple(getattr(obj, n) for n in static)

    def flatten(obj):
        return [getattr(obj, n) for n in data_fields], tuple(getattr(obj, n) for n in static)

    def unflatten(aux, children):
        obj = object.__new__(cls)
        for n, v in zip(static, aux, strict=True):
            object.__setattr__(obj, n, v)
        for n, v in zip(data_fields, children, strict=True):
            object.__setattr__(obj, n, v)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
    return cls


def check_instance(name: str, value: object, expected: tuple[type, ...], example: str) -> None:
    """TypeError when ``value`` is one of the ``expected`` classes itself, not an instance."""
    if isinstance(value, type) and issubclass(value, expected):
        raise TypeError(
            f"`{name}` must be an instance such as {example}, got the class {value.__name__} "
            "itself; call it with its fields."
        )
