r"""Adversarial training of an MDEQ classifier: JIIO (the paper's method), PGD-k, or none.

``config.task = "adversarial"``; ``config.model`` and ``config.eval`` are described in
``jiio_jax.configs.adversarial``. Paper §5.2 / ``JIIO_REFERENCE.md`` §4.3, §5.4. Images are in
``[-1, 1]``; ``epsilon`` is measured on the [0, 1] pixel scale (radius ``r = 2 epsilon`` here)
and perturbed images stay in ``[-1, 1]`` (``clip_pixels``; ``jiio_jax.tasks.attacks``).

**JIIO training** (``method="jiio"``). Per image, one augmented fixed-point solve

.. math:: \delta^* = \arg\min_{\delta \in S(x)} -\mathrm{CE}(h(z^*), y)
          \quad\text{s.t.}\quad z^* = f_\theta(z^*, \mathrm{inject}(x + \delta))

with normalised steps and the projection onto ``S(x)`` (``AdversarialTask.jiio_attack``), then

.. math:: L = \operatorname{mean}_b \mathrm{CE}(h(\hat z_b), y_b) + \lambda_J \operatorname{mean}_b
          \frac{\|\epsilon^\top \partial f/\partial z\|^2}{\dim z}\Big|_{(z_{t_b}, \delta_{t_b})},
          \qquad \hat z = f_\theta(z^*, \mathrm{inject}(x + \delta^*)),

the Jacobian penalty at each sample's trajectory point (or at ``(z*, delta*)``). As in the
reference (§2.1-2.2) ``delta*`` is a constant (Danskin's theorem) and ``ẑ`` carries the implicit
gradient ``dL/dθ = u^T ∂f/∂θ``, ``u = (I - J_f^T)^{-1} ∂L/∂ẑ``, warm-started at ``-mu*/B``
(the attack's cost is ``-CE``, the loss averages over ``B``). It is written
``ẑ = z*_implicit + stop_gradient(f(z*) - z*)`` (see ``jiio_jax.tasks.generative``).

**PGD training** (``method="pgd"``): ``delta`` from ``attacks.pgd_attack`` (``model.pgd.steps``
normalised-gradient / sign steps, each a DEQ forward solve + implicit backward, parameters
frozen), then ``L = mean CE(h(z*(x + delta)), y) + lambda_J J(z*)`` with ``delta`` constant and
``z*`` re-solved from zero. **Clean training** (``method="clean"``): the same loss at ``x``.

Variational dropout (``mdeq.dropout > 0``): one mask per sample and step, shared by the attack
and the outer loss (the attacked network is the trained one); never at evaluation.

Epsilon warm-up (``epsilon_warmup_steps``): the training radius grows linearly over the first
steps (evaluation always uses the full radius).

**Training metrics** (batch means): ``ce`` / ``acc`` on the attacked batch (JIIO: at ``ẑ``),
``jac_loss``, ``delta_l2`` (``||delta||_2`` on the [0, 1] scale) and ``epsilon`` (the current
training radius, same scale), ``attack_steps`` (JIIO: augmented-map evaluations; PGD: ``k``),
``residual`` (JIIO: ``||f(z*) - z*|| / ||f(z*)||`` at the attack's returned point; PGD / clean:
the forward solver's residual at ``x + delta``), plus ``attack_ce`` (JIIO: the attack's own CE
estimate at its returned point) or ``solver_steps`` (PGD / clean: forward-solver steps).

**Evaluation** (always eval mode: no dropout; every number from a DEQ re-solved from ``z = 0``
at the final input with the forward solver, never the attack's internal ``z``): ``clean_acc``,
``clean_ce``, ``robust_acc_pgd`` / ``robust_ce_pgd`` under PGD-``config.eval.pgd_steps``,
``robust_acc_jiio`` / ``robust_ce_jiio`` under the JIIO attack, ``residual`` of the clean solve.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jiio_jax import jacobian, jiio, plotting
from jiio_jax.configs import adversarial as adv_config
from jiio_jax.jiio import BallBox, JIIOSolution
from jiio_jax.losses import accuracy, cross_entropy
from jiio_jax.models.mdeq import MDEQClassifier
from jiio_jax.tasks.attacks import (
    attack_problem,
    pgd_attack,
    step_scale,
    threat_sets,
)
from jiio_jax.tasks.base import InnerProblem, Metrics, PyTree, Task, register_task
from jiio_jax.tasks.corruption import to_unit

F32 = jnp.float32


def _mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x.astype(F32))


@register_task("adversarial")
class AdversarialTask(Task):
    """Adversarially trained MDEQ classifier (see the module docstring).

    Parameters: ``{"injection", "cell", "head"}`` of ``MDEQClassifier``.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        s = adv_config.read_config(config)
        self.settings = s
        self.model = MDEQClassifier(s.arch, solver=s.forward, backward=s.backward, **s.failures)
        scale = step_scale(s.norm, s.arch.image_shape)
        # epsilon is on the [0, 1] pixel scale; the images are on [-1, 1] (slope 2).
        self.radius = 2.0 * s.epsilon
        self.eval_radius = 2.0 * s.eval_epsilon
        self.step_scale = scale
        # step_size is relative to the radius: step_scale makes it absolute.
        self.eval_jiio = dataclasses.replace(s.eval_jiio, step_scale=self.eval_radius * scale)

    # -- parameters ---------------------------------------------------------------------------
    def init_params(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        shape = tuple(batch["image"].shape[1:])
        if shape != self.settings.arch.image_shape:
            raise ValueError(
                f"batch images are {shape} but the model is built for "
                f"{self.settings.arch.image_shape} (config.data.image_size, "
                "config.data.image_size, config.data.channels)."
            )
        return jax.jit(self.model.init)(rng)

    # -- building blocks ----------------------------------------------------------------------
    def _dropout_masks(self, key: jax.Array, batch: int) -> PyTree:
        if self.settings.arch.dropout <= 0:
            return None
        return jax.vmap(lambda k: self.model.dropout_masks(k, F32))(jax.random.split(key, batch))

    def _forward(
        self,
        params: PyTree,
        images: jax.Array,
        dmasks: PyTree = None,
        jac_key: jax.Array | None = None,
    ):
        """Solves the DEQ of each image from zero: ``(logits [B, K], Solution, jac [B])``.

        ``jac`` is the Jacobian penalty at the equilibrium (zeros without ``jac_key``).
        """
        model, b = self.model, images.shape[0]
        jac_keys = None if jac_key is None else jax.random.split(jac_key, b)

        def one(image, dmask, key):
            x = model.inject(image, params["injection"])
            if dmask is not None:
                x = x._replace(dropout_mask=dmask)
            sol = model.solve(x, params["cell"])
            jac = jnp.zeros((), F32)
            if key is not None:
                jac = model.jacobian_loss(
                    sol.value, x, params["cell"], key, self.settings.jac_probes
                )
            return model.head(sol.value, params["head"]), sol, jac

        return jax.vmap(one)(images.astype(F32), dmasks, jac_keys)

    def _pgd(
        self,
        params: PyTree,
        images: jax.Array,
        labels: jax.Array,
        *,
        radius: float | jax.Array,
        pgd: adv_config.PGDSettings,
        key: jax.Array,
        dmasks: PyTree = None,
    ) -> jax.Array:
        """PGD perturbations ``[B, H, W, C]`` (``attacks.pgd_attack``; parameters frozen,
        gradients stopped)."""
        s = self.settings
        threats = threat_sets(images, radius, s.norm, s.clip_pixels)
        sol = pgd_attack(
            self.model,
            params,
            images,
            labels,
            threats,
            steps=pgd.steps,
            step_size=pgd.step_size,
            key=key if pgd.random_start else None,
            dmasks=dmasks,
        )
        return sol.x

    def inner_problem(self, params: PyTree, batch: dict[str, jax.Array]) -> InnerProblem:
        r"""The attack of ONE image (vmap it over a batch): ``min_{delta in S(x)} -CE(h(z*), y)``
        s.t. ``z* = f(z*, inject(x + delta))`` (``attacks.attack_problem``).

        Args:
          params: ``{"injection", "cell", "head"}``, passed in ``args`` so that the implicit
            gradient reaches them.
          batch: one example: ``"image"`` ``[H, W, C]``, ``"label"`` ``[]``, optionally
            ``"radius"`` (``[-1, 1]`` scale; default: the evaluation radius) and, in training,
            ``"dropout_mask"``.

        Returns:
          ``InnerProblem``: ``args = (injection, cell, head, dropout_mask, image, label)``,
          ``x0 = delta = 0`` and the projection onto the image's threat set ``S(x)``.
        """
        s = self.settings
        f, cost = attack_problem(self.model)
        image = batch["image"]
        radius = jnp.asarray(batch.get("radius", self.eval_radius), F32)
        pixel_range = (-1.0, 1.0) if s.clip_pixels else None
        threat = BallBox.perturbation(image, radius, s.norm, pixel_range)
        args = (
            params["injection"],
            params["cell"],
            params["head"],
            batch.get("dropout_mask"),
            image.astype(F32),
            batch["label"],
        )
        return InnerProblem(f, cost, self.model.z0(F32), jnp.zeros(image.shape, F32), args, threat)

    def jiio_attack(
        self,
        params: PyTree,
        images: jax.Array,
        labels: jax.Array,
        *,
        radius: float | jax.Array,
        solver: jiio.JIIO,
        dmasks: PyTree = None,
        trajectory_keys: jax.Array | None = None,
        adjoint_init_scale: float | None = None,
    ) -> JIIOSolution:
        """The JIIO attack, one augmented solve per image (vmapped) of ``inner_problem``.

        Args:
          params: the classifier's parameters; the returned ``z`` is differentiable w.r.t. them
            by the implicit function theorem (``delta*`` is a constant: Danskin).
          images: ``[B, H, W, C]`` in ``[-1, 1]``; labels: int ``[B]``.
          radius: threat radius on the ``[-1, 1]`` scale (may be traced).
          solver: the ``jiio.JIIO`` configuration (normalised steps, ``step_scale`` set).
          dmasks: per-sample variational dropout masks or ``None``.
          trajectory_keys: ``[B]`` keys for the Jacobian-penalty trajectory samples, or ``None``.
          adjoint_init_scale: warm start of the implicit backward (``jiio.solve``).

        Returns:
          The batched ``JIIOSolution``; ``x`` is ``delta*`` ``[B, H, W, C]``, ``cost`` is ``-CE``.
        """

        def one(image, label, dmask, key):
            example = {"image": image, "label": label, "radius": radius, "dropout_mask": dmask}
            p = self.inner_problem(params, example)
            return jiio.solve(
                p.f, p.cost, p.z0, p.x0, *p.args,
                solver=solver, projection=p.projection, trajectory_key=key,
                adjoint_init_scale=adjoint_init_scale,
            )  # fmt: skip

        return jax.vmap(one)(images, labels, dmasks, trajectory_keys)

    def _jiio_outputs(
        self,
        params: PyTree,
        images: jax.Array,
        labels: jax.Array,
        sol: JIIOSolution,
        dmasks: PyTree,
        jac_key: jax.Array | None,
    ) -> tuple[jax.Array, jax.Array]:
        """Training logits ``h(ẑ)`` ``[B, K]`` and the Jacobian penalty ``[B]``."""
        s, model = self.settings, self.model
        f, _ = attack_problem(model)
        b = images.shape[0]
        jac_keys = None if jac_key is None else jax.random.split(jac_key, b)
        traj = sol.trajectory_sample if s.jac_at_trajectory else None

        def one(z, delta, image, label, dmask, key, sample):
            args = (params["injection"], params["cell"], params["head"], dmask, image, label)
            frozen = jax.lax.stop_gradient(args)
            f_star = f(jax.lax.stop_gradient(z), delta, *frozen)
            z_hat = jax.tree.map(lambda zi, fi: zi + jax.lax.stop_gradient(fi - zi), z, f_star)
            logits = model.head(z_hat, params["head"])
            jac = jnp.zeros((), F32)
            if key is not None:
                z_t, d_t = sample if sample is not None else (z, delta)
                z_t, d_t = jax.lax.stop_gradient((z_t, d_t))
                jac = jacobian.frobenius_norm_sq(
                    lambda zz: f(zz, d_t, *args), z_t, key, num_probes=s.jac_probes
                )
            return logits, jac

        return jax.vmap(one)(sol.z, sol.x, images, labels, dmasks, jac_keys, traj)

    def train_radius(self, step: jax.Array) -> jax.Array:
        """The training radius at optimizer ``step`` (``epsilon_warmup_steps``), [-1, 1] scale."""
        warmup = self.settings.epsilon_warmup_steps
        if warmup == 0:
            return jnp.asarray(self.radius, F32)
        frac = (jnp.asarray(step, F32) + 1.0) / warmup
        return self.radius * jnp.minimum(frac, 1.0)

    # -- Task interface -----------------------------------------------------------------------
    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        s = self.settings
        radius = self.train_radius(step)
        images, labels = batch["image"].astype(F32), batch["label"].astype(jnp.int32)
        b = images.shape[0]
        k_drop, k_attack, k_jac = jax.random.split(rng, 3)
        dmasks = self._dropout_masks(k_drop, b)
        jac_key = k_jac if s.jac_weight > 0 else None
        if s.method == "jiio":
            traj_keys = None
            if jac_key is not None and s.jac_at_trajectory:
                traj_keys = jax.random.split(k_attack, b)
            sol = self.jiio_attack(
                params,
                images,
                labels,
                radius=radius,
                solver=dataclasses.replace(s.jiio, step_scale=radius * self.step_scale),
                dmasks=dmasks,
                trajectory_keys=traj_keys,
                adjoint_init_scale=-1.0 / b if s.warm_start else None,
            )
            logits, jac = self._jiio_outputs(params, images, labels, sol, dmasks, jac_key)
            delta = sol.x
            extra = {
                "attack_steps": _mean(sol.num_steps),
                "residual": _mean(sol.z_residual),
                "attack_ce": -_mean(sol.cost),
            }
        else:
            delta = jnp.zeros_like(images)
            if s.method == "pgd":
                delta = self._pgd(
                    params,
                    images,
                    labels,
                    radius=radius,
                    pgd=s.pgd,
                    key=k_attack,
                    dmasks=dmasks,
                )
            logits, fsol, jac = self._forward(params, images + delta, dmasks, jac_key)
            steps = s.pgd.steps if s.method == "pgd" else 0
            extra = {
                "attack_steps": jnp.asarray(steps, F32),
                "residual": _mean(fsol.residual),
                "solver_steps": _mean(fsol.num_steps),
            }
        ce = cross_entropy(logits, labels)
        jac_loss = _mean(jac)
        delta_norm = jnp.sqrt(jnp.sum(jnp.square(delta), axis=(1, 2, 3)))
        metrics = {
            "ce": _mean(ce),
            "acc": _mean(accuracy(logits, labels)),
            "jac_loss": jac_loss,
            # On the [0, 1] scale, comparable with epsilon (L2 norm, whatever the threat norm).
            "delta_l2": _mean(delta_norm) / 2.0,
            "epsilon": radius / 2.0,
            **extra,
        }
        total = jnp.mean(ce) + s.jac_weight * jac_loss
        return total.astype(F32), metrics

    def evaluate(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> Metrics:
        """Per-example ``clean_acc``, ``clean_ce``, ``robust_acc_pgd``, ``robust_ce_pgd``,
        ``robust_acc_jiio``, ``robust_ce_jiio`` and ``residual`` (of the clean solve); eval mode
        (see the module docstring)."""
        images, labels = batch["image"].astype(F32), batch["label"].astype(jnp.int32)
        params = jax.lax.stop_gradient(params)
        d_pgd = self._eval_pgd(params, images, labels, rng)
        d_jiio = self._eval_jiio(params, images, labels)
        # One batched solve of [x; x + delta_pgd; x + delta_jiio], each re-solved from z = 0:
        # never the attacks' internal equilibria.
        b = images.shape[0]
        stacked = jnp.concatenate([images, images + d_pgd, images + d_jiio])
        logits, sol, _ = self._forward(params, stacked)
        labels3 = jnp.tile(labels, 3)
        acc, ce = accuracy(logits, labels3), cross_entropy(logits, labels3)
        return {
            "clean_acc": acc[:b],
            "clean_ce": ce[:b],
            "residual": sol.residual[:b].astype(F32),
            "robust_acc_pgd": acc[b : 2 * b],
            "robust_ce_pgd": ce[b : 2 * b],
            "robust_acc_jiio": acc[2 * b :],
            "robust_ce_jiio": ce[2 * b :],
        }

    def _eval_pgd(self, params, images, labels, rng) -> jax.Array:
        """Eval-mode PGD-``config.eval.pgd_steps`` perturbations ``[B, H, W, C]``."""
        return self._pgd(
            params, images, labels, radius=self.eval_radius, pgd=self.settings.eval_pgd, key=rng
        )

    def _eval_jiio(self, params, images, labels) -> jax.Array:
        """Eval-mode JIIO-attack perturbations ``[B, H, W, C]``."""
        sol = self.jiio_attack(
            params, images, labels, radius=self.eval_radius, solver=self.eval_jiio
        )
        return jax.lax.stop_gradient(sol.x)

    def images(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, Any]:
        """``"attack"``: an ``ImagePanel`` of clean | adversarial | ``|delta|`` (each image's
        ``|delta|`` divided by its maximum) for the first ``N = min(B, num_image_examples)``
        images, in ``[0, 1]``, labelled with the true class and the eval-mode predictions on the
        clean and the adversarial image, under the evaluation attack of the training method (JIIO
        for ``method="jiio"``, PGD otherwise; one attack keeps this cheap to compile)."""
        n = min(batch["image"].shape[0], self.settings.num_image_examples)
        images = batch["image"][:n].astype(F32)
        labels = batch["label"][:n].astype(jnp.int32)
        params = jax.lax.stop_gradient(params)
        if self.settings.method == "jiio":
            delta, attack = self._eval_jiio(params, images, labels), "JIIO"
        else:
            delta, attack = self._eval_pgd(params, images, labels, rng), "PGD"
        # Predictions from equilibria re-solved at each input, as in ``evaluate``.
        logits, _, _ = self._forward(params, jnp.concatenate([images, images + delta]))
        pred = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        mag = jnp.abs(delta)
        mag = mag / jnp.maximum(jnp.max(mag, axis=(1, 2, 3), keepdims=True), 1e-12)
        tiles = jnp.stack([to_unit(images), to_unit(images + delta), mag], axis=1)
        panel = plotting.ImagePanel(
            jnp.clip(tiles, 0.0, 1.0),
            ("clean", "adversarial", "|delta|"),
            f"{attack} attack",
            {"true": labels, "pred": pred[:n], "adv pred": pred[n:]},
        )
        return {"attack": panel}
