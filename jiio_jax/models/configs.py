"""Architecture configurations of the MDEQ models, as frozen (hashable) dataclasses.

The reference configurations reproduce the architectures of the JIIO paper's code
(``locuslab/JIIO-DEQ``, ``configs/*.yaml``) with every constant that the PyTorch code hides in a
module global made an explicit field. In particular the PyTorch residual block always uses 4
GroupNorm groups whatever ``NUM_GROUPS`` says (its ``parse_cfg`` rebinds the global in the wrong
module); here that number is ``block_groups`` and is used as given. The reference configs set
``block_groups=4`` because that is what the published models were trained with.

Shapes are NHWC: ``image_shape = (H, W, C)`` and branch ``i`` has resolution
``(H / 2**i, W / 2**i)`` with ``channels[i]`` channels.
"""

from __future__ import annotations

import dataclasses
import math


def _check_pos_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"`{name}` must be a positive int, got {value!r}.")


def _check_divides(groups_name: str, groups: int, channels_name: str, channels: int) -> None:
    if channels % groups:
        raise ValueError(
            f"`{groups_name}`={groups} must divide `{channels_name}`={channels} (GroupNorm "
            "splits the channels into equal groups); pick a divisor."
        )


COMPUTE_DTYPES = (None, "float32", "bfloat16", "float16")


@dataclasses.dataclass(frozen=True)
class MDEQConfig:
    """Architecture of one MDEQ model (equilibrium cell + injection map + head).

    Attributes:
      image_shape: ``(H, W, C)`` of the images (classifier/meta input, generator output).
      channels: channels per branch, highest resolution first; branch ``i`` is
        ``[H / 2**i, W / 2**i, channels[i]]``.
      expansion: width multiplier of the first 3x3 conv in each residual block.
      block_groups: GroupNorm groups inside the residual blocks (the reference uses 4 regardless
        of its ``NUM_GROUPS``).
      num_groups: GroupNorm groups of the fusion convs, of the classifier-head shortcut, of the
        decoder's first norm and of the meta head (the reference's ``NUM_GROUPS``).
      aux_groups: GroupNorm groups after fusion, in the stems, the decoder tail and the
        classifier head's downsampling/final layers (the reference's ``NUM_GROUPS // 2``).
      dropout: variational dropout rate on the second conv of each block (0 disables it).
      weight_norm: weight-normalise the cell's 3x3 block convs and post-fusion 1x1 convs.
      conv_init_std: standard deviation of the normal init of the plain (not weight-normed)
        convs' kernels and biases (the reference's ``init_weights`` uses 0.01).
      cell_init_std: standard deviation of the normal init of the weight-normed convs'
        direction ``v``; ``None`` (default) uses PyTorch's default kaiming-uniform
        ``U(+-1/sqrt(fan_in))``, which is what the reference effectively trains with (its
        N(0, 0.01) re-init never reaches weight-normed convs). ``g`` is always ``||v||`` per
        output channel, so the effective kernel at init equals the sampled ``v``.
      state_norm_scale: initial scale of the affine post-fusion GroupNorms, which produce the
        state (PyTorch: 1; default 0.25). See "Contraction at init" below.
      norm1_scale_init: initial scale of the first GroupNorm of every residual block
        (PyTorch: 1; default 0.25). See "Contraction at init" below.
      norm1_bias_init: initial shift of the first GroupNorm of every residual block
        (PyTorch: 0; default 1). See "Contraction at init" below.
      num_classes: classifier outputs (classifier only).
      head_channels: HRNet head bottleneck widths per branch (classifier only).
      final_channels: HRNet head final 1x1 conv width (classifier only).
      stem_convs: number of 3x3 conv + GroupNorm + ReLU layers of the image stem
        (2 for the classifiers, 1 for the meta learner).
      latent_dim: latent size of the generator's injection maps (generator only).
      context_dim: FiLM task-context size (meta only); split in equal chunks across branches.
      n_way: meta-learning classes per task (meta only).
      meta_pool: average-pool window (and stride) of the meta head (7 for 28x28 inputs).
      compute_dtype: dtype the equilibrium cell computes in: ``None`` or ``"float32"``
        (default: the state's dtype), ``"bfloat16"`` or ``"float16"``. A low-precision cell
        casts its state, input and parameters down, computes, and casts its output back to
        the state's dtype, so the solver state, residuals and histories stay float32 (mixed
        precision; gradients reach the float32 parameters through the casts).

    Contraction at init. Only initial values differ from PyTorch's defaults; the architecture,
    the parameters and their shapes are the reference's. Every path through the cell ends in a
    GroupNorm, so a path from ``z_i`` to ``z+`` that never meets a ``z``-independent term is
    scale-invariant in ``z``: no weight scale changes its gain. The classifier and meta cells
    inject into branch 0 only, and with PyTorch's norm init (scale 1, shift 0) the spectral
    radius of their ``df/dz`` is 1.1-1.5 and Anderson stalls at relative residuals of 5e-2 to
    2e-1 after 60 steps. Two init values break the invariance without an injection:

    - ``norm1_bias_init=1`` with ``norm1_scale_init=0.25``: the block's hidden activation
      ``ReLU(GN1(W1 z))`` starts as the constant 1 plus a ``z``-dependent part 4x smaller, so
      ``W2 a`` is a ``z``-independent per-channel map plus a small variation and the second
      norm passes on only that variation's share. (Shift 0 with any scale leaves the path
      scale-invariant; scale 0 with shift 0 turns the un-injected branches' ``b_i`` into 0 and
      ``GN3(ReLU(z_i))`` is scale-invariant again.)
    - ``state_norm_scale=0.25``: the state is 4x smaller than the block's normalised branch
      ``b_i``, so the residual path ``z_i -> GN3(ReLU(b_i + z_i))`` is damped by ``b_i``.

    Either alone leaves rho > 1 on the classifiers; together they give rho(df/dz) = 0.37-0.74
    and convergence to 1e-5 in 12-22 Anderson steps at init for every config
    (``experiments/results/mdeq.md``). The generators, which inject into every branch, also
    keep ``cell_init_std=0.01`` (a small second block conv, the reference's intended N(0, 0.01)
    init actually reaching the weight-normed convs). Set ``norm1_scale_init=1``,
    ``norm1_bias_init=0`` and ``state_norm_scale=1`` for PyTorch's init.
    """

    image_shape: tuple[int, int, int]
    channels: tuple[int, ...]
    expansion: int = 5
    block_groups: int = 4
    num_groups: int = 8
    aux_groups: int = 4
    dropout: float = 0.0
    weight_norm: bool = True
    conv_init_std: float = 0.01
    cell_init_std: float | None = None
    state_norm_scale: float = 0.25
    norm1_scale_init: float = 0.25
    norm1_bias_init: float = 1.0
    num_classes: int | None = None
    head_channels: tuple[int, ...] | None = None
    final_channels: int | None = None
    stem_convs: int = 2
    latent_dim: int | None = None
    context_dim: int | None = None
    n_way: int | None = None
    meta_pool: int = 7
    compute_dtype: str | None = None

    def __post_init__(self):
        if len(self.image_shape) != 3:
            raise ValueError(f"`image_shape` must be (H, W, C), got {self.image_shape!r}.")
        for i, s in enumerate(self.image_shape):
            _check_pos_int(f"image_shape[{i}]", s)
        if not self.channels:
            raise ValueError("`channels` must list at least one branch, got ().")
        for i, c in enumerate(self.channels):
            _check_pos_int(f"channels[{i}]", c)
        h, w, _ = self.image_shape
        scale = 2 ** (len(self.channels) - 1)
        if h % scale or w % scale:
            raise ValueError(
                f"`image_shape` {self.image_shape} must have H and W divisible by "
                f"2**(num_branches - 1) = {scale}; use fewer branches or a larger image."
            )
        for name in ("expansion", "block_groups", "num_groups", "aux_groups", "stem_convs"):
            _check_pos_int(name, getattr(self, name))
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}.")
        if self.compute_dtype not in COMPUTE_DTYPES:
            raise ValueError(
                f"`compute_dtype` must be one of {COMPUTE_DTYPES}, got {self.compute_dtype!r}."
            )
        if not self.conv_init_std >= 0:
            raise ValueError(f"`conv_init_std` must be >= 0, got {self.conv_init_std!r}.")
        if self.cell_init_std is not None and not self.cell_init_std > 0:
            raise ValueError(f"`cell_init_std` must be > 0 or None, got {self.cell_init_std!r}.")
        if not self.state_norm_scale > 0:
            raise ValueError(f"`state_norm_scale` must be > 0, got {self.state_norm_scale!r}.")
        if not self.norm1_scale_init > 0:
            raise ValueError(f"`norm1_scale_init` must be > 0, got {self.norm1_scale_init!r}.")
        if not math.isfinite(self.norm1_bias_init):
            raise ValueError(f"`norm1_bias_init` must be finite, got {self.norm1_bias_init!r}.")
        for i, c in enumerate(self.channels):
            _check_divides("block_groups", self.block_groups, f"channels[{i}]", c)
            _check_divides(
                "block_groups", self.block_groups, f"expansion*channels[{i}]", self.expansion * c
            )
            _check_divides("aux_groups", self.aux_groups, f"channels[{i}]", c)
            if len(self.channels) > 1:
                _check_divides("num_groups", self.num_groups, f"channels[{i}]", c)
        for name in ("num_classes", "final_channels", "latent_dim", "context_dim", "n_way"):
            if getattr(self, name) is not None:
                _check_pos_int(name, getattr(self, name))
        if self.head_channels is not None:
            if len(self.head_channels) != len(self.channels):
                raise ValueError(
                    f"`head_channels` needs one width per branch ({len(self.channels)}), got "
                    f"{self.head_channels!r}."
                )
            for i, c in enumerate(self.head_channels):
                _check_pos_int(f"head_channels[{i}]", c)
        if self.context_dim is not None and self.context_dim % len(self.channels):
            raise ValueError(
                f"`context_dim`={self.context_dim} must be divisible by the number of branches "
                f"({len(self.channels)}): the context is split into equal chunks per branch."
            )

    @property
    def num_branches(self) -> int:
        return len(self.channels)

    @property
    def branch_shapes(self) -> tuple[tuple[int, int, int], ...]:
        """Per-branch state shapes ``(H_i, W_i, C_i)`` of one sample."""
        h, w, _ = self.image_shape
        return tuple((h // 2**i, w // 2**i, c) for i, c in enumerate(self.channels))

    @property
    def state_size(self) -> int:
        """Number of elements of one sample's equilibrium state (the reference's ``D_z``)."""
        return sum(h * w * c for h, w, c in self.branch_shapes)

    def require(self, *names: str, by: str) -> None:
        """Raises ``ValueError`` naming the first of ``names`` that is unset (``None``)."""
        for name in names:
            if getattr(self, name) is None:
                raise ValueError(f"{by} needs `config.{name}`; set it in the MDEQConfig.")

    def replace(self, **changes) -> MDEQConfig:
        """Returns a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


MNIST_CLS = MDEQConfig(
    image_shape=(28, 28, 1),
    channels=(24, 24),
    num_classes=10,
    head_channels=(8, 16),
    final_channels=200,
)
"""``configs/mnist_cls.yaml``: adversarially trained MNIST classifier (D_z = 23,520)."""

CIFAR_CLS = MNIST_CLS.replace(image_shape=(32, 32, 3))
"""``configs/cifar_cls.yaml``: adversarially trained CIFAR-10 classifier (D_z = 30,720)."""

CELEBA_GEN = MDEQConfig(
    image_shape=(64, 64, 3),
    channels=(32, 64, 128, 256),
    latent_dim=128,
    cell_init_std=0.01,
)
"""``configs/celeba_vae.yaml`` decoder: 64x64 CelebA generator from a 128-d latent
(D_z = 245,760). The reference's encoder (used only by its VAE baseline) is not built. Its
decoder has no dropout (the yaml's 0.3 applies to the encoder only). Init: N(0, 0.01) cell
convs (see ``MDEQConfig``, "Contraction at init")."""

CELEBA_GEN_TINY = MDEQConfig(
    image_shape=(64, 64, 3),
    channels=(24, 24),
    latent_dim=128,
    cell_init_std=0.01,
)
"""``configs/celeba_vae_tiny.yaml`` decoder (D_z = 122,880)."""

OMNIGLOT_META = MDEQConfig(
    image_shape=(28, 28, 1),
    channels=(64, 128),
    stem_convs=1,
    context_dim=400,
    n_way=5,
)
"""``configs/omniglot_imaml.yaml``: FiLM-conditioned 5-way Omniglot learner (D_z = 75,264)."""

# The small test architectures share everything but their input and head.
_TINY = dict(channels=(8, 16), expansion=2, block_groups=2, num_groups=4, aux_groups=2)

TINY_CLS = MDEQConfig(
    **_TINY,
    image_shape=(16, 16, 3),
    num_classes=10,
    head_channels=(4, 8),
    final_channels=32,
)
"""A small classifier for tests and CPU benchmarks (16x16x3 images, D_z = 3,072)."""

TINY_GEN = MDEQConfig(
    **_TINY,
    image_shape=(16, 16, 3),
    latent_dim=16,
    cell_init_std=0.01,
)
"""A small generator for tests (16-d latent -> 16x16x3 image)."""

TINY_META = MDEQConfig(
    **_TINY,
    image_shape=(14, 14, 1),
    stem_convs=1,
    context_dim=16,
    n_way=5,
)
"""A small meta learner for tests (14x14x1 images, 16-d context)."""

CONFIGS: dict[str, MDEQConfig] = {
    "mnist_cls": MNIST_CLS,
    "cifar_cls": CIFAR_CLS,
    "celeba_gen": CELEBA_GEN,
    "celeba_gen_tiny": CELEBA_GEN_TINY,
    "omniglot_meta": OMNIGLOT_META,
    "tiny_cls": TINY_CLS,
    "tiny_gen": TINY_GEN,
    "tiny_meta": TINY_META,
}


def get_config(name: str) -> MDEQConfig:
    """Returns the named configuration (see ``CONFIGS`` for the names)."""
    if name not in CONFIGS:
        raise ValueError(f"Unknown config {name!r}; choose one of {sorted(CONFIGS)}.")
    return CONFIGS[name]
