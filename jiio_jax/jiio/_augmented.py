r"""The augmented map of JIIO on the flat joint state ``s = [z; x; mu]``.

For the layer ``f(z, x)`` and the inner cost ``C(z, x)`` (``args`` omitted), one application
at step ``t`` costs one evaluation of ``(f, C)`` and one VJP with cotangents ``(mu, 1)``:

.. math::
    \hat z = f(z, x),\quad g_z = \nabla_z C + J_z^\top \mu,\quad g_x = \nabla_x C + J_x^\top \mu

    z^+ = z + \tau_z (\hat z - z),\quad \mu^+ = \mu + \tau_\mu (g_z - \mu),\quad
    x^+ = \Pi\big(x - \alpha_t\, d\big),\ d = g_x \text{ or } g_x / (\|g_x\| + \epsilon)

Opt-in x-step rules (issue 14's "fewer steps" ideas; each measured worse than the plain step on
the trained dense decoder, see ``experiments/results/jiio_ideas.md``) change ``d`` through a
carry ``XCarry`` over the evaluated points: RMSprop scaling ``g_x / (sqrt(v_hat) + eps)``,
Barzilai-Borwein ``(s^T s / s^T y) / alpha_t * g_x`` (``s``, ``y``: the changes of ``x`` and
``g_x`` since the previous evaluated point; clipped to ``[1/clip, clip]`` times ``alpha_t``)
and heavy-ball momentum ``m = beta m + g_x, d = m``. The map then depends on the carry, so it
is not a stationary fixed-point map for the accelerator.

Fixed points satisfy ``z = f(z, x)`` (equilibrium), ``mu = (I - J_z^T)^{-1} grad_z C`` (the
adjoint, i.e. the Lagrange multiplier of the equilibrium constraint) and ``x = Pi(x - a g_x)``
(stationarity of the reduced problem ``min_x C(z*(x), x)``; ``g_x`` is its gradient).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


class Layout(NamedTuple):
    """Static layout of the flat joint state ``[z (nz); x (nx); mu (nz)]``."""

    nz: int
    nx: int
    unravel_z: Callable
    unravel_x: Callable

    def split(self, s: jax.Array):
        nz, nx = self.nz, self.nx
        return s[:nz], s[nz : nz + nx], s[nz + nx :]

    def unflatten(self, s: jax.Array):
        zf, xf, muf = self.split(s)
        return self.unravel_z(zf), self.unravel_x(xf), self.unravel_z(muf)


def make_layout(z0: PyTree, x0: PyTree) -> Layout:
    zf, unravel_z = ravel_pytree(z0)
    xf, unravel_x = ravel_pytree(x0)
    return Layout(int(zf.size), int(xf.size), unravel_z, unravel_x)


def flatten_state(z: PyTree, x: PyTree, mu: PyTree) -> jax.Array:
    return jnp.concatenate([ravel_pytree(z)[0], ravel_pytree(x)[0], ravel_pytree(mu)[0]])


def project_x_block(layout: Layout, projection: Callable, s: jax.Array) -> jax.Array:
    """Replaces the x block of ``s`` by its projection."""
    zf, xf, muf = layout.split(s)
    xf = ravel_pytree(projection(layout.unravel_x(xf)))[0]
    return jnp.concatenate([zf, xf, muf])


def _safe_ratio(num: jax.Array, den: jax.Array) -> jax.Array:
    # 0/0 -> 0: an exact zero residual with a zero reference is converged.
    return num / (den + jnp.finfo(num.dtype).tiny)


class XCarry(NamedTuple):
    """State of the opt-in x-step rules (each ``[nx]``, or ``[0]`` when its rule is off)."""

    second_moment: jax.Array  # RMSprop: running mean of g_x^2
    momentum: jax.Array  # heavy ball: m
    x_prev: jax.Array  # Barzilai-Borwein: x and raw g_x at the previous evaluated point
    g_prev: jax.Array


X_RULES = ("none", "rmsprop", "barzilai_borwein")


class AugmentedMap(NamedTuple):
    """``F(s, t, with_blocks, carry) -> (F(s), cost(s), joint_residual, ||F(s)||, blocks,
    carry)``; see the module docstring.

    At the input point ``s``: the joint residual is ``||F(s) - s|| / ||F(s)||``; ``||F(s)||`` is
    non-finite iff ``F(s)`` is. With ``with_blocks=True``, ``blocks`` is ``[3]``: the
    equilibrium residual ``||f(z,x) - z|| / ||f(z,x)||``, the adjoint residual
    ``||g_z - mu|| / ||g_z||`` and the projected-gradient stationarity
    ``||x - Pi(x - alpha_t g_x)|| / alpha_t`` (``= ||g_x||`` without a projection; absolute, in
    cost units per unit of x); else ``None`` (the fixed-length loop skips them: at batch 64 on
    CPU their reductions cost a third of a step). ``carry`` (``XCarry``) is only read and
    returned by the opt-in x-step rules; the plain map ignores it.
    """

    f: Callable
    cost: Callable
    args: tuple
    layout: Layout
    projection: Callable | None  # None: unconstrained (skips the projection ops)
    alpha: Callable  # step -> alpha_t
    z_damping: float
    mu_damping: float
    normalize_step: bool
    normalize_eps: float
    x_rule: str = "none"  # one of X_RULES
    precondition_decay: float = 0.9  # RMSprop's running-mean decay
    precondition_eps: float = 1e-8
    x_momentum: float = 0.0  # heavy-ball beta (0: off)
    bb_clip: float = 10.0

    def init_carry(self, s: jax.Array) -> XCarry:
        """The rules' initial state (zeros; ``[0]`` arrays for the rules that are off)."""
        nx = self.layout.nx

        def zeros(on: bool) -> jax.Array:
            return jnp.zeros((nx if on else 0,), s.dtype)

        bb = self.x_rule == "barzilai_borwein"
        return XCarry(
            zeros(self.x_rule == "rmsprop"), zeros(self.x_momentum > 0), zeros(bb), zeros(bb)
        )

    def _x_direction(self, xf, gxf, alpha, t, carry: XCarry):
        """The x step's direction ``d`` and the new carry (see the module docstring)."""
        dtype = gxf.dtype
        d, new = gxf, carry
        if self.x_rule == "rmsprop":
            beta = self.precondition_decay
            v = beta * carry.second_moment + (1 - beta) * jnp.square(gxf)
            v_hat = v / (1 - beta ** (jnp.asarray(t, dtype) + 1))
            d = gxf / (jnp.sqrt(v_hat) + self.precondition_eps)
            new = new._replace(second_moment=v)
        elif self.x_rule == "barzilai_borwein":
            s_, y_ = xf - carry.x_prev, gxf - carry.g_prev
            sy, ss = jnp.vdot(s_, y_), jnp.vdot(s_, s_)
            # BB1 step s's / s'y; the first point (no pair yet) and a non-positive curvature
            # estimate keep alpha_t.
            ok = (jnp.asarray(t) > 0) & (sy > 0) & jnp.isfinite(ss / sy)
            ratio = jnp.where(ok, ss / jnp.where(ok, sy, 1) / alpha, 1)
            d = gxf * jnp.clip(ratio, 1 / self.bb_clip, self.bb_clip)
            new = new._replace(x_prev=xf, g_prev=gxf)
        if self.x_momentum > 0:
            m = self.x_momentum * carry.momentum + d
            d = m
            new = new._replace(momentum=m)
        return d, new

    def __call__(self, s: jax.Array, t: jax.Array, with_blocks: bool, carry: XCarry):
        layout = self.layout
        zf, xf, muf = layout.split(s)
        z, x = layout.unravel_z(zf), layout.unravel_x(xf)
        mu = layout.unravel_z(muf)

        def layer_and_cost(z_, x_):
            return self.f(z_, x_, *self.args), self.cost(z_, x_, *self.args)

        (fz, c), vjp = jax.vjp(layer_and_cost, z, x)
        gz, gx = vjp((mu, jnp.ones_like(c)))
        fzf, gzf, gxf = (ravel_pytree(v)[0] for v in (fz, gz, gx))
        dz, dmu = fzf - zf, gzf - muf
        alpha = jnp.asarray(self.alpha(t), s.dtype)

        def proj(v):
            if self.projection is None:
                return v
            return ravel_pytree(self.projection(layout.unravel_x(v)))[0]

        d, carry = self._x_direction(xf, gxf, alpha, t, carry)
        raw_step = proj(xf - alpha * gxf)
        if self.normalize_step:
            x_new = proj(xf - alpha * d / (jnp.linalg.norm(d) + self.normalize_eps))
        elif self.x_rule == "none" and self.x_momentum == 0:
            x_new = raw_step
        else:
            x_new = proj(xf - alpha * d)
        f_s = jnp.concatenate([zf + self.z_damping * dz, x_new, muf + self.mu_damping * dmu])
        g = f_s - s
        sq_g, sq_f = jnp.sum(jnp.square(g)), jnp.sum(jnp.square(f_s))
        joint = jnp.sqrt(_safe_ratio(sq_g, sq_f)).astype(s.dtype)
        f_norm = jnp.sqrt(sq_f).astype(s.dtype)
        blocks = None
        if with_blocks:
            stationarity = gxf if self.projection is None else (xf - raw_step) / alpha
            sq_dz, sq_fz, sq_dmu, sq_gz = jnp.sum(jnp.square(jnp.stack([dz, fzf, dmu, gzf])), 1)
            blocks = jnp.stack(
                [
                    jnp.sqrt(_safe_ratio(sq_dz, sq_fz)),
                    jnp.sqrt(_safe_ratio(sq_dmu, sq_gz)),
                    jnp.linalg.norm(stationarity),
                ]
            ).astype(s.dtype)
        return f_s, jnp.asarray(c, s.dtype), joint, f_norm, blocks, carry
