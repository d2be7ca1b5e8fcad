r"""CelebA 64x64 denoising with a JIIO-trained MDEQ decoder (paper §4.2).

Same model, solver and training as ``configs/celeba_gen.py`` (the reference's ``celeba_vae``
with ``INV_PROB: denoising02``); each image gets fresh Gaussian noise of standard deviation
0.2 on the [-1, 1] pixel scale every step. JIIO fits the noisy observation; the training loss
compares the output with the clean image.

Launch::

  python experiments/train.py --config=configs/celeba_denoise.py --workdir=/tmp/celeba_denoise \
      --config.data.path=/data/celeba/img_align_celeba
  # The paper's stronger noise (denoising04): --config.model.noise_sigma=0.4
  # VAE baseline (its encoder sees the noisy image): --config.model.method=vae
  # CPU smoke run: configs/celeba_denoise.py:small

Data: as ``configs/celeba_gen.py`` (``img_align_celeba`` folder, crop 148, resize 64).

Expected result: the reference's setup; the expected denoising PSNR is the paper's, not
measured here. Eval reports ``psnr`` (output vs clean image, [0, 1] scale) and
``psnr_corrupted`` (the noisy observation vs the clean image: 20 dB for sigma 0.2, 14 dB for
0.4) as a baseline.
"""

from jiio_jax.configs import generative


def get_config(arg: str | None = None):
    """CelebA denoising (sigma 0.2); ``arg="small"`` for the CPU smoke variant."""
    return generative.celeba_config("denoise", arg)
