r"""JIIO: joint inference and input optimization in an equilibrium network (one problem).

Gurumurthy, Bai, Manchester & Kolter, "Joint inference and input optimization in equilibrium
networks", NeurIPS 2021. Instead of an outer optimizer over ``x`` whose every step solves the
DEQ forward and backward, JIIO solves one *augmented* fixed point in ``s = (z, x, mu)`` (see
``jiio_jax.jiio._augmented``) whose solution is the equilibrium, its adjoint and a stationary
input at once, accelerated by Anderson (or Broyden) on the flattened joint state.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from jiio_jax.deq import ON_FAILURE, Implicit, implicit_equilibrium
from jiio_jax.deq.backward import BACKWARD_MODES, Unrolled
from jiio_jax.jiio import _accelerators, _problem
from jiio_jax.jiio._augmented import (
    X_RULES,
    AugmentedMap,
    XCarry,
    flatten_state,
    make_layout,
    project_x_block,
)
from jiio_jax.jiio._pytree import check_instance, register_config
from jiio_jax.jiio.projections import Unconstrained, as_projection
from jiio_jax.jiio.schedules import Constant, Piecewise, as_schedule
from jiio_jax.solvers import Anderson
from jiio_jax.solvers import resolve as resolve_solver
from jiio_jax.solvers.core import (
    Status,
    as_state,
    broadcast_unbatched,
    check_fn_output,
    check_nonnegative_float,
    check_positive_float,
    check_positive_int,
    lift_consts,
)

PyTree = Any
BEST_ITERATE_RULES = ("cost_aware", "residual")
STARTS = ("given", "equilibrium")
_RUNNING = -1


@functools.partial(register_config, data_fields=())
@dataclasses.dataclass(frozen=True)
class Tolerance:
    """Per-block tolerances for early exit; all three must hold at the same iterate.

    Attributes:
      z: on ``||f(z, x) - z|| / ||f(z, x)||`` (equilibrium, relative).
      mu: on ``||g_z - mu|| / ||g_z||`` (adjoint, relative).
      x: on ``||x - Pi(x - alpha_t g_x)|| / alpha_t`` (stationarity, absolute: cost units per
        unit of x; ``= ||g_x||`` without a projection).
    """

    z: float = 1e-5
    mu: float = 1e-5
    x: float = 1e-5

    def __post_init__(self):
        for name in ("z", "mu", "x"):
            object.__setattr__(self, name, check_positive_float(f"tol.{name}", getattr(self, name)))


@functools.partial(register_config, data_fields=("step_scale",))
@dataclasses.dataclass(frozen=True)
class JIIO:
    r"""Configuration of ``solve``; ``JIIO(...)(f, cost, z0, x0, *args)`` solves.

    Every constant the reference hard-codes is a field, with the reference value as default,
    and these defaults are the only ones: a config section with any subset of the fields splats
    into it (``JIIO(**section)``; ``tol`` and ``backward`` may be mappings). Errors name the
    field (``\`step_size\` must be ...``).

    A registered pytree: every field is static (hashed; a change recompiles) except
    ``step_scale``, which may be a traced scalar, so a ``JIIO`` can be an argument of a jitted
    function.

    Attributes:
      step_size: :math:`\alpha_t` of the input update: a positive float, ``Constant``,
        ``Piecewise`` (``Piecewise((a0, a1))`` is the reference schedule, switching at
        ``max(50, floor(5 T / 8)) - 1``) or a callable ``step -> alpha``. No default: it is the
        problem-dependent knob to tune first. The effective step is
        ``step_scale * schedule(t)`` (see ``schedule``).
      max_steps: ``T``, evaluations of the augmented map (one ``f`` + one VJP each).
      accelerator: ``"anderson"`` (reference), ``"broyden"`` (the library's good Broyden on the
        joint state; unconstrained problems only, and give it a large ``memory``: restarted
        Broyden with memory 5 diverged on a 15-dim linear-quadratic joint map that memory 30
        solved) or ``"none"`` (plain damped augmented iteration, no history).
      anderson_type: ``"type1"`` (the reference's "good" Anderson, Galerkin condition) or
        ``"type2"`` (least-squares; the reference's "bad", used for meta-learning).
      memory: Anderson history / Broyden rank.
      mixing: :math:`\beta`, Anderson mixing of the extrapolated images (reference 1.0).
      ridge: relative Tikhonov term of the Anderson coefficient system (reference: none,
        ``1e-4`` absolute only after a failed solve).
      z_damping: :math:`\tau_z` (reference 0.8).
      mu_damping: :math:`\tau_\mu` (reference 0.6).
      normalize_step: use the normalized direction :math:`g_x/(\|g_x\| + \epsilon)` (reference
        adversarial attack); the step then never vanishes and ``x`` settles on the boundary.
      normalize_eps: :math:`\epsilon` of the normalized step (reference 1e-8).
      best_iterate: which evaluated point to return. ``"cost_aware"`` (reference): accept
        ``X_k`` if ``k < accept_first``, or its joint residual ``r_k < best_r``, or
        ``cost_k < best_c`` and ``r_k < cost_slack * best_r``; ``best_r`` moves on the first
        two, ``best_c`` on any acceptance. ``"residual"``: lowest joint residual. Non-finite
        points are never accepted. Then ``no_worse_than_start`` applies.
      no_worse_than_start: the start guard (default ``True``; ``False`` is the reference).
        ``z_s = z*(Pi(x0))`` is solved before the loop (``start_solver``, from ``z0``; its f
        evaluations are ``JIIOSolution.start_fevals``, no VJPs) and ``c_s = cost(z_s, Pi(x0))``
        is the start's cost, taken at its equilibrium (at ``(z0, x0)`` with ``z0 = 0`` it
        would be no cost of the problem, and can be lower than the optimum's). If the
        best-iterate rule's point costs more than ``c_s``, or no evaluated point was finite
        (a blow-up of a too-large step size), ``(z_s, Pi(x0), mu_s)`` is returned instead
        (``best_step = -1``): ``cost <= start_cost`` whenever the start's cost is finite.
        The start solve is the guard's only cost (7 f evaluations for a trained 256-d ``tanh``
        decoder at ``x0 = 0``); with ``start="equilibrium"`` the loop also starts there.
        In short runs (a few steps) from ``start="given"``, the rule's point, whose ``z`` is
        still far from equilibrium, can be "worse" than ``c_s`` and the guard returns ``x0``:
        right by its own definition; the adversarial training recipes, which use 4-step
        attacks and the reference start, switch it off.
      start_solver: forward solver of the start guard: a ``jiio_jax.solvers`` configuration or
        a spec for ``jiio_jax.solvers.resolve`` (``{"name": "anderson", "tol": 1e-3}``).
      stall_steps: safeguard of Type-I Anderson (``_accelerators.TypeIAnderson``): restart the
        history from the newest point after this many evaluations without a new smallest
        ``||F(X) - X||`` (0: never, the default).
      max_growth: restart when an evaluation's ``||F(X) - X||`` exceeds this multiple of the
        smallest one (``math.inf``: never, the default). Off by default because on JIIO's
        joint state it did not pay: on 64 dense ``tanh`` decoders (40 steps) stall restarts
        raised the mean cost (``||W|| = 0.9``: 0.40 -> 0.47 at ``stall_steps=5``) or lowered it
        slightly (``rho(W) = 1.6``: 4.37 -> 4.16), and barely moved an L2 attack; the joint
        residual is not monotone by design (the ``x`` block moves), so "no new best" is a weak
        stall signal. On the tests' ``tanh`` problem (``tol=1e-9``) the reference converges in
        71 steps, ``stall_steps=10`` in 101, ``stall_steps=3`` not in 1000, ``max_growth=10``
        in 102 at a worse stationary point (cost 5.69 vs 2.69); plain iteration does not
        converge there at all. Type-II Anderson uses the same fields through
        ``jiio_jax.solvers.AndersonCore``, whose restart goes back to the best point; Broyden
        is not safeguarded here.
      accept_first: the reference's 10.
      cost_slack: the reference's 1.3.
      tol: ``None`` (reference: always ``max_steps`` steps), a float (same for the three
        blocks), ``Tolerance`` or a mapping of its fields (``{"z": 1e-4, "x": 1e-3}``); stop
        once all per-block residuals are below it.
      trajectory_min_step: trajectory samples are drawn uniformly from steps
        ``[trajectory_min_step, T - 1]`` (reference 15; clipped to ``T - 1``).
      backward: implicit-gradient mode of the returned ``z``: a ``jiio_jax.deq`` backward
        instance (not ``Unrolled``) or a mapping ``{"name": "implicit" | "one_step" |
        "neumann" | "phantom", **fields}`` resolved by ``jiio_jax.deq.resolve_backward``.
      final_step_size: ``None`` or a positive float; if set, ``step_size`` must be a float
        (or ``Constant``) ``a0`` and the schedule is the reference ``Piecewise((a0,
        final_step_size))``.
      step_scale: positive scalar multiplying every step (default 1.0); the one field that may
        be a traced array, e.g. an attack radius warmed up inside the training step, so that
        ``step_size`` stays relative to it.
      on_failure: what a failed implicit-gradient (adjoint / tangent) solve of the returned
        ``z`` does: ``"ignore"``, ``"nan"`` (its derivatives are NaN) or ``"raise"``; see
        ``jiio_jax.deq.fixed_point``. The training tasks use ``"nan"``.
      failure_ratio: that solve counts as failed when it ends at ``MAX_STEPS`` with a residual
        above ``failure_ratio`` times its solver's ``tol`` (``jiio_jax.deq.fixed_point``).
      x_preconditioner: ``"none"`` (reference: ``d = g_x``), ``"rmsprop"``: the x step uses
        ``d = g_x / (sqrt(v_hat) + 1e-8)`` with ``v`` the running mean (``preconditioner_decay``,
        bias-corrected) of ``g_x^2`` over the evaluated points, so each input coordinate moves
        at its own scale; or ``"barzilai_borwein"``: the step length is the BB1 step
        ``s^T s / s^T y`` between the last two evaluated points (``s``: change of ``x``, ``y``:
        of ``g_x``), clipped to ``[alpha_t / 10, 10 alpha_t]`` (``alpha_t`` on the first point
        or when ``s^T y <= 0``). Opt-in: both measured worse than the plain step
        (``experiments/results/jiio_ideas.md``).
      preconditioner_decay: the running mean's decay (in (0, 1)).
      x_momentum: heavy-ball momentum of the x step, ``m = x_momentum * m + d``, step along
        ``m`` (0: off, the reference; must be in [0, 1)). Opt-in; see ``jiio_ideas.md``.
      start: ``"given"`` (default, the reference: iterate from ``(z0, Pi(x0), mu0)``) or
        ``"equilibrium"``: from ``(z*(x0), Pi(x0), mu0)`` with ``z*`` the start solve of
        ``no_worse_than_start`` and ``mu0`` (if not given) ``= grad_z C(z*, x0)``. Measured
        (``experiments/results/jiio_ideas.md``): it helps short runs only on models trained
        with it (a 256-d ``tanh`` decoder: cost at T = 15 3.66 vs 4.26, T = 20 2.33 vs 2.58;
        on decoders trained from the given start it is worse, 8.49 vs 4.43 at T = 15), and it
        weakens attacks (dense digits classifier, L2 eps 0.5, T = 30: CE 2.61 vs 2.645 with
        the plain iteration, 0.40 vs 2.30 with Anderson at step 0.1 eps); hence opt-in.
    """

    step_size: Any
    max_steps: int = 80
    accelerator: str = "anderson"
    anderson_type: str = "type1"
    memory: int = 5
    mixing: float = 1.0
    ridge: float = 1e-10
    z_damping: float = 0.8
    mu_damping: float = 0.6
    normalize_step: bool = False
    normalize_eps: float = 1e-8
    best_iterate: str = "cost_aware"
    accept_first: int = 10
    cost_slack: float = 1.3
    tol: Tolerance | Mapping | float | None = None
    trajectory_min_step: int = 15
    backward: Any = Implicit()
    final_step_size: float | None = None
    step_scale: Any = 1.0
    no_worse_than_start: bool = True
    start_solver: Any = Anderson(max_steps=50, tol=1e-4)
    stall_steps: int = 0
    max_growth: float = math.inf
    on_failure: str = "ignore"
    failure_ratio: float = 100.0
    x_preconditioner: str = "none"
    preconditioner_decay: float = 0.9
    start: str = "given"
    x_momentum: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "step_size", as_schedule(self.step_size))
        if self.final_step_size is not None:
            final = _check_positive("final_step_size", self.final_step_size)
            object.__setattr__(self, "final_step_size", final)
            if not isinstance(self.step_size, Constant):
                raise ValueError(
                    "`step_size` must be a float when `final_step_size` is set (the schedule is "
                    f"Piecewise((step_size, final_step_size))), got {self.step_size!r}."
                )
        _check_step_scale(self.step_scale)
        check_positive_int("max_steps", self.max_steps)
        _check_choice("accelerator", self.accelerator, _accelerators.ACCELERATORS)
        _check_choice("anderson_type", self.anderson_type, _accelerators.ANDERSON_TYPES)
        check_positive_int("memory", self.memory)
        if isinstance(self.stall_steps, bool) or not isinstance(self.stall_steps, int):
            raise ValueError(f"`stall_steps` must be an int >= 0, got {self.stall_steps!r}.")
        if self.stall_steps < 0:
            raise ValueError(f"`stall_steps` must be an int >= 0, got {self.stall_steps!r}.")
        if isinstance(self.max_growth, bool) or not isinstance(self.max_growth, numbers.Real):
            raise ValueError(f"`max_growth` must be a float > 1, got {self.max_growth!r}.")
        if not float(self.max_growth) > 1:
            raise ValueError(f"`max_growth` must be a float > 1, got {self.max_growth!r}.")
        object.__setattr__(self, "max_growth", float(self.max_growth))
        check_positive_float("mixing", self.mixing)
        check_nonnegative_float("ridge", self.ridge)
        check_positive_float("z_damping", self.z_damping)
        check_positive_float("mu_damping", self.mu_damping)
        for name in ("normalize_step", "no_worse_than_start"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"`{name}` must be a bool, got {getattr(self, name)!r}.")
        check_positive_float("normalize_eps", self.normalize_eps)
        _check_choice("best_iterate", self.best_iterate, BEST_ITERATE_RULES)
        _check_choice("on_failure", self.on_failure, ON_FAILURE)
        if check_positive_float("failure_ratio", self.failure_ratio) < 1:
            raise ValueError(f"`failure_ratio` must be >= 1, got {self.failure_ratio!r}.")
        _check_choice("x_preconditioner", self.x_preconditioner, X_RULES)
        _check_choice("start", self.start, STARTS)
        decay = check_positive_float("preconditioner_decay", self.preconditioner_decay)
        if not decay < 1:
            raise ValueError(f"`preconditioner_decay` must be in (0, 1), got {decay!r}.")
        if not 0 <= check_nonnegative_float("x_momentum", self.x_momentum) < 1:
            raise ValueError(f"`x_momentum` must be in [0, 1), got {self.x_momentum!r}.")
        if isinstance(self.accept_first, bool) or not isinstance(self.accept_first, int):
            raise ValueError(f"`accept_first` must be an int >= 0, got {self.accept_first!r}.")
        if self.accept_first < 0:
            raise ValueError(f"`accept_first` must be an int >= 0, got {self.accept_first!r}.")
        if check_positive_float("cost_slack", self.cost_slack) < 1:
            raise ValueError(f"`cost_slack` must be >= 1, got {self.cost_slack!r}.")
        object.__setattr__(self, "tol", _as_tolerance(self.tol))
        if isinstance(self.trajectory_min_step, bool) or not isinstance(
            self.trajectory_min_step, int
        ):
            raise ValueError(
                f"`trajectory_min_step` must be an int >= 0, got {self.trajectory_min_step!r}."
            )
        object.__setattr__(self, "backward", _as_backward(self.backward))
        spec = self.start_solver
        spec = _as_mapping(spec) if _as_mapping(spec) is not None else spec
        object.__setattr__(self, "start_solver", resolve_solver(spec, "start_solver"))

    @property
    def schedule(self) -> Callable:
        """The step-size schedule ``(step, max_steps) -> alpha`` (before ``step_scale``)."""
        if self.final_step_size is None:
            return self.step_size
        return Piecewise((self.step_size.value, self.final_step_size))

    def __call__(self, f: Callable, cost: Callable, z0: PyTree, x0: PyTree, *args, **kwargs):
        return solve(f, cost, z0, x0, *args, solver=self, **kwargs)


def _check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {choices}, got {value!r}.")


def _check_positive(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"`{name}` must be a positive float, got {value!r}.")
    return check_positive_float(name, value)


def _check_step_scale(value: Any) -> None:
    """A positive finite scalar; a traced one (inside jit/vmap) is only checked for shape."""
    if isinstance(value, jax.core.Tracer):
        if jnp.ndim(value) != 0:
            raise ValueError(f"`step_scale` must be a scalar, got shape {jnp.shape(value)}.")
        return
    if isinstance(value, jax.Array | np.ndarray) and jnp.ndim(value) != 0:
        raise ValueError(f"`step_scale` must be a scalar, got shape {jnp.shape(value)}.")
    _check_positive("step_scale", value)


def _as_mapping(value: Any) -> dict | None:
    """A dict of a ``Mapping`` or of an ``ml_collections.ConfigDict`` (``to_dict``); else None."""
    if isinstance(value, Mapping):
        return dict(value)
    to_dict = getattr(value, "to_dict", None)
    if callable(to_dict) and hasattr(value, "items"):
        return to_dict()
    return None


def _as_tolerance(tol: Any) -> Tolerance | None:
    check_instance("tol", tol, (Tolerance,), "Tolerance(z=1e-5, mu=1e-5, x=1e-5)")
    if tol is None or isinstance(tol, Tolerance):
        return tol
    if isinstance(tol, numbers.Real) and not isinstance(tol, bool):
        return Tolerance(tol, tol, tol)
    fields = _as_mapping(tol)
    if fields is None:
        raise ValueError(
            f"`tol` must be None, a float, a Tolerance or a mapping with keys among "
            f"('z', 'mu', 'x'), got {tol!r}."
        )
    unknown = sorted(set(fields) - {"z", "mu", "x"})
    if unknown:
        raise ValueError(f"`tol` has no field(s) {unknown}; valid fields: ['mu', 'x', 'z'].")
    return Tolerance(**fields)


def _as_backward(backward: Any) -> Any:
    check_instance("backward", backward, BACKWARD_MODES, "Implicit()")
    fields = _as_mapping(backward)
    if fields is not None:
        # Imported here: the resolver of backward specs belongs to jiio_jax.deq.
        from jiio_jax.deq import resolve_backward

        backward = resolve_backward(fields)
    if not isinstance(backward, BACKWARD_MODES) or isinstance(backward, Unrolled):
        raise ValueError(
            "`backward` must be Implicit, Neumann, OneStep or Phantom (jiio_jax.deq) or a mapping "
            "{'name': 'implicit' | 'one_step' | 'neumann' | 'phantom', **fields}; the JIIO loop "
            f"cannot be unrolled. Got {backward!r}."
        )
    return backward


class JIIOSolution(NamedTuple):
    """Result of ``solve`` for one problem (add a leading axis per ``vmap``).

    Attributes:
      z: pytree like ``z0``; the equilibrium at the returned point, differentiable w.r.t.
        ``args`` by the implicit function theorem with ``x`` held constant.
      x: pytree like ``x0``; the optimized input (always inside the projection's set); constant
        for differentiation.
      mu: pytree like ``z0``; the adjoint (Lagrange multiplier) ``(I - J_z^T)^{-1} grad_z C``.
      cost: ``[]``; ``cost(z, x, *args)`` at the returned point.
      num_steps: int32 ``[]``; evaluations of the augmented map (= f evaluations = VJPs).
      best_step: int32 ``[]``; index of the returned point (0 = the initial point; -1 = the
        start guard's fallback ``(z*(x_0), x_0, mu0)``, see ``JIIO.no_worse_than_start``).
      residual: ``[]``; joint residual ``||F(s) - s|| / ||F(s)||`` at the returned point (mixes
        the blocks, as the reference's selection rule does).
      z_residual, mu_residual, x_residual: ``[]``; per-block residuals at the returned point
        (see ``Tolerance``). Without ``tol`` they are not computed per step but by one extra
        augmented-map evaluation at the returned point (not counted in ``num_steps``).
      converged: bool ``[]``; ``status == Status.CONVERGED`` (only possible with ``tol``).
      status: int32 ``[]``; ``Status.CONVERGED`` / ``MAX_STEPS`` / ``NONFINITE``.
      residual_trace: ``[max_steps]``; joint residual of the k-th evaluated point (padded with
        ``residual`` past ``num_steps``).
      cost_trace: ``[max_steps]``; cost of the k-th evaluated point (padded with ``cost``).
      trajectory_sample: ``(z, x)`` at a uniformly drawn step (for Jacobian regularization,
        ``jiio_jax.jacobian.frobenius_norm_sq``), constants; ``None`` without a key.
      start_cost: ``[]``; the start guard's reference ``cost(z*(x_0), x_0)`` (see
        ``JIIO.no_worse_than_start``); ``None`` without the guard.
      start_fevals: int32 ``[]``; f evaluations of the guard's start solve (not in
        ``num_steps``); ``None`` without the guard.
    """

    z: PyTree
    x: PyTree
    mu: PyTree
    cost: jax.Array
    num_steps: jax.Array
    best_step: jax.Array
    residual: jax.Array
    z_residual: jax.Array
    mu_residual: jax.Array
    x_residual: jax.Array
    converged: jax.Array
    status: jax.Array
    residual_trace: jax.Array
    cost_trace: jax.Array
    trajectory_sample: Any
    start_cost: Any = None
    start_fevals: Any = None


# The best point and its statistics live in ONE vector, so the per-step selection is a single
# select (separate arrays cost one kernel launch each, which dominated the step time on CPU).
_RULE_RES, _COST, _RES, _Z_RES, _MU_RES, _X_RES, _STEP = range(7)


def _pack_best(s, rule_res, cost, res, blocks, step) -> jax.Array:
    stats = jnp.stack([rule_res, cost, res, *blocks, jnp.asarray(step, s.dtype)])
    return jnp.concatenate([s, stats.astype(s.dtype)])


class _LoopState(NamedTuple):
    k: jax.Array  # points evaluated
    s: jax.Array  # newest point [n]
    g: jax.Array  # F(s) - s
    hist: Any
    best: jax.Array  # [n + 7]: the returned point, then the _RULE_RES.._STEP statistics
    status: jax.Array
    traces: jax.Array  # [T, 2]: joint residual and cost of each evaluated point
    sample: jax.Array  # flat [z; x] of the trajectory sample (or [0])
    carry: XCarry  # state of the opt-in x-step rules (``[0]`` arrays when off)


def _select(cfg: JIIO, best: jax.Array, j, s, res, cost, blocks, force) -> jax.Array:
    """Applies the best-iterate rule to point ``j`` (``force``: converged point, accept).

    A non-finite ``s`` makes ``res`` NaN, so checking ``res`` and ``cost`` suffices.
    """
    n = s.shape[0]
    best_res, best_cost = best[n + _RULE_RES], best[n + _COST]
    finite = jnp.isfinite(res) & jnp.isfinite(cost)
    lower = res < best_res
    if cfg.best_iterate == "cost_aware":
        early = j < cfg.accept_first
        moves_res = finite & (early | lower | force)
        accept = moves_res | (finite & (cost < best_cost) & (res < cfg.cost_slack * best_res))
    else:
        moves_res = finite & (lower | force)
        accept = moves_res
    # moves_res implies accept, so the rule's residual can ride in the same select.
    rule_res = jnp.where(moves_res, res, best_res)
    return jnp.where(accept, _pack_best(s, rule_res, cost, res, blocks, j), best)


def _status(cfg: JIIO, k, f_norm, res, cost, blocks) -> jax.Array:
    # ||F(s)|| is non-finite iff F(s) has a NaN/Inf (or overflows); NaN in s makes res NaN.
    nonfinite = ~(jnp.isfinite(f_norm) & jnp.isfinite(res) & jnp.isfinite(cost))
    status = jnp.where(k >= cfg.max_steps, Status.MAX_STEPS, _RUNNING)
    if cfg.tol is not None:
        tol = jnp.asarray([cfg.tol.z, cfg.tol.mu, cfg.tol.x], blocks.dtype)
        status = jnp.where(jnp.all(blocks <= tol), Status.CONVERGED, status)
    status = jnp.where(nonfinite, Status.NONFINITE, status)
    return status.astype(jnp.int32)


def solve(
    f: Callable[..., PyTree],
    cost: Callable[..., jax.Array],
    z0: PyTree,
    x0: PyTree,
    *args: PyTree,
    solver: JIIO,
    projection: Any = None,
    mu0: PyTree | None = None,
    trajectory_key: jax.Array | None = None,
    adjoint_init_scale: float | None = None,
) -> JIIOSolution:
    r"""Solves ``min_{x in S} cost(z*, x, *args)`` s.t. ``z* = f(z*, x, *args)`` by JIIO.

    One problem per call (``jax.vmap`` for a batch; every sample keeps its own steps, best
    iterate and status). The augmented map (``jiio_jax.jiio._augmented``) is iterated from
    ``s_0 = (z0, Pi(x0), mu0)``: ``X_1 = F(X_0)``, then the accelerator proposes
    ``X_{k+1}`` from the history (Anderson: ``X_{k+1} = sum_j a_j F(X_j)``), whose ``x`` block
    is projected back onto ``S`` before ``F`` is evaluated there, so every evaluated and the
    returned ``x`` lie in ``S``. No host syncs: with ``solver.tol=None`` (the reference) the
    loop is a fixed-length ``lax.fori_loop`` of ``max_steps`` evaluations (a problem that turns
    non-finite is reported at the step it did); with a tolerance it is a ``lax.while_loop`` that
    stops once every block residual meets it (or on a non-finite value). Under ``jax.vmap`` the
    tolerance loop runs the batch in lockstep until its last problem stops (a custom batching
    rule, as the solvers'): vmap's generic rule would select the whole carry, Anderson history
    included, on every step.

    **Gradients.** ``z`` is differentiable w.r.t. ``args`` (and arrays ``f``/``cost`` close
    over) through ``jiio_jax.deq.fixed_point`` at ``(z*, x*)`` with ``x*`` and ``mu*`` held
    constant (as the reference does). This is the exact total derivative of the bilevel value
    ``min_x C(z*(x, theta), x, theta)`` when the outer loss is the inner cost and ``x*`` is an
    unconstrained stationary point (envelope theorem), and a valid gradient of the worst case
    for adversarial maximisation (Danskin's theorem, at a unique maximiser); otherwise (inverse
    problems, an outer loss different from the cost) it ignores ``dx*/dtheta``.

    Args:
      f: ``f(z, x, *args) -> z`` (same structure, shapes and dtype as ``z``).
      cost: ``cost(z, x, *args) -> []`` scalar inner objective of one problem.
      z0: initial state (e.g. zeros).
      x0: initial input, any pytree of floats with ``z0``'s dtype (e.g. zero latent code,
        zero perturbation).
      *args: pytrees ``f`` and ``cost`` depend on (parameters, clean image, target...).
      solver: the ``JIIO`` configuration.
      projection: ``None`` or a projection (``L2Ball``, ``LinfBall``, ``Box``,
        ``Unconstrained``) or any callable ``x -> x``; may hold traced arrays.
      mu0: initial adjoint (pytree like ``z0``); zeros by default.
      trajectory_key: PRNG key; if given, ``trajectory_sample`` holds ``(z, x)`` of the point
        evaluated at a step drawn uniformly from ``[trajectory_min_step, T - 1]`` (the last
        point if the loop stops earlier).
      adjoint_init_scale: Python float; if set, the implicit backward solve of ``z`` is
        warm-started at ``adjoint_init_scale * mu*``. Use it when the outer loss is a multiple
        of the inner cost: e.g. ``1.0`` for ``loss = cost(z, x)``, ``1 / B`` for the batch
        mean of per-sample costs; then ``mu*`` is (nearly) the adjoint the backward pass needs.

    Returns:
      A ``JIIOSolution``.

    Raises:
      TypeError: ``solver`` is not a ``JIIO``, ``f``/``cost``/``projection`` not callable.
      ValueError: bad shapes (``f`` fails on ``(z0, x0)`` or changes ``z``'s shape,
        ``cost`` not scalar, ``projection`` changes ``x``), mixed dtypes, Broyden with a
        projection.
    """
    check_instance("solver", solver, (JIIO,), "JIIO(step_size=0.1)")
    if not isinstance(solver, JIIO):
        raise TypeError(f"`solver` must be a JIIO configuration, got {solver!r}.")
    proj = as_projection(projection)
    constrained = not isinstance(proj, Unconstrained)
    if constrained and solver.accelerator == "broyden":
        raise ValueError(
            "accelerator='broyden' supports unconstrained problems only (its secant model "
            "assumes the proposed step is taken); use accelerator='anderson' with a projection."
        )
    prob = _problem.prepare(f, cost, z0, x0, args, proj)
    user_mu0 = mu0 is not None
    if mu0 is None:
        mu0 = jax.tree.map(jnp.zeros_like, prob.z0)
    else:
        mu0 = as_state(mu0, "mu0")
        check_fn_output(lambda _: mu0, prob.z0, "mu0 (as a function of z0)")
    if adjoint_init_scale is not None:
        adjoint_init_scale = float(adjoint_init_scale)

    frozen_args = jax.lax.stop_gradient(prob.args)
    layout = make_layout(prob.z0, prob.x0)
    x_start = proj(jax.lax.stop_gradient(prob.x0))
    s0 = flatten_state(jax.lax.stop_gradient(prob.z0), x_start, jax.lax.stop_gradient(mu0))
    s0 = s0.astype(jnp.result_type(*jax.tree.leaves(prob.z0)))
    schedule, T, scale = solver.schedule, solver.max_steps, solver.step_scale
    fmap = AugmentedMap(
        f=prob.f,
        cost=prob.cost,
        args=frozen_args,
        layout=layout,
        projection=proj if constrained else None,
        alpha=lambda t: schedule(t, T) * scale,
        z_damping=solver.z_damping,
        mu_damping=solver.mu_damping,
        normalize_step=solver.normalize_step,
        normalize_eps=solver.normalize_eps,
        x_rule=solver.x_preconditioner,
        precondition_decay=solver.preconditioner_decay,
        x_momentum=float(solver.x_momentum),
    )
    start_cost = start_fevals = None
    if solver.no_worse_than_start or solver.start == "equilibrium":
        z_start, start_cost, start_fevals = _start_equilibrium(solver, prob, s0, layout)
        if solver.start == "equilibrium":
            s0 = _equilibrium_start(prob, s0, layout, z_start, user_mu0)
    state = _run(solver, fmap, s0, constrained, trajectory_key)

    n = s0.shape[0]
    best = state.best
    if solver.no_worse_than_start:
        # The start guard (see JIIO.no_worse_than_start). The rule never accepts a non-finite
        # point, so an all-non-finite run keeps cost inf here and falls back too; a NaN start
        # cost compares False and the rule's point is kept.
        fallback = _pack_best(
            s0.at[: layout.nz].set(ravel_pytree(z_start)[0].astype(s0.dtype)),
            start_cost,
            start_cost,
            jnp.nan,
            jnp.full((3,), jnp.nan),
            -1,
        )
        worse = best[n + _COST] > start_cost
        best = jnp.where(worse, fallback, best)
    best_s, best_stats = best[:n], best[n:]
    z_star, x_star, mu_star = layout.unflatten(best_s)
    adjoint_init = None
    if adjoint_init_scale is not None:
        adjoint_init = jax.tree.map(lambda m: adjoint_init_scale * m, mu_star)
    z_diff = implicit_equilibrium(
        prob.f,
        z_star,
        x_star,
        *prob.args,
        backward=solver.backward,
        adjoint_init=adjoint_init,
        on_failure=solver.on_failure,
        failure_ratio=solver.failure_ratio,
    )
    steps = jnp.arange(T)
    sample = None
    if trajectory_key is not None:
        zs, xs = state.sample[: layout.nz], state.sample[layout.nz :]
        sample = (layout.unravel_z(zs), layout.unravel_x(xs))
    best_cost, best_res = best_stats[_COST], best_stats[_RES]
    if solver.tol is None or solver.no_worse_than_start:
        # One augmented-map evaluation at the returned point: its block residuals (not tracked
        # by the fixed-length loop) and, for the guard's fallback, its joint residual.
        step = jnp.maximum(best_stats[_STEP], 0).astype(jnp.int32)
        point = jax.lax.stop_gradient(best_s)
        _, _, joint, _, blocks, _ = fmap(point, step, True, fmap.init_carry(point))
        best_stats = best_stats.at[_Z_RES : _X_RES + 1].set(blocks).at[_RES].set(joint)
        best_res = best_stats[_RES]
    return JIIOSolution(
        z=z_diff,
        x=x_star,
        mu=mu_star,
        cost=best_cost,
        num_steps=state.k,
        best_step=best_stats[_STEP].astype(jnp.int32),
        residual=best_res,
        z_residual=best_stats[_Z_RES],
        mu_residual=best_stats[_MU_RES],
        x_residual=best_stats[_X_RES],
        converged=state.status == Status.CONVERGED,
        status=state.status,
        residual_trace=jnp.where(steps < state.k, state.traces[:, 0], best_res),
        cost_trace=jnp.where(steps < state.k, state.traces[:, 1], best_cost),
        trajectory_sample=sample,
        start_cost=start_cost,
        start_fevals=start_fevals,
    )


def _start_equilibrium(cfg: JIIO, prob, s0: jax.Array, layout):
    """``(z*(x_0), cost(z*(x_0), x_0), f evaluations)`` at the projected start ``x_0``."""
    zf, xf, _ = layout.split(s0)
    z0, x = layout.unravel_z(zf), layout.unravel_x(xf)
    args = jax.lax.stop_gradient(prob.args)
    sol = cfg.start_solver(lambda z: prob.f(z, x, *args), z0)
    c = jnp.asarray(prob.cost(sol.value, x, *args), s0.dtype)
    return jax.lax.stop_gradient(sol.value), jax.lax.stop_gradient(c), sol.num_fevals


def _equilibrium_start(prob, s0: jax.Array, layout, z_start, keep_mu: bool) -> jax.Array:
    """``s0`` with ``z = z*(x_0)`` and, unless the user gave ``mu0``, ``mu = grad_z C`` there."""
    zf, xf, muf = layout.split(s0)
    x = layout.unravel_x(xf)
    args = jax.lax.stop_gradient(prob.args)
    zf = ravel_pytree(z_start)[0].astype(s0.dtype)
    if not keep_mu:
        grad_z = jax.grad(lambda z: prob.cost(z, x, *args))(z_start)
        muf = ravel_pytree(grad_z)[0].astype(s0.dtype)
    return jax.lax.stop_gradient(jnp.concatenate([zf, xf, muf]))


def _run(cfg: JIIO, fmap: AugmentedMap, s0, constrained: bool, key) -> _LoopState:
    T, dtype = cfg.max_steps, s0.dtype
    algo = _accelerators.make_accelerator(
        cfg.accelerator,
        cfg.anderson_type,
        cfg.memory,
        cfg.mixing,
        cfg.ridge,
        cfg.stall_steps,
        cfg.max_growth,
    )
    # The plain iteration proposes F(X) itself, whose x block is already projected.
    project = constrained and cfg.accelerator != "none"
    nzx = fmap.layout.nz + fmap.layout.nx
    if key is not None:
        low = min(cfg.trajectory_min_step, T - 1)
        sample_step = jax.random.randint(key, (), low, T)
    else:
        sample_step = None

    # The fixed-length loop needs no block residuals per step (no tolerance to test): they are
    # computed once, at the returned point, by ``solve``.
    with_blocks = cfg.tol is not None
    no_blocks = jnp.zeros((3,), dtype)

    def evaluate(s, k, v):
        f_s, c, res, f_norm, blocks, v = fmap(s, k, with_blocks, v)
        return f_s - s, f_norm, res, c, (blocks if with_blocks else no_blocks), v

    v0 = fmap.init_carry(s0)
    g0, f0, res0, c0, blocks0, v0 = evaluate(s0, jnp.asarray(0, jnp.int32), v0)
    inf = jnp.asarray(jnp.inf, dtype)
    best = _pack_best(s0, inf, inf, res0, blocks0, 0)
    k1 = jnp.asarray(1, jnp.int32)
    status0 = _status(cfg, k1, f0, res0, c0, blocks0)
    best = _select(cfg, best, 0, s0, res0, c0, blocks0, status0 == Status.CONVERGED)
    state = _LoopState(
        k=k1,
        s=s0,
        g=g0,
        hist=algo.init(s0, g0),
        best=best,
        status=status0,
        traces=jnp.zeros((T, 2), dtype).at[0].set(jnp.stack([res0, c0])),
        sample=s0[:nzx] if key is not None else jnp.zeros((0,), dtype),
        carry=v0,
    )

    def body(st: _LoopState, j) -> _LoopState:
        """Evaluates point ``j`` (= ``st.k`` in the while loop; the unbatched loop index in the
        fixed-length loop, where finished problems keep computing but change nothing)."""
        s_new = algo.propose(st.hist, st.s, st.g, j)
        if project:
            s_new = project_x_block(fmap.layout, fmap.projection, s_new)
        g_new, f_new, res, c, blocks, carry = evaluate(s_new, j, st.carry)
        hist = algo.observe(st.hist, st.s, st.g, s_new, g_new, j)
        running = st.status == _RUNNING
        status = jnp.where(running, _status(cfg, j + 1, f_new, res, c, blocks), st.status)
        converged = running & (status == Status.CONVERGED)
        best = _select(cfg, st.best, j, s_new, res, c, blocks, converged)
        # The lockstep loop (``_while``) keeps evaluating a finished problem: nothing it
        # returns may change after that (the trace is cut at ``k`` by ``solve``).
        lockstep = cfg.tol is not None
        if lockstep:
            best = jnp.where(running, best, st.best)
        sample = st.sample
        if key is not None:
            take = (j <= sample_step) & running if lockstep else j <= sample_step
            sample = jnp.where(take, s_new[:nzx], st.sample)
        return _LoopState(
            k=jnp.where(running, j + 1, st.k),
            s=s_new,
            g=g_new,
            hist=hist,
            best=best,
            status=status,
            traces=jax.lax.dynamic_update_index_in_dim(st.traces, jnp.stack([res, c]), j, 0),
            sample=sample,
            carry=carry,
        )

    if cfg.tol is None:
        # Fixed length (the reference). A fori_loop with an unbatched index, not a while_loop:
        # under vmap a data-dependent while predicate makes XLA select the whole carry (the
        # Anderson history) every step, which cost as much as f + vjp itself at batch 64.
        # A problem that turns non-finite keeps iterating on NaNs; _select never accepts them.
        return jax.lax.fori_loop(1, T, lambda j, st: body(st, j), state)
    return _while(body, state)


def _while(body: Callable, state: _LoopState) -> _LoopState:
    """Iterates ``body(state, j)`` until the problem is no longer running.

    One problem: a ``lax.while_loop`` with ``j = state.k``. Under ``jax.vmap`` a custom batching
    rule runs the whole batch in one lockstep loop over a shared ``j`` until every problem is
    done, with ``body`` vmapped; a finished problem keeps computing but its returned fields are
    frozen by ``body`` (its ``k``, status, best point and trajectory sample). vmap's generic
    ``while_loop`` rule would instead select every carried buffer, the ``[m, n]`` Anderson
    history included, on every step. The solvers batch their loop the same way
    (``jiio_jax.solvers.core.run``).
    """
    body_explicit, consts, _ = lift_consts(body, state, state.k)

    @jax.custom_batching.custom_vmap
    def loop(state, consts):
        running = lambda st: st.status == _RUNNING
        return jax.lax.while_loop(running, lambda st: body_explicit(consts, st, st.k), state)

    @loop.def_vmap
    def loop_batched(axis_size, in_batched, state, consts):
        state_batched, consts_batched = in_batched
        state = broadcast_unbatched(axis_size, state, state_batched)
        axes = [0 if b else None for b in consts_batched]
        step = jax.vmap(body_explicit, in_axes=(axes, 0, None))

        def advance(carry):
            j, st = carry
            return j + 1, step(consts, st, j)

        any_running = lambda carry: jnp.any(carry[1].status == _RUNNING)
        j0 = jnp.asarray(1, jnp.int32)
        _, state = jax.lax.while_loop(any_running, advance, (j0, state))
        return state, jax.tree.map(lambda _: True, state)

    return loop(state, consts)
