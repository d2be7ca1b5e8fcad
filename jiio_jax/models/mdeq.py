"""Full MDEQ models and the bridge from Flax modules to the pure solver world.

**The bridge.** An MDEQ model is three pure, per-sample functions of explicit parameters:

- ``inject(inputs, params["injection"]) -> x``: a ``CellInput`` built from the model input
  (image, latent, or image + task context);
- ``cell(z, x, params["cell"]) -> z``: one application of the equilibrium cell to the branch
  states ``z = (z_0, ..., z_{K-1})``, ``z_i`` of shape ``[H_i, W_i, C_i]``;
- ``head(z, params["head"]) -> output``.

They are ``Module.apply`` of unbound Linen modules, so they close over no arrays and can be
handed to ``jiio_jax.deq.fixed_point`` (which differentiates ``z*`` w.r.t. ``x`` and the cell
parameters by the implicit function theorem), to the JIIO solver (which iterates ``cell`` with
``x`` rebuilt from an optimised input), to ``jax.vmap`` for batches, and to
``jiio_jax.jacobian`` for regularisation. ``cell_fn(config)`` returns the cell function alone.

**The models** (``MDEQClassifier``, ``MDEQGenerator``, ``MDEQMetaLearner``) are frozen,
hashable dataclasses holding the architecture config, the forward ``solver`` and the
``backward`` mode, so they can be static arguments of ``jax.jit`` or attributes of other
modules. ``model.init(key)`` returns the parameter dict ``{"injection", "cell", "head"}`` and
``model(params, inputs)`` runs the batch: injection, one fixed-point solve per sample (vmapped),
head, and returns ``(outputs, DEQInfo)`` with the per-sample solver diagnostics.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from jiio_jax import jacobian
from jiio_jax.deq import ON_FAILURE, Implicit, fixed_point
from jiio_jax.models import cell as cell_lib
from jiio_jax.models import heads, injections
from jiio_jax.models.cell import CellInput, MDEQCell
from jiio_jax.models.configs import MDEQConfig
from jiio_jax.solvers import Anderson, Solution

PyTree = Any

DEFAULT_SOLVER = Anderson(max_steps=30, tol=1e-4, memory=5)
"""Forward solver of the models unless given: Anderson, 30 steps, relative tolerance 1e-4."""


class DEQInfo(NamedTuple):
    """Per-sample diagnostics of a model's forward pass (leading axis: batch ``B``).

    Attributes:
      z_star: the equilibrium, per branch ``[B, H_i, W_i, C_i]`` (differentiable).
      num_steps: int32 ``[B]``; solver evaluations of the cell.
      residual: ``[B]``; the solver's stop-mode residual at ``z_star``.
      status: int32 ``[B]``; ``jiio_jax.solvers.Status`` codes.
      converged: bool ``[B]``.
      jac_loss: ``[]``; batch mean of the normalised Hutchinson estimate of
        ``||df/dz||_F^2 / numel(z)`` at ``z_star`` (0 unless ``jac_key`` was given).
    """

    z_star: tuple[jax.Array, ...]
    num_steps: jax.Array
    residual: jax.Array
    status: jax.Array
    converged: jax.Array
    jac_loss: jax.Array


class MetaInput(NamedTuple):
    """Input of ``MDEQMetaLearner``: ``image`` ``[(B,) H, W, C]`` and ``context`` ``[(B,) D]``."""

    image: jax.Array
    context: jax.Array


def cell_fn(config: MDEQConfig) -> Callable[[tuple, CellInput, PyTree], tuple]:
    """Returns the pure cell ``f(z, x, params) -> z`` for one sample.

    Args:
      config: the architecture.

    Returns:
      ``f`` with ``z`` per branch ``[H_i, W_i, C_i]``, ``x`` a ``CellInput`` and ``params`` the
      cell's parameters (``model_params["cell"]``). Batch with ``jax.vmap``.
    """

    def f(z, x, params):
        return cell_lib.apply_cell(config, params, z, x)

    return f


def count_params(params: PyTree) -> int:
    """Number of scalars in a parameter pytree (works on ``jax.eval_shape`` outputs too)."""
    total = 0
    for leaf in jax.tree.leaves(params):
        n = 1
        for d in leaf.shape:
            n *= int(d)
        total += n
    return total


@dataclasses.dataclass(frozen=True)
class _MDEQModel(abc.ABC):
    """Shared machinery of the MDEQ models (see the module docstring)."""

    config: MDEQConfig
    solver: Any = DEFAULT_SOLVER
    backward: Any = Implicit()
    param_dtype: Any = jnp.float32
    # What a failed equilibrium (or adjoint) solve does, and the MAX_STEPS residual (x the
    # solver's tol) above which it counts as failed: see ``jiio_jax.deq.fixed_point``. The
    # training tasks use "nan", so the loop's non-finite check stops a run at the failing step.
    on_failure: str = "ignore"
    failure_ratio: float = 100.0

    def __post_init__(self):
        if self.on_failure not in ON_FAILURE:
            raise ValueError(f"`on_failure` must be one of {ON_FAILURE}, got {self.on_failure!r}.")
        if not isinstance(self.config, MDEQConfig):
            raise TypeError(f"`config` must be an MDEQConfig, got {type(self.config).__name__}.")
        if not callable(self.solver):
            raise TypeError(f"`solver` must be a solver configuration, got {self.solver!r}.")
        self._validate()

    # -- subclass hooks -----------------------------------------------------------------------
    def _validate(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Checks the config fields the model needs (subclasses raise ValueError)."""

    @abc.abstractmethod
    def _injection_module(self) -> nn.Module:
        """The injection Linen module (per sample)."""

    @abc.abstractmethod
    def _head_module(self) -> nn.Module:
        """The head Linen module (per sample)."""

    @abc.abstractmethod
    def _example_input(self, dtype) -> PyTree:
        """A zero model input of one sample (for init and shape checks)."""

    def _make_cell_input(self, injected) -> CellInput:
        return CellInput(injection=injected)

    # -- pure per-sample functions ------------------------------------------------------------
    def inject(self, inputs: PyTree, params: PyTree) -> CellInput:
        """Builds the cell input of one sample from its model input (pure).

        Args:
          inputs: one sample's model input: an image ``[H, W, C]`` (classifier), a latent
            ``[latent_dim]`` (generator) or a ``MetaInput`` (meta learner).
          params: the injection parameters, ``model_params["injection"]``.

        Returns:
          A ``CellInput`` without dropout mask (add one with ``x._replace(dropout_mask=...)``).
        """
        injected = self._injection_module().apply({"params": params}, inputs)
        return self._make_cell_input(injected)

    def cell(self, z: tuple[jax.Array, ...], x: CellInput, params: PyTree) -> tuple:
        """The equilibrium cell ``f(z, x, params)`` of one sample (pure).

        Args:
          z: per branch ``[H_i, W_i, C_i]``.
          x: the ``CellInput`` from ``inject``.
          params: the cell parameters, ``model_params["cell"]``.

        Returns:
          The next state, same shapes and dtypes as ``z``.
        """
        return cell_lib.apply_cell(self.config, params, z, x)

    def head(self, z: tuple[jax.Array, ...], params: PyTree) -> jax.Array:
        """The output head ``h(z)`` of one sample (pure).

        Args:
          z: per branch ``[H_i, W_i, C_i]``.
          params: the head parameters, ``model_params["head"]``.

        Returns:
          Logits ``[num_classes]`` / ``[n_way]``, or an image ``[H, W, C]`` in ``[-1, 1]``.
        """
        return self._head_module().apply({"params": params}, z)

    def z0(self, dtype=None) -> tuple[jax.Array, ...]:
        """Zero initial state of one sample (per branch ``[H_i, W_i, C_i]``)."""
        return cell_lib.zeros_state(self.config, dtype or self.param_dtype)

    def dropout_masks(self, key: jax.Array, dtype=None) -> tuple[jax.Array, ...]:
        """Variational dropout masks of one sample (per branch ``[C_i]``)."""
        cfg = self.config
        return cell_lib.dropout_masks(key, cfg.channels, cfg.dropout, dtype or self.param_dtype)

    def solve(
        self, x: CellInput, cell_params: PyTree, z0: tuple[jax.Array, ...] | None = None
    ) -> Solution:
        """Solves ``z = cell(z, x, cell_params)`` for one sample with ``self.solver``.

        ``Solution.value`` is differentiable w.r.t. ``x`` and ``cell_params`` via
        ``self.backward``. ``z0`` (default zeros) is a warm start and gets no gradient.
        """
        if z0 is None:
            z0 = self.z0(jax.tree.leaves(cell_params)[0].dtype)
        return fixed_point(
            self.cell,
            z0,
            x,
            cell_params,
            solver=self.solver,
            backward=self.backward,
            on_failure=self.on_failure,
            failure_ratio=self.failure_ratio,
        )

    def jacobian_loss(
        self,
        z: tuple[jax.Array, ...],
        x: CellInput,
        cell_params: PyTree,
        key: jax.Array,
        num_probes: int = 2,
    ) -> jax.Array:
        """Hutchinson estimate of ``||df/dz||_F^2 / numel(z)`` at ``z`` for one sample.

        Differentiable w.r.t. ``x`` and ``cell_params`` (the reference's Jacobian
        regulariser with 2 probes); ``z`` is treated as a constant.
        """
        z = jax.lax.stop_gradient(z)
        return jacobian.frobenius_norm_sq(
            lambda zz: self.cell(zz, x, cell_params), z, key, num_probes=num_probes
        )

    # -- parameters ---------------------------------------------------------------------------
    def init(self, key: jax.Array) -> dict[str, PyTree]:
        """Initialises the parameters ``{"injection", "cell", "head"}`` (dtype ``param_dtype``).

        Use ``jax.eval_shape(model.init, key)`` for shapes without allocating. Prefer
        ``jax.jit(model.init)(key)``: eager init dispatches (and compiles) every op separately.
        """
        k_inj, k_cell, k_head = jax.random.split(key, 3)
        dtype = self.param_dtype
        inj_module = self._injection_module()
        inj_params = inj_module.init(k_inj, self._example_input(dtype))["params"]
        x = self.inject(self._example_input(dtype), inj_params)
        z = self.z0(dtype)
        cell_params = MDEQCell(self.config, param_dtype=dtype).init(k_cell, z, x)["params"]
        head_params = self._head_module().init(k_head, z)["params"]
        return {"injection": inj_params, "cell": cell_params, "head": head_params}

    # -- batched forward ----------------------------------------------------------------------
    def __call__(
        self,
        params: dict[str, PyTree],
        inputs: PyTree,
        *,
        dropout_key: jax.Array | None = None,
        jac_key: jax.Array | None = None,
        z0: tuple[jax.Array, ...] | None = None,
    ) -> tuple[jax.Array, DEQInfo]:
        """Runs a batch: inject, solve the equilibrium of each sample, apply the head.

        Args:
          params: from ``init``.
          inputs: a batch of model inputs (leading axis ``B``; see the subclass).
          dropout_key: PRNG key; when given and ``config.dropout > 0`` each sample gets its own
            variational dropout mask, fixed across solver iterations. ``None`` disables dropout
            (evaluation).
          jac_key: PRNG key; when given, ``DEQInfo.jac_loss`` holds the Jacobian regulariser.
          z0: optional warm start, per branch ``[B, H_i, W_i, C_i]``.

        Returns:
          ``(outputs, info)``: outputs with leading axis ``B`` and the ``DEQInfo``.
        """
        batch = self._batch_size(inputs)
        use_dropout = dropout_key is not None and self.config.dropout > 0
        dropout_keys = jax.random.split(dropout_key, batch) if use_dropout else None
        jac_keys = jax.random.split(jac_key, batch) if jac_key is not None else None
        dtype = jax.tree.leaves(params["cell"])[0].dtype
        if z0 is None:
            z0 = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch, *a.shape)), self.z0(dtype))

        def one(inp, z_init, dkey, jkey):
            x = self.inject(inp, params["injection"])
            if dkey is not None:
                x = x._replace(dropout_mask=self.dropout_masks(dkey, dtype))
            sol = self.solve(x, params["cell"], z_init)
            out = self.head(sol.value, params["head"])
            if jkey is None:
                jl = jnp.zeros((), dtype)
            else:
                jl = self.jacobian_loss(sol.value, x, params["cell"], jkey)
            return out, sol, jl

        out, sol, jl = jax.vmap(one)(inputs, z0, dropout_keys, jac_keys)
        info = DEQInfo(
            z_star=sol.value,
            num_steps=sol.num_steps,
            residual=sol.residual,
            status=sol.status,
            converged=sol.converged,
            jac_loss=jnp.mean(jl),
        )
        return out, info

    def _batch_size(self, inputs: PyTree) -> int:
        example = self._example_input(self.param_dtype)
        leaves, ex_leaves = jax.tree.leaves(inputs), jax.tree.leaves(example)
        if len(leaves) != len(ex_leaves) or jax.tree.structure(inputs) != jax.tree.structure(
            example
        ):
            raise TypeError(
                f"`inputs` must have the structure {jax.tree.structure(example)} with a leading "
                f"batch axis; got {jax.tree.structure(inputs)}."
            )
        batch = None
        for a, e in zip(leaves, ex_leaves, strict=True):
            if tuple(a.shape[1:]) != tuple(e.shape) or a.ndim != e.ndim + 1:
                raise ValueError(
                    f"`inputs` leaves must have shape [B, {', '.join(map(str, e.shape))}] "
                    f"(batch first); got {tuple(a.shape)}."
                )
            if batch is not None and a.shape[0] != batch:
                raise ValueError(
                    f"`inputs` leaves disagree on the batch size: {batch} vs {a.shape[0]}."
                )
            batch = a.shape[0]
        return batch


@dataclasses.dataclass(frozen=True)
class MDEQClassifier(_MDEQModel):
    """Image classifier: ``ImageStem`` -> MDEQ equilibrium -> ``ClassifierHead``.

    ``inputs``: images ``[B, H, W, C]`` (``config.image_shape``); outputs: logits
    ``[B, num_classes]``. ``inject(image, params["injection"])`` maps one image to its cell
    input, so an adversarial JIIO solve can rebuild it from ``x + delta``.
    """

    def _validate(self):
        self.config.require("num_classes", "head_channels", "final_channels", by="MDEQClassifier")

    def _injection_module(self):
        return injections.ImageStem(self.config, self.param_dtype)

    def _head_module(self):
        return heads.ClassifierHead(self.config, self.param_dtype)

    def _example_input(self, dtype):
        return jnp.zeros(self.config.image_shape, dtype)


@dataclasses.dataclass(frozen=True)
class MDEQGenerator(_MDEQModel):
    """Decoder-only generator: ``LatentMaps`` -> MDEQ equilibrium -> ``ImageDecoder``.

    ``inputs``: latents ``[B, latent_dim]``; outputs: images ``[B, H, W, C]`` in ``[-1, 1]``.
    ``inject(latent, params["injection"])`` is the map JIIO differentiates w.r.t. the latent.
    """

    def _validate(self):
        self.config.require("latent_dim", by="MDEQGenerator")

    def _injection_module(self):
        return injections.LatentMaps(self.config, self.param_dtype)

    def _head_module(self):
        return heads.ImageDecoder(self.config, self.param_dtype)

    def _example_input(self, dtype):
        return jnp.zeros((self.config.latent_dim,), dtype)


class _MetaInjection(nn.Module):
    """Image stem + FiLM of the context, as one module (params ``{"stem", "film"}``)."""

    config: MDEQConfig
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, inputs: MetaInput):
        stem = injections.ImageStem(self.config, self.param_dtype, name="stem")(inputs.image)
        film = injections.FiLM(self.config, self.param_dtype, name="film")(inputs.context)
        return stem, film


@dataclasses.dataclass(frozen=True)
class MDEQMetaLearner(_MDEQModel):
    """Few-shot learner conditioned on a task context by FiLM (the reference's iMAML-JIIO model).

    ``inputs``: ``MetaInput(image [B, H, W, C], context [B, context_dim])`` (repeat a task's
    context over its examples); outputs: logits ``[B, n_way]``. JIIO optimises the context:
    ``inject`` rebuilds the FiLM part from it (``film(context, params)`` alone is also exposed).
    """

    def _validate(self):
        self.config.require("context_dim", "n_way", by="MDEQMetaLearner")

    def _injection_module(self):
        return _MetaInjection(self.config, self.param_dtype)

    def _head_module(self):
        return heads.MetaHead(self.config, self.param_dtype)

    def _example_input(self, dtype):
        cfg = self.config
        return MetaInput(jnp.zeros(cfg.image_shape, dtype), jnp.zeros((cfg.context_dim,), dtype))

    def _make_cell_input(self, injected):
        stem, film = injected
        return CellInput(injection=stem, film=film)

    def film(self, context: jax.Array, params: PyTree) -> tuple:
        """FiLM ``(scale, shift)`` pairs of one context ``[context_dim]``.

        Args:
          context: ``[context_dim]``.
          params: the injection parameters, ``model_params["injection"]``.
        """
        module = injections.FiLM(self.config, self.param_dtype)
        return module.apply({"params": params["film"]}, context)
