r"""Norm-ball attacks on an MDEQ classifier: the threat set, PGD-k and the JIIO attack.

Images are in ``[-1, 1]``; a perturbation ``delta`` of one image ``x`` is admissible when

.. math:: \delta \in S(x) = \{\|\delta\|_p \le r\} \cap \{-1 - x \le \delta \le 1 - x\}

(``p`` = 2 or inf over all pixels of the sample; the box keeps ``x + delta`` a valid image and
is dropped with ``clip_pixels=False``). ``threat_sets`` builds it as ``jiio.BallBox`` (the
exact Euclidean projection onto ``S(x)``). Both attacks maximise the cross-entropy
``CE(h(z*(x + delta)), y)``:

- ``pgd_attack``: the library's one PGD (``jiio.pgd``) on ``attack_problem``:
  ``delta_{k+1} = Pi_S(delta_k + alpha d_k)`` with ``d_k = g_k / ||g_k||_2`` (L2) or
  ``sign(g_k)`` (linf), ``g_k`` the gradient of the CE through a DEQ forward solve and its
  implicit backward, ``k`` steps from ``delta_0 = 0`` (or a random point of the ball).
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

from jiio_jax.jiio import BallBox, InnerLoopSolution, pgd
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
    model: MDEQClassifier,
    params: PyTree,
    images: jax.Array,
    labels: jax.Array,
    threats: BallBox,
    *,
    steps: int | jax.Array,
    step_size: float,
    key: jax.Array | None = None,
    dmasks: PyTree = None,
    warm_start: bool = False,
) -> InnerLoopSolution:
    r"""PGD-``steps`` on the CE of each image: ``jiio.pgd`` on ``attack_problem``, vmapped.

    .. math:: \delta_{k+1} = \Pi_S\big(\delta_k + \alpha\, d_k\big),\quad
              d_k = g_k/(\|g_k\|_2 + 10^{-12}) \ (\ell_2)\ \text{or}\
              \operatorname{sign}(g_k)\ (\ell_\infty),
              \quad \alpha = \texttt{step\_size}\cdot r

    with ``g_k`` the gradient of the CE through the model's forward solve (from ``z = 0``) and
    its implicit backward (``jiio.pgd`` descends ``cost = -CE``). No final solve: callers
    re-score ``images + delta`` themselves.

    Args:
      model: the classifier (its ``solver`` and ``backward`` are PGD's).
      params: its parameters (frozen: gradients stopped).
      images: ``[B, H, W, C]`` in ``[-1, 1]``; labels: int ``[B]``.
      threats: batched ``BallBox`` (``threat_sets``).
      steps: number of gradient steps ``k``: a Python int or an int32 scalar (may be traced).
      step_size: relative to the radius.
      key: PRNG key for a random start (``random_start``; ``None``: ``delta_0 = 0``).
      dmasks: per-image dropout masks (training) or ``None`` (eval mode).
      warm_start: ``jiio.pgd``'s: ``False`` (the paper's PGD) solves every step from ``z = 0``
        and the cotangent; ``True`` warm-starts each solve from the previous step's ``z`` and
        adjoint (needs ``model.backward`` ``Implicit``; counts ``adjoint_steps``).

    Returns:
      The batched ``jiio.InnerLoopSolution``: ``x`` is ``delta`` ``[B, H, W, C]`` inside every
      sample's threat set (a constant), ``forward_steps`` ``[B]`` the forward f-evaluations.
    """
    f, cost = attack_problem(model)
    frozen = jax.lax.stop_gradient(params)
    shape = images.shape
    delta0 = jnp.zeros(shape, F32) if key is None else random_start(key, threats, shape)
    alphas = step_size * jnp.broadcast_to(jnp.asarray(threats.radius, F32), shape[:1])
    direction = "normalized" if threats.norm == "l2" else "sign"

    def one(image, label, dmask, threat, d0, alpha):
        args = (frozen["injection"], frozen["cell"], frozen["head"], dmask, image, label)
        return pgd(
            f, cost, model.z0(F32), d0, *args,
            step_size=alpha, num_steps=steps, projection=threat, direction=direction,
            normalize_eps=1e-12, forward_solver=model.solver, backward=model.backward,
            final_solve=False, warm_start=warm_start,
        )  # fmt: skip

    return jax.vmap(one)(images.astype(F32), labels, dmasks, threats, delta0, alphas)
