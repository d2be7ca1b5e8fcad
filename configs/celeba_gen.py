r"""CelebA 64x64 generative modelling: an MDEQ decoder whose latents JIIO infers per image.

The paper's §4.1 experiment with the reference's ``celeba_vae.yaml`` (``JIIO_REFERENCE.md``
§3.5, §4.1): the 4-branch MDEQ decoder (channels 32/64/128/256, 128-d latent; models config
``celeba_gen``), JIIO with T = 100 augmented steps, Anderson memory 40, step size 0.01 -> 0.003,
Jacobian penalty 2.0 at a trajectory sample, Adam 1e-3 with per-step cosine decay, batch 48,
220 epochs (746,240 steps).

Launch::

  python experiments/train.py --config=configs/celeba_gen.py --workdir=/tmp/celeba_gen \
      --config.data.path=/data/celeba/img_align_celeba

  # The paper's VAE baseline (conv encoder, same MDEQ decoder):
  python experiments/train.py --config=configs/celeba_gen.py --workdir=/tmp/celeba_vae \
      --config.data.path=/data/celeba/img_align_celeba --config.model.method=vae

  # CPU smoke run (16x16 crops, tiny MDEQ, 4 steps):
  python experiments/train.py --config=configs/celeba_gen.py:small --workdir=/tmp/celeba_small \
      --config.data.path=/data/celeba/img_align_celeba

Data: CelebA's aligned images: download ``img_align_celeba.zip`` (202,599 JPEGs, 178x218) from
the CelebA site (or its Google Drive mirror), unzip it and point ``config.data.path`` at the
``img_align_celeba`` folder. The image-folder loader recognises it and uses the standard
partition (train = first 162,770 files in natural order, test = last 19,962); each image is
centre-cropped to 148x148, resized to 64x64 and randomly flipped (train split only; the
reference also flips at test time).

Expected result: this is the reference's setup, so the expected reconstruction PSNR and sample
quality are the paper's; they were not measured here (one step is far beyond a CPU budget). Our
eval PSNR is per image on the [0, 1] scale, about 6 dB above the reference script's [-1, 1]
number (``jiio_jax.losses.psnr``). Training evaluates 20 test batches; set
``--config.num_eval_batches=415`` for the whole test split. Samples come from a Gaussian fitted
to the latents of an eval batch, not the paper's VAE + GMM density model.
"""

from jiio_jax.configs import generative


def get_config(arg: str | None = None):
    """CelebA reconstruction; ``arg="small"`` for the CPU smoke variant."""
    return generative.celeba_config("none", arg)
