"""``config.model`` / ``config.eval`` of the adversarial task: schema, reading, the experiment
config (``digits_adv``) and the reference recipe (``mnist_adv``, ``cifar_adv``).

Library sections (``jiio``, ``forward``, ``backward``) splat into the library
(``jiio_jax.configs.common.splat``); task fields raise ``ValueError`` naming the offending
``config.model.<field>`` (or ``config.eval.<field>``). See ``default_model_config`` and
``default_eval_config`` for the schema; ``jiio_jax.tasks.adversarial`` for how it is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from jiio_jax.configs import common
from jiio_jax.configs.common import (
    SMALL_MDEQ,
    backward,
    build_arch,
    check_bool,
    check_choice,
    check_float,
    check_int,
    data_image_shape,
    deq_model_sections,
    make_small_loop,
    override_arch,
    solver,
    splat,
)
from jiio_jax.configs.common import experiment_config as base_experiment_config
from jiio_jax.jiio import JIIO
from jiio_jax.jiio.projections import NORMS
from jiio_jax.models.configs import MDEQConfig

METHODS = ("jiio", "pgd", "clean")
_CLASSIFIER_FIELDS = ("num_classes", "head_channels", "final_channels")


def default_model_config() -> ml_collections.ConfigDict:
    """The full ``config.model`` schema with its defaults (an L2 MNIST-like setting).

    Fields:
      method: ``"jiio"`` (inner maximisation by JIIO, outer CE at its equilibrium),
        ``"pgd"`` (PGD-k adversarial training: each attack step is a DEQ forward solve +
        implicit backward, then the outer step on ``x + delta`` with ``delta`` constant) or
        ``"clean"`` (standard training, no attack: the undefended model).
      norm: ``"l2"`` or ``"linf"``: the threat model's norm (per sample, over all pixels).
      epsilon: radius of the threat model **on the [0, 1] pixel scale** (as in the paper, whose
        MNIST/CIFAR inputs are in [0, 1]; reference 1.0 for L2). Images here are in [-1, 1],
        so the perturbation radius applied to them is ``2 * epsilon`` (the map
        ``[0, 1] -> [-1, 1]`` has slope 2 for every norm).
      epsilon_warmup_steps: training only: the radius grows linearly from
        ``epsilon / epsilon_warmup_steps`` to ``epsilon`` over the first
        ``epsilon_warmup_steps`` optimizer steps (0: no warm-up). Training from scratch against
        the full radius can collapse to the uniform prediction (digits: chance accuracy after
        100 JIIO steps at eps 0.5).
      clip_pixels: also keep ``x + delta`` inside the valid pixel range ``[-1, 1]``: the attacks
        then project onto the intersection of the ball and that box (exactly; see
        ``jiio_jax.jiio.BallBox``). ``False``: the ball only (the reference).
      arch: base classifier architecture, a name in ``jiio_jax.models.configs.CONFIGS`` (e.g.
        ``"mnist_cls"``, ``"cifar_cls"``, ``"tiny_cls"``) or ``""`` to build it from ``mdeq``
        alone (then ``mdeq.channels``, ``num_classes``, ``head_channels`` and
        ``final_channels`` are required). The image shape always comes from
        ``config.data.image_size`` and ``config.data.channels``.
      mdeq: overrides of ``MDEQConfig`` fields (``None`` = keep the base's value), e.g.
        ``channels``, ``head_channels``, ``final_channels``, ``expansion``, ``dropout``.
      jiio: the JIIO attack (training, and evaluation unless ``config.eval`` overrides):
        ``jiio_jax.jiio.JIIO(**jiio, normalize_step=True, step_scale=<radius step>,
        backward=<model.backward>)``, every field of the dataclass, ``None`` = its default.
        ``step_size`` and ``final_step_size`` (the reference's switch to it at
        ``max(50, 5T/8) - 1``) are **relative to the radius**: the L2 length of each normalised
        step is ``step_size * 2 * epsilon``, times ``sqrt(#pixels)`` for ``linf`` so that its
        RMS entry is ``step_size * 2 * epsilon``. ``accelerator="none"``: plain augmented
        iteration, ``"anderson"``: the reference (damping 0.8 / 0.6). Defaults: type-I
        Anderson (memory 5) on the undamped augmented map, ``0.8 * eps``, 40 steps. On an MDEQ
        (``configs/digits_adv.py``, undefended, eps 0.5, 300 test images; robust accuracy after
        re-solving, lower = stronger) PGD-20 gave 0.283; this JIIO 0.340 at 40 steps and 0.300
        at 80 (0.293 with ``final_step_size=0.2``), in 1/7 and 1/3 of PGD-20's time; the plain
        iteration (``accelerator="none"``), which matched PGD-20 on a small dense DEQ, only
        0.577 at 30 steps and 0.337 at 80 (its ``z`` lags the moving ``delta``: relative
        residual ~0.3 at the returned point vs ~0.02 with Anderson); the reference (memory 20,
        damping 0.8 / 0.6, 80 steps, 0.6 -> 0.2) 0.320.
      pgd: the PGD attack of ``method="pgd"`` training: ``steps`` (``k``), ``step_size``
        (relative to the radius: L2 steps ``delta += step_size * r * g / ||g||``, linf steps
        ``delta += step_size * r * sign(g)``), ``random_start`` (start from a uniform point of
        the ball; ``False``: from ``delta = 0``, the reference).
      forward: the plain DEQ solver (clean forward, PGD steps, evaluation re-solves), a
        ``jiio_jax.solvers.resolve`` section ``{"name": "anderson" | "broyden", **fields}``.
      backward: implicit backward of every equilibrium, a ``jiio_jax.deq.resolve_backward``
        section (``{"name": "implicit", "solver": {<solver section>}}``).
      warm_start: JIIO: start the implicit backward of ``z*`` at ``-mu* / B`` (the reference's
        warm start; exact up to evaluating at ``z*`` instead of ``f(z*)``).
      jac_weight: weight of the Hutchinson Jacobian penalty (reference 0.01; 0 disables it).
      jac_probes: Hutchinson probes (reference 2).
      jac_at_trajectory: JIIO: penalise at the trajectory sample ``(z_t, delta_t)``,
        ``t ~ U[trajectory_min_step, T - 1]`` (reference ``TRAJ_REG``); else at the returned
        equilibrium. PGD / clean training always use the equilibrium.
      num_image_examples: images shown by ``Task.images``.
    """
    return ml_collections.ConfigDict(
        {
            "method": "jiio",
            "norm": "l2",
            "epsilon": 1.0,
            "epsilon_warmup_steps": 0,
            "clip_pixels": True,
            **deq_model_sections(
                "mnist_cls",
                solver={"name": "anderson", "max_steps": 30, "tol": 1e-4, "memory": 5},
                jiio_fixed=("normalize_step",),
                max_steps=40,
                step_size=0.8,
                z_damping=1.0,
                mu_damping=1.0,
            ),
            "pgd": {"steps": 10, "step_size": 0.25, "random_start": False},
            "warm_start": True,
            "jac_weight": 0.01,
            "jac_probes": 2,
            "jac_at_trajectory": True,
            "num_image_examples": 8,
        }
    )


def default_eval_config() -> ml_collections.ConfigDict:
    """``config.eval``: the attacks of ``Task.evaluate`` (``None`` = the training value).

    Fields:
      epsilon: radius on the [0, 1] scale (``None``: ``config.model.epsilon``).
      pgd_steps: ``k`` of the PGD-k evaluation attack (default 20; e.g. 100 for a stronger
        check, 5x the time).
      pgd_step_size: relative to the radius (``None``: ``config.model.pgd.step_size``); 0.25
        beat 0.1 for PGD-20 on digits.
      pgd_random_start: bool.
      jiio_steps: ``T`` of the JIIO evaluation attack (``None``: ``config.model.jiio``; default
        80, about PGD-20's strength on digits, see ``default_model_config``).
      jiio_step_size: relative to the radius (``None``: ``config.model.jiio.step_size``).
    """
    return ml_collections.ConfigDict(
        {
            "epsilon": config_dict.placeholder(float),
            "pgd_steps": 20,
            "pgd_step_size": 0.25,
            "pgd_random_start": False,
            "jiio_steps": 80,
            "jiio_step_size": config_dict.placeholder(float),
        }
    )


@dataclasses.dataclass(frozen=True)
class PGDSettings:
    """A checked PGD attack: ``steps``, ``step_size`` (relative to the radius), ``random_start``."""

    steps: int
    step_size: float
    random_start: bool


def read_pgd(section: ml_collections.ConfigDict, where: str = "pgd") -> PGDSettings:
    return PGDSettings(
        steps=check_int(f"{where}.steps", section.steps, 1),
        step_size=check_float(f"{where}.step_size", section.step_size, positive=True),
        random_start=check_bool(f"{where}.random_start", section.random_start),
    )


def build_classifier_config(config: ml_collections.ConfigDict) -> MDEQConfig:
    """The classifier: ``gen_config.build_arch`` at the data's image shape."""
    cfg = build_arch(config, data_image_shape(config))
    for name in _CLASSIFIER_FIELDS:
        if getattr(cfg, name) is None:
            raise ValueError(f"config.model.mdeq.{name} must be set (a classifier field).")
    return cfg


@dataclasses.dataclass(frozen=True)
class AdversarialSettings:
    """Everything the task reads from the config, checked."""

    method: str
    norm: str
    epsilon: float
    epsilon_warmup_steps: int
    clip_pixels: bool
    arch: MDEQConfig
    forward: Any
    backward: Any
    warm_start: bool
    jiio: JIIO
    pgd: PGDSettings
    jac_weight: float
    jac_probes: int
    jac_at_trajectory: bool
    num_image_examples: int
    eval_epsilon: float
    eval_pgd: PGDSettings
    eval_jiio: JIIO
    failures: dict  # the model's and JIIO's failure policy (common.failure_policy)


def read_config(config: ml_collections.ConfigDict) -> AdversarialSettings:
    """Checks ``config.model`` and ``config.eval`` (defaults where ``config.eval`` is absent)."""
    if "model" not in config:
        raise ValueError("config.model is required by the adversarial task.")
    m = config.model
    method = check_choice("method", m.method, METHODS)
    norm = check_choice("norm", m.norm, NORMS)
    epsilon = check_float("epsilon", m.epsilon, positive=True)
    bwd = backward("model.backward", m.backward)
    failures = common.failure_policy(m)
    # Relative step sizes: the task sets step_scale to the radius step at each use.
    jiio = splat("model.jiio", JIIO, m.jiio, backward=bwd, normalize_step=True, **failures)
    pgd_settings = read_pgd(m.pgd)

    eval_epsilon, eval_pgd, eval_jiio = _read_eval(config, epsilon, m.pgd, jiio)

    return AdversarialSettings(
        method=method,
        norm=norm,
        epsilon=epsilon,
        epsilon_warmup_steps=check_int("epsilon_warmup_steps", m.epsilon_warmup_steps, 0),
        clip_pixels=check_bool("clip_pixels", m.clip_pixels),
        arch=build_classifier_config(config),
        forward=solver("model.forward", m.forward),
        backward=bwd,
        warm_start=check_bool("warm_start", m.warm_start),
        jiio=jiio,
        pgd=pgd_settings,
        jac_weight=check_float("jac_weight", m.jac_weight, positive=False),
        jac_probes=check_int("jac_probes", m.jac_probes, 1),
        jac_at_trajectory=check_bool("jac_at_trajectory", m.jac_at_trajectory),
        num_image_examples=check_int("num_image_examples", m.num_image_examples, 1),
        failures=failures,
        eval_epsilon=eval_epsilon,
        eval_pgd=eval_pgd,
        eval_jiio=eval_jiio,
    )


def _read_eval(
    config: ml_collections.ConfigDict,
    epsilon: float,
    pgd: ml_collections.ConfigDict,
    jiio: JIIO,
) -> tuple[float, PGDSettings, JIIO]:
    """``config.eval`` (absent fields: ``default_eval_config``; ``None``: the training value)."""
    ev = common.eval_section(config, default_eval_config())
    eval_epsilon = epsilon
    if ev["epsilon"] is not None:
        eval_epsilon = common.check_eval_float("epsilon", ev["epsilon"])
    pgd_size = pgd.step_size if ev["pgd_step_size"] is None else ev["pgd_step_size"]
    section = ml_collections.ConfigDict(
        {"steps": ev["pgd_steps"], "step_size": pgd_size, "random_start": ev["pgd_random_start"]}
    )
    try:
        eval_pgd = read_pgd(section)
    except ValueError as err:
        raise ValueError(str(err).replace("config.model.pgd.", "config.eval.pgd_")) from err
    changes = {}
    if ev["jiio_steps"] is not None:
        changes["max_steps"] = common.check_eval_int("jiio_steps", ev["jiio_steps"])
    if ev["jiio_step_size"] is not None:
        changes["step_size"] = common.check_eval_float("jiio_step_size", ev["jiio_step_size"])
    return eval_epsilon, eval_pgd, dataclasses.replace(jiio, **changes)


def experiment_config(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The loop's fields (``get_base_config``) with ``task="adversarial"``, ``data``,
    ``config.model`` / ``config.eval`` defaults and the reference optimiser (Adam 1e-3, cosine,
    no weight decay, no clipping)."""
    config = base_experiment_config("adversarial", data, default_model_config())
    config.eval = default_eval_config()
    return config


def reference_config(
    data: ml_collections.ConfigDict,
    *,
    arch: str,
    train_images: int,
    epochs: int,
    jac_at_trajectory: bool,
    batch_size: int = 96,
    epsilon: float = 1.0,
) -> ml_collections.ConfigDict:
    """The reference's ``*_cls.yaml`` adversarial-training recipe (``mnist_adv``,
    ``cifar_adv``): L2 ``epsilon`` on the [0, 1] scale, Jacobian penalty 0.01, batch 96,
    ``epochs`` epochs, evaluation and checkpoints once per epoch on 10 test batches."""
    config = experiment_config(data)
    steps_per_epoch = train_images // batch_size
    config.batch_size = batch_size
    config.eval_batch_size = batch_size
    config.num_eval_batches = 10
    config.num_train_steps = epochs * steps_per_epoch
    config.log_every = 50
    config.eval_every = steps_per_epoch
    config.checkpoint_every = steps_per_epoch
    m = config.model
    m.arch = arch
    m.norm = "l2"
    m.epsilon = epsilon
    m.jac_weight = 0.01
    m.jac_at_trajectory = jac_at_trajectory
    return config


def make_small(config: ml_collections.ConfigDict) -> None:
    """The ``:small`` CPU variant in place: a one-branch 4-channel MDEQ, batch 4, 4 steps,
    2-6 solver / attack steps. For smoke tests of the whole pipeline; nothing is learnt."""
    make_small_loop(config, num_train_steps=4)
    m = config.model
    override_arch(m, **SMALL_MDEQ, num_classes=10, head_channels=(2,), final_channels=8)
    m.jiio.update(max_steps=4, memory=2, trajectory_min_step=1)
    m.pgd.steps = 2
    m.forward.update(max_steps=6, memory=2)
    m.backward.solver.update(max_steps=6, memory=2)
    m.num_image_examples = 4
    m.epsilon_warmup_steps = min(m.epsilon_warmup_steps, 2)
    config.eval.update(pgd_steps=2, jiio_steps=4)
