"""``config.model`` of the meta-learning task: defaults, validation, the objects built from it.

Every check raises ``ValueError`` naming the offending ``config.model.<field>`` (or
``config.data.<field>``). Solver sections share their schema and builders with the other tasks
(``jiio_jax.configs.common``). See ``default_model_config`` for the fields and
``jiio_jax.tasks.meta`` for how they are used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections
from ml_collections import config_dict

from jiio_jax.configs.common import (
    SMALL_MDEQ,
    build_arch,
    check_choice,
    check_eval_int,
    check_float,
    check_int,
    deq_model_sections,
    eval_section,
    make_small_loop,
    override_arch,
    solver,
)
from jiio_jax.configs.common import experiment_config as base_experiment_config
from jiio_jax.jiio import JIIO
from jiio_jax.models.configs import MDEQConfig

METHODS = ("jiio", "projected_adam")


def default_model_config() -> ml_collections.ConfigDict:
    """The full ``config.model`` schema with its defaults (the reference's ``omniglot_imaml``).

    Fields:
      method: inner solver of training, ``"jiio"`` (augmented DEQ over the support states,
        the context ``v`` and their adjoints, Type-II Anderson) or ``"projected_adam"`` (Adam
        on ``v``, each step a warm-started forward and adjoint solve; reference §1.10).
      eval_methods: inner solvers ``evaluate`` runs on every episode (each reports its own
        ``*_<method>`` metrics), by default both.
      arch: base architecture, a name in ``jiio_jax.models.configs.CONFIGS`` (e.g.
        ``"omniglot_meta"``), or ``""`` to build it from ``mdeq`` alone (then ``mdeq.channels``
        and ``mdeq.context_dim`` are required). The image shape comes from
        ``config.data.image_size`` and ``n_way`` from ``config.data.n_way``.
      mdeq: overrides of ``MDEQConfig`` fields (``None`` = keep the base's), e.g.
        ``context_dim``, ``meta_pool`` (must not exceed the smallest branch's resolution),
        ``channels``, ``expansion``.
      context_l2: ``lam`` of the inner cost ``n_way * S * (mean_i CE_i + lam * mean_k v_k^2)``
        over the ``S`` support examples (the reference's scaling, ``lam = 1``).
      jiio: ``jiio_jax.jiio.JIIO(**jiio, backward=<model.backward>)`` (every field of the
        dataclass, ``None`` = its default); reference ``T = 100``, memory 10, ``alpha`` 0.04 ->
        0.01 at step 61, Type-II Anderson.
      adam: the projected-Adam inner loop: ``num_steps`` (20), ``learning_rate`` (0.1), and
        ``solver``, the solver section of its warm-started forward and adjoint solves
        (reference: Broyden capped at 20 iterations).
      forward: solver section of the query equilibrium with ``v*`` fixed (reference: Broyden,
        ``F_THRES = 18``).
      backward: backward section of the query equilibrium (``{"name": "implicit", "solver":
        {...}}``), started from zero as in the reference.
      jac_weight: weight of the Hutchinson Jacobian penalty, evaluated at the inner solve's
        trajectory sample (JIIO) or final support equilibrium (projected Adam), plus at the
        query equilibrium (reference 0.5; 0 disables it).
      jac_probes: Hutchinson probes (reference 2).
    """
    return ml_collections.ConfigDict(
        {
            "method": "jiio",
            "eval_methods": ("jiio", "projected_adam"),
            **deq_model_sections(
                "omniglot_meta",
                solver={"name": "broyden", "max_steps": 18, "tol": 1e-5, "memory": 18},
                mdeq_fixed=("n_way",),
                max_steps=100,
                memory=10,
                step_size=0.04,
                final_step_size=0.01,
                anderson_type="type2",
            ),
            "context_l2": 1.0,
            "adam": {
                "num_steps": 20,
                "learning_rate": 0.1,
                "solver": {"name": "broyden", "max_steps": 20, "tol": 1e-5, "memory": 20},
            },
            "jac_weight": 0.5,
            "jac_probes": 2,
        }
    )


def default_eval_config() -> ml_collections.ConfigDict:
    """``config.eval``: the inner solve of meta-testing (``None`` = the training value).

    Fields:
      jiio_steps: ``T`` of the JIIO inner solve when meta-testing (``Task.evaluate``, in the
        loop and in ``experiments/evaluate.py --task=meta``); ``None``: ``model.jiio.max_steps``.
        The step-size schedule follows ``T`` (``final_step_size`` from step
        ``max(50, 5 T / 8)``, the reference's rule).
    """
    return ml_collections.ConfigDict({"jiio_steps": config_dict.placeholder(int)})


def eval_jiio(config: ml_collections.ConfigDict, trained: JIIO) -> JIIO:
    """The meta-test JIIO: ``trained`` (``model.jiio``) with ``config.eval``'s changes."""
    ev = eval_section(config, default_eval_config())
    if ev["jiio_steps"] is None:
        return trained
    return dataclasses.replace(trained, max_steps=check_eval_int("jiio_steps", ev["jiio_steps"]))


def check_methods(value: Any) -> tuple[str, ...]:
    """``model.eval_methods``: a non-empty tuple of distinct ``METHODS``."""
    if isinstance(value, str) or not isinstance(value, tuple | list) or not value:
        raise ValueError(
            f"config.model.eval_methods={value!r} must be a non-empty tuple of {METHODS}."
        )
    methods = tuple(check_choice(f"eval_methods[{i}]", m, METHODS) for i, m in enumerate(value))
    if len(set(methods)) != len(methods):
        raise ValueError(f"config.model.eval_methods={value!r} repeats a method.")
    return methods


def build_meta_arch(config: ml_collections.ConfigDict, image_size: int, n_way: int) -> MDEQConfig:
    """``CONFIGS[model.arch]`` with ``model.mdeq`` overrides, images ``[S, S, 1]`` and
    ``n_way`` classes; checks that the meta head's pooling fits every branch."""
    cfg = build_arch(config, (image_size, image_size, 1), n_way=n_way)
    if cfg.context_dim is None:
        raise ValueError("config.model.mdeq.context_dim must be set (the task context size).")
    if cfg.dropout:
        raise ValueError(
            f"config.model.mdeq.dropout={cfg.dropout} must be 0: the meta learner has no "
            "dropout (the reference's omniglot config uses none)."
        )
    smallest = image_size // 2 ** (cfg.num_branches - 1)
    if cfg.meta_pool > smallest:
        raise ValueError(
            f"config.model.mdeq.meta_pool={cfg.meta_pool} exceeds the smallest branch's "
            f"resolution {smallest}x{smallest} (image_size {image_size}, "
            f"{cfg.num_branches} branches); lower it."
        )
    return cfg


@dataclasses.dataclass(frozen=True)
class AdamConfig:
    """The projected-Adam inner loop of ``model.adam`` (``jiio.projected_adam``'s settings)."""

    num_steps: int
    learning_rate: float
    solver: Any


def build_adam(section: ml_collections.ConfigDict) -> AdamConfig:
    """``AdamConfig`` from ``config.model.adam`` (``solver``: a solver section)."""
    return AdamConfig(
        num_steps=check_int("adam.num_steps", section.num_steps, 1),
        learning_rate=check_float("adam.learning_rate", section.learning_rate, positive=True),
        solver=solver("model.adam.solver", section.solver),
    )


def episode_data_config(**fields: Any) -> ml_collections.ConfigDict:
    """``config.data`` with every field the episode loader reads (``jiio_jax.data.episodes``);
    defaults: the reference's 5-way 1-shot Omniglot with one query per class."""
    data = ml_collections.ConfigDict(
        {
            "name": "omniglot",
            "path": "",
            "image_size": 28,
            "channels": 1,
            "n_way": 5,
            "k_shot": 1,
            "n_query": 1,
            "rotate": True,
            "num_train_characters": 1200,
            "num_test_episodes": 600,
            "seed": 0,
            "num_workers": 0,
        }
    )
    data.update(fields)
    return data


def experiment_config(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A full ``meta`` experiment config: the loop's fields (``get_base_config``), ``data``, the
    model defaults (``default_model_config``) and the reference optimiser (Adam 1e-3, cosine
    decay, no clipping or weight decay) and ``config.eval`` (``default_eval_config``)."""
    config = base_experiment_config("meta", data, default_model_config())
    config.eval = default_eval_config()
    return config


def make_small(config: ml_collections.ConfigDict) -> None:
    """The ``:small`` variant in place: a one-branch 4-channel MDEQ, 3-way episodes, 4 episodes
    per batch, 2 steps, short inner loops; for smoke tests of the whole pipeline (nothing is
    learnt)."""
    make_small_loop(config, num_train_steps=2)
    config.data.update(n_way=3, k_shot=1, n_query=1, num_test_episodes=4, num_workers=0)
    m = config.model
    override_arch(m, **SMALL_MDEQ, context_dim=4, stem_convs=1, meta_pool=4)
    m.jiio.update(max_steps=8, memory=3, final_step_size=None)
    config.eval.jiio_steps = None  # meta-test at the training budget
    m.adam.num_steps = 3
    m.adam.solver.update(max_steps=4, memory=4)
    m.forward.update(max_steps=6, memory=6)
    m.backward.solver.update(max_steps=6, memory=6)
    m.jac_probes = 1
