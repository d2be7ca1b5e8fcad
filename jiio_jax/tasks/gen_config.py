"""``config.model`` of the generative task: defaults, validation, and the objects built from it.

Every check raises ``ValueError`` naming the offending ``config.model.<field>``. See
``default_model_config`` for the schema; ``jiio_jax.tasks.generative`` for how it is used.
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

METHODS = ("jiio", "vae")
SOLVERS = ("anderson", "broyden")
BACKWARD_MODES = ("implicit", "one_step", "neumann", "phantom")
JAC_POINTS = ("trajectory", "equilibrium")
# MDEQConfig fields a config may override (image_shape comes from config.data).
MDEQ_FIELDS = tuple(f.name for f in dataclasses.fields(MDEQConfig) if f.name != "image_shape")
_TUPLE_FIELDS = ("channels", "head_channels")


def default_model_config() -> ml_collections.ConfigDict:
    """The full ``config.model`` schema with its defaults (the reference's ``celeba_vae``).

    Fields:
      method: ``"jiio"`` (decoder-only; latents found per sample by JIIO) or ``"vae"``
        (conv encoder + the same MDEQ decoder; ``jiio_jax.tasks.vae``).
      corruption: ``"none"`` (reconstruction), ``"inpaint"`` or ``"denoise"``
        (``jiio_jax.tasks.corruption``).
      hole: inpainting square side in pixels (reference 20 at 64x64; scale it for small images).
      noise_sigma: denoising noise std on the ``[-1, 1]`` scale (reference 0.2 or 0.4).
      arch: base architecture, a name in ``jiio_jax.models.configs.CONFIGS`` (e.g.
        ``"celeba_gen"``), or ``""`` to build it from ``mdeq`` alone (then ``mdeq.channels``
        and ``mdeq.latent_dim`` are required). The image shape always comes from
        ``config.data.image_size`` and ``config.data.channels``.
      mdeq: overrides of ``MDEQConfig`` fields (``None`` = keep the base's value), e.g.
        ``channels``, ``latent_dim``, ``expansion``, ``block_groups``, ``num_groups``,
        ``aux_groups``, ``dropout`` (decoder), ``cell_init_std``.
      jiio: the JIIO solver (``jiio_jax.jiio.JIIO``): ``max_steps`` (``T``), ``memory``,
        ``step_size`` and ``final_step_size`` (``None``: constant; else the reference's switch
        to it at ``max(50, 5T/8) - 1``), ``accelerator``, ``anderson_type``, ``mixing``,
        ``ridge``, ``z_damping``, ``mu_damping``, ``best_iterate``, ``trajectory_min_step``. The
        inner cost is a per-image *sum* of squared errors, so step sizes shrink as images grow.
      forward: the plain DEQ solver (VAE decoding, decoding samples): ``solver``
        (``"anderson"``/``"broyden"``), ``max_steps``, ``tol`` (relative), ``memory``.
      backward: the implicit backward of every equilibrium: ``mode`` (``"implicit"``,
        ``"one_step"``, ``"neumann"``, ``"phantom"``; the last two use ``max_steps`` as their
        ``k``), ``solver``, ``max_steps``, ``tol``, ``memory``, and ``warm_start`` (start the
        JIIO adjoint solve at ``mu* / (B C H W)``, the reference's warm start).
      latent_penalty: ``lambda`` of an optional prior term ``lambda ||x||^2`` added to JIIO's inner
        cost (reference: none, 0). Keeps the optimised latents near the origin, which makes the
        Gaussian fitted to them for sampling a better match (a regularised-autoencoder view).
        It adds curvature ``2 lambda`` to the input problem: keep ``step_size * lambda < 1``.
      jac_weight: weight of the Hutchinson Jacobian penalty (reference 2.0; 0 disables it).
      jac_point: JIIO: where the penalty is evaluated, ``"trajectory"`` (a uniformly drawn JIIO
        step, the reference's ``TRAJ_REG=true``) or ``"equilibrium"`` (``(z*, x*)``,
        ``TRAJ_REG=false``). The VAE always uses its equilibrium.
      jac_probes: Hutchinson probes (reference 2).
      vae: ``encoder_channels`` (stride-2 conv widths), ``groups`` (GroupNorm),
        ``dropout`` (encoder features; reference 0.3), ``kl_warmup_steps`` (KL weight
        ``min(step / kl_warmup_steps, 1)``).
      num_image_examples: reconstructions shown by ``images``.
      num_samples: samples drawn by ``images``.
      sample_ridge: JIIO samples: ridge added to the latents' covariance, relative to its mean
        eigenvalue.
    """
    mdeq = ml_collections.ConfigDict({name: None for name in MDEQ_FIELDS})
    return ml_collections.ConfigDict(
        {
            "method": "jiio",
            "corruption": "none",
            "hole": 20,
            "noise_sigma": 0.2,
            "arch": "celeba_gen",
            "mdeq": mdeq,
            "jiio": {
                "max_steps": 100,
                "memory": 40,
                "step_size": 0.01,
                "final_step_size": 0.003,
                "accelerator": "anderson",
                "anderson_type": "type1",
                "mixing": 1.0,
                "ridge": 1e-10,
                "z_damping": 0.8,
                "mu_damping": 0.6,
                "best_iterate": "cost_aware",
                "trajectory_min_step": 15,
            },
            "forward": {"solver": "anderson", "max_steps": 18, "tol": 1e-4, "memory": 5},
            "backward": {
                "mode": "implicit",
                "solver": "anderson",
                "max_steps": 18,
                "tol": 1e-4,
                "memory": 5,
                "warm_start": True,
            },
            "latent_penalty": 0.0,
            "jac_weight": 2.0,
            "jac_point": "trajectory",
            "jac_probes": 2,
            "vae": {
                "encoder_channels": (32, 64, 128, 256),
                "groups": 4,
                "dropout": 0.3,
                "kl_warmup_steps": 10_000,
            },
            "num_image_examples": 8,
            "num_samples": 16,
            "sample_ridge": 1e-3,
        }
    )


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


def build_mdeq_config(config: ml_collections.ConfigDict) -> MDEQConfig:
    """The decoder architecture: ``build_arch`` at the data's image shape."""
    cfg = build_arch(config, data_image_shape(config))
    if cfg.latent_dim is None:
        raise ValueError("config.model.mdeq.latent_dim must be set (the generator's latent size).")
    return cfg


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
