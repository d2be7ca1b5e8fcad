r"""Norm-ball attacks on an MDEQ classifier: the threat set, PGD-k and the JIIO attack.

Images are in ``[-1, 1]``; a perturbation ``delta`` of one image ``x`` is admissible when

.. math:: \delta \in S(x) = \{\|\delta\|_p \le r\} \cap \{-1 - x \le \delta \le 1 - x\}

(``p`` = 2 or inf over all pixels of the sample; the box keeps ``x + delta`` a valid image and
is dropped with ``clip_pixels=False``). ``ThreatSet`` is the Euclidean projection onto
``S(x)``. Both attacks maximise the cross-entropy ``CE(h(z*(x + delta)), y)``:

- ``pgd_attack``: ``delta_{k+1} = Pi_S(delta_k + alpha d_k)`` with ``d_k = g_k / ||g_k||_2``
  (L2) or ``sign(g_k)`` (linf), ``g_k`` the gradient of the CE through a DEQ forward solve and
  its implicit backward (``MDEQClassifier.solve``), ``k`` steps from ``delta_0 = 0`` (or a
  random point of the ball).
- the JIIO attack: ``jiio.solve`` on ``attack_problem``, ``min_delta -CE`` s.t.
  ``z = f(z, inject(x + delta))``, with normalised steps and the projection ``Pi_S`` (the paper's
  attack), one augmented fixed-point solve per image (``AdversarialTask.jiio_attack``).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jiio_jax.configs.adversarial import NORMS
from jiio_jax.losses import cross_entropy
from jiio_jax.models.mdeq import MDEQClassifier

PyTree = Any
F32 = jnp.float32


def _flat_norm(d: jax.Array) -> jax.Array:
    return jnp.sqrt(jnp.sum(jnp.square(d)))


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ThreatSet:
    r"""Projection onto ``{||delta||_p <= radius} ∩ {lower <= delta <= upper}`` (one sample).

    Requires ``lower <= 0 <= upper`` (true for ``from_image``: a valid image is a feasible
    point), so the set is non-empty and scaling towards 0 never leaves the box.

    - linf: the intersection is a box, ``clip(delta, max(lower, -r), min(upper, r))``.
    - l2: the KKT conditions of ``min ||d - y||^2`` over the set give
      ``d(t) = clip(t y, lower, upper)`` with ``t = 1/(1 + lambda)`` in ``(0, 1]``; ``||d(t)||`` is
      non-decreasing in ``t``, so ``t`` is found by bisection (``bisection_steps``) when
      ``||clip(y)|| > r``. A final scaling by ``min(1, r / ||d||)`` (a few ulps inside) makes
      the result feasible exactly in floating point.
    - ``lower``/``upper`` ``None``: the ball only (the reference's projection).

    Attributes:
      radius: ``r > 0`` (scalar, may be traced).
      lower, upper: ``[H, W, C]`` bounds of ``delta`` or ``None``.
      norm: ``"l2"`` or ``"linf"``.
      bisection_steps: L2 bisection iterations (30 resolve ``t`` to float32 precision).
    """

    radius: Any
    lower: Any = None
    upper: Any = None
    norm: str = dataclasses.field(default="l2", metadata={"static": True})
    bisection_steps: int = dataclasses.field(default=30, metadata={"static": True})

    def __post_init__(self):
        if self.norm not in NORMS:
            raise ValueError(f"`norm` must be one of {NORMS}, got {self.norm!r}.")
        if (self.lower is None) != (self.upper is None):
            raise ValueError("`lower` and `upper` must both be given or both be None.")

    @classmethod
    def from_image(
        cls, image: jax.Array, radius: Any, norm: str, clip_pixels: bool = True
    ) -> ThreatSet:
        """The threat set of one image ``[H, W, C]`` in ``[-1, 1]``."""
        if not clip_pixels:
            return cls(radius, norm=norm)
        # min/max with 0: pixels a rounding error outside [-1, 1] must not empty the set.
        lower = jnp.minimum(-1.0 - image, 0.0).astype(image.dtype)
        upper = jnp.maximum(1.0 - image, 0.0).astype(image.dtype)
        return cls(radius, lower, upper, norm=norm)

    def __call__(self, delta: jax.Array) -> jax.Array:
        r = jnp.asarray(self.radius, delta.dtype)
        if self.norm == "linf":
            if self.lower is None:
                return jnp.clip(delta, -r, r)
            return jnp.clip(delta, jnp.maximum(self.lower, -r), jnp.minimum(self.upper, r))
        box = (lambda d: d) if self.lower is None else self._clip
        d = box(delta)
        norm = _flat_norm(d)
        if self.lower is not None:

            def bisect(_, bounds):
                lo, hi = bounds
                mid = 0.5 * (lo + hi)
                inside = _flat_norm(self._clip(mid * delta)) <= r
                return jnp.where(inside, mid, lo), jnp.where(inside, hi, mid)

            zero, one = jnp.zeros((), delta.dtype), jnp.ones((), delta.dtype)
            _, t = jax.lax.fori_loop(0, self.bisection_steps, bisect, (zero, one))
            d = jnp.where(norm > r, self._clip(t * delta), d)
            norm = _flat_norm(d)
        # As jiio.L2Ball: a few ulps inside, so a later norm computation cannot exceed r.
        eps = jnp.finfo(delta.dtype).eps
        scale = jnp.where(norm > r * (1 - 8 * eps), r * (1 - 8 * eps) / jnp.maximum(norm, r), 1)
        return (d * scale).astype(delta.dtype)

    def _clip(self, d: jax.Array) -> jax.Array:
        return jnp.clip(d, self.lower, self.upper)

    def violation(self, delta: jax.Array) -> jax.Array:
        """How far ``delta`` lies outside the set (0 inside): max of the norm and box gaps."""
        if self.norm == "l2":
            gap = _flat_norm(delta) - self.radius
        else:
            gap = jnp.max(jnp.abs(delta)) - self.radius
        gap = jnp.maximum(gap, 0.0)
        if self.lower is not None:
            box_gap = jnp.max(jnp.maximum(self.lower - delta, delta - self.upper))
            gap = jnp.maximum(gap, box_gap)
        return jnp.maximum(gap, 0.0)


def threat_sets(
    images: jax.Array, radius: float | jax.Array, norm: str, clip_pixels: bool = True
) -> ThreatSet:
    """Batched ``ThreatSet`` of images ``[B, H, W, C]`` (``radius`` on their [-1, 1] scale)."""
    radii = jnp.full((images.shape[0],), radius, F32)
    return jax.vmap(lambda x, r: ThreatSet.from_image(x, r, norm, clip_pixels))(images, radii)


def attack_problem(model: MDEQClassifier) -> tuple[Callable, Callable]:
    """The attack as a JIIO problem of one image: ``(f, cost)``, both taking
    ``(z, delta, inj, cell, head, dmask, image, label)``.

    ``f`` is the cell at ``inject(image + delta)`` (with the dropout mask ``dmask`` or none);
    ``cost = log softmax(h(z))[label] = -CE`` (JIIO minimises it).
    """

    # f and the cost take the same trailing args (jiio.solve's convention); passing the
    # parameters explicitly lets the implicit gradient reach them.
    def f(z, delta, inj, cell, head, dmask, image, label):
        del head, label
        x = model.inject(image + delta, inj)
        if dmask is not None:
            x = x._replace(dropout_mask=dmask)
        return model.cell(z, x, cell)

    def cost(z, delta, inj, cell, head, dmask, image, label):
        del delta, inj, cell, dmask, image
        return -cross_entropy(model.head(z, head), label).astype(z[0].dtype)

    return f, cost


def step_scale(norm: str, image_shape: tuple[int, ...]) -> float:
    """L2 length of a unit normalised step: 1 (l2) or ``sqrt(#pixels)`` (linf), so that a linf
    step of relative size ``s`` has RMS entry ``s * r``, like a sign step of size ``s * r``."""
    return 1.0 if norm == "l2" else math.sqrt(math.prod(image_shape))


def random_start(key: jax.Array, threats: ThreatSet, shape: tuple[int, ...]) -> jax.Array:
    """A random point of each sample's ball, projected onto its threat set ``[B, *shape]``.

    linf: uniform in the cube; l2: uniform direction with radius ``r * U^(1/D)`` (uniform in
    the ball).
    """
    batch, dim = shape[0], math.prod(shape[1:])
    k_dir, k_rad = jax.random.split(key)
    r = jnp.reshape(jnp.asarray(threats.radius, F32), (-1,) + (1,) * (len(shape) - 1))
    if threats.norm == "linf":
        delta = jax.random.uniform(k_dir, shape, F32, -1.0, 1.0) * r
    else:
        v = jax.random.normal(k_dir, shape, F32)
        v = v / jnp.sqrt(jnp.sum(v * v, axis=tuple(range(1, len(shape))), keepdims=True))
        u = jax.random.uniform(k_rad, (batch,) + (1,) * (len(shape) - 1), F32)
        delta = v * r * u ** (1.0 / dim)
    return jax.vmap(lambda t, d: t(d))(threats, delta)


def pgd_attack(
    grad_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    threats: ThreatSet,
    shape: tuple[int, ...],
    *,
    steps: int,
    step_size: float,
    key: jax.Array | None = None,
) -> jax.Array:
    r"""PGD-``steps`` maximising a per-example loss; returns the final ``delta`` ``[B, ...]``.

    .. math:: \delta_{k+1} = \Pi_S\big(\delta_k + \alpha\, d_k\big),\quad
              d_k = g_k/\|g_k\|_2 \ (\ell_2)\ \text{or}\ \operatorname{sign}(g_k)\ (\ell_\infty),
              \quad \alpha = \texttt{step\_size}\cdot r

    Args:
      grad_fn: ``delta [B, ...] -> g [B, ...]``, the gradient of the summed per-example loss
        (e.g. CE through a DEQ forward solve and its implicit backward); samples independent.
      threats: batched ``ThreatSet`` (leading axis ``B`` on ``radius``/``lower``/``upper``).
      shape: ``[B, H, W, C]``.
      steps: number of gradient steps ``k``.
      step_size: relative to the radius.
      key: PRNG key for a random start (``None``: ``delta_0 = 0``).

    Returns:
      ``delta`` ``[B, H, W, C]`` inside every sample's threat set (gradients stopped).
    """
    axes = tuple(range(1, len(shape)))
    alpha = jnp.reshape(step_size * jnp.asarray(threats.radius, F32), (-1,) + (1,) * len(axes))
    project = jax.vmap(lambda t, d: t(d))
    delta = jnp.zeros(shape, F32) if key is None else random_start(key, threats, shape)

    def step(_, delta):
        g = jax.lax.stop_gradient(grad_fn(delta)).astype(F32)
        if threats.norm == "l2":
            d = g / (jnp.sqrt(jnp.sum(g * g, axis=axes, keepdims=True)) + 1e-12)
        else:
            d = jnp.sign(g)
        return project(threats, delta + alpha * d)

    return jax.lax.stop_gradient(jax.lax.fori_loop(0, steps, step, delta))
