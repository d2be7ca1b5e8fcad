r"""Adversarial training of the reference MNIST MDEQ classifier with JIIO (or PGD).

The reference's ``mnist_cls.yaml`` (``JIIO_REFERENCE.md`` §3.5, §4.3): the 2-branch MDEQ
(channels 24/24, HRNet head 8/16 -> 200; ``jiio_jax.models.configs.MNIST_CLS``), an L2 threat
model of radius ``epsilon = 1.0`` on the [0, 1] pixel scale (2.0 on our [-1, 1] images), the
Jacobian penalty 0.01 at the equilibrium (``TRAJ_REG`` false), Adam 1e-3 with cosine decay and
no weight decay, batch 96, 10 epochs (6,250 steps).

Deviations: the JIIO attack is this project's default (type-I Anderson, memory 5, undamped,
step ``0.8 * eps``, 40 steps; see ``jiio_jax.configs.adversarial``) rather than the reference's
(memory 20, damping 0.8 / 0.6, 80 steps, steps 0.6 -> 0.2); the reference's is::

  --config.model.jiio.max_steps=80 --config.model.jiio.memory=20 \
  --config.model.jiio.z_damping=0.8 --config.model.jiio.mu_damping=0.6 \
  --config.model.jiio.step_size=0.6 --config.model.jiio.final_step_size=0.2

Perturbed images are clipped to the valid range (``clip_pixels``; the reference does not), the
PGD baseline uses ``epsilon`` (the reference hard-codes 1) and evaluation runs in eval mode.
Evaluation uses 10 test batches (960 images) to stay cheap; ``--config.num_eval_batches=105``
for the whole test split.

Launch::

  python experiments/train.py --config=configs/mnist_adv.py --workdir=/tmp/mnist_adv \
      --config.data.path=/data/tfds
  # PGD-10 adversarial training baseline / undefended model:
  #   --config.model.method=pgd   /   --config.model.method=clean
  # CPU smoke run (still reads tfds mnist; add --config.data.name=digits
  # --config.data.image_size=28 to run offline): configs/mnist_adv.py:small

Data: ``tfds`` ``mnist`` read through ``tfds.data_source`` (no TensorFlow at training time): on
a machine with TensorFlow run ``tfds build mnist --data_dir /data/tfds --file_format
array_record`` and pass that ``data_dir`` as ``config.data.path``. Or write an ``.npz`` with
``image_train`` (uint8 [60000, 28, 28]), ``label_train``, ``image_test``, ``label_test`` and
set ``--config.data.name=npz --config.data.path=/data/mnist.npz``.

Expected result: the paper's MNIST adversarial-training numbers (Gurumurthy et al., NeurIPS
2021, adversarial training section: clean and PGD / JIIO robust accuracy of JIIO- vs
PGD-trained MDEQs). Not measured here (no MNIST on this machine, and CPU only); the eval
metrics to compare are ``eval/clean_acc``, ``eval/robust_acc_pgd`` (PGD-20) and
``eval/robust_acc_jiio``.
"""

from jiio_jax.configs import adversarial
from jiio_jax.configs.common import data_config


def get_config(arg=None):
    """The full config; ``arg="small"`` gives the CPU smoke-test variant."""
    data = data_config(name="tfds", tfds_name="mnist", image_size=28, channels=1)
    config = adversarial.reference_config(
        data, arch="mnist_cls", train_images=60_000, epochs=10, jac_at_trajectory=False
    )
    if arg == "small":
        adversarial.make_small(config)
    elif arg:
        raise ValueError(f"Unknown config variant {arg!r}; use 'small' or nothing.")
    return config
