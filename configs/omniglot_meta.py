r"""5-way 1-shot Omniglot meta-learning with a JIIO-adapted FiLM context (the reference's
``configs/omniglot_imaml.yaml``; §4.4 of JIIO_REFERENCE.md).

Model and recipe as the reference: ``OMNIGLOT_META`` (28x28x1, branches of 64 and 128
channels, expansion 5, a 400-d context split over the branches, FiLM after each block's first
norm; 2.35M parameters); per episode 5 classes, 1 support and 1 query image each, one random
quarter turn per class; 80 episodes per step; JIIO with Type-II Anderson, memory 10,
``T = 100`` steps, ``alpha`` 0.04 -> 0.01 at step 61, inner cost
``5 sum_i CE_i + ||v||^2 / 16``; query equilibria by Broyden (18 steps) with the implicit
backward (Broyden, 18 steps, zero start); Jacobian penalty 0.5 at the trajectory sample and at
the query equilibria; Adam 1e-3, cosine decay, no weight decay or clipping. The reference's
run length (10 epochs of ``NUM_TASKS / 80`` steps) depends on an iMAML task-definition file
not recorded here; 10,000 steps is our choice. Evaluation: 600 meta-test episodes from the 423
held-out characters, with JIIO and with projected Adam (20 steps, lr 0.1, Broyden capped at 20).

Data: download ``images_background.zip`` and ``images_evaluation.zip`` from
https://github.com/brendenlake/omniglot (``python/``) and unzip both into one folder::

  /data/omniglot/images_background/<alphabet>/<character>/*.png
  /data/omniglot/images_evaluation/<alphabet>/<character>/*.png

The 1623 characters of both folders are pooled and split by ``config.data.seed`` into 1200
meta-train and 423 meta-test characters (iMAML's protocol).

Launch (GPU-sized: each step solves 80 x 5 support states of 75,264 values jointly with their
adjoints for 100 steps)::

  python experiments/train.py --config=configs/omniglot_meta.py --workdir=/tmp/omniglot_meta \
      --config.data.path=/data/omniglot
  # projected-Adam inner loop instead of JIIO:  --config.model.method=projected_adam
  # meta-test with a 95% CI and inner-loop timings of both inner solvers:
  python experiments/evaluate.py --config=configs/omniglot_meta.py --task=meta \
      --workdir=/tmp/omniglot_meta --config.data.path=/data/omniglot
  # smoke run (tiny one-branch MDEQ, 3-way, 2 steps): --config=configs/omniglot_meta.py:small

Expected result: not measured here (no Omniglot copy and no accelerator in this environment).
The reference figure is the JIIO paper's Omniglot meta-learning result (Gurumurthy et al.,
NeurIPS 2021), JIIO vs the projected-Adam inner loop; it could not be retrieved offline, so no
number is quoted here. For scale only: iMAML (Rajeswaran et al., 2019), adapting all weights
of a 4-layer CNN, reports 99.16 +- 0.35% on 5-way 1-shot Omniglot.
"""

from jiio_jax.configs import meta


def get_config(arg: str | None = None):
    """Omniglot 5-way 1-shot; ``arg="small"`` for the 2-step smoke variant."""
    data = meta.episode_data_config(
        name="omniglot",
        path="",  # Set on the command line: --config.data.path=/data/omniglot
        image_size=28,
        n_way=5,
        k_shot=1,
        n_query=1,
        rotate=True,
        num_train_characters=1200,
        num_test_episodes=600,
        num_workers=4,  # PNG decoding in grain worker processes.
    )
    config = meta.experiment_config(data)
    config.seed = 0
    config.batch_size = 80
    config.eval_batch_size = 100
    config.num_train_steps = 10_000
    config.log_every = 50
    config.eval_every = 1000
    config.checkpoint_every = 1000
    config.keep_checkpoints = 2
    config.num_eval_batches = 6  # All 600 meta-test episodes.
    config.optim.lr = 1e-3

    m = config.model  # meta.default_model_config() is the reference's omniglot_imaml.
    m.method = "jiio"
    m.eval_methods = ("jiio", "projected_adam")
    m.arch = "omniglot_meta"
    if arg == "small":
        meta.make_small(config)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r}; use ':small' or nothing.")
    return config
