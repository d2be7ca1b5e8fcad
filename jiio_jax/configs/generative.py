"""``config.model`` of the ``generative`` task (``configs/*_gen.py``, ``celeba_inpaint.py``,
``celeba_denoise.py``): the schema with its defaults, the experiment config and its ``:small``
variant, and the decoder architecture read from it.

See ``default_model_config`` for the fields; ``jiio_jax.tasks.generative`` for how they are used.
"""

from __future__ import annotations

import ml_collections

from jiio_jax.configs.common import (
    JIIO_TASK_FIELDS,
    build_arch,
    data_config,
    data_image_shape,
    deq_model_sections,
    experiment_config,
    library_section,
    make_small_loop,
    override_arch,
)
from jiio_jax.jiio import JIIO
from jiio_jax.models.configs import MDEQConfig

METHODS = ("jiio", "vae", "rae")
DECODERS = ("mdeq", "conv")
RAE_DECODER_REGS = ("l2", "gradient")
JAC_POINTS = ("trajectory", "equilibrium")
AMORTIZE_COLD = ("full", "warm")
# The reference's inpainting hole (20 pixels) is for 64x64 images; smaller images get the same
# fraction of the side.
REFERENCE_HOLE, REFERENCE_SIZE = 20, 64
CELEBA_TRAIN_IMAGES = 162_770


def default_model_config() -> ml_collections.ConfigDict:
    """The full ``config.model`` schema with its defaults (the reference's ``celeba_vae``).

    Fields:
      method: ``"jiio"`` (decoder-only; latents found per sample by JIIO), ``"vae"``
        (conv encoder + decoder; ``jiio_jax.tasks.vae``) or ``"rae"`` (a regularised
        deterministic autoencoder, Ghosh et al. 2020: the same conv encoder's mean as the latent,
        no noise, a latent and a decoder penalty; see ``rae``).
      decoder: ``"mdeq"`` (the MDEQ generator built from ``arch`` / ``mdeq``) or ``"conv"``
        (a feed-forward conv decoder, ``jiio_jax.models.conv_decoder``; ``vae`` and ``rae``
        only, JIIO needs an equilibrium). The latent size is ``mdeq.latent_dim`` (or the
        ``arch``'s) for both.
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
      jiio: ``jiio_jax.jiio.JIIO(**jiio, backward=<model.backward>)``: every field of the
        dataclass, ``None`` = its default (e.g. ``max_steps`` ``T``, ``memory``, ``step_size``
        and ``final_step_size``: the reference's switch to it at ``max(50, 5T/8) - 1``). The
        inner cost is a per-image *sum* of squared errors, so step sizes shrink as images grow.
      forward: the plain DEQ solver (VAE decoding, decoding samples), a
        ``jiio_jax.solvers.resolve`` section ``{"name": "anderson" | "broyden", **fields}``.
      backward: the implicit backward of every equilibrium, a ``jiio_jax.deq.resolve_backward``
        section (``{"name": "implicit", "solver": {<solver section>}}``, or ``"one_step"``,
        ``"neumann"`` / ``"phantom"`` with their ``k``).
      warm_start: start the implicit backward of JIIO's ``z*`` at ``mu* / (B C H W)`` (the
        reference's warm start).
      amortize: amortized training (``method="jiio"``): a per-training-example cache of JIIO's
        latent ``x`` (and, with ``amortize_state``, its ``z`` and ``mu``), keyed by the example's
        index (``batch["index"]``), sharded with the data and saved in every checkpoint. An
        example's next visit starts JIIO from its cache with the smaller budget
        ``amortize_jiio``; a batch holding an example never seen (the first epoch) or too stale
        is solved cold, all of it (``GenerativeTask.cached_loss``). Evaluation and every
        inference on new images keep the cold start. Not in the reference.
      amortize_state: also cache the equilibrium ``z`` and adjoint ``mu`` as JIIO's start
        (memory: one state and one adjoint per training example).
      amortize_jiio: ``model.jiio`` overrides for warm-started batches (``None`` = as
        ``model.jiio``), splatted into ``jiio.JIIO`` like it: a smaller ``max_steps`` and the
        start guard ``no_worse_than_start`` (from a good start JIIO's iterates first wander
        off: on the trained ``digits_gen`` decoder, 5 steps from the cached point returned a
        cost up to 0.53 per pixel where the start had 0.16; the guard returns the start's
        re-solved equilibrium instead, for ~3 extra ``f`` evaluations from the cached ``z``).
      amortize_max_age: staleness: an entry's warm solves since its last cold solve after which
        its batch is solved cold again (roughly epochs, as each example is seen once per
        epoch); 0 = never (the cache is always trusted once filled). ``digits_gen`` seed 0:
        2 gives 22.63 dB where 0 gives 22.06 (plain 22.75), but whole epochs then run cold
        and the run takes 1.10x the plain run's time (``jiio_amortized.md``).
      amortize_cold: how examples without a usable entry (never seen, or stale) are solved:
        ``"full"``, their whole batch from zero with ``model.jiio`` (a second compiled JIIO
        program); ``"warm"``, each from zero with ``amortize_jiio``'s budget, batch-mates from
        their cache (one program, about half the compile time).
      amortize_from_step: training steps before this one are all solved cold (the cache is
        filled but not used): early in training the decoder changes so fast that an epoch-old
        latent is a poor start (``digits_gen``: warm from step 48 on trained to 0.12 MSE at
        step 200 where cold starts reach 0.042).
      latent_penalty: ``lambda`` of an optional prior term ``lambda ||x||^2`` added to JIIO's inner
        cost (reference: none, 0). Keeps the optimised latents near the origin, which makes the
        Gaussian fitted to them for sampling a better match (a regularised-autoencoder view).
        It adds curvature ``2 lambda`` to the input problem: keep ``step_size * lambda < 1``.
      jac_weight: weight of the Hutchinson Jacobian penalty (reference 2.0; 0 disables it).
      jac_point: JIIO: where the penalty is evaluated, ``"trajectory"`` (a uniformly drawn JIIO
        step, the reference's ``TRAJ_REG=true``) or ``"equilibrium"`` (``(z*, x*)``,
        ``TRAJ_REG=false``). The VAE always uses its equilibrium.
      jac_probes: Hutchinson probes (reference 2).
      vae: the encoder of ``vae`` and ``rae``: ``encoder_channels`` (stride-2 conv widths),
        ``groups`` (GroupNorm), ``dropout`` (encoder features; reference 0.3);
        ``kl_warmup_steps`` (VAE's KL weight ``min(step / kl_warmup_steps, 1)``).
      conv_decoder: the ``"conv"`` decoder: ``channels`` (widths of its upsampling stages,
        ordered from the image side like ``vae.encoder_channels``) and ``groups`` (GroupNorm).
      rae: the RAE's terms, both divided by ``C H W`` like the VAE's KL:
        ``latent_weight`` (``beta`` of ``beta * mean_b ||z_b||^2 / 2``) and ``decoder_reg``
        ``"l2"`` (RAE-L2: ``decoder_weight * ||theta_dec||^2`` over every decoder parameter) or
        ``"gradient"`` (RAE-GP: ``decoder_weight * mean_b ||dD(z_b)/dz||_F^2``, a
        one-probe Hutchinson estimate; ``"conv"`` decoder only).
      refine_with_jiio: evaluation-time (``vae`` / ``rae`` with the MDEQ decoder): refine each
        encoder latent by JIIO (``jiio``, the inner cost of ``method="jiio"``) started at it,
        before decoding: the paper's "MDEQ-VAE (w/ JIIO)". Training is unchanged.
      num_image_examples: reconstructions shown by ``images``.
      num_samples: samples drawn by ``images``.
      sample_ridge: JIIO samples: ridge added to the latents' covariance, relative to its mean
        eigenvalue.
    """
    return ml_collections.ConfigDict(
        {
            "method": "jiio",
            "corruption": "none",
            "hole": 20,
            "noise_sigma": 0.2,
            **deq_model_sections(
                "celeba_gen",
                solver={"name": "anderson", "max_steps": 18, "tol": 1e-4, "memory": 5},
                max_steps=100,
                memory=40,
                step_size=0.01,
                final_step_size=0.003,
            ),
            "warm_start": True,
            "amortize": False,
            "amortize_state": True,
            "amortize_jiio": library_section(
                JIIO, exclude=JIIO_TASK_FIELDS, max_steps=10, no_worse_than_start=True
            ),
            "amortize_max_age": 0,
            "amortize_cold": "full",
            "amortize_from_step": 0,
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
            "decoder": "mdeq",
            "conv_decoder": {"channels": (32, 64, 128, 256), "groups": 4},
            "rae": {"latent_weight": 1.0, "decoder_reg": "l2", "decoder_weight": 1e-3},
            "refine_with_jiio": False,
            "num_image_examples": 8,
            "num_samples": 16,
            "sample_ridge": 1e-3,
        }
    )


def build_mdeq_config(config: ml_collections.ConfigDict) -> MDEQConfig:
    """The decoder architecture: ``build_arch`` at the data's image shape."""
    cfg = build_arch(config, data_image_shape(config))
    if cfg.latent_dim is None:
        raise ValueError("config.model.mdeq.latent_dim must be set (the generator's latent size).")
    return cfg


def scaled_hole(image_size: int) -> int:
    """``round(20 * image_size / 64)``, at least 1."""
    return max(1, round(REFERENCE_HOLE * image_size / REFERENCE_SIZE))


def reference_loop(config, batch_size: int, train_images: int) -> int:
    """The reference recipe's loop, in place: seed 0, ``batch_size`` (train and eval), 220 epochs
    of ``train_images``, log every 100 steps, eval and checkpoint every 5000 (2 kept), 20 eval
    batches. Returns the steps per epoch."""
    config.seed = 0
    config.batch_size = batch_size
    config.eval_batch_size = batch_size
    steps_per_epoch = -(-train_images // batch_size)
    config.num_train_steps = 220 * steps_per_epoch
    config.log_every = 100
    config.eval_every = 5000
    config.checkpoint_every = 5000
    config.keep_checkpoints = 2
    config.num_eval_batches = 20
    return steps_per_epoch


def generative_config(data: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The loop's fields, ``data``, the reference optimiser and the ``generative`` task's model
    defaults (the reference's ``celeba_vae``: ``default_model_config``) with the inpainting hole
    scaled to the image size."""
    config = experiment_config("generative", data, default_model_config())
    config.model.hole = scaled_hole(data.image_size)
    return config


def make_small(config: ml_collections.ConfigDict, image_size: int = 16) -> None:
    """The ``:small`` CPU variant in place: a tiny MDEQ at ``image_size``, batch 4, 4 steps.

    For smoke tests of the whole pipeline (data, task, loop, checkpoints); nothing is learnt.
    """
    make_small_loop(config, num_train_steps=4)
    config.optim.warmup_steps = 0
    config.data.image_size = image_size
    config.data.num_workers = 0
    m = config.model
    override_arch(m, "tiny_gen")  # channels (8, 16), expansion 2, latent 16
    m.hole = scaled_hole(image_size)
    m.jiio.update(max_steps=8, memory=3, step_size=0.05, final_step_size=None)
    m.amortize_jiio.max_steps = 3
    m.forward.update(max_steps=6, memory=3)
    m.backward.solver.update(max_steps=6, memory=3)
    m.vae.encoder_channels = (8, 16)
    m.vae.kl_warmup_steps = 2
    m.conv_decoder.channels = (8, 16)
    m.num_image_examples = 4
    m.num_samples = 4


def celeba_config(corruption: str, arg: str | None):
    """The CelebA 64x64 config (``configs/celeba_gen.py``, ``celeba_inpaint.py``,
    ``celeba_denoise.py``) for ``corruption`` ("none" | "inpaint" | "denoise"): the reference's
    ``celeba_vae`` recipe, 220 epochs of batch 48; ``arg="small"`` for the CPU smoke variant."""
    data = data_config(
        name="image_folder", image_size=64, channels=3, crop=148, flip=True, num_workers=8
    )
    config = generative_config(data)
    # Batch 48: 12 per GPU x 4 GPUs in the reference.
    steps_per_epoch = reference_loop(config, 48, CELEBA_TRAIN_IMAGES)

    m = config.model  # defaults = the reference's celeba_vae (see default_model_config)
    m.method = "jiio"
    m.corruption = corruption
    m.arch = "celeba_gen"
    m.hole = 20
    m.noise_sigma = 0.2
    # JIIO (T = 100, memory 40, 0.01 -> 0.003), forward and backward (Anderson, 18 steps, the
    # reference's F_THRES / B_THRES): the defaults of default_model_config.
    m.jac_weight = 2.0
    m.jac_point = "trajectory"
    # VAE baseline (method=vae): encoder dropout 0.3, KL warm-up over 10 epochs.
    m.vae.update(encoder_channels=(32, 64, 128, 256), dropout=0.3)
    m.vae.kl_warmup_steps = 10 * steps_per_epoch
    if arg == "small":
        make_small(config, image_size=16)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r}; use ':small' or nothing.")
    return config
