"""Solver configurations by name, for config files: ``resolve({"name": "anderson", ...})``."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from jiio_jax.solvers.anderson import Anderson
from jiio_jax.solvers.broyden import Broyden
from jiio_jax.solvers.core import check_solver
from jiio_jax.solvers.fixed_point_iteration import FixedPointIteration

REGISTRY: dict[str, type] = {
    "fixed_point_iteration": FixedPointIteration,
    "anderson": Anderson,
    "broyden": Broyden,
}
"""Name -> solver configuration class, the names ``resolve`` accepts."""


def resolve(spec: Any, name: str = "solver") -> Any:
    """Returns a solver instance from an instance, a mapping or a registered name.

    Args:
      spec: a solver instance (returned as is, e.g. ``Anderson(memory=3)``); a mapping
        ``{"name": "anderson", **fields}`` (``fields`` are the configuration's dataclass fields,
        e.g. ``{"name": "broyden", "memory": 10, "tol": 1e-5}``); or a bare name
        (``"anderson"``: the defaults). Names: see ``REGISTRY``.
      name: what to call ``spec`` in error messages (e.g. ``"config.model.solver"``).

    Raises:
      TypeError: for a class instead of an instance, or a spec of another type.
      ValueError: for an unknown name or unknown fields (the message lists the valid ones),
        or invalid field values (the configuration's own validation).
    """
    if isinstance(spec, str):
        spec = {"name": spec}
    if isinstance(spec, Mapping):
        fields = dict(spec)
        if "name" not in fields:
            raise ValueError(
                f"`{name}` mapping needs a 'name' key, one of {sorted(REGISTRY)}; got keys "
                f"{sorted(fields)}."
            )
        key = fields.pop("name")
        if key not in REGISTRY:
            raise ValueError(
                f"`{name}`: unknown solver name {key!r}; valid names: {sorted(REGISTRY)}."
            )
        cls = REGISTRY[key]
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(fields) - set(valid))
        if unknown:
            raise ValueError(
                f"`{name}`: {cls.__name__} has no field(s) {unknown}; valid fields: {valid}."
            )
        return cls(**fields)
    return check_solver(spec, name)
