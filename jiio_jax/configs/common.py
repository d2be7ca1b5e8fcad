"""Pieces every experiment config shares: the training loop's fields, ``config.data``, the
reference optimiser, the ``:small`` loop, and the readers of the shared ``config.model``
sections (architecture, solvers, backward, JIIO).

Reading errors are ``ValueError`` naming the offending ``config.<section>.<field>``.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import ml_collections

from jiio_jax.deq import Implicit, Neumann, OneStep, Phantom
from jiio_jax.jiio import JIIO, Piecewise
from jiio_jax.models.configs import CONFIGS, MDEQConfig
from jiio_jax.solvers import Anderson, Broyden

SOLVERS = ("anderson", "broyden")
BACKWARD_MODES = ("implicit", "one_step", "neumann", "phantom")
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


# -- reading ----------------------------------------------------------------------------------
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


def data_image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    """``(data.image_size, data.image_size, data.channels)``, checked."""
    image_shape = []
    for field in ("image_size", "image_size", "channels"):
        value = config.data[field]
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"config.data.{field}={value!r} must be a positive int.")
        image_shape.append(int(value))
    return tuple(image_shape)


def build_arch(
    config: ml_collections.ConfigDict, image_shape: tuple[int, int, int], **fixed: Any
) -> MDEQConfig:
    """``CONFIGS[model.arch]`` (or a fresh ``MDEQConfig`` when ``arch`` is '') with the
    ``model.mdeq`` overrides, for every task.

    ``image_shape`` and the ``fixed`` fields (e.g. the meta task's ``n_way``) come from the
    caller, so ``model.mdeq`` may not set them.
    """
    m = config.model
    allowed = tuple(
        f.name for f in dataclasses.fields(MDEQConfig) if f.name not in ("image_shape", *fixed)
    )
    overrides = {k: v for k, v in m.mdeq.items() if v is not None}
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise ValueError(
            f"config.model.mdeq has unknown fields {unknown}; MDEQConfig fields: {allowed}."
        )
    for name in _TUPLE_FIELDS:
        if name in overrides:
            overrides[name] = tuple(overrides[name])
    try:
        if m.arch:
            if m.arch not in CONFIGS:
                raise ValueError(
                    f"config.model.arch={m.arch!r} is not an MDEQ config; choose one of "
                    f"{sorted(CONFIGS)} or '' (explicit config.model.mdeq fields)."
                )
            return CONFIGS[m.arch].replace(image_shape=image_shape, **fixed, **overrides)
        if "channels" not in overrides:
            raise ValueError("config.model.arch='' needs config.model.mdeq.channels.")
        return MDEQConfig(image_shape=image_shape, **fixed, **overrides)
    except (TypeError, ValueError) as err:
        if str(err).startswith("config."):
            raise
        raise ValueError(f"config.model.mdeq (arch {m.arch!r}): {err}") from err


def build_solver(section: ml_collections.ConfigDict, where: str) -> Anderson | Broyden:
    """Anderson / Broyden from ``config.model.<where>`` (``solver``, ``max_steps``, ``tol``,
    ``memory``)."""
    name = check_choice(f"{where}.solver", section.solver, SOLVERS)
    kwargs = {
        "max_steps": check_int(f"{where}.max_steps", section.max_steps, 1),
        "tol": check_float(f"{where}.tol", section.tol, positive=True),
        "memory": check_int(f"{where}.memory", section.memory, 1),
    }
    return Anderson(**kwargs) if name == "anderson" else Broyden(**kwargs)


def build_backward(section: ml_collections.ConfigDict) -> Any:
    """The ``jiio_jax.deq`` backward mode from ``config.model.backward``."""
    mode = check_choice("backward.mode", section.mode, BACKWARD_MODES)
    solver = build_solver(section, "backward")
    if mode == "implicit":
        return Implicit(solver=solver)
    if mode == "one_step":
        return OneStep()
    if mode == "neumann":
        return Neumann(k=solver.max_steps)
    return Phantom(k=solver.max_steps)


def build_jiio(section: ml_collections.ConfigDict, backward: Any) -> JIIO:
    """The ``JIIO`` solver configuration from ``config.model.jiio``."""
    alpha = check_float("jiio.step_size", section.step_size, positive=True)
    final = section.final_step_size
    if final is not None:
        step_size = Piecewise((alpha, check_float("jiio.final_step_size", final, positive=True)))
    else:
        step_size = alpha
    try:
        return JIIO(
            step_size=step_size,
            max_steps=check_int("jiio.max_steps", section.max_steps, 1),
            accelerator=section.accelerator,
            anderson_type=section.anderson_type,
            memory=check_int("jiio.memory", section.memory, 1),
            mixing=section.mixing,
            ridge=section.ridge,
            z_damping=section.z_damping,
            mu_damping=section.mu_damping,
            best_iterate=section.best_iterate,
            trajectory_min_step=check_int(
                "jiio.trajectory_min_step", section.trajectory_min_step, 0
            ),
            backward=backward,
        )
    except ValueError as err:
        if str(err).startswith("config."):
            raise
        raise ValueError(f"config.model.jiio: {err}") from err
