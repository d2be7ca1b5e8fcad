r"""Generative modelling and inverse problems with an MDEQ decoder (JIIO) and the paper's
Table 1 baselines (VAE, RAE; MDEQ or conv decoder).

``config.task = "generative"``; ``config.model`` is described in
``jiio_jax.configs.generative.default_model_config``. Paper §4.1-4.2 and §4.5 of
``JIIO_REFERENCE.md``.

**JIIO** (``model.method = "jiio"``, decoder only). For each image, with the corruption's
observation ``y`` and mask ``m`` (``jiio_jax.tasks.corruption``), JIIO solves from
``(z, x, mu) = 0``

.. math:: x^* = \arg\min_x \sum_p \big(m_p (h(z^*)_p - y_p)\big)^2 + \lambda \|x\|^2
          \quad\text{s.t.}\quad z^* = f_\theta(z^*, \mathrm{inject}(x))

in one augmented fixed point (``jiio_jax.jiio.solve``, vmapped over the batch); the latent prior
``lambda = model.latent_penalty`` is 0 in the reference. The outer loss is

.. math:: L = \operatorname{mean}_{b,p}\big(h(\hat z_b)_p - x^{\rm clean}_{bp}\big)^2
          + \lambda_J\, \operatorname{mean}_b \frac{\|\epsilon^\top \partial f/\partial z\|^2}
          {\dim z}\Big|_{(z_{t_b}, x_{t_b})},
   \qquad \hat z = f_\theta(z^*, \mathrm{inject}(x^*)),

with the Jacobian penalty at each sample's trajectory point (reference §1.8, §2.3; or at
``(z*, x*)`` with ``model.jac_point = "equilibrium"``). Gradients
follow the reference (§2.1-2.2): ``x*`` is a constant; ``ẑ``'s value is one more application of
``f`` at the returned point, and its gradient is the implicit one,
``dL/dθ = u^T ∂f/∂θ`` with ``u = (I - J_f^T)^{-1} ∂L/∂ẑ`` (``J_f`` at ``(z*, x*)``), solved with
the configured backward mode and warm-started at ``mu* / (B C H W)`` (exact for reconstruction,
approximate for inverse problems). It is written as ``ẑ = z*_implicit + stop_gradient(f(z*) -
z*)``: the same gradient as differentiating ``f(z*_implicit)``, but the adjoint solve then
targets ``∂L/∂ẑ`` itself, which is what the ``mu*`` warm start approximates, and one VJP of ``f``
is saved.

**VAE** (``model.method = "vae"``): a conv encoder (``jiio_jax.tasks.vae``) maps the observation
to ``(mu, log sigma)``, ``x = mu + sigma * eps``, the same MDEQ decoder solves its equilibrium
(``model.forward`` solver, implicit backward) and

.. math:: L = \operatorname{mean}(\hat x - x^{\rm clean})^2
          + \min(\text{step}/\text{kl\_warmup}, 1)\,
            \frac{\operatorname{mean}_b \mathrm{KL}_b}{C H W} + \lambda_J J(z^*).

Evaluation decodes the posterior mean. The reference's unrolled-layer pretraining of the VAE
decoder (``PRETRAIN_STEPS``) is not reproduced.

**RAE** (``model.method = "rae"``; Ghosh et al. 2020, "From variational to deterministic
autoencoders"): the same encoder, deterministic (its mean is the latent ``z``, no noise), and

.. math:: L = \operatorname{mean}(\hat x - x^{\rm clean})^2
          + \frac{\beta\, \operatorname{mean}_b \tfrac12\|z_b\|^2
          + \lambda R(\theta_{\rm dec})}{C H W},

with ``R = ||theta_dec||^2`` (RAE-L2) or the decoder's squared Jacobian norm (RAE-GP)
(``model.rae``). Its samples come from a density fitted to the latents afterwards.

**Decoders** (``model.decoder``): the MDEQ generator, or a conventional conv decoder
(``jiio_jax.models.conv_decoder``; VAE and RAE only), the paper's "VAE" and "RAE" rows. The
conv decoder has no equilibrium, so ``jac_weight`` has nothing to act on there (its term is 0).

**Refinement** (``model.refine_with_jiio``, evaluation only): a VAE / RAE with the MDEQ decoder
reconstructs by running JIIO on the inner problem above from the encoder's latent instead of
decoding it (the paper's "MDEQ-VAE (w/ JIIO)"), with JIIO's start guard, so the returned
latent never costs more than the encoder's.

**Samples** (``images``). The paper fits a density model to the JIIO latents of the training set
(a VAE + GMM, §5.3) and decodes its draws. In the training loop we fit a Gaussian (mean and full
covariance with a small ridge) to the optimised latents ``x*`` of the evaluation batch and decode
draws from it: a cheap in-loop view of the same idea, not the paper's FID pipeline. The VAE
decodes draws from its prior ``N(0, I)``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from jiio_jax import jacobian, jiio, plotting
from jiio_jax.configs import common as cc
from jiio_jax.configs import generative as gc
from jiio_jax.jiio import JIIOSolution
from jiio_jax.losses import psnr
from jiio_jax.models.conv_decoder import ConvDecoder
from jiio_jax.models.mdeq import MDEQGenerator
from jiio_jax.tasks.base import InnerProblem, Metrics, PyTree, Task, register_task
from jiio_jax.tasks.corruption import CORRUPTIONS, Observation, corrupt, to_unit
from jiio_jax.tasks.vae import ConvEncoder, kl_divergence, kl_weight

F32 = jnp.float32


def _mean(x: jax.Array) -> jax.Array:
    return jnp.mean(x.astype(F32))


@register_task("generative")
class GenerativeTask(Task):
    """Reconstruction / inpainting / denoising with an MDEQ decoder, by JIIO or a VAE.

    Parameters: ``{"decoder": {"injection", "cell", "head"}}`` plus ``"encoder"`` for the VAE.
    See the module docstring for the losses and
    ``jiio_jax.configs.generative.default_model_config`` for ``config.model``.
    """

    def __init__(self, config: ml_collections.ConfigDict):
        super().__init__(config)
        m = config.model
        self.method = cc.check_choice("method", m.method, gc.METHODS)
        self.decoder = cc.check_choice("decoder", m.decoder, gc.DECODERS)
        if self.method == "jiio" and self.decoder != "mdeq":
            raise ValueError(
                f"config.model.decoder={self.decoder!r} cannot be trained by JIIO, which needs an "
                "equilibrium decoder; use config.model.decoder='mdeq' or method 'vae' / 'rae'."
            )
        self.refine_with_jiio = cc.check_bool("refine_with_jiio", m.refine_with_jiio)
        if self.refine_with_jiio and (self.method == "jiio" or self.decoder != "mdeq"):
            raise ValueError(
                "config.model.refine_with_jiio=True refines the encoder latents of a 'vae' or "
                f"'rae' with decoder='mdeq'; this run has method={self.method!r}, "
                f"decoder={self.decoder!r}. Set it to False."
            )
        self.corruption = cc.check_choice("corruption", m.corruption, CORRUPTIONS)
        self.arch = gc.build_mdeq_config(config)
        h, w, _ = self.arch.image_shape
        self.hole = cc.check_int("hole", m.hole, 1)
        if self.corruption == "inpaint" and self.hole > min(h, w):
            raise ValueError(
                f"config.model.hole={self.hole} is larger than the {h}x{w} images; use at most "
                f"{min(h, w)} (the reference's 20 is for 64x64)."
            )
        self.noise_sigma = cc.check_float("noise_sigma", m.noise_sigma, positive=True)
        self.latent_penalty = cc.check_float("latent_penalty", m.latent_penalty, positive=False)
        self.jac_weight = cc.check_float("jac_weight", m.jac_weight, positive=False)
        self.jac_point = cc.check_choice("jac_point", m.jac_point, gc.JAC_POINTS)
        self.jac_probes = cc.check_int("jac_probes", m.jac_probes, 1)
        self.num_image_examples = cc.check_int("num_image_examples", m.num_image_examples, 1)
        self.num_samples = cc.check_int("num_samples", m.num_samples, 1)
        self.sample_ridge = cc.check_float("sample_ridge", m.sample_ridge, positive=False)
        self.warm_start = cc.check_bool("warm_start", m.warm_start)
        backward = cc.backward("model.backward", m.backward)
        # The MDEQ generator (None for the conv decoder, which has no equilibrium).
        self.model = None
        if self.decoder == "mdeq":
            self.model = cc.deq_model(MDEQGenerator, self.arch, m, backward)
        else:
            groups = cc.check_int("conv_decoder.groups", m.conv_decoder.groups, 1)
            widths = tuple(
                cc.check_int(f"conv_decoder.channels[{i}]", c, 1)
                for i, c in enumerate(m.conv_decoder.channels)
            )
            if not widths or any(c % groups for c in widths):
                raise ValueError(
                    f"config.model.conv_decoder.groups={groups} must divide every width of "
                    f"config.model.conv_decoder.channels={widths} (non-empty)."
                )
            self.conv_decoder = ConvDecoder(widths, self.arch.image_shape, groups)
        if self.method == "jiio" or self.refine_with_jiio:
            self.jiio = cc.splat(
                "model.jiio", jiio.JIIO, m.jiio, backward=backward, **cc.failure_policy(m)
            )
        self._init_amortize(m, backward)
        if self.refine_with_jiio:
            # The start is the encoder's latent, a good point already: the start guard makes
            # the refinement return it rather than anything costlier (one extra forward solve).
            self.refine_jiio = dataclasses.replace(self.jiio, no_worse_than_start=True)
        if self.method == "rae":
            r = m.rae
            self.rae_latent_weight = cc.check_float(
                "rae.latent_weight", r.latent_weight, positive=False
            )
            self.rae_decoder_reg = cc.check_choice(
                "rae.decoder_reg", r.decoder_reg, gc.RAE_DECODER_REGS
            )
            self.rae_decoder_weight = cc.check_float(
                "rae.decoder_weight", r.decoder_weight, positive=False
            )
            if self.rae_decoder_reg == "gradient" and self.decoder != "conv":
                raise ValueError(
                    "config.model.rae.decoder_reg='gradient' needs second derivatives through "
                    "the decoder, implemented for decoder='conv' only; use decoder_reg='l2' "
                    "with the MDEQ decoder."
                )
        if self.method != "jiio":
            v = m.vae
            channels = tuple(
                cc.check_int(f"vae.encoder_channels[{i}]", c, 1)
                for i, c in enumerate(v.encoder_channels)
            )
            groups = cc.check_int("vae.groups", v.groups, 1)
            if not channels or any(c % groups for c in channels):
                raise ValueError(
                    f"config.model.vae.groups={groups} must divide every width of "
                    f"config.model.vae.encoder_channels={channels} (non-empty)."
                )
            dropout = cc.check_float("vae.dropout", v.dropout, positive=False)
            if dropout >= 1:
                raise ValueError(f"config.model.vae.dropout={dropout} must be in [0, 1).")
            if self.method == "vae":
                self.kl_warmup_steps = cc.check_int("vae.kl_warmup_steps", v.kl_warmup_steps, 0)
            self.encoder = ConvEncoder(channels, self.arch.latent_dim, groups, dropout)

    # -- parameters ---------------------------------------------------------------------------
    def init_params(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        shape = tuple(batch["image"].shape[1:])
        if shape != self.arch.image_shape:
            raise ValueError(
                f"batch images are {shape} but the model is built for {self.arch.image_shape} "
                "(config.data.image_size, config.data.image_size, config.data.channels)."
            )
        return jax.jit(self._init)(rng)

    def _init(self, rng: jax.Array) -> PyTree:
        k_dec, k_enc = jax.random.split(rng)
        if self.decoder == "mdeq":
            params = {"decoder": self.model.init(k_dec)}
        else:
            latent = jnp.zeros((1, self.arch.latent_dim), F32)
            params = {"decoder": self.conv_decoder.init(k_dec, latent)["params"]}
        if self.method != "jiio":
            example = jnp.zeros((1, *self.arch.image_shape), F32)
            params["encoder"] = self.encoder.init(k_enc, example, train=False)["params"]
        return params

    # -- the two inference paths --------------------------------------------------------------
    def _observe(self, key: jax.Array, images: jax.Array) -> Observation:
        return corrupt(key, images, self.corruption, hole=self.hole, noise_sigma=self.noise_sigma)

    def inner_problem(self, params: PyTree, batch: dict[str, jax.Array]) -> InnerProblem:
        r"""JIIO's problem for ONE image (vmap it over a batch): the latent ``x`` minimising
        ``sum_p (m_p (h(z*)_p - y_p))^2 + lambda ||x||^2`` s.t. ``z* = f(z*, inject(x))``.

        Args:
          params: ``{"decoder": ...}``; passed in ``args`` (not closed over) so that the
            implicit gradient reaches them.
          batch: one example: ``"image"`` the observation ``y`` ``[H, W, C]``, optionally
            ``"mask"`` ``[H, W, 1]`` (default: every pixel observed), ``"latent_init"`` ``[D]``
            (JIIO's starting latent, default zeros; an encoder's latent for
            ``refine_with_jiio``) and, in training, ``"dropout_mask"`` (the decoder's
            variational dropout masks).

        Returns:
          ``InnerProblem``: ``f`` and ``cost`` take ``(z, x, inj, cell, dmask, head, target,
          mask)``; ``z0`` the zero state, ``x0`` the starting latent, no projection.
        """
        model, penalty = self.model, self.latent_penalty
        dec = params["decoder"]

        # f and the cost take the same trailing args (jiio.solve's convention); passing the
        # parameters explicitly lets the implicit gradient reach them.
        def f(z, x, inj, cell, dmask, head, target, mask):
            del head, target, mask
            cin = model.inject(x, inj)
            if dmask is not None:
                cin = cin._replace(dropout_mask=dmask)
            return model.cell(z, cin, cell)

        def cost(z, x, inj, cell, dmask, head, target, mask):
            del inj, cell, dmask
            fit = jnp.sum(jnp.square(mask * (model.head(z, head) - target)))
            if penalty:
                fit = fit + penalty * jnp.sum(jnp.square(x))
            return fit

        target = batch["image"]
        mask = batch.get("mask")
        if mask is None:
            mask = jnp.ones((*target.shape[:-1], 1), target.dtype)
        args = (dec["injection"], dec["cell"], batch.get("dropout_mask"), dec["head"], target, mask)
        x0 = batch.get("latent_init")
        if x0 is None:
            x0 = jnp.zeros((self.arch.latent_dim,), F32)
        return InnerProblem(f, cost, model.z0(F32), x0, args, None)

    def _solve_jiio(
        self,
        params: PyTree,
        obs: Observation,
        key: jax.Array,
        *,
        train: bool,
        x0: jax.Array | None = None,
        solver: jiio.JIIO | None = None,
        z0: PyTree | None = None,
        mu0: PyTree | None = None,
    ) -> tuple[jax.Array, JIIOSolution, jax.Array]:
        """JIIO per image of the batch, from the latents ``x0`` ``[B, D]`` (default zeros), with
        ``solver`` (default ``self.jiio``); ``z0`` and ``mu0`` (leading axis ``B``, default
        zeros) start the state and the adjoint (amortized training's cached ones).

        Returns:
          ``(output [B, H, W, C], solution (leading axis B), jac [B])``; ``jac`` is zeros unless
          training with ``jac_weight > 0``.
        """
        model = self.model
        b = obs.image.shape[0]
        use_jac = train and self.jac_weight > 0
        use_trajectory = use_jac and self.jac_point == "trajectory"
        use_dropout = train and self.arch.dropout > 0
        k_drop, k_traj, k_jac = jax.random.split(key, 3)
        dmasks = None
        if use_dropout:
            dmasks = jax.vmap(lambda k: model.dropout_masks(k, F32))(jax.random.split(k_drop, b))

        # mu* is the adjoint of the summed per-image cost; the loss averages over B*C*H*W.
        scale = 1.0 / (b * obs.image[0].size) if self.warm_start else None

        # Without given starts, the zero latent stays an unbatched constant (as before amortized
        # training existed): a batched zero start compiles differently and moved the 30-step
        # solve's float rounding, and with it every trained number.

        def one(target, mask, dmask, x_init, z_init, mu_init, k_t, k_j):
            problem = self.inner_problem(
                params,
                {"image": target, "mask": mask, "dropout_mask": dmask, "latent_init": x_init},
            )
            f, args = problem.f, problem.args
            sol = jiio.solve(
                f,
                problem.cost,
                problem.z0 if z_init is None else z_init,
                problem.x0,
                *args,
                solver=self.jiio if solver is None else solver,
                mu0=mu_init,
                trajectory_key=k_t if use_trajectory else None,
                adjoint_init_scale=scale,
            )
            frozen = jax.lax.stop_gradient(args)
            f_star = f(jax.lax.stop_gradient(sol.z), sol.x, *frozen)
            z_hat = jax.tree.map(lambda zi, fi: zi + jax.lax.stop_gradient(fi - zi), sol.z, f_star)
            out = model.head(z_hat, params["decoder"]["head"])
            if use_jac:
                if use_trajectory:
                    z_t, x_t = sol.trajectory_sample
                else:
                    z_t, x_t = jax.lax.stop_gradient(sol.z), sol.x
                jac = jacobian.frobenius_norm_sq(
                    lambda zz: f(zz, x_t, *args), z_t, k_j, num_probes=self.jac_probes
                )
            else:
                jac = jnp.zeros((), F32)
            return out, sol, jac

        return jax.vmap(one)(
            obs.image,
            obs.mask,
            dmasks,
            x0,
            z0,
            mu0,
            jax.random.split(k_traj, b),
            jax.random.split(k_jac, b),
        )

    def _decode_batch(
        self,
        params: PyTree,
        latents: jax.Array,
        *,
        dropout_key: jax.Array | None = None,
        jac_key: jax.Array | None = None,
    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Either decoder on ``[B, D]`` latents.

        Returns:
          ``(images [B, H, W, C], residual [B], solver_steps [B], jac_loss [])``; the conv
          decoder has no equilibrium: zero residual, steps and Jacobian penalty.
        """
        if self.decoder == "conv":
            out = self.conv_decoder.apply({"params": params["decoder"]}, latents)
            zeros = jnp.zeros((latents.shape[0],), F32)
            return out, zeros, zeros, jnp.zeros((), F32)
        out, info = self.model(params["decoder"], latents, dropout_key=dropout_key, jac_key=jac_key)
        return out, info.residual.astype(F32), info.num_steps.astype(F32), info.jac_loss

    def decode(self, params: PyTree, latents: jax.Array) -> tuple[jax.Array, jax.Array]:
        """Eval-mode decoding of latents ``[B, D]``: ``(images [B, H, W, C] in [-1, 1],
        residual [B])`` (the MDEQ solver's residual; zeros for the conv decoder)."""
        out, residual, _, _ = self._decode_batch(params, latents)
        return out, residual

    def _run_autoencoder(self, params: PyTree, obs: Observation, key: jax.Array, *, train: bool):
        """VAE / RAE: encode; VAE in training reparameterises, otherwise the latent is the
        encoder's mean; decode.

        Returns:
          ``(output [B, H, W, C], residual [B], solver_steps [B], jac_loss [], mean [B, D],
          log_sigma [B, D], latent [B, D])``; ``log_sigma`` is unused by the RAE.
        """
        k_enc, k_eps, k_drop, k_jac = jax.random.split(key, 4)
        mean, log_sigma = self.encoder.apply(
            {"params": params["encoder"]}, obs.image, train=train, rngs={"dropout": k_enc}
        )
        latent = mean
        if train and self.method == "vae":
            latent = mean + jnp.exp(log_sigma) * jax.random.normal(k_eps, mean.shape, mean.dtype)
        out, residual, steps, jac = self._decode_batch(
            params,
            latent,
            dropout_key=k_drop if train else None,
            jac_key=k_jac if (train and self.jac_weight > 0) else None,
        )
        return out, residual, steps, jac, mean, log_sigma, latent

    def _decoder_regulariser(self, params: PyTree, latent: jax.Array, key: jax.Array):
        r"""The RAE's decoder term: ``||theta_dec||^2`` (``"l2"``) or the one-probe Hutchinson
        estimate ``mean_b ||eps_b^T dD(z_b)/dz||^2`` (``"gradient"``, conv decoder; samples are
        independent, so one VJP of the batched decoder gives every sample's row)."""
        if self.rae_decoder_reg == "l2":
            leaves = jax.tree.leaves(params["decoder"])
            return sum(jnp.sum(jnp.square(p.astype(F32))) for p in leaves)

        def decode(z):
            return self.conv_decoder.apply({"params": params["decoder"]}, z)

        out, vjp = jax.vjp(decode, latent)
        (row,) = vjp(jax.random.normal(key, out.shape, out.dtype))
        return jnp.mean(jnp.sum(jnp.square(row.astype(F32)), axis=-1))

    # -- Task interface -----------------------------------------------------------------------
    def loss(
        self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, Metrics]:
        clean = batch["image"]
        k_obs, k_model = jax.random.split(rng)
        obs = self._observe(k_obs, clean)
        if self.method == "jiio":
            out, sol, jac = self._solve_jiio(params, obs, k_model, train=True)
            return self._jiio_loss(clean, out, jac, _jiio_stats(sol))
        else:
            k_model, k_reg = jax.random.split(k_model)
            out, residual, steps, jac, mean, log_sigma, latent = self._run_autoencoder(
                params, obs, k_model, train=True
            )
            mse = jnp.mean(jnp.square(out - clean))
            jac_loss = jac.astype(F32)
            metrics = {"solver_steps": _mean(steps), "residual": _mean(residual)}
            if self.method == "vae":
                kl = jnp.mean(kl_divergence(mean, log_sigma)) / clean[0].size
                weight = kl_weight(step, self.kl_warmup_steps, F32)
                metrics.update(kl=kl, kl_weight=weight)
                total = mse + weight * kl
            else:
                # Ghosh et al. (2020), eq. 11, per pixel like the VAE's KL.
                latent_loss = 0.5 * jnp.mean(jnp.sum(jnp.square(latent), -1)) / clean[0].size
                decoder_loss = self._decoder_regulariser(params, latent, k_reg) / clean[0].size
                metrics.update(latent_loss=latent_loss, decoder_loss=decoder_loss)
                total = (
                    mse
                    + self.rae_latent_weight * latent_loss
                    + self.rae_decoder_weight * decoder_loss
                )
            total = total + self.jac_weight * jac_loss
        metrics.update(mse=mse, jac_loss=jac_loss)
        return total.astype(F32), metrics

    def _jiio_loss(
        self, clean: jax.Array, out: jax.Array, jac: jax.Array, stats: dict[str, jax.Array]
    ) -> tuple[jax.Array, Metrics]:
        """JIIO's outer loss (module docstring) and metrics from the output, the per-example
        Jacobian penalties ``[B]`` and ``_jiio_stats``."""
        mse = jnp.mean(jnp.square(out - clean))
        jac_loss = jnp.mean(jac)
        metrics = {k: _mean(v) for k, v in stats.items()}
        # Divided by C*H*W: the reference's per-sample c_b (hole pixels count too).
        metrics["inner_cost"] = metrics["inner_cost"] / clean[0].size
        metrics.update(mse=mse, jac_loss=jac_loss)
        return (mse + self.jac_weight * jac_loss).astype(F32), metrics

    # -- amortized training (model.amortize) -----------------------------------------------------
    def _init_amortize(self, m: ml_collections.ConfigDict, backward: Any) -> None:
        """Reads ``model.amortize*`` (see ``jiio_jax.configs.generative``)."""
        self.amortize = cc.check_bool("amortize", m.amortize)
        self.amortize_state = cc.check_bool("amortize_state", m.amortize_state)
        self.amortize_max_age = cc.check_int("amortize_max_age", m.amortize_max_age, 0)
        self.amortize_cold = cc.check_choice("amortize_cold", m.amortize_cold, gc.AMORTIZE_COLD)
        self.amortize_from_step = cc.check_int("amortize_from_step", m.amortize_from_step, 0)
        if not self.amortize:
            return
        if self.method != "jiio":
            raise ValueError(
                f"config.model.amortize=True caches JIIO's latents; method={self.method!r} has "
                "none (its encoder is the amortization). Set config.model.method='jiio' or "
                "config.model.amortize=False."
            )
        # The warm-start solver: model.jiio with model.amortize_jiio's fields on top.
        section = {
            **m.jiio.to_dict(),
            **{k: v for k, v in m.amortize_jiio.items() if v is not None},
        }
        self.warm_jiio = cc.splat(
            "model.amortize_jiio", jiio.JIIO, section, backward=backward, **cc.failure_policy(m)
        )

    def example_cache(self, num_examples: int) -> PyTree | None:
        """With ``model.amortize``: per training example, the latent ``x`` ``[N, D]`` of its
        last JIIO solve, with ``amortize_state`` also its equilibrium ``z`` and adjoint ``mu``
        (leading axis ``N``), and ``age`` ``int32 [N]``: warm solves since its last cold one
        (``-1``: never solved). ``None`` without ``model.amortize``."""
        if not self.amortize:
            return None
        n = num_examples
        cache = {
            "x": jnp.zeros((n, self.arch.latent_dim), F32),
            "age": jnp.full((n,), -1, jnp.int32),
        }
        if self.amortize_state:
            z = jax.tree.map(lambda a: jnp.zeros((n, *a.shape), a.dtype), self.model.z0(F32))
            cache.update(z=z, mu=z)
        return cache

    def cached_loss(
        self,
        params: PyTree,
        batch: dict[str, jax.Array],
        entries: PyTree,
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, tuple[Metrics, PyTree]]:
        """:meth:`loss` of amortized training (``model.amortize``).

        An example is *fresh* when it was never solved, when ``step < amortize_from_step``, or
        (``amortize_max_age > 0``) when its last cold solve is ``amortize_max_age`` warm solves
        old; the others start JIIO from
        their cached ``(z, x, mu)`` with the budget ``amortize_jiio``.
        ``amortize_cold="full"``: a batch holding a fresh example is solved cold, all of it
        (zero start, ``model.jiio``; one ``lax.cond`` per batch, so only the chosen solve runs,
        but both are compiled). ``"warm"``: fresh examples start from zero with the warm
        budget, batch-mates from their cache (one compiled solve). The metric ``warm`` is the
        fraction of examples started from the cache. The loss, its gradient and the entries
        otherwise follow :meth:`loss`.
        """
        clean = batch["image"]
        k_obs, k_model = jax.random.split(rng)
        obs = self._observe(k_obs, clean)
        age = entries["age"]
        fresh = (age < 0) | (step < self.amortize_from_step)
        if self.amortize_max_age:
            fresh = fresh | (age >= self.amortize_max_age)
        start = {k: v for k, v in entries.items() if k != "age"}

        def solve(solver, start):
            def branch(params):
                kwargs = {}
                if start is not None:
                    kwargs["x0"] = start["x"]
                    if self.amortize_state:
                        kwargs.update(z0=start["z"], mu0=start["mu"])
                out, sol, jac = self._solve_jiio(
                    params, obs, k_model, train=True, solver=solver, **kwargs
                )
                # Only what has the same shapes in both branches (not the [T] traces).
                return out, jac, _jiio_stats(sol), (sol.x, sol.z, sol.mu)

            return branch

        if self.amortize_cold == "full":
            fresh = jnp.broadcast_to(jnp.any(fresh), fresh.shape)
            warm, cold = solve(self.warm_jiio, start), solve(self.jiio, None)
            result = jax.lax.cond(fresh[0], cold, warm, params)
        else:
            keep = jax.tree.map(lambda a: _rows_where(~fresh, a), start)
            result = solve(self.warm_jiio, keep)(params)
        out, jac, stats, (x, z, mu) = result
        loss, metrics = self._jiio_loss(clean, out, jac, stats)
        metrics["warm"] = _mean(~fresh)
        new = {"x": x, "age": jnp.where(fresh, 0, age + 1)}
        if self.amortize_state:
            new.update(z=z, mu=mu)
        return loss, (metrics, jax.lax.stop_gradient(new))

    def _reconstruct(self, params: PyTree, clean: jax.Array, rng: jax.Array):
        """Eval-mode reconstruction: ``(observation, output, latents [B, D], residual [B])``."""
        k_obs, k_model = jax.random.split(rng)
        obs = self._observe(k_obs, clean)
        if self.method == "jiio":
            out, sol, _ = self._solve_jiio(params, obs, k_model, train=False)
            return obs, out, sol.x, sol.z_residual
        out, residual, _, _, mean, _, _ = self._run_autoencoder(params, obs, k_model, train=False)
        if self.refine_with_jiio:
            # JIIO from the encoder's latent (the paper's "MDEQ-VAE (w/ JIIO)").
            start = jax.lax.stop_gradient(mean)
            out, sol, _ = self._solve_jiio(
                params, obs, k_model, train=False, x0=start, solver=self.refine_jiio
            )
            return obs, out, sol.x, sol.z_residual
        return obs, out, mean, residual

    def reconstruct_and_score(
        self, params: PyTree, clean: jax.Array, rng: jax.Array
    ) -> tuple[Metrics, jax.Array, jax.Array, jax.Array]:
        """Eval-mode reconstruction of ``clean`` with its per-example metrics.

        Returns:
          ``(metrics, latents [B, D], output [B, H, W, C], observation [B, H, W, C])``;
          ``metrics`` as :meth:`evaluate`.
        """
        obs, out, latents, residual = self._reconstruct(params, clean, rng)
        metrics = {
            "psnr": psnr(out, clean),
            "mse": jnp.mean(jnp.square(out - clean), axis=(1, 2, 3)),
            "residual": residual.astype(F32),
        }
        if self.corruption != "none":
            metrics["psnr_corrupted"] = psnr(obs.image, clean)
        return metrics, latents, out, obs.image

    def evaluate(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> Metrics:
        """Per-example ``psnr`` (dB, [0, 1] scale), ``mse`` ([-1, 1] scale, as the loss),
        ``residual`` and, for inverse problems, ``psnr_corrupted`` (of the observation)."""
        return self.reconstruct_and_score(params, batch["image"], rng)[0]

    def images(self, params: PyTree, batch: dict[str, jax.Array], rng: jax.Array) -> dict[str, Any]:
        """``"reconstruction"``: an ``ImagePanel`` of ``[N, k, H, W, C]``, clean | observed |
        output (inverse problems) or target | reconstruction, for the first
        ``N = min(B, num_image_examples)`` images; ``"samples"``: ``[num_samples, H, W, C]``
        decoded draws (see the module docstring). All in ``[0, 1]``."""
        clean = batch["image"]
        k_rec, k_sample = jax.random.split(rng)
        obs, out, latents, _ = self._reconstruct(params, clean, k_rec)
        n = min(clean.shape[0], self.num_image_examples)
        if self.corruption != "none":
            columns = {"clean": clean[:n], "observed": obs.image[:n], "output": out[:n]}
            title = f"{self.method.upper()} reconstructions ({self.corruption})"
        else:
            columns = {"target": clean[:n], "reconstruction": out[:n]}
            title = f"{self.method.upper()} reconstructions"
        panel = plotting.ImagePanel(
            to_unit(jnp.stack(list(columns.values()), axis=1)), tuple(columns), title
        )
        draws = self._sample_latents(k_sample, latents)
        samples, _ = self.decode(params, draws)
        return {"reconstruction": panel, "samples": to_unit(samples)}

    def _sample_latents(self, key: jax.Array, latents: jax.Array) -> jax.Array:
        """``[num_samples, D]`` draws: N(0, I) (VAE) or a Gaussian fitted to ``latents`` (JIIO,
        RAE: its ex-post density)."""
        d = self.arch.latent_dim
        eps = jax.random.normal(key, (self.num_samples, d), F32)
        if self.method == "vae":
            return eps
        latents = jax.lax.stop_gradient(latents).astype(F32)
        mean = jnp.mean(latents, axis=0)
        centred = latents - mean
        cov = centred.T @ centred / max(latents.shape[0] - 1, 1)
        # A batch smaller than D gives a singular covariance; the ridge (relative to the mean
        # eigenvalue, plus an absolute floor) keeps the Cholesky factor finite.
        ridge = self.sample_ridge * jnp.trace(cov) / d + 1e-6
        chol = jnp.linalg.cholesky(cov + ridge * jnp.eye(d, dtype=F32))
        return mean + eps @ chol.T


def _jiio_stats(sol: JIIOSolution) -> dict[str, jax.Array]:
    """The per-example ``[B]`` statistics of JIIO's solutions that training logs."""
    return {
        "solver_steps": sol.num_steps,
        "best_step": sol.best_step,
        "inner_cost": sol.cost,
        "residual": sol.z_residual,
        "adjoint_residual": sol.mu_residual,
        "stationarity": sol.x_residual,
    }


def _rows_where(keep: jax.Array, a: jax.Array) -> jax.Array:
    """``a`` ``[B, ...]`` with the rows where ``keep`` ``[B]`` is False set to zero."""
    return jnp.where(keep.reshape(-1, *([1] * (a.ndim - 1))), a, jnp.zeros_like(a))


def task_from_model_config(
    model: ml_collections.ConfigDict, image_size: int, channels: int
) -> GenerativeTask:
    """A ``GenerativeTask`` from a ``config.model`` section alone (tests, notebooks)."""
    config = ml_collections.ConfigDict(
        {
            "task": "generative",
            "model": model,
            "data": {"image_size": image_size, "channels": channels},
        }
    )
    return GenerativeTask(config)
