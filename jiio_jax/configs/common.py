"""Pieces every experiment config shares: the training loop's fields, ``config.data``, the
reference optimiser, the ``:small`` loop, and the one way a config section reaches the library.

A section splats into the library's own dataclass (``splat("model.jiio", jiio.JIIO,
config.model.jiio)``; solvers and backward modes through their registries): the defaults and the
validation are the library's, and its error is re-raised once as
``config.model.<path>: <the library's message>``. Task-level fields (``method``, ``jac_weight``,
...) have no library class; the tasks check them with ``check_*``.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Callable
from typing import Any

import ml_collections
from ml_collections import config_dict

from jiio_jax import deq, solvers
from jiio_jax.jiio import JIIO
from jiio_jax.models.configs import CONFIGS, MDEQConfig

_TUPLE_FIELDS = ("channels", "head_channels")


def get_base_config() -> ml_collections.ConfigDict:
    """Defaults for every field read by :func:`jiio_jax.train.train_and_evaluate`."""
    config = ml_collections.ConfigDict()
    config.task = ""  # Registered task name (jiio_jax.tasks.get_task).
    config.seed = 0  # Seeds init, per-step rngs (fold_in(rng, step)) and the data order.
    config.batch_size = 64  # Global train batch; divisible by devices and processes.
    config.eval_batch_size = 64  # Global eval batch; same divisibility.
    config.num_train_steps = 1000
    config.log_every = 50  # Train metrics are fetched (one host sync) and logged this often.
    config.eval_every = 500  # Also evaluated at the last step.
    config.checkpoint_every = 500  # Also saved at the last step.
    config.keep_checkpoints = 2  # Most recent checkpoints kept.
    config.num_eval_batches = 10  # Eval batches of the test split (fewer if it is smaller).
    config.tensorboard = True  # Also TensorBoard events in <workdir>/tensorboard (if tensorboardX).
    config.num_devices = 0  # 0 = all devices; n = the first n (single-process only).
    # Up to this many consecutive train steps whose loss or gradient is non-finite (e.g. a rare
    # failed DEQ solve under model.on_failure="nan") are skipped: parameters, optimizer state
    # and example cache kept, a warning logged, train/skipped_steps counted; one more stops the
    # run. 0: stop at the first.
    config.max_skipped_steps = 3

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "adam"  # "adam" | "adamw" | "sgd" (sgd: momentum = b1).
    config.optim.lr = 1e-3  # Peak learning rate.
    config.optim.b1 = 0.9
    config.optim.b2 = 0.999
    config.optim.weight_decay = 0.0  # adamw: decoupled; adam/sgd: L2 on kernels (ndim > 1).
    config.optim.schedule = "cosine"  # "cosine" (to 0 at num_train_steps) | "constant".
    config.optim.warmup_steps = 0  # Linear warm-up from 0.
    config.optim.grad_clip_norm = 0.0  # Global-norm clipping; 0 = off.

    config.data = ml_collections.ConfigDict()  # Passed to jiio_jax.data (see its docs).
    config.data.name = "digits"
    config.data.image_size = 8
    config.data.channels = 1
    return config


def experiment_config(
    task: str, data: ml_collections.ConfigDict, model: ml_collections.ConfigDict
) -> ml_collections.ConfigDict:
    """``get_base_config()`` with ``task``, ``data``, ``model`` and the reference optimiser of
    every JIIO experiment: Adam 1e-3 with cosine decay, no warm-up, no weight decay (the
    reference passes one and its Adam path ignores it), no clipping (its ``CLIP = -1``)."""
    config = get_base_config()
    config.task = task
    config.data = data
    config.model = model
    config.optim.update(
        name="adam",
        lr=1e-3,
        b1=0.9,
        b2=0.999,
        weight_decay=0.0,
        schedule="cosine",
        warmup_steps=0,
        grad_clip_norm=0.0,
    )
    return config


def data_config(**fields) -> ml_collections.ConfigDict:
    """``config.data`` of image datasets with every field the loaders read
    (``jiio_jax.data.config``)."""
    data = ml_collections.ConfigDict(
        {
            "name": "digits",
            "path": "",
            "tfds_name": "",
            "image_size": 8,
            "channels": 1,
            "crop": 0,
            "flip": False,
            "num_workers": 0,
            "seed": 0,
        }
    )
    data.update(fields)
    return data


def make_small_loop(config: ml_collections.ConfigDict, num_train_steps: int) -> None:
    """The loop fields every ``:small`` smoke variant shares, in place: batch 4, one eval batch,
    log every step, eval and checkpoint every 2 steps, one checkpoint kept."""
    config.batch_size = 4
    config.eval_batch_size = 4
    config.num_train_steps = num_train_steps
    config.log_every = 1
    config.eval_every = 2
    config.checkpoint_every = 2
    config.keep_checkpoints = 1
    config.num_eval_batches = 1


def override_arch(model: ml_collections.ConfigDict, arch: str = "", **mdeq_fields: Any) -> None:
    """Sets ``model.arch`` and clears every ``model.mdeq`` override, then sets ``mdeq_fields``
    (with ``arch=""`` they define the whole architecture)."""
    model.arch = arch
    for field in model.mdeq:
        model.mdeq[field] = None
    model.mdeq.update(mdeq_fields)


# The ``:small`` variants' one-branch, 4-channel MDEQ (``override_arch(m, **SMALL_MDEQ, ...)``
# plus the task's own fields).
SMALL_MDEQ = {"channels": (4,), "expansion": 1, "block_groups": 2, "num_groups": 2, "aux_groups": 2}


# -- reading: config sections splat into the library's dataclasses ---------------------------
# What a failed equilibrium / adjoint solve does in the training tasks (MDEQ models and JIIO):
# ``config.model.on_failure`` (default "nan": NaN value and gradients, so the loop's non-finite
# check stops the run naming the step instead of training on a wrong gradient) and
# ``config.model.failure_ratio``: a solve that ends at MAX_STEPS counts as failed above
# ``failure_ratio`` x its solver's tol (see jiio_jax.deq.fixed_point). Training solves run on a
# fixed budget and stop short of tol as a matter of course (the :small configs' 6-step solvers
# end their adjoints at up to 9e-3 with tol 1e-4), so the tasks count a solve as failed when
# it has not reached a relative residual of FAILURE_RESIDUAL = 0.1 (no correct digit): ratio
# 1000 at tol 1e-4 (generative, adversarial), 1e4 at the meta task's 1e-5. With ratio 1000 at
# 1e-5, digits_meta skipped 18 of its 300 train steps (3 in a row once); with 1e4, 1 to step 100.
FAILURE_RESIDUAL = 0.1
FAILURE_DEFAULTS = {"on_failure": "nan"}  # with failure_ratio_for(the solver's tol)


def failure_policy(model: Any) -> dict[str, Any]:
    """``{"on_failure": ..., "failure_ratio": ...}`` from ``config.model`` (checked), for the
    task's MDEQ model and its JIIO."""
    on_failure = check_choice("on_failure", model.on_failure, deq.ON_FAILURE)
    ratio = check_float("failure_ratio", model.failure_ratio, positive=True)
    if ratio < 1:
        raise ValueError(f"config.model.failure_ratio must be >= 1, got {ratio!r}.")
    return {"on_failure": on_failure, "failure_ratio": ratio}


def deq_model(model_cls: type, arch: Any, section: Any, backward: Any) -> Any:
    """``model_cls(arch, solver=<section.forward>, backward=backward, **failure_policy)``:
    a task's MDEQ model from its ``config.model`` section."""
    forward = solver("model.forward", section.forward)
    return model_cls(arch, solver=forward, backward=backward, **failure_policy(section))


def library_section(cls: type, *, exclude: tuple[str, ...] = (), **values: Any):
    """A config section holding every field of the library dataclass ``cls`` (but ``exclude``):
    ``values`` where given, else a typed ``None`` placeholder that :func:`splat` leaves to the
    library's default. The defaults stay in ``cls`` alone; the placeholders make every field
    settable on the command line (``--config.model.jiio.z_damping=0.5``)."""
    hints = typing.get_type_hints(cls)
    section = ml_collections.ConfigDict()
    for field in dataclasses.fields(cls):
        if field.name in exclude:
            continue
        if _is_scalar(field.default):
            section[field.name] = config_dict.placeholder(_scalar_type(hints[field.name]))
        else:  # An object default (e.g. a solver): set it in a config file, as a mapping.
            section[field.name] = None
    unknown = sorted(set(values) - set(section))
    if unknown:
        raise ValueError(f"{cls.__name__} section: unknown fields {unknown}.")
    section.update(values)
    return section


def _is_scalar(default: Any) -> bool:
    """Whether a field's default is a command-line value (or there is none)."""
    return (
        default is dataclasses.MISSING
        or default is None
        or isinstance(default, bool | int | float | str | tuple)
    )


def _scalar_type(annotation: Any) -> type:
    """The command-line type of a field: ``int`` for ``int | None``, ``tuple`` for
    ``tuple[int, ...]``, ``float`` for ``Any`` or a union with a float (e.g. ``JIIO.tol``)."""
    options = [annotation]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(annotation) if a is not type(None)]
    for kind in (bool, int, float, str):
        if kind in options:
            return kind
    origin = typing.get_origin(options[0])
    return origin if origin in (tuple, list) else float


def splat(path: str, factory: Callable, section: Any, **fields: Any) -> Any:
    """``factory(**section, **fields)``: the section's ``None`` fields are left to the library's
    defaults, ``fields`` are the ones the task sets itself. The library validates; its error is
    re-raised once as ``config.<path>: <the library's message>``.

    Args:
      path: the section's place in the config, e.g. ``"model.jiio"``.
      factory: the library's dataclass (``jiio.JIIO``) or resolver (``solvers.resolve``).
      section: a ``ConfigDict`` or mapping.
      fields: values the task supplies (e.g. the resolved ``backward``); the section may not
        set them too.
    """
    given = section.to_dict() if hasattr(section, "to_dict") else dict(section)
    kwargs = {k: v for k, v in given.items() if v is not None}
    clash = sorted(set(kwargs) & set(fields))
    if clash:
        raise ValueError(f"config.{path}.{clash[0]} is set by the task; remove it from the config.")
    try:
        return factory(**kwargs, **fields)
    except (TypeError, ValueError) as err:
        # A bad config value, whichever the library raised (e.g. TypeError: unknown field).
        raise ValueError(f"config.{path}: {err}") from err


def solver(path: str, section: Any) -> Any:
    """A solver from a section ``{"name": "anderson" | "broyden" | "fixed_point_iteration",
    **fields}`` (``jiio_jax.solvers.resolve``)."""
    return splat(path, lambda **spec: solvers.resolve(spec), section)


def backward(path: str, section: Any) -> Any:
    """A backward mode from a section ``{"name": "implicit" | "one_step" | "neumann" |
    "phantom", **fields}``, ``implicit``'s ``solver`` a solver section
    (``jiio_jax.deq.resolve_backward``)."""
    return splat(path, lambda **spec: deq.resolve_backward(spec), section)


def check_choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"config.model.{field}={value!r} must be one of {choices}.")
    return value


def check_int(field: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"config.model.{field}={value!r} must be an int >= {minimum}.")
    return int(value)


def check_float(field: str, value: Any, *, positive: bool) -> float:
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    ok = ok and (value > 0 if positive else value >= 0) and value != float("inf")
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"config.model.{field}={value!r} must be a finite float {bound}.")
    return float(value)


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"config.model.{field}={value!r} must be a bool.")
    return value


def eval_section(
    config: ml_collections.ConfigDict, defaults: ml_collections.ConfigDict
) -> dict[str, Any]:
    """``config.eval`` with ``defaults`` for its absent fields (a run recorded before a field
    existed keeps working); an unknown field is an error naming the known ones."""
    given = config.get("eval") or {}
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ValueError(f"config.eval has unknown fields {unknown}; known: {sorted(defaults)}.")
    return {k: given[k] if k in given else defaults[k] for k in defaults}


def check_eval_int(field: str, value: Any) -> int:
    """``config.eval.<field>``: an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"config.eval.{field}={value!r} must be an int >= 1.")
    return int(value)


def check_eval_float(field: str, value: Any) -> float:
    """``config.eval.<field>``: a finite float > 0."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
    if not (ok and 0 < value < float("inf")):
        raise ValueError(f"config.eval.{field}={value!r} must be a finite float > 0.")
    return float(value)


def data_image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """``(data.image_size, data.image_size, data.channels)``, checked."""
    image_shape = []
    for field in ("image_size", "image_size", "channels"):
        value = config.data[field]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"config.data.{field}={value!r} must be a positive int.")
        image_shape.append(int(value))
    return tuple(image_shape)


def mdeq_section(*fixed: str) -> ml_collections.ConfigDict:
    """``config.model.mdeq``: a typed ``None`` placeholder per ``MDEQConfig`` field but
    ``image_shape`` and the task's ``fixed`` ones (overrides of ``model.arch``)."""
    return library_section(MDEQConfig, exclude=("image_shape", *fixed))


# JIIO fields no config section holds: every task passes them itself (``backward`` built from
# ``model.backward``, the ``failure_policy`` of ``model``, ``step_scale`` where it has one).
JIIO_TASK_FIELDS = ("backward", "step_scale", "on_failure", "failure_ratio")


# The training recipes run JIIO as the reference does: from the given (z0, x0), without the
# library's start guard (``JIIO.start`` / ``no_worse_than_start``). The guard's start solve is
# one forward solve per example per step, the recipes' step sizes are tuned (no blow-up), and a
# few-step attack (the adversarial ``:small`` configs) would often be guarded back to x0.
REFERENCE_START = {"start": "given", "no_worse_than_start": False}


def deq_model_sections(
    arch: str,
    solver: dict[str, Any],
    *,
    mdeq_fixed: tuple[str, ...] = (),
    jiio_fixed: tuple[str, ...] = (),
    **jiio: Any,
) -> dict[str, Any]:
    """The ``config.model`` fields every task's defaults share: ``arch``, ``mdeq``
    (``mdeq_section(*mdeq_fixed)``), ``jiio`` (``library_section(JIIO, ...)`` with ``jiio``'s
    values, without ``JIIO_TASK_FIELDS`` and ``jiio_fixed``), and ``forward`` / ``backward``
    (implicit) sections on copies of one ``solver`` section."""
    return {
        "arch": arch,
        "mdeq": mdeq_section(*mdeq_fixed),
        "jiio": library_section(
            JIIO, exclude=(*JIIO_TASK_FIELDS, *jiio_fixed), **{**REFERENCE_START, **jiio}
        ),
        "forward": dict(solver),
        "backward": {"name": "implicit", "solver": dict(solver)},
        **FAILURE_DEFAULTS,
        "failure_ratio": failure_ratio_for(solver["tol"]),
    }


def failure_ratio_for(tol: float) -> float:
    """The ``failure_ratio`` at which a solve with tolerance ``tol`` fails when it has not
    reached a relative residual of ``FAILURE_RESIDUAL`` (at least 1)."""
    return max(1.0, round(FAILURE_RESIDUAL / tol, 6))


def build_arch(
    config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], **fixed: Any
) -> MDEQConfig:
    """``CONFIGS[model.arch]`` (or a fresh ``MDEQConfig`` when ``arch`` is '') with the
    ``model.mdeq`` overrides, for every task.

    ``image_shape`` and the ``fixed`` fields (e.g. the meta task's ``n_way``) come from the
    caller, so ``model.mdeq`` may not set them.
    """
    m = config.model
    overrides = {k: v for k, v in m.mdeq.items() if v is not None}
    for name in _TUPLE_FIELDS:
        if name in overrides:
            overrides[name] = tuple(overrides[name])
    if m.arch and m.arch not in CONFIGS:
        raise ValueError(
            f"config.model.arch={m.arch!r} is not an MDEQ config; choose one of "
            f"{sorted(CONFIGS)} or '' (explicit config.model.mdeq fields)."
        )
    if not m.arch and "channels" not in overrides:
        raise ValueError("config.model.arch='' needs config.model.mdeq.channels.")
    factory = CONFIGS[m.arch].replace if m.arch else MDEQConfig
    return splat(
        f"model.mdeq (arch {m.arch!r})", factory, overrides, image_shape=image_shape, **fixed
    )
