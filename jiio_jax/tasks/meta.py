r"""iMAML-style meta-learning by context adaptation: JIIO vs projected Adam as inner solver.

``config.task = "meta"``; batches are episodes (``jiio_jax.data.episodes``), ``config.model``
is described in ``jiio_jax.configs.meta.default_model_config``. Paper §4.4 and §1.10 of
``JIIO_REFERENCE.md``.

**Inner problem** (per episode, ``S = n_way * k_shot`` support pairs ``(x_i, y_i)``). The
learner is ``MDEQMetaLearner``: an image stem ``u_i = Stem(x_i)``, a cell FiLM-conditioned on a
task context ``v`` and a linear head. Adaptation fits ``v`` alone:

.. math:: v^* = \arg\min_v\; n\,S\Big(\tfrac1S\sum_i \mathrm{CE}(h(z_i), y_i)
          + \lambda\,\tfrac1D\|v\|^2\Big)
          \quad\text{s.t.}\quad z_i = f_\theta(z_i, u_i, \mathrm{FiLM}(v))\;\forall i,

(``n = n_way``, ``D = context_dim``, ``lambda = model.context_l2``; with the reference's
``n = S = 5``, ``D = 400`` this is its ``5 sum_i CE_i + ||v||^2 / 16``). One episode is one
``jiio.solve`` problem: ``z`` is the support states stacked on a leading ``S`` axis (the cell is
vmapped over them inside ``f``), ``x = v``, so the joint state is the reference's
``[z_1..z_S; v; mu_1..mu_S]``, iterated with Anderson (``model.jiio``; Type-II in the
reference). ``model.method = "projected_adam"`` instead runs the reference's baseline (§1.10):
Adam on ``v``, each step a warm-started forward solve of the support states and of their
adjoints (``jiio.projected_adam`` on the same problem: one solve over the stacked states, like
the reference's; Broyden steps count evaluations of the whole support set, as JIIO's).
Episodes are vmapped; the ``S`` support states of an episode start at zero, ``v`` at zero.

**Outer loss.** With ``v*`` held constant (no differentiation through the adaptation, as in the
reference), each query image gets its own equilibrium ``z_q = f_theta(z_q, Stem(x_q),
FiLM(v*))`` (``model.forward`` solver); the loss is the query cross-entropy, differentiated by
the implicit function theorem at the query equilibrium (``model.backward``, zero warm start),
plus ``jac_weight`` times the Hutchinson Jacobian penalty at the inner trajectory sample (JIIO;
the final support equilibrium for projected Adam) and at the query equilibria. Gradients reach
the stem, FiLM, cell and head parameters; the inner solve itself runs on stopped parameters.
Unlike the reference (§7.12), the trajectory penalty pairs each sampled ``(z_t, v_t)`` with its
own episode's support injections.

**Evaluation** (no dropout, no penalty: the model has no train-only layers) adapts ``v`` on the
support set with each of ``model.eval_methods`` (JIIO at ``config.eval.jiio_steps``, by
default the training budget) and reports per-episode query accuracy and loss,
support loss and inner steps, suffixed by the method (``query_acc_jiio``,
``query_acc_projected_adam``, ...), and the same model without adaptation (``v = 0``:
``query_acc_unadapted``, chance level for a learner that relies on its context, and
``support_loss_unadapted``).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections

from jiio_jax import jacobian, jiio
from jiio_jax.configs import common as cc
from jiio_jax.configs.meta import (
    METHODS,
    build_adam,
    build_meta_arch,
    check_choice,
    check_float,
    check_int,
    check_methods,
    eval_jiio,
)
from jiio_jax.data.episodes import (
    EpisodeInfo,
    episode_info,
    make_episode_iterator,
    read_episode_config,
)
from jiio_jax.deq import Implicit
from jiio_jax.losses import accuracy, cross_entropy
from jiio_jax.models import injections
from jiio_jax.models.cell import CellInput
from jiio_jax.models.mdeq import MDEQMetaLearner
from jiio_jax.tasks.base import InnerProblem, Metrics, PyTree, Task, register_task

F32 = jnp.float32


class InnerResult(NamedTuple):
    """The adaptation of one episode, or of ``B`` along a leading axis (``MetaTask.adapt``);
    constants: no gradient flows through them.

    Attributes:
      context: ``v*`` ``[context_dim]``.
      z: support equilibria, per branch ``[S, H_i, W_i, C_i]``.
      support_loss: mean support cross-entropy at ``z``.
      support_acc: support accuracy at ``z``.
      cost: the inner cost at the returned point.
      steps: JIIO: augmented-map evaluations (one cell + one VJP over the support set each);
        projected Adam: Adam steps.
      fevals: cell evaluations over the support set in forward solves (JIIO: = ``steps``;
        projected Adam: its forward solves, excluding the adjoint solves).
      trajectory: ``(z_t, v_t)`` for the Jacobian penalty, or ``None``.
    """

    context: jax.Array
    z: tuple[jax.Array, ...]
    support_loss: jax.Array
    support_acc: jax.Array
    cost: jax.Array
    steps: jax.Array
    fevals: jax.Array
    trajectory: Any


@register_task("meta")
class MetaTask(Task):
    """Few-shot classification by adapting a FiLM context with JIIO or projected Adam.

    Parameters: ``{"injection": {"stem", "film"}, "cell", "head"}`` of ``MDEQMetaLearner``.
    The task brings its own data (``dataset_info``, ``make_iterator``: episodes instead of
    ``jiio_jax.data`` image batches). See the module docstring for the losses.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        self.data = read_episode_config(config.data)
        m = config.model
        self.method = check_choice("method", m.method, METHODS)
        self.eval_methods = check_methods(m.eval_methods)
        self.arch = build_meta_arch(config, self.data.image_size, self.data.n_way)
        self.context_l2 = check_float("context_l2", m.context_l2, positive=False)
        self.jac_weight = check_float("jac_weight", m.jac_weight, positive=False)
        self.jac_probes = check_int("jac_probes", m.jac_probes, 1)
        backward = cc.backward("model.backward", m.backward)
        self.model = cc.deq_model(MDEQMetaLearner, self.arch, m, backward)
        self.jiio = cc.splat(
            "model.jiio", jiio.JIIO, m.jiio, backward=backward, **cc.failure_policy(m)
        )
        self.eval_jiio = eval_jiio(config, self.jiio)  # meta-testing's (config.eval)
        self.adam = build_adam(m.adam)
        self.num_support = self.data.n_way * self.data.k_shot
        # Builds the class pools now, so a split too small for n_way fails at construction.
        self.info = episode_info(config.data)

    # -- data ---------------------------------------------------------------------------------
    def dataset_info(self) -> EpisodeInfo:
        """Shapes and sizes of the episodes (used by the training loop)."""
        return self.info

    def make_iterator(self, split: str, batch_size: int, **kwargs: Any):
        """Episode batches (``jiio_jax.data.make_episode_iterator``; used by the loop)."""
        return make_episode_iterator(self.config.data, split, batch_size, **kwargs)

    def split_batch(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        """``(support_images, support_labels, query_images, query_labels)``, episodes first."""
        s = self.num_support
        images, labels = batch["image"].astype(F32), batch["label"]
        return images[:, :s], labels[:, :s], images[:, s:], labels[:, s:]

    # -- parameters ---------------------------------------------------------------------------
    def init_params(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        shape = tuple(batch["image"].shape[-3:])
        if shape != self.arch.image_shape:
            raise ValueError(
                f"batch images are {shape} but the model is built for {self.arch.image_shape} "
                "(config.data.image_size, config.data.image_size, 1)."
            )
        return jax.jit(self.model.init)(rng)

    # -- the model pieces ---------------------------------------------------------------------
    def stems(self, images: jax.Array, inj: PyTree) -> tuple:
        """Stem injections of ``images`` ``[n, H, W, 1]``: per branch ``[n, ...]`` or None."""
        stem = injections.ImageStem(self.arch)
        return jax.vmap(lambda im: stem.apply({"params": inj["stem"]}, im))(images)

    def support_map(self, z: tuple, v: jax.Array, stems: tuple, inj: PyTree, cell: PyTree, *_):
        """The cell on every support state, FiLM-conditioned on ``v`` (``f`` of the inner
        problem; extra trailing args are the cost's)."""
        film = self.model.film(v, inj)

        def one(zi, ui):
            return self.model.cell(zi, CellInput(injection=ui, film=film), cell)

        return jax.vmap(one)(z, stems)

    def support_cost(self, z, v, stems, inj, cell, head, labels) -> jax.Array:
        """The inner cost ``n S (mean_i CE_i + lambda mean_k v_k^2)`` of one episode."""
        del stems, inj, cell
        logits = jax.vmap(self.model.head, in_axes=(0, None))(z, head)
        reg = self.context_l2 * jnp.mean(jnp.square(v))
        return self.data.n_way * labels.shape[0] * (jnp.mean(cross_entropy(logits, labels)) + reg)

    def adapt(
        self,
        params: PyTree,
        images: jax.Array,
        labels: jax.Array,
        method: str,
        keys: jax.Array | None = None,
        solver: jiio.JIIO | None = None,
    ) -> InnerResult:
        """Adapts a context to each episode's support set (episodes vmapped).

        Args:
          params: model parameters (used as constants).
          images: support images ``[B, S, H, W, 1]``.
          labels: support labels ``[B, S]``.
          method: "jiio" or "projected_adam".
          keys: ``[B]`` PRNG keys; if given, ``trajectory`` holds a point per episode for the
            Jacobian penalty.
          solver: the JIIO of ``method="jiio"``; default ``self.jiio`` (training's;
            meta-testing passes ``self.eval_jiio``).

        Returns:
          An ``InnerResult`` with a leading episode axis ``B``.
        """

        def one(im, lab, key):
            return self._adapt_one(params, im, lab, method, key, solver or self.jiio)

        return jax.vmap(one)(images.astype(F32), labels, keys)

    def inner_problem(self, params: PyTree, batch: dict[str, jax.Array]) -> InnerProblem:
        """ONE episode's adaptation problem (vmap it over episodes): the context ``v`` minimising
        ``support_cost`` s.t. every support state is an equilibrium of ``support_map``.

        Args:
          params: model parameters, used as constants (no gradient through the adaptation).
          batch: the episode's support set: ``"image"`` ``[S, H, W, 1]``, ``"label"`` ``[S]``.

        Returns:
          ``InnerProblem``: ``args = (stems, injection, cell, head, labels)``, ``z0`` the ``S``
          stacked zero states, ``x0 = v = 0``, no projection.
        """
        p = jax.lax.stop_gradient(params)
        labels = batch["label"]
        z0 = jax.tree.map(lambda a: jnp.zeros((labels.shape[0], *a.shape), F32), self.model.z0(F32))
        v0 = jnp.zeros((self.arch.context_dim,), F32)
        stems = self.stems(batch["image"], p["injection"])
        args = (stems, p["injection"], p["cell"], p["head"], labels)
        return InnerProblem(self.support_map, self.support_cost, z0, v0, args, None)

    def _adapt_one(self, params, images, labels, method, key, solver) -> InnerResult:
        problem = self.inner_problem(params, {"image": images, "label": labels})
        head = problem.args[3]
        if method == "jiio":
            sol = jiio.solve(
                problem.f, problem.cost, problem.z0, problem.x0, *problem.args,
                solver=solver, trajectory_key=key,
            )  # fmt: skip
            steps = fevals = sol.num_steps
            trajectory = sol.trajectory_sample
        else:
            sol = jiio.projected_adam(
                problem.f, problem.cost, problem.z0, problem.x0, *problem.args,
                num_steps=self.adam.num_steps, learning_rate=self.adam.learning_rate,
                forward_solver=self.adam.solver, adjoint=Implicit(self.adam.solver),
            )  # fmt: skip
            steps = jnp.asarray(self.adam.num_steps, jnp.int32)
            fevals = sol.forward_steps  # each evaluation covers the support set, as JIIO's
            trajectory = (sol.z, sol.x) if key is not None else None
        z = jax.lax.stop_gradient(sol.z)
        logits = jax.vmap(self.model.head, in_axes=(0, None))(z, head)
        return InnerResult(
            context=jax.lax.stop_gradient(sol.x),
            z=z,
            support_loss=jnp.mean(cross_entropy(logits, labels)),
            support_acc=jnp.mean(accuracy(logits, labels)),
            cost=sol.cost.astype(F32),
            steps=steps,
            fevals=fevals,
            trajectory=trajectory,
        )

    def predict(
        self, params: PyTree, contexts: jax.Array, images: jax.Array
    ) -> tuple[jax.Array, tuple[jax.Array, ...], jax.Array]:
        """Logits of each episode's images at their own equilibria, given its context.

        Contexts are constants; the logits are differentiable w.r.t. ``params`` through the
        implicit backward of each equilibrium. All ``B * n`` images are solved in one vmap
        (nesting a per-image vmap inside a per-episode one hits an unimplemented conv batching
        rule of JAX 0.10 in second-order passes under the loop's mesh).

        Args:
          params: model parameters.
          contexts: ``[B, context_dim]``.
          images: ``[B, n, H, W, 1]``.

        Returns:
          ``(logits [B, n, n_way], z* per branch [B, n, ...], solver steps [B, n])``.
        """
        b, n = images.shape[:2]
        inj, cell = params["injection"], params["cell"]
        contexts = jnp.repeat(jax.lax.stop_gradient(contexts), n, axis=0)
        films = jax.vmap(self.model.film, in_axes=(0, None))(contexts, inj)
        stems = self.stems(images.reshape(b * n, *images.shape[2:]).astype(F32), inj)

        def one(stem, film):
            sol = self.model.solve(CellInput(injection=stem, film=film), cell)
            return self.model.head(sol.value, params["head"]), sol.value, sol.num_steps

        out = jax.vmap(one)(stems, films)
        return jax.tree.map(lambda a: a.reshape(b, n, *a.shape[1:]), out)

    def jacobian_penalty(
        self,
        params: PyTree,
        support_images: jax.Array,
        trajectory: tuple[tuple[jax.Array, ...], jax.Array],
        query_images: jax.Array,
        query_z: tuple[jax.Array, ...],
        contexts: jax.Array,
        key: jax.Array,
    ) -> jax.Array:
        """Batch mean of ``J(z_t, v_t) + J(z_q*, v*)``: Hutchinson estimates of
        ``||df/dz||_F^2 / numel(z)`` over each episode's support states at its trajectory
        sample and over its query equilibria.

        Differentiable w.r.t. the parameters (points and contexts are constants). All terms
        come from ONE batched VJP pass over the ``B (S + Q)`` stacked states (half the
        second-order graph of two passes, and a single vmap level, see ``predict``), each state
        with its own FiLM context; row ``i`` of the map is scaled by
        ``1 / sqrt(B n_i numel(z_i))`` (``n_i`` = the size of its group, ``S`` or ``Q``), so the
        unnormalised estimate for the block-diagonal Jacobian is exactly that mean.

        Args:
          params: model parameters.
          support_images: ``[B, S, H, W, 1]``.
          trajectory: ``(z_t per branch [B, S, ...], v_t [B, D])``.
          query_images: ``[B, Q, H, W, 1]``.
          query_z: query equilibria, per branch ``[B, Q, ...]``.
          contexts: ``v*`` ``[B, D]``.
          key: PRNG key of the probes.
        """
        (z_t, v_t), z_q, v_q = jax.lax.stop_gradient((trajectory, query_z, contexts))
        b, n_s = support_images.shape[:2]
        n_q = query_images.shape[1]

        def rows(a):  # [B, n, ...] -> [B n, ...]
            return a.reshape(-1, *a.shape[2:])

        images = jnp.concatenate([rows(support_images), rows(query_images)]).astype(F32)
        z = jax.tree.map(lambda a, c: jnp.concatenate([rows(a), rows(c)]), z_t, z_q)
        ctx = jnp.concatenate([jnp.repeat(v_t, n_s, axis=0), jnp.repeat(v_q, n_q, axis=0)])
        weight = jnp.concatenate(
            [jnp.full((b * n_s,), 1.0 / n_s, F32), jnp.full((b * n_q,), 1.0 / n_q, F32)]
        )
        scale = jnp.sqrt(weight / (b * self.arch.state_size))
        inj, cell = params["injection"], params["cell"]
        stems = self.stems(images, inj)
        films = jax.vmap(self.model.film, in_axes=(0, None))(ctx, inj)

        def scaled_map(zz):
            def one(zi, ui, fi, si):
                out = self.model.cell(zi, CellInput(injection=ui, film=fi), cell)
                return jax.tree.map(lambda o: si * o, out)

            return jax.vmap(one)(zz, stems, films, scale)

        return jacobian.frobenius_norm_sq(
            scaled_map, z, key, num_probes=self.jac_probes, normalize=False
        )

    # -- Task interface -----------------------------------------------------------------------
    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        del step
        s_img, s_lab, q_img, q_lab = self.split_batch(batch)
        use_jac = self.jac_weight > 0
        k_traj, k_jac = jax.random.split(rng)
        traj_keys = jax.random.split(k_traj, s_img.shape[0]) if use_jac else None
        inner = self.adapt(params, s_img, s_lab, self.method, traj_keys)
        logits, z_q, q_steps = self.predict(params, inner.context, q_img)
        jac = jnp.zeros((), F32)
        if use_jac:
            jac = self.jacobian_penalty(
                params, s_img, inner.trajectory, q_img, z_q, inner.context, k_jac
            )
        per_episode = {
            "query_loss": jnp.mean(cross_entropy(logits, q_lab), axis=-1),
            "query_acc": jnp.mean(accuracy(logits, q_lab), axis=-1),
            "query_steps": jnp.mean(q_steps.astype(F32), axis=-1),
            "support_loss": inner.support_loss,
            "support_acc": inner.support_acc,
            "inner_cost": inner.cost,
            "inner_steps": inner.steps.astype(F32),
            "inner_fevals": inner.fevals.astype(F32),
            "context_norm": jnp.linalg.norm(inner.context, axis=-1),
        }
        metrics = {k: jnp.mean(v) for k, v in per_episode.items()}
        metrics["jac_loss"] = jac
        total = metrics["query_loss"] + self.jac_weight * jac
        return total.astype(F32), metrics

    def evaluate(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> Metrics:
        """Per-episode metrics (eval mode: the model has no train-only layers).

        For every method of ``model.eval_methods``: ``query_acc_<method>``,
        ``query_loss_<method>``, ``support_loss_<method>`` and ``inner_steps_<method>``. And
        without adaptation (``v = 0``), the baseline the inner solve must beat:
        ``query_acc_unadapted`` and ``support_loss_unadapted``.
        """
        del rng
        s_img, s_lab, q_img, q_lab = self.split_batch(batch)
        b, s = s_lab.shape
        inners = [
            self.adapt(params, s_img, s_lab, method, solver=self.eval_jiio)
            for method in self.eval_methods
        ]
        # Every context (one per method, and v = 0) in ONE batched solve over all images, so
        # the query solver and head are traced and compiled once, not once per method.
        contexts = [inner.context for inner in inners] + [jnp.zeros_like(inners[0].context)]
        images = jnp.concatenate([s_img, q_img], axis=1)
        logits, _, _ = self.predict(
            params, jnp.concatenate(contexts), jnp.tile(images, (len(contexts), 1, 1, 1, 1))
        )
        logits = logits.reshape(len(contexts), b, *logits.shape[1:])
        metrics = {}
        for method, inner, out in zip(self.eval_methods, inners, logits, strict=False):
            metrics[f"query_acc_{method}"] = jnp.mean(accuracy(out[:, s:], q_lab), axis=-1)
            metrics[f"query_loss_{method}"] = jnp.mean(cross_entropy(out[:, s:], q_lab), -1)
            metrics[f"support_loss_{method}"] = inner.support_loss
            metrics[f"inner_steps_{method}"] = inner.steps.astype(F32)
        metrics["support_loss_unadapted"] = jnp.mean(cross_entropy(logits[-1, :, :s], s_lab), -1)
        metrics["query_acc_unadapted"] = jnp.mean(accuracy(logits[-1, :, s:], q_lab), axis=-1)
        return metrics
