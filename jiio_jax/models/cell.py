"""The MDEQ equilibrium cell ``f(z, x)``: per-branch residual blocks + multiscale fusion.

One application of the cell to the branch states ``z = (z_0, ..., z_{K-1})`` of one sample
(``z_i`` of shape ``[H / 2**i, W / 2**i, C_i]``, NHWC) is (Bai et al. 2020, MDEQ; the JIIO
reference's ``MDEQModule``):

1. Residual block per branch (``ResidualBlock``)::

       a_i   = ReLU(FiLM_i(GN(W1 * z_i)))              (FiLM only for the meta learner)
       b_i   = GN(mask_i * (W2 * a_i) + u_i)           (injection u_i added before the norm)
       out_i = GN(ReLU(b_i + z_i))

2. Fusion into each branch ``i``: ``y_i = sum_j T_ij(out_j)`` with ``T_ii`` the identity,
   ``T_ij`` for a lower-resolution ``j > i`` a 1x1 conv + GN + nearest upsampling by
   ``2**(j-i)``, and for a higher-resolution ``j < i`` a chain of ``i - j`` stride-2 3x3 convs,
   each followed by GN (ReLU between them). Then ``z_i+ = GN(W_p * ReLU(y_i))`` with a 1x1 conv.

The first block norm starts with scale ``config.norm1_scale_init`` and shift
``config.norm1_bias_init``, and the post-fusion norm with scale ``config.state_norm_scale``
(defaults 0.25, 1 and 0.25 instead of PyTorch's 1, 0 and 1), so that the cell contracts at init
(``MDEQConfig``, "Contraction at init"). The other norms keep PyTorch's init.

``W1``, ``W2`` and ``W_p`` are weight-normed (``config.weight_norm``). Everything the cell
depends on besides ``z`` and the parameters arrives in one ``CellInput`` pytree, so
``f(z, x, params)`` is a pure function of explicit arguments (see ``jiio_jax.models.mdeq``).
The dropout mask is part of ``x``: it is drawn once per forward pass and stays fixed across
solver iterations (variational dropout), which keeps ``f`` a fixed map.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jiio_jax.models import layers
from jiio_jax.models.configs import MDEQConfig

Dtype = Any


class CellInput(NamedTuple):
    """Everything the cell depends on besides the state and its parameters (one sample).

    Attributes:
      injection: per branch ``[H_i, W_i, C_i]`` added before the block's second norm, or
        ``None`` for a branch without injection (treated as zeros).
      film: ``None``, or per branch a pair ``(scale, shift)`` of ``[expansion * C_i]`` arrays
        applied after the block's first norm (meta learner).
      dropout_mask: ``None`` (no dropout), or per branch a ``[C_i]`` mask with entries in
        ``{0, 1 / (1 - rate)}`` applied to the second conv's output.
    """

    injection: tuple[jax.Array | None, ...]
    film: tuple[tuple[jax.Array, jax.Array], ...] | None = None
    dropout_mask: tuple[jax.Array, ...] | None = None


def dropout_masks(
    key: jax.Array, channels: tuple[int, ...], rate: float, dtype: Dtype = jnp.float32
) -> tuple[jax.Array, ...]:
    """Variational dropout masks of one sample: per branch ``[C_i]``, Bernoulli(1-rate)/(1-rate).

    The same mask multiplies every pixel of the channel and every solver iteration
    (``VariationalHidDropout2d`` of the reference, redrawn once per forward pass).
    """
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"`rate` must be in [0, 1), got {rate!r}.")
    keys = jax.random.split(key, len(channels))
    return tuple(
        jax.random.bernoulli(k, 1.0 - rate, (c,)).astype(dtype) / (1.0 - rate)
        for k, c in zip(keys, channels, strict=True)
    )


def _cell_kernel_init(config: MDEQConfig):
    if config.cell_init_std is None:
        return layers.torch_kernel_init
    return layers.normal_init(config.cell_init_std)


class ResidualBlock(nn.Module):
    """Per-branch residual block of the cell (reference: ``BasicBlock`` / ``BasicMetaBlock``).

    Attributes:
      channels: ``C`` of the branch.
      expansion: width multiplier ``E`` of the hidden layer.
      groups: GroupNorm groups of all three norms.
      weight_norm: weight-normalise both 3x3 convs.
      kernel_init: init of the conv kernels (``v`` when weight-normed).
      param_dtype: parameter dtype.
      norm1_scale_init: initial scale of the first norm (PyTorch: 1).
      norm1_bias_init: initial shift of the first norm (PyTorch: 0). With a shift that dominates
        the scale, the hidden activation starts near a ``z``-independent constant, which damps
        the block's gain (see ``MDEQConfig``, "Contraction at init").
    """

    channels: int
    expansion: int
    groups: int
    weight_norm: bool = True
    kernel_init: Any = layers.torch_kernel_init
    param_dtype: Dtype = jnp.float32
    norm1_scale_init: float = 1.0
    norm1_bias_init: float = 0.0

    def _conv3x3(self, features: int, name: str) -> nn.Module:
        if self.weight_norm:
            return layers.WeightNormConv(
                features, 3, kernel_init=self.kernel_init, param_dtype=self.param_dtype, name=name
            )
        return layers.Conv(
            features,
            3,
            use_bias=False,
            kernel_init=self.kernel_init,
            param_dtype=self.param_dtype,
            name=name,
        )

    @nn.compact
    def __call__(self, z, injection=None, film=None, mask=None):
        """Applies the block.

        Args:
          z: ``[H, W, C]`` branch state.
          injection: ``[H, W, C]`` or ``None``.
          film: ``(scale, shift)``, each ``[E * C]``, or ``None``.
          mask: ``[C]`` dropout mask or ``None``.

        Returns:
          ``[H, W, C]``.
        """
        gn = lambda name, **kw: layers.GroupNorm(
            self.groups, param_dtype=self.param_dtype, name=name, **kw
        )
        gn1 = gn("gn1", scale_init=self.norm1_scale_init, bias_init=self.norm1_bias_init)
        a = gn1(self._conv3x3(self.expansion * self.channels, "conv1")(z))
        if film is not None:
            scale, shift = film
            a = a * scale + shift
        a = nn.relu(a)
        b = self._conv3x3(self.channels, "conv2")(a)
        if mask is not None:
            b = b * mask
        if injection is not None:
            b = b + injection
        b = gn("gn2")(b)
        return gn("gn3")(nn.relu(b + z))


class MDEQCell(layers.ArchModule):
    """One MDEQ layer ``f(z, x)`` on a tuple of branch states (one sample).

    Attributes:
      config: the architecture (channels, expansion, group counts, weight norm, init).
      param_dtype: parameter dtype.
    """

    @nn.compact
    def __call__(self, z: tuple[jax.Array, ...], x: CellInput) -> tuple[jax.Array, ...]:
        """Applies the cell.

        Args:
          z: per branch ``[H_i, W_i, C_i]`` (``config.branch_shapes``).
          x: the ``CellInput`` (injection, optional FiLM and dropout mask).

        Returns:
          The new state, same structure, shapes and dtypes as ``z``.
        """
        cfg = self.config
        k = cfg.num_branches
        _check_state(cfg, z)
        if not isinstance(x, CellInput):
            raise TypeError(f"`x` must be a CellInput, got {type(x).__name__}.")
        if len(x.injection) != k:
            raise ValueError(f"`x.injection` needs {k} entries (one per branch or None).")
        kernel_init = _cell_kernel_init(cfg)
        out = []
        for i in range(k):
            block = ResidualBlock(
                cfg.channels[i],
                cfg.expansion,
                cfg.block_groups,
                cfg.weight_norm,
                kernel_init,
                self.param_dtype,
                norm1_scale_init=cfg.norm1_scale_init,
                norm1_bias_init=cfg.norm1_bias_init,
                name=f"block{i}",
            )
            out.append(
                block(
                    z[i],
                    x.injection[i],
                    None if x.film is None else x.film[i],
                    None if x.dropout_mask is None else x.dropout_mask[i],
                )
            )
        if k == 1:
            fused = out
        else:
            fused = [
                sum(out[j] if j == i else self._transfer(j, i, out[j]) for j in range(k))
                for i in range(k)
            ]
        new_z = []
        for i in range(k):
            y = nn.relu(fused[i])
            if cfg.weight_norm:
                y = layers.WeightNormConv(
                    cfg.channels[i], 1, kernel_init, self.param_dtype, name=f"post{i}_conv"
                )(y)
            else:
                y = layers.Conv(
                    cfg.channels[i],
                    1,
                    use_bias=False,
                    kernel_init=kernel_init,
                    param_dtype=self.param_dtype,
                    name=f"post{i}_conv",
                )(y)
            y = layers.GroupNorm(
                cfg.aux_groups,
                scale_init=cfg.state_norm_scale,
                param_dtype=self.param_dtype,
                name=f"post{i}_gn",
            )(y)
            new_z.append(y.astype(z[i].dtype))
        return tuple(new_z)

    def _transfer(self, j: int, i: int, y: jax.Array) -> jax.Array:
        """Maps branch ``j``'s block output to branch ``i``'s resolution and width."""
        cfg = self.config
        gn = lambda name: layers.GroupNorm(cfg.num_groups, param_dtype=self.param_dtype, name=name)
        conv = functools.partial(
            layers.conv, use_bias=False, std=cfg.conv_init_std, param_dtype=self.param_dtype
        )
        if j > i:  # lower resolution -> 1x1 conv, GN, nearest upsampling
            y = conv(cfg.channels[i], 1, name=f"fuse{i}_{j}_conv")(y)
            y = gn(f"fuse{i}_{j}_gn")(y)
            return layers.upsample_nearest(y, 2 ** (j - i))
        steps = i - j  # higher resolution -> chain of stride-2 3x3 convs
        for s in range(steps):
            last = s == steps - 1
            width = cfg.channels[i] if last else cfg.channels[j]
            y = conv(width, 3, stride=2, name=f"fuse{i}_{j}_conv{s}")(y)
            y = gn(f"fuse{i}_{j}_gn{s}")(y)
            if not last:
                y = nn.relu(y)
        return y


def apply_cell(config: MDEQConfig, params, z: tuple[jax.Array, ...], x: CellInput) -> tuple:
    """``MDEQCell(config).apply({"params": params}, z, x)`` in ``config.compute_dtype``.

    With ``compute_dtype`` ``"bfloat16"``/``"float16"``, the floating leaves of ``params``,
    ``z`` and ``x`` are cast to it, the cell runs in it, and the output is cast back to the
    dtypes of ``z``: the fixed-point solver keeps a float32 state (and float32 residuals)
    while the convolutions run in low precision.
    """
    module = MDEQCell(config)
    if config.compute_dtype in (None, "float32"):
        return module.apply({"params": params}, z, x)
    low = jnp.dtype(config.compute_dtype)

    def cast(tree):
        return jax.tree.map(
            lambda a: a.astype(low) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a,
            tree,
        )

    out = module.apply({"params": cast(params)}, cast(tuple(z)), cast(x))
    return tuple(o.astype(jnp.result_type(zi)) for o, zi in zip(out, z, strict=True))


def _check_state(cfg: MDEQConfig, z) -> None:
    if not isinstance(z, tuple | list) or len(z) != cfg.num_branches:
        raise ValueError(
            f"`z` must be a tuple of {cfg.num_branches} branch states with shapes "
            f"{cfg.branch_shapes}, got {type(z).__name__} of length "
            f"{len(z) if isinstance(z, tuple | list) else 'n/a'}."
        )
    for i, (zi, shape) in enumerate(zip(z, cfg.branch_shapes, strict=True)):
        if tuple(jnp.shape(zi)) != shape:
            raise ValueError(
                f"`z[{i}]` must have shape {shape} (one sample, [H, W, C]); got "
                f"{tuple(jnp.shape(zi))}. Batch with jax.vmap."
            )


def zeros_state(config: MDEQConfig, dtype: Dtype = jnp.float32) -> tuple[jax.Array, ...]:
    """The all-zero initial state of one sample: per branch ``[H_i, W_i, C_i]`` zeros."""
    return tuple(jnp.zeros(s, dtype) for s in config.branch_shapes)
