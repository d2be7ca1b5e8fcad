r"""CelebA 64x64 inpainting with a JIIO-trained MDEQ decoder (paper §4.2).

Same model, solver and training as ``configs/celeba_gen.py`` (the reference's ``celeba_vae``
with ``INV_PROB: inpainting``); each image gets one 20x20 hole (all channels) at a uniformly
drawn position inside the image, fresh every step. JIIO's inner cost sees only the observed
pixels; the training loss compares the output with the clean image (the reference never sets
its inpainting target, ``JIIO_REFERENCE.md`` §7.14).

Launch::

  python experiments/train.py --config=configs/celeba_inpaint.py --workdir=/tmp/celeba_inpaint \
      --config.data.path=/data/celeba/img_align_celeba
  # VAE baseline (its encoder sees the masked image): add --config.model.method=vae
  # Hole size: --config.model.hole=20 (pixels); CPU smoke run: configs/celeba_inpaint.py:small

Data: as ``configs/celeba_gen.py`` (``img_align_celeba`` folder, crop 148, resize 64).

Expected result: the reference's setup; the expected inpainting PSNR is the paper's, not
measured here. Eval reports ``psnr`` (output vs clean image, whole image, [0, 1] scale) and
``psnr_corrupted`` (the masked observation vs the clean image) as a baseline.
"""

from jiio_jax.configs import generative


def get_config(arg: str | None = None):
    """CelebA inpainting; ``arg="small"`` for the CPU smoke variant (hole scaled to 5)."""
    return generative.celeba_config("inpaint", arg)
