"""The task interface the training loop drives, and the task registry.

A task owns the model and the losses; the training loop (``jiio_jax.train``) owns the
optimizer, sharding, checkpoints, metrics and data. Every method is a pure function of
explicit arrays so the loop can ``jax.jit`` it over a ``('data',)`` mesh: batches arrive as a
dict of global arrays sharded on their leading axis, parameters are replicated.

Batches are dicts with at least ``"image"``: float32 ``[B, H, W, C]`` in ``[-1, 1]`` and
``"label"``: int32 ``[B]`` (see ``jiio_jax.data``).
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import ml_collections

from jiio_jax import data as data_lib

PyTree = Any
Metrics = dict[str, jax.Array]


class InnerProblem(NamedTuple):
    r"""A task's inner problem for a batch, in ``jiio_jax.jiio.solve``'s convention.

    For each example ``b``: :math:`\min_{x \in S_b} \mathrm{cost}(z^*, x, *\mathrm{args}_b)`
    s.t. :math:`z^* = f(z^*, x, *\mathrm{args}_b)`. ``f`` and ``cost`` are per example; ``args``
    and ``projection`` carry a leading batch axis (vmap them), ``z0`` and ``x0`` do not. So every
    inner solver (JIIO, inner Adam, PGD, projected Adam) runs on the same problem::

        jax.vmap(lambda a, p: jiio.solve(f, cost, z0, x0, *a, solver=..., projection=p))(
            args, projection)

    Attributes:
      f: ``f(z, x, *args) -> z``.
      cost: ``cost(z, x, *args) -> []``.
      z0, x0: the starting state and input of one example.
      args: tuple of batched arguments (parameters are broadcast along the batch axis).
      projection: a batched projection onto each example's feasible set, or ``None``.
    """

    f: Callable
    cost: Callable
    z0: PyTree
    x0: PyTree
    args: tuple
    projection: Any


class Task(abc.ABC):
    """One experiment family (generative, inverse problem, adversarial, meta-learning).

    Constructed once from the full config: ``task = get_task(config.task)(config)``.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    @abc.abstractmethod
    def init_params(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """Returns the trainable parameters (a pytree of arrays); ``batch`` gives shapes."""

    @abc.abstractmethod
    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        """Training loss (a scalar, the mean over the global batch) and scalar metrics.

        Differentiated w.r.t. ``params`` by the loop. ``step`` is the int32 optimizer step
        (for schedules such as the VAE's KL warm-up). Metrics are scalars (batch means),
        e.g. ``{"mse": ..., "jac_loss": ..., "solver_steps": ..., "residual": ...}``.
        """

    @abc.abstractmethod
    def evaluate(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> Metrics:
        """Per-example evaluation metrics, each ``[B]`` (the loop averages over batches).

        E.g. ``{"psnr": ..., "mse": ...}``; eval mode (no dropout).
        """

    def images(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, Any]:
        """Image grids to save at eval, ``images/<name>_<step>.png``: name -> ``[N, H, W, C]``
        in ``[0, 1]`` (a grid) or a :class:`jiio_jax.plotting.ImagePanel` (labelled groups).
        Optional."""
        del params, batch, rng
        return {}

    def inner_problem(self, params: PyTree, batch: dict[str, jax.Array]) -> InnerProblem:
        """The inner problem of ``batch`` (eval mode): ``(f, cost, z0, x0, args, projection)``.

        What training solves inside ``loss`` (there with training-only extras such as dropout
        masks), what the evaluations re-solve and the benchmarks time. Tasks without an inner
        optimisation raise ``NotImplementedError``.
        """
        del params, batch
        raise NotImplementedError(f"{type(self).__name__} has no inner problem.")

    # -- amortized inference: a per-example cache the loop carries across epochs ----------------
    def example_cache(self, num_examples: int) -> PyTree | None:
        """The initial per-example cache (arrays with leading axis ``num_examples``, row ``i``
        for the training example of index ``batch["index"] == i``), or ``None`` (the default:
        no cache; the loop then calls :meth:`loss`). With a cache the loop shards it with the
        data, saves it in every checkpoint and calls :meth:`cached_loss` instead."""
        del num_examples
        return None

    def cached_loss(
        self,
        params: PyTree,
        batch: dict[str, jax.Array],
        entries: PyTree,
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, tuple[Metrics, PyTree]]:
        """:meth:`loss` given the batch's cache ``entries`` (the cache's rows at
        ``batch["index"]``, leading axis ``B``); returns ``(loss, (metrics, new_entries))``,
        which the loop writes back at the same rows. Only tasks whose :meth:`example_cache` is
        not ``None`` implement it."""
        del params, batch, entries, rng, step
        raise NotImplementedError(f"{type(self).__name__} has no example cache.")

    # -- data: the training loop reads the task's data through these two -------------------------
    def dataset_info(self) -> Any:
        """Shapes and sizes of the data (the loop reads ``image_shape`` and ``num_test``);
        by default ``jiio_jax.data.dataset_info(config.data)``."""
        return data_lib.dataset_info(self.config.data)

    def make_iterator(self, split: str, batch_size: int, **kwargs: Any):
        """Batches of ``split`` (dicts with an ``"image"`` array, leading axis the batch);
        ``kwargs`` as ``jiio_jax.data.make_iterator`` (``seed``, ``shuffle``, ``repeat``,
        ``drop_remainder``, ``process_index``, ``process_count``). By default
        ``jiio_jax.data.make_iterator`` on ``config.data``; a task with other batches
        (meta-learning episodes) overrides both hooks."""
        return data_lib.make_iterator(self.config.data, split, batch_size, **kwargs)


_REGISTRY: dict[str, Callable[[ml_collections.ConfigDict], Task]] = {}


def register_task(name: str):
    """Class decorator: ``@register_task("generative")`` makes ``config.task = "generative"``
    select the class."""

    def wrap(cls):
        if name in _REGISTRY:
            raise ValueError(f"Task {name!r} is already registered.")
        _REGISTRY[name] = cls
        return cls

    return wrap


def get_task(name: str) -> Callable[[ml_collections.ConfigDict], Task]:
    """Returns the task class registered as ``name`` (ValueError listing the known ones)."""
    # Importing the package registers the built-in tasks.
    import jiio_jax.tasks  # noqa: F401

    if name not in _REGISTRY:
        raise ValueError(f"Unknown config.task {name!r}; registered tasks: {sorted(_REGISTRY)}.")
    return _REGISTRY[name]
