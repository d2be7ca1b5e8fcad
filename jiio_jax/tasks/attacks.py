r"""Norm-ball attacks on an MDEQ classifier: the threat set, PGD-k and the JIIO attack.

Images are in ``[-1, 1]``; a perturbation ``delta`` of one image ``x`` is admissible when

.. math:: \delta \in S(x) = \{\|\delta\|_p \le r\} \cap \{-1 - x \le \delta \le 1 - x\}

(``p`` = 2 or inf over all pixels of the sample; the box keeps ``x + delta`` a valid image and
is dropped with ``clip_pixels=False``). ``threat_sets`` builds it as ``jiio.BallBox`` (the
exact Euclidean projection onto ``S(x)``). Both attacks maximise the cross-entropy
``CE(h(z*(x + delta)), y)``:

- ``pgd_attack``: ``delta_{k+1} = Pi_S(delta_k + alpha d_k)`` with ``d_k = g_k / ||g_k||_2``
  (L2) or ``sign(g_k)`` (linf), ``g_k`` the gradient of the CE through a DEQ forward solve and
  its implicit backward (``MDEQClassifier.solve``), ``k`` steps from ``delta_0 = 0`` (or a
  random point of the ball).
- the JIIO attack: ``jiio.solve`` on ``attack_problem``, ``min_delta -CE`` s.t.
  ``z = f(z, inject(x + delta))``, with normalised steps and the projection ``Pi_S`` (the paper's
  attack), one augmented fixed-point solve per image (``AdversarialTask.jiio_attack``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jiio_jax.jiio.projections import BallBox
from jiio_jax.losses import cross_entropy
from jiio_jax.models.mdeq import MDEQClassifier

PyTree = Any
F32 = jnp.float32


def threat_sets(
    images: jax.Array, radius: float | jax.Array, norm: str, clip_pixels: bool = True
) -> BallBox:
    """The batched threat sets ``S(x)`` of images ``[B, H, W, C]`` (``radius`` on their
    ``[-1, 1]`` scale): ``jiio.BallBox.perturbation`` per image, the box dropped with
    ``clip_pixels=False``."""
    radii = jnp.full((images.shape[0],), radius, F32)
    pixel_range = (-1.0, 1.0) if clip_pixels else None
    return jax.vmap(lambda x, r: BallBox.perturbation(x, r, norm, pixel_range))(images, radii)


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


def random_start(key: jax.Array, threats: BallBox, shape: tuple[int, ...]) -> jax.Array:
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
    threats: BallBox,
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
      threats: batched ``BallBox`` (leading axis ``B`` on ``radius``/``lower``/``upper``).
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
