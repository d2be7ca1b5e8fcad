"""Forward fixed-point solver benchmark: jiio_jax versus jaxopt and optimistix (SOLVER_ANCHORS §4).

Problem: a DEQ layer ``z = tanh(W z + U x + b)`` per sample (``z in R^d``), float32, ``z0 = 0``.
W families (spectral scale ``rho``): G = Gaussian rescaled to spectral norm rho; S = symmetric
``Q diag(linspace(0, rho)) Q^T``; R = ``rho * Q`` (orthogonal, eigenvalues on a circle); N = S with
rho = 1.2 (non-contractive, reported as a status check only).

Protocol (§4.3): ONE external per-sample criterion ``||f(z)-z|| / (||f(z)|| + 1e-9) <= eps``,
evaluated in float64 numpy on the returned z, outside every library. For each solver
configuration the internal tolerance is swept over ``eps * {1, 1/3, 1/10, 1/30, 1/100}`` and the
*loosest* one that meets the criterion for every sample is reported (with its fevals, compile
time and warm time). Compile time is measured separately (``lower().compile()``); warm time is
the median of 20 interleaved runs after one warm-up (``jiio_jax.evaluation.clock``). Peers
follow §4.3b: jaxopt with ``unroll=False`` (a ``lax.while_loop``) and ``implicit_diff=False``;
jaxopt Broyden with ``gamma=-1``, ``stepsize=1`` (no line search) and ``history_size=30``.

Usage::

    python experiments/benchmarks/solvers.py            # default subset (<= 10 min, 2 cores)
    python experiments/benchmarks/solvers.py --full     # whole grid (hours on 2 cores)
    python experiments/benchmarks/solvers.py --smoke --out /tmp/x   # seconds, for the test

Writes the measurements to ``<out>/solvers.json`` (``measure``), then ``<out>/solvers.md``,
``<out>/solvers_residuals.png`` and ``<out>/solvers_time_vs_fevals.png`` from that JSON alone
(``write_report``; ``<out>`` defaults to ``experiments/results``). ``--report_only`` rebuilds the
report and plots from the JSON without measuring.
"""

from __future__ import annotations

import os

# Thread settings for a stable timing on a shared 2-core CPU (SOLVER_ANCHORS §4.3). Must be set
# before JAX initialises its CPU backend. An existing XLA_FLAGS is respected and recorded.
os.environ.setdefault(
    "XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
)

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import functools  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import trained_layer  # noqa: E402

import jiio_jax.solvers as js  # noqa: E402

TOL_FACTORS = (1.0, 1 / 3, 1 / 10, 1 / 30, 1 / 100)
EXTERNAL_DENOM_EPS = 1e-9
DEFAULT_OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "results")


# ------------------------------------------------------------------------------------------
# Problems.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    family: str
    rho: float
    d: int
    batch: int
    xscale: float
    seed: int = 0

    @property
    def label(self) -> str:
        return f"{self.family} rho={self.rho:g} d={self.d} B={self.batch} x~{self.xscale:g}N" + (
            f" seed={self.seed}" if self.seed else ""
        )


def make_problem(p: Problem) -> dict[str, np.ndarray]:
    """Returns float32 numpy arrays W [d,d], inj [B,d] (= U x + b per sample), plus U, b, x."""
    rng = np.random.default_rng([p.seed, p.d, p.batch, "GSRN".index(p.family), int(1e4 * p.xscale)])
    d = p.d
    if p.family == "G":
        a = rng.standard_normal((d, d))
        w = a * (p.rho / np.linalg.norm(a, 2))
    else:
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        if p.family in ("S", "N"):
            w = (q * np.linspace(0.0, p.rho, d)) @ q.T
        elif p.family == "R":
            w = p.rho * q
        else:
            raise ValueError(p.family)
    u = rng.standard_normal((d, d)) / np.sqrt(d)
    b = 0.01 * rng.standard_normal(d)
    x = p.xscale * rng.standard_normal((p.batch, d))
    inj = x @ u.T + b
    f32 = lambda a: np.asarray(a, np.float32)
    return {"W": f32(w), "inj": f32(inj), "U": f32(u), "b": f32(b), "x": f32(x)}


def external_residuals(w: np.ndarray, inj: np.ndarray, z: np.ndarray) -> np.ndarray:
    """Per-sample ``||f(z)-z|| / (||f(z)|| + 1e-9)`` in float64 (NaN/Inf -> inf)."""
    z64 = np.asarray(z, np.float64)
    with np.errstate(all="ignore"):
        fz = np.tanh(z64 @ np.asarray(w, np.float64).T + np.asarray(inj, np.float64))
        res = np.linalg.norm(fz - z64, axis=-1) / (np.linalg.norm(fz, axis=-1) + EXTERNAL_DENOM_EPS)
    return np.where(np.isfinite(res), res, np.inf)


# ------------------------------------------------------------------------------------------
# Solver configurations. build(tol, max_steps) -> solve(W, inj) -> (Z [B,d], fevals [B]).
# ------------------------------------------------------------------------------------------


def _f_one(w, inj_b):
    return lambda z: jnp.tanh(w @ z + inj_b)


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    lib: str  # "ours", "jaxopt", "optimistix"
    mode: str  # "per-sample" (vmap) or "coupled" (whole batch as one vector)
    build: Callable[[float, int], Callable]
    trace: Callable | None = None  # (w, inj, steps) -> (fevals [K], res [B,K]) for the plot

    @property
    def key(self) -> str:
        return f"{self.lib}:{self.name}:{self.mode}"

    @property
    def is_peer(self) -> bool:
        return self.lib != "ours"


def _ours(name: str, fn: Callable, **kw) -> Config:
    def build(tol, max_steps):
        def solve(w, inj):
            def one(inj_b):
                sol = fn(
                    _f_one(w, inj_b),
                    jnp.zeros_like(inj_b),
                    max_steps=max_steps,
                    tol=tol,
                    stop_mode="rel",
                    **kw,
                )
                return sol.value, sol.num_fevals, sol.status

            return jax.vmap(one)(inj)

        return solve

    def trace(w, inj, steps):
        def one(inj_b):
            # tol below float32 resolution: run the full budget to draw the whole curve.
            sol = fn(_f_one(w, inj_b), jnp.zeros_like(inj_b), max_steps=steps, tol=1e-30, **kw)
            return sol.trace

        res = jax.jit(jax.vmap(one))(inj)  # stop-mode residual, exactly the external metric
        return np.arange(1, steps + 1), np.asarray(res)

    return Config(name, "ours", "per-sample", build, trace)


def _jaxopt_solver(kind: str, coupled: bool, tol: float, max_steps: int, **kw):
    import jaxopt

    if coupled:
        fp = lambda z, w, inj: jnp.tanh(z @ w.T + inj)
    else:
        fp = lambda z, w, inj: jnp.tanh(w @ z + inj)
    common_kw = dict(maxiter=max_steps, tol=tol, implicit_diff=False, unroll=False, jit=True)
    if kind == "fpi":
        return jaxopt.FixedPointIteration(fixed_point_fun=fp, **common_kw)
    if kind == "anderson":
        return jaxopt.AndersonAcceleration(fixed_point_fun=fp, **common_kw, **kw)
    if kind == "broyden":
        root = lambda z, w, inj: fp(z, w, inj) - z
        return jaxopt.Broyden(
            fun=root, gamma=-1.0, stepsize=1.0, history_size=30, **common_kw, **kw
        )
    raise ValueError(kind)


def _jaxopt(name: str, kind: str, coupled: bool, **kw) -> Config:
    def build(tol, max_steps):
        def solve(w, inj):
            solver = _jaxopt_solver(kind, coupled, tol, max_steps, **kw)
            if coupled:
                out = solver.run(jnp.zeros_like(inj), w, inj)
                fe = jnp.broadcast_to(out.state.num_fun_eval, inj.shape[:1])
                return out.params, fe
            out = jax.vmap(lambda inj_b: solver.run(jnp.zeros_like(inj_b), w, inj_b))(inj)
            return out.params, out.state.num_fun_eval

        return solve

    def trace(w, inj, steps):
        # Manual stepping (init_state / update) per sample in a scan: the same iterates as
        # ``run`` with an unreachable tol, recording the external residual of each iterate.
        solver = _jaxopt_solver(kind, False, 1e-30, steps, **kw)

        def one(inj_b):
            z0 = jnp.zeros_like(inj_b)
            f = _f_one(w, inj_b)

            def rel(z):
                fz = f(z)
                return jnp.linalg.norm(fz - z) / (jnp.linalg.norm(fz) + EXTERNAL_DENOM_EPS)

            def body(carry, _):
                z, st = carry
                z, st = solver.update(z, st, w, inj_b)
                return (z, st), (st.num_fun_eval, rel(z))

            st0 = solver.init_state(z0, w, inj_b)
            _, (fe, res) = jax.lax.scan(body, (z0, st0), None, length=steps)
            return fe, res

        fe, res = jax.jit(jax.vmap(one))(inj)
        return np.asarray(fe[0]), np.asarray(res)

    return Config(name, "jaxopt", "coupled" if coupled else "per-sample", build, trace)


def _optx(coupled: bool) -> Config:
    def build(tol, max_steps):
        import optimistix as optx

        # The library's own knobs: rtol = atol = tol, default max_norm Cauchy test.
        solver = optx.FixedPointIteration(rtol=tol, atol=tol)

        def run(z0, w, inj):
            if coupled:
                fn = lambda z, a: jnp.tanh(z @ a[0].T + a[1])
            else:
                fn = lambda z, a: jnp.tanh(a[0] @ z + a[1])
            sol = optx.fixed_point(fn, solver, z0, args=(w, inj), max_steps=max_steps, throw=False)
            return sol.value, sol.stats["num_steps"]

        def solve(w, inj):
            if coupled:
                z, n = run(jnp.zeros_like(inj), w, inj)
                return z, jnp.broadcast_to(n, inj.shape[:1])
            return jax.vmap(lambda inj_b: run(jnp.zeros_like(inj_b), w, inj_b))(inj)

        return solve

    return Config("FPI", "optimistix", "coupled" if coupled else "per-sample", build)


SMOKE_CONFIGS = (
    "ours:Anderson m=5:per-sample",
    "jaxopt:Anderson m=5 ridge=1e-10:per-sample",
    "optimistix:FPI:coupled",
)


def all_configs() -> list[Config]:
    cfgs = [
        _ours("Anderson m=5", js.anderson, memory=5),
        _ours("Anderson m=10", js.anderson, memory=10),
        _ours("Broyden L=5", js.broyden, memory=5),
        _ours("Broyden L=10", js.broyden, memory=10),
        _ours("Broyden L=30", js.broyden, memory=30),
        _ours("FPI", js.fixed_point_iteration),
    ]
    for coupled in (False, True):
        cfgs += [
            _jaxopt("FPI", "fpi", coupled),
            _jaxopt("Anderson m=5 ridge=1e-5", "anderson", coupled, history_size=5),
            _jaxopt("Anderson m=5 ridge=1e-10", "anderson", coupled, history_size=5, ridge=1e-10),
            _jaxopt("Broyden L=30 g=-1 step=1", "broyden", coupled),
            _optx(coupled),
        ]
    return cfgs


# ------------------------------------------------------------------------------------------
# Running one problem.
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Result:
    cfg: Config
    tol: float
    met: bool  # every sample meets the external criterion
    success: float  # fraction of samples meeting it
    fevals: np.ndarray
    res: np.ndarray  # external residual per sample
    nan: bool
    compile_s: float
    hit_budget: bool
    compiled: Any = None
    ms: float = float("nan")

    @property
    def fe_med(self) -> float:
        return float(np.median(self.fevals))


def _config_json(cfg: Config) -> dict:
    return {"name": cfg.name, "lib": cfg.lib, "mode": cfg.mode}


def _config_from_json(d: dict) -> Config:
    """The saved name of a configuration (no solver: the report only names it)."""
    return Config(d["name"], d["lib"], d["mode"], build=None)


def result_json(r: Result) -> dict:
    """A ``Result``'s measurements in JSON types (no executable)."""
    return {
        "config": _config_json(r.cfg),
        "tol": r.tol,
        "met": r.met,
        "success": r.success,
        "fevals": np.asarray(r.fevals).tolist(),
        "res": np.asarray(r.res).tolist(),
        "nan": r.nan,
        "compile_s": r.compile_s,
        "hit_budget": r.hit_budget,
        "ms": r.ms,
    }


def result_from_json(d: dict) -> Result:
    return Result(
        cfg=_config_from_json(d["config"]),
        tol=d["tol"],
        met=d["met"],
        success=d["success"],
        fevals=np.asarray(d["fevals"]),
        res=np.asarray(d["res"], np.float64),
        nan=d["nan"],
        compile_s=d["compile_s"],
        hit_budget=d["hit_budget"],
        ms=d["ms"],
    )


_COMPILED: dict[tuple, tuple[Callable, float]] = {}


def compiled_solve(cfg: Config, tol: float, max_steps: int, w, inj) -> tuple[Callable, float]:
    """Compiles ``cfg`` at ``tol`` once per argument shape; W and inj are runtime arguments, so
    problems of the same size reuse the executable. Returns ``(compiled, first compile s)``."""
    key = (cfg.key, tol, max_steps, w.shape, inj.shape, str(w.dtype))
    if key not in _COMPILED:
        _COMPILED[key] = common.compile_ahead(cfg.build(tol, max_steps), w, inj)
    return _COMPILED[key]


def sweep(cfg: Config, w, inj, eps: float, max_steps: int) -> Result:
    """Loosest internal tol in eps*TOL_FACTORS meeting the external criterion (or the last)."""
    w_np, inj_np = np.asarray(w), np.asarray(inj)
    last = None
    for factor in TOL_FACTORS:
        tol = eps * factor
        compiled, compile_s = compiled_solve(cfg, tol, max_steps, w, inj)
        out = jax.block_until_ready(compiled(w, inj))  # (z, fevals[, status]) per sample
        z, fe = np.asarray(out[0]), np.asarray(out[1])
        res = external_residuals(w_np, inj_np, z)
        ok = res <= eps
        last = Result(
            cfg=cfg,
            tol=tol,
            met=bool(ok.all()),
            success=float(ok.mean()),
            fevals=fe,
            res=res,
            nan=bool(~np.isfinite(z).all()),
            compile_s=compile_s,
            hit_budget=bool((fe >= max_steps).any()),
            compiled=compiled,
        )
        # A tighter internal tol cannot help once the budget ran out or values went bad.
        if last.met or last.hit_budget or last.nan:
            break
    return last


def run_problem(
    p: Problem, cfgs: list[Config], eps: float, max_steps: int, repeats: int, log=print
) -> list[Result]:
    data = make_problem(p)
    w, inj = jnp.asarray(data["W"]), jnp.asarray(data["inj"])
    results = []
    for cfg in cfgs:
        t0 = time.perf_counter()
        r = sweep(cfg, w, inj, eps, max_steps)
        results.append(r)
        log(
            f"    {cfg.key:52s} tol={r.tol:.1e} met={r.met!s:5} fe_med={r.fe_med:6.0f} "
            f"({time.perf_counter() - t0:.1f}s)"
        )
    # Interleaved warm timing: configs that met the criterion get `repeats` runs; the others
    # (budget exhausted, slow and not comparable) get a few, timed among themselves.
    for group, reps in (
        ([r for r in results if r.met], repeats),
        ([r for r in results if not r.met], min(3, repeats)),
    ):
        if not group:
            continue
        med = common.interleaved_medians(
            {r.cfg.key: functools.partial(r.compiled, w, inj) for r in group}, repeats=reps
        )
        for r in group:
            r.ms = 1e3 * med[r.cfg.key]
    for r in results:
        r.compiled = None  # the executable stays in _COMPILED for problems of the same size
    return results


def per_step_costs(p: Problem, cfgs: list[Config], steps: int, repeats: int, log=print):
    """Warm time per f evaluation at a fixed budget (unreachable tol), per-sample configs.

    The floor is a bare ``fori_loop`` of ``steps`` evaluations of the batched map. Time is
    divided by the largest per-sample feval count (a vmapped loop runs until its slowest sample).
    Returns the measurements ``{"label", "rows": [{"key", "max_fevals", "seconds"}]}``
    (``per_step_markdown`` reports them).
    """
    data = make_problem(p)
    w, inj = jnp.asarray(data["W"]), jnp.asarray(data["inj"])

    def bare(w, inj):
        z = jax.lax.fori_loop(0, steps, lambda i, z: jnp.tanh(z @ w.T + inj), jnp.zeros_like(inj))
        return z, jnp.full(inj.shape[:1], steps, jnp.int32)

    calls, fevals = {}, {}
    # Not in the main grid: the non-default "ring" policy, to separate the restart's cost.
    extra = [_ours("Broyden L=30 ring", js.broyden, memory=30, full_memory="ring")]
    for key, fn in [("bare f loop", bare)] + [
        (c.key, c.build(1e-30, steps)) for c in cfgs + extra if c.mode == "per-sample"
    ]:
        compiled, _ = common.compile_ahead(fn, w, inj)
        fe = compiled(w, inj)[1]
        calls[key] = functools.partial(compiled, w, inj)
        fevals[key] = int(np.max(np.asarray(fe)))
    med = common.interleaved_medians(calls, repeats=repeats)
    data = {
        "label": p.label,
        "rows": [{"key": k, "max_fevals": fevals[k], "seconds": med[k]} for k in calls],
    }
    log(per_step_markdown(data, short=True)[0])
    return data


def per_step_markdown(data: dict, short: bool = False) -> tuple[str, dict[str, float]]:
    """``(markdown, {key: us_per_feval})`` of ``per_step_costs``'s measurements."""
    per = {r["key"]: 1e6 * r["seconds"] / r["max_fevals"] for r in data["rows"]}
    floor = per["bare f loop"]
    rows = [
        [
            r["key"],
            r["max_fevals"],
            f"{1e3 * r['seconds']:.2f}",
            f"{per[r['key']]:.0f}",
            f"{per[r['key']] / floor:.2f}",
        ]
        for r in data["rows"]
    ]
    if short:
        headers = ["config", "max fevals", "ms", "us / feval", "vs bare f"]
    else:
        headers = [
            "config (per-sample)",
            "max fevals",
            "warm ms",
            "us per feval",
            "per feval / bare f",
        ]
    return common.markdown_table(headers, rows), per


# ------------------------------------------------------------------------------------------
# Reporting.
# ------------------------------------------------------------------------------------------


def best_peer(results: list[Result]) -> Result | None:
    peers = [r for r in results if r.cfg.is_peer and r.met]
    return min(peers, key=lambda r: r.ms) if peers else None


def min_peer_fevals(results: list[Result]) -> float | None:
    peers = [r for r in results if r.cfg.is_peer and r.met]
    return min(r.fe_med for r in peers) if peers else None


def _fe(r: Result) -> str:
    f = r.fevals
    return f"{int(f.min())}/{np.median(f):g}/{int(f.max())}"


def problem_table(results: list[Result]) -> str:
    bp = best_peer(results)
    fe_best = min_peer_fevals(results)
    rows = []
    for r in results:
        ratio = f"{r.ms / bp.ms:.2f}" if bp is not None and r.met else "-"
        fe_ratio = f"{r.fe_med / fe_best:.2f}" if fe_best and r.met else "-"
        rows.append(
            [
                ("**" if r is bp else "") + r.cfg.lib + ("**" if r is bp else ""),
                r.cfg.name,
                r.cfg.mode,
                f"{r.tol:.1e}" + ("" if r.met else " (none)"),
                f"{100 * r.success:.0f}%",
                _fe(r),
                f"{r.res.max():.1e} / {np.median(r.res):.1e}",
                "NaN" if r.nan else "",
                f"{r.compile_s:.2f}",
                f"{r.ms:.2f}",
                ratio,
                fe_ratio,
            ]
        )
    headers = [
        "lib",
        "solver",
        "mode",
        "internal tol",
        "success",
        "fevals min/med/max",
        "ext. res max / med",
        "NaN",
        "compile s",
        "warm ms",
        "time / best peer time",
        "fevals med / lowest peer fevals med",
    ]
    return common.markdown_table(headers, rows)


def headline_rows(all_results: list[tuple[Problem, float, list[Result]]]):
    rows = []
    for p, eps, results in all_results:
        bp = best_peer(results)
        fe_best = min_peer_fevals(results)

        def best_of(prefix, results=results):
            cands = [r for r in results if r.cfg.lib == "ours" and r.cfg.name.startswith(prefix)]
            met = [r for r in cands if r.met]
            return min(met, key=lambda r: r.ms) if met else None

        row = [p.label, f"{eps:g}"]
        if bp is None:
            row += ["none met eps", "-", "-"]
        else:
            row += [f"{bp.cfg.name} ({bp.cfg.lib}, {bp.cfg.mode})", f"{bp.ms:.2f}", _fe(bp)]
        for prefix in ("Anderson", "Broyden"):
            r = best_of(prefix)
            if r is None:
                row += ["not met", "-", "-"]
                continue
            row += [
                f"{r.cfg.name}: {r.ms:.2f} ms, fe {_fe(r)}",
                f"{r.ms / bp.ms:.2f}" if bp else "-",
                f"{r.fe_med / fe_best:.2f}" if fe_best else "-",
            ]
        rows.append(row)
    headers = [
        "problem",
        "eps",
        "best peer (by time)",
        "peer ms",
        "peer fevals",
        "our best Anderson",
        "time / best peer time",
        "fevals med / min peer fevals med",
        "our best Broyden",
        "time / best peer time",
        "fevals med / min peer fevals med",
    ]
    return headers, rows


def status_check(p: Problem, cfgs: list[Config], eps: float, max_steps: int, log=print) -> dict:
    """Non-contractive family: one run per config at tol=eps; how each one ends (the
    measurements; ``status_markdown`` reports them)."""
    data = make_problem(p)
    w, inj = jnp.asarray(data["W"]), jnp.asarray(data["inj"])
    rows = []
    for cfg in cfgs:
        compiled, _ = compiled_solve(cfg, eps, max_steps, w, inj)
        out = jax.block_until_ready(compiled(w, inj))
        z, fe = np.asarray(out[0]), np.asarray(out[1])
        res = external_residuals(np.asarray(w), np.asarray(inj), z)
        extra = _status_counts(np.asarray(out[2])) if len(out) > 2 else ""
        nan = bool(~np.isfinite(z).all())
        rows.append(
            {
                "config": _config_json(cfg),
                "success": float((res <= eps).mean()),
                "fevals": fe.tolist(),
                "res": res.tolist(),
                "nan": nan,
                "status_counts": extra,
            }
        )
        log(f"    {cfg.key:52s} success={float((res <= eps).mean()):.2f} nan={nan} {extra}")
    return {"problem": dataclasses.asdict(p), "eps": eps, "max_steps": max_steps, "rows": rows}


def status_markdown(data: dict) -> tuple[str, list]:
    """``(markdown, summary)`` of ``status_check``'s measurements; ``summary``: one
    ``(config, success, nan, status counts)`` per configuration."""
    rows, summary = [], []
    for r in data["rows"]:
        cfg, fe, res = _config_from_json(r["config"]), np.asarray(r["fevals"]), np.asarray(r["res"])
        rows.append(
            [
                cfg.lib,
                cfg.name,
                cfg.mode,
                f"{100 * r['success']:.0f}%",
                _fe_arr(fe),
                f"{np.max(res):.1e} / {np.median(res):.1e}",
                "NaN" if r["nan"] else "",
                r["status_counts"],
            ]
        )
        summary.append((cfg, r["success"], r["nan"], r["status_counts"]))
    headers = [
        "lib",
        "solver",
        "mode",
        "success",
        "fevals min/med/max",
        "ext. res max / med",
        "NaN",
        "our Status counts",
    ]
    return common.markdown_table(headers, rows), summary


def _fe_arr(f):
    return f"{int(f.min())}/{np.median(f):g}/{int(f.max())}"


def _status_counts(status: np.ndarray) -> str:
    return ", ".join(
        f"{st.name.lower()} {int((status == st).sum())}" for st in js.Status if (status == st).any()
    )


# ------------------------------------------------------------------------------------------
# Gradient accuracy (float64).
# ------------------------------------------------------------------------------------------


def _grad_f(z, w, u, b, x):
    return jnp.tanh(w @ z + u @ x + b)


def _reference_gradient(w, u, b, xs, c):
    """Exact IFT gradient (float64): z* by Anderson + Newton polish, dense adjoint solve."""
    d = w.shape[0]

    def zstar(x):
        fx = lambda z: _grad_f(z, w, u, b, x)
        z = js.anderson(fx, jnp.zeros(d), max_steps=2000, tol=1e-14).value
        for _ in range(3):
            z = z - jnp.linalg.solve(jnp.eye(d) - jax.jacobian(fx)(z), z - fx(z))
        return z

    def one(z, x, cb):
        jac = jax.jacobian(lambda z: _grad_f(z, w, u, b, x))(z)
        ub = jnp.linalg.solve((jnp.eye(d) - jac).T, cb)
        _, vjp = jax.vjp(lambda w, u, b, x: _grad_f(z, w, u, b, x), w, u, b, x)
        return vjp(ub)

    zs = jax.vmap(zstar)(xs)
    gw, gu, gb, gx = jax.vmap(one)(zs, xs, c)
    fres = jnp.max(
        jnp.linalg.norm(jax.vmap(lambda z, x: _grad_f(z, w, u, b, x) - z)(zs, xs), axis=-1)
    )
    return (gw.sum(0), gu.sum(0), gb.sum(0), gx), fres


def _grad_methods(smoke: bool):
    from jiio_jax.deq import Implicit, Neumann, OneStep, Phantom, Unrolled

    fwd = js.Anderson(max_steps=500, tol=1e-10)
    methods = [
        ("Implicit(Anderson m=5, tol 1e-10)", fwd, Implicit(js.Anderson(max_steps=500, tol=1e-10))),
        (
            "Implicit(Broyden L=30, tol 1e-10)",
            fwd,
            Implicit(js.Broyden(max_steps=500, tol=1e-10, memory=30)),
        ),
        ("Neumann(k=5)", fwd, Neumann(5)),
        ("Neumann(k=20)", fwd, Neumann(20)),
        ("OneStep (JFB)", fwd, OneStep()),
        ("Phantom(k=5, damping 0.5)", fwd, Phantom(5, 0.5)),
        ("Unrolled(FPI, 500 steps)", js.FixedPointIteration(max_steps=500, tol=1e-12), Unrolled()),
        ("Unrolled(Anderson m=5, tol 1e-10)", fwd, Unrolled()),
    ]
    # Forward tolerance feeds the gradient error: Implicit(Anderson) at looser tols.
    for tol in (1e-3, 1e-5, 1e-8):
        methods.append(
            (
                f"Implicit(Anderson), forward+adjoint tol {tol:g}",
                js.Anderson(max_steps=500, tol=tol),
                Implicit(js.Anderson(max_steps=500, tol=tol)),
            )
        )
    if smoke:
        methods = [methods[4]]
    return methods


def _grad_problem(fam, rho, d, batch, repeats, smoke, log) -> dict:
    from jiio_jax.deq import fixed_point

    p = Problem(fam, rho, d, batch, 0.1)
    data = make_problem(p)
    w, u, b, xs = (jnp.asarray(data[k], jnp.float64) for k in ("W", "U", "b", "x"))
    c = jnp.asarray(np.random.default_rng(1).standard_normal((batch, d)))
    g_ref, fres = jax.jit(_reference_gradient)(w, u, b, xs, c)
    flat_ref = jnp.concatenate([g.ravel() for g in g_ref])
    rel = lambda a, r: float(jnp.linalg.norm(a - r) / jnp.linalg.norm(r))

    def make_loss(solver, backward):
        def loss(w, u, b, xs):
            def one(x, cb):
                sol = fixed_point(
                    _grad_f, jnp.zeros(d), w, u, b, x, solver=solver, backward=backward
                )
                return cb @ sol.value

            return jnp.sum(jax.vmap(one)(xs, c))

        return loss

    rows = []
    for name, solver, backward in _grad_methods(smoke):
        grad_fn = jax.grad(make_loss(solver, backward), argnums=(0, 1, 2, 3))
        compiled, compile_s = common.compile_ahead(grad_fn, w, u, b, xs)
        g = compiled(w, u, b, xs)
        flat = jnp.concatenate([gi.ravel() for gi in g])
        cos = float(flat @ flat_ref / (jnp.linalg.norm(flat) * jnp.linalg.norm(flat_ref)))
        call = functools.partial(compiled, w, u, b, xs)
        ms = 1e3 * common.interleaved_medians({name: call}, repeats)[name]
        rows.append(
            {
                "backward": name,
                "rel_err": rel(flat, flat_ref),
                "rel_err_w": rel(g[0], g_ref[0]),
                "rel_err_x": rel(g[3], g_ref[3]),
                "cosine": cos,
                "ms": ms,
                "compile_s": compile_s,
            }
        )
        log(f"    grad {fam} rho={rho:g} {name:45s} rel={rows[-1]['rel_err']:.1e} ms={ms:.2f}")
    return {"label": p.label, "reference_residual": float(fres), "rows": rows}


def grad_markdown(data: dict) -> str:
    """One problem's table of ``_grad_problem``'s measurements."""
    rows = [
        [
            r["backward"],
            f"{r['rel_err']:.1e}",
            f"{r['rel_err_w']:.1e}",
            f"{r['rel_err_x']:.1e}",
            f"{r['cosine']:.6f}",
            f"{r['ms']:.2f}",
            f"{r['compile_s']:.2f}",
        ]
        for r in data["rows"]
    ]
    headers = [
        "backward",
        "rel. err (all grads)",
        "rel. err dL/dW",
        "rel. err dL/dx",
        "cosine",
        "fwd+bwd ms",
        "compile s",
    ]
    return (
        f"**{data['label']}, float64** (reference z* residual max "
        f"{data['reference_residual']:.1e}; loss sum_b <c_b, z*_b>)\n\n"
        + common.markdown_table(headers, rows)
    )


def gradient_section(d, batch, families, repeats, smoke=False, log=print) -> list[dict]:
    """Gradient accuracy of the DEQ backward modes, float64 for this section only (one
    measurement dict per problem; ``grad_markdown`` reports each)."""
    with jax.enable_x64(True):
        return [_grad_problem(fam, rho, d, batch, repeats, smoke, log) for fam, rho in families]


# ------------------------------------------------------------------------------------------
# Plots.
# ------------------------------------------------------------------------------------------


def residual_traces(p: Problem, cfgs: list[Config], eps: float, steps: int) -> dict:
    """Per-sample relative residual of each per-sample configuration over ``steps`` fevals
    (unreachable tol): the measurements ``residual_plot`` draws. Each sample's curve is saved
    as one string of float32-exact ``%.9g`` values (a compact JSON)."""
    data = make_problem(p)
    w, inj = jnp.asarray(data["W"]), jnp.asarray(data["inj"])
    traces = []
    for cfg in cfgs:
        if cfg.trace is None or cfg.mode != "per-sample":
            continue
        fe, res = cfg.trace(w, inj, steps)
        traces.append(
            {
                "config": _config_json(cfg),
                "fevals": np.asarray(fe).tolist(),
                "res": [" ".join(f"{v:.9g}" for v in row) for row in np.asarray(res)],
            }
        )
    return {"label": p.label, "eps": eps, "traces": traces}


def residual_plot(data: dict, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_trace = data["traces"]
    eps = data["eps"]
    ncol = min(4, len(with_trace))
    nrow = -(-len(with_trace) // ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(4 * ncol, 3 * nrow), sharex=True, sharey=True, squeeze=False
    )
    for ax, trace in zip(axes.ravel(), with_trace, strict=False):
        cfg = _config_from_json(trace["config"])
        fe = np.asarray(trace["fevals"])
        res = np.asarray([np.array(row.split(), np.float32) for row in trace["res"]])
        for row in res:
            ax.semilogy(fe, np.maximum(row, 1e-12), lw=0.6, alpha=0.5)
        ax.axhline(eps, color="k", ls="--", lw=0.8)
        ax.set_ylim(1e-8, 1e2)  # blow-ups (jaxopt Broyden in float32) leave the frame
        ax.set_title(f"{cfg.lib}: {cfg.name}", fontsize=9)
        ax.set_xlabel("f evaluations")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(with_trace) :]:
        ax.axis("off")
    for ax in axes[:, 0]:
        ax.set_ylabel("||f(z)-z|| / ||f(z)||")
    fig.suptitle(f"Per-sample relative residual, {data['label']}, float32 (dashed: eps={eps:g})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def scatter_plot(all_results, path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    n = len(all_results)
    ncol = min(n, 3)
    nrow = -(-n // ncol)
    fig, axes = plt.subplots(
        nrow, ncol, figsize=(5 * ncol, 4 * nrow + 0.6), squeeze=False, layout="constrained"
    )
    colors = {"ours": "C0", "jaxopt": "C1", "optimistix": "C2"}
    for ax, (p, eps, results) in zip(axes.ravel(), all_results, strict=False):
        for r in results:
            marker = "o" if r.cfg.mode == "per-sample" else "s"
            ax.scatter(
                r.fe_med,
                r.ms,
                c=colors[r.cfg.lib],
                marker=marker,
                alpha=1.0 if r.met else 0.3,
                edgecolors="k" if r.met else "none",
            )
            if r.met:
                ax.annotate(r.cfg.name.split(" g=")[0], (r.fe_med, r.ms), fontsize=6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{p.label}, eps={eps:g}", fontsize=8)
        ax.set_xlabel("median fevals per sample")
        ax.set_ylabel("warm ms")
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    handles = [
        plt.Line2D([], [], color=c, marker="o", ls="", label=k) for k, c in colors.items()
    ] + [
        plt.Line2D([], [], color="gray", marker="o", ls="", label="per-sample (vmap)"),
        plt.Line2D([], [], color="gray", marker="s", ls="", label="batch-coupled"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncol=5, fontsize=8)
    fig.suptitle("Warm time vs fevals (faded: did not meet eps)")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------
# Main.
# ------------------------------------------------------------------------------------------


def plan(args) -> dict:
    if args.smoke:
        return dict(
            problems=[Problem("S", 0.9, 16, 4, 0.1)],
            eps=[1e-5],
            n_check=[],
            grad=dict(d=8, batch=2, families=[("G", 0.9)]),
            plot=Problem("S", 0.99, 16, 4, 0.01),
            plot_steps=40,
            max_steps=200,
            repeats=3,
            configs=SMOKE_CONFIGS,
        )
    if args.full:
        probs = [
            Problem(fam, rho, d, batch, xs, seed)
            for seed in range(args.seeds)
            for fam in ("G", "S", "R")
            for rho in (0.9, 0.99, 0.999)
            for d in (64, 256, 1024)
            for batch in (1, 32, 256)
            for xs in (0.1, 0.01)
        ]
        return dict(
            problems=probs,
            eps=[1e-3, 1e-5],
            n_check=[Problem("N", 1.2, d, 32, xs) for d in (64, 256) for xs in (0.1, 0.01)],
            grad=dict(d=64, batch=8, families=[("G", 0.9), ("S", 0.99), ("S", 0.999)]),
            plot=Problem("S", 0.999, 256, 32, 0.01),
            plot_steps=300,
            max_steps=args.max_steps,
            repeats=20,
        )
    probs = [
        Problem(fam, rho, 256, 32, xs)
        for fam in ("S", "R")
        for rho in (0.99, 0.999)
        for xs in (0.1, 0.01)
    ]
    if not args.no_sanity:
        probs.append(Problem("G", 0.9, 256, 32, 0.1))
    if args.problem:
        probs = []
        for spec in args.problem:
            fam, rho, xs = spec.split(":")
            probs.append(Problem(fam, float(rho), 256, 32, float(xs)))
    return dict(
        problems=probs,
        eps=[1e-5],
        n_check=[Problem("N", 1.2, 256, 32, 0.01)],
        grad=dict(d=64, batch=8, families=[("G", 0.9), ("S", 0.99)]),
        plot=Problem("S", 0.999, 256, 32, 0.01),
        plot_steps=300,
        max_steps=args.max_steps,
        repeats=20,
    )


def _t(t_start: float) -> str:
    return f"{time.perf_counter() - t_start:.0f}s"


def measure(args, argv_used: list[str]) -> dict[str, Any]:
    """Runs the plan of ``args``; every measurement the report needs, in JSON types."""
    t_start = time.perf_counter()
    cpu_start = time.process_time()
    load_start = os.getloadavg()
    cfg = plan(args)
    cfgs = all_configs()
    if cfg.get("configs"):
        cfgs = [c for c in cfgs if c.key in cfg["configs"]]
    machine = common.machine_description()
    print(f"# {machine}\n# XLA_FLAGS={os.environ.get('XLA_FLAGS', '')}", flush=True)

    data: dict[str, Any] = {"problems": [], "n_check": [], "per_step": None}
    for eps in cfg["eps"]:
        for p in cfg["problems"]:
            print(f"\n## {p.label}, eps={eps:g} (t={_t(t_start)})", flush=True)
            results = run_problem(p, cfgs, eps, cfg["max_steps"], cfg["repeats"])
            print(problem_table(results), flush=True)
            data["problems"].append(
                {
                    "problem": dataclasses.asdict(p),
                    "eps": eps,
                    "results": [result_json(r) for r in results],
                }
            )

    if not args.no_extras and not args.smoke:
        print(f"\n## per-feval cost on {cfg['plot'].label} (t={_t(t_start)})", flush=True)
        data["per_step"] = per_step_costs(cfg["plot"], cfgs, 200, min(cfg["repeats"], 10))

    for p in [] if args.no_extras else cfg["n_check"]:
        eps = cfg["eps"][-1]
        print(f"\n## status check {p.label}, tol=eps={eps:g} (t={_t(t_start)})", flush=True)
        data["n_check"].append(status_check(p, cfgs, eps, cfg["max_steps"]))

    data["grad"], data["trained"] = [], None
    if not args.no_grad:
        print(f"\n## gradient accuracy (t={_t(t_start)})", flush=True)
        data["grad"] = gradient_section(
            repeats=min(cfg["repeats"], 5), smoke=args.smoke, **cfg["grad"]
        )
        print("\n\n".join(grad_markdown(g) for g in data["grad"]), flush=True)
        print(f"\n## trained layer vs optimistix (t={_t(t_start)})", flush=True)
        data["trained"] = trained_layer.measure_agreement(
            repeats=min(cfg["repeats"], 20), smoke=args.smoke
        )

    data["traces"] = None
    if not args.no_extras:
        print(f"\n## residual traces (t={_t(t_start)})", flush=True)
        data["traces"] = residual_traces(cfg["plot"], cfgs, cfg["eps"][-1], cfg["plot_steps"])
    data["meta"] = {
        "argv": argv_used,
        "machine": machine,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "code": _git_state(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "affinity": sorted(os.sched_getaffinity(0)),
        "elapsed": time.perf_counter() - t_start,
        "cpu": time.process_time() - cpu_start,
        "load": [load_start[0], os.getloadavg()[0]],
        "max_steps": cfg["max_steps"],
        "repeats": cfg["repeats"],
        "plot_label": cfg["plot"].label,
        "plot_steps": cfg["plot_steps"],
    }
    return data


def write_report(data: dict[str, Any], out: str) -> str:
    """``solvers.md`` and the two plots in ``out``, from the saved measurements alone."""
    rep: dict[str, Any] = {"all_results": [], "sections": []}
    for entry in data["problems"]:
        p = Problem(**entry["problem"])
        results = [result_from_json(r) for r in entry["results"]]
        rep["all_results"].append((p, entry["eps"], results))
        rep["sections"].append(f"### {p.label}, eps={entry['eps']:g}\n\n{problem_table(results)}")
    headers, rows = headline_rows(rep["all_results"])
    rep["headline"] = common.markdown_table(headers, rows)
    print("\n## Headline\n" + rep["headline"], flush=True)
    rep["per_step"] = per_step_markdown(data["per_step"]) if data["per_step"] else None
    rep["n_sections"], rep["n_summary"] = [], []
    for check in data["n_check"]:
        md, summary = status_markdown(check)
        p = Problem(**check["problem"])
        rep["n_sections"].append(
            f"### {p.label}, tol = eps = {check['eps']:g}, budget {check['max_steps']}\n\n{md}"
        )
        rep["n_summary"].append((p, summary))
    rep["grad_md"] = "\n\n".join(grad_markdown(g) for g in data["grad"])
    if data["trained"] is not None:
        rep["trained_md"] = trained_layer.agreement_markdown(data["trained"])
        print(rep["trained_md"], flush=True)
    rep["res_png"] = os.path.join(out, "solvers_residuals.png")
    rep["sc_png"] = os.path.join(out, "solvers_time_vs_fevals.png")
    if data["traces"] is not None:
        residual_plot(data["traces"], rep["res_png"])
        scatter_plot(rep["all_results"], rep["sc_png"])
    md = render_markdown(data["meta"], rep)
    with open(os.path.join(out, "solvers.md"), "w") as fh:
        fh.write(md)
    print("\n## What this shows\n" + what_this_shows(rep), flush=True)
    return md


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--full", action="store_true", help="whole grid (hours on 2 cores)")
    g.add_argument("--smoke", action="store_true", help="tiny d=16, B=4 grid (seconds)")
    ap.add_argument("--out", default=DEFAULT_OUT, help="output folder (default results/)")
    ap.add_argument("--max-steps", type=int, default=1000, help="feval budget per solve")
    ap.add_argument("--seeds", type=int, default=1, help="seeds per problem (--full only)")
    ap.add_argument("--no-sanity", action="store_true", help="skip the G rho=0.9 sanity row")
    ap.add_argument("--no-grad", action="store_true", help="skip the gradient section")
    ap.add_argument(
        "--problem",
        action="append",
        metavar="FAM:RHO:XSCALE",
        help="run only these problems at d=256, B=32 (repeatable; e.g. S:0.999:0.01)",
    )
    ap.add_argument(
        "--no-extras", action="store_true", help="skip the status check, per-step costs, plots"
    )
    common.add_report_only_flag(ap)
    args = ap.parse_args(argv)
    argv_used = list(argv) if argv is not None else sys.argv[1:]
    json_path = os.path.join(args.out, "solvers.json")
    if args.report_only:
        data = common.load_results(json_path)
    else:
        data = common.save_results(json_path, measure(args, argv_used))
    write_report(data, args.out)
    print(
        f"\nwrote {args.out}/solvers.md and plots (measured in {data['meta']['elapsed']:.0f}s, "
        f"{data['meta']['cpu']:.0f}s process CPU)",
        flush=True,
    )
    return 0


def _git_state() -> str:
    """Commit of the checkout and whether jiio_jax/solvers has uncommitted edits (read-only)."""
    import subprocess

    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "jiio_jax/solvers"],
            cwd=root,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}" + (" + uncommitted edits in jiio_jax/solvers" if dirty else "")


def render_markdown(meta, rep) -> str:
    """``solvers.md``: ``meta`` the run's saved facts, ``rep`` the tables built from the saved
    measurements (``write_report``)."""
    cmd = " ".join(["python experiments/benchmarks/solvers.py", *meta["argv"]])
    l0, l1 = meta["load"]
    cfg = {"max_steps": meta["max_steps"], "repeats": meta["repeats"]}
    parts = [
        "# Forward solver benchmark: jiio_jax vs jaxopt and optimistix",
        "",
        f"- Command: `{cmd}` ({meta['elapsed']:.0f} s wall, {meta['cpu']:.0f} s process CPU)",
        f"- Date: {meta['date']}",
        f"- Machine: {meta['machine']}",
        f"- Code: jiio_jax at {meta['code']}",
        f"- XLA_FLAGS: `{meta['xla_flags']}` (set by the script unless already "
        f"set); CPU affinity {meta['affinity']}, not pinned. The box was shared: "
        f"1-min load average {l0:.1f} at start, {l1:.1f} at end, so absolute times are noisy; "
        "all configurations of a problem are timed interleaved, so ratios are the robust numbers.",
        f"- Budget: {cfg['max_steps']} fevals per solve; warm time = median of {cfg['repeats']} "
        "interleaved runs after one warm-up (configs that did not meet eps: median of "
        f"{min(3, cfg['repeats'])}); one seed per problem.",
        "",
        "Protocol (SOLVER_ANCHORS §4): float32, z0 = 0, f(z) = tanh(W z + U x + b) per sample with "
        "U ~ N(0, 1/d), b ~ 0.01 N(0, 1) and U x + b computed once outside the solve; one "
        "external per-sample criterion `||f(z)-z|| / (||f(z)|| + 1e-9) <= eps` computed in "
        "float64 on the returned z. For each configuration the internal tol is swept over "
        "eps x {1, 1/3, 1/10, 1/30, 1/100} and the loosest value meeting the criterion for every "
        "sample is reported (`(none)`: no value did; the row shows the last one tried, the sweep "
        "stops early once the budget runs out or a NaN appears). Ours: per-sample `rel` stop "
        "under `jax.vmap`. jaxopt: `unroll=False` (a `lax.while_loop`), `implicit_diff=False`, "
        "Broyden with `gamma=-1, stepsize=1` (no line search), `history_size=30`; its stop test "
        "is a global absolute L2 norm. optimistix: `FixedPointIteration(rtol=tol, atol=tol)`, "
        "`throw=False`, elementwise max-norm Cauchy test. Peers run both per-sample (`vmap`) and "
        "batch-coupled (the whole batch as one vector, one stop test). fevals: our "
        "`num_fevals`, jaxopt `state.num_fun_eval`, optimistix `stats['num_steps']`; "
        "batch-coupled rows give every sample the global count. **Bold** lib = best peer "
        "(fastest peer configuration meeting eps). `time / best peer time` and `fevals med / "
        "lowest peer fevals med` (the lowest median fevals of any peer configuration meeting "
        "eps) make the comparison explicit.",
        "",
        "## Headline",
        "",
        rep["headline"],
        "",
        "## What this shows",
        "",
        what_this_shows(rep),
        "",
        "## Per-problem tables",
        "",
        "\n\n".join(rep["sections"]),
        "",
    ]
    if rep["per_step"] is not None:
        parts += [
            f"## Cost per f evaluation ({meta['plot_label']})",
            "",
            "Each per-sample configuration run for a fixed budget of 200 fevals (unreachable "
            "tol), timed interleaved with a bare `fori_loop` of 200 batched f evaluations. "
            "`us per feval` = warm time / max fevals over samples. The row `Broyden L=30 ring` "
            'uses the non-default `full_memory="ring"` and is not part of the main grid; it '
            "isolates the cost of the default restart policy.",
            "",
            rep["per_step"][0],
            "",
        ]
    if rep["n_sections"]:
        parts += [
            "## Non-contractive family (status check)",
            "",
            "S spectrum scaled to rho = 1.2, so z = 0 is unstable; tanh saturation still creates "
            "stable fixed points, which is why some solvers converge. One run per configuration "
            "at internal tol = eps. What matters is that failures are reported (our `Status`) "
            "rather than returned as silent NaNs.",
            "",
            "\n\n".join(rep["n_sections"]),
            "",
        ]
    if rep["grad_md"]:
        parts += [
            "## Gradient accuracy (jiio_jax.deq.fixed_point backward modes)",
            "",
            "Reference: exact IFT gradient from a dense solve `(I - J)^T u_b = c_b` per sample at "
            "a z* polished by Newton steps. Gradients w.r.t. W, U, b and every x_b "
            "(`rel. err` = ||g - g_ref|| / ||g_ref||). Forward solver: Anderson m=5, "
            "tol 1e-10 unless stated. Timing: median of 5 warm runs of the jitted "
            "forward + backward.",
            "",
            rep["grad_md"],
            "",
            "### Gradient agreement with optimistix on a trained layer",
            "",
            "`trained_layer.py`: a tanh DEQ classifier trained on digits (its W is no longer a "
            "contraction by norm); gradients of a test batch's cross-entropy from jiio_jax "
            "(Anderson + Implicit) and optimistix (`ImplicitAdjoint`, dense linear solve) vs a "
            "float64 dense-IFT reference.",
            "",
            rep["trained_md"],
            "",
        ]
    parts += [
        "## Plots",
        "",
        f"- `{os.path.basename(rep['res_png'])}`: per-sample relative residual vs fevals on "
        f"the {meta['plot_label']} problem, {meta['plot_steps']} fevals with an unreachable tol "
        "(our `Solution.trace`; jaxopt per-sample curves from manual `init_state`/`update` "
        "stepping, which follows the same iterates as `run`). optimistix FPI (no damping) takes "
        "exactly the plain FPI iterates, so its curve is the FPI one and is not drawn "
        "separately; batch-coupled runs are not drawn.",
        f"- `{os.path.basename(rep['sc_png'])}`: warm time vs median fevals for every problem.",
        "",
    ]
    return "\n".join(parts)


def _best_ours(results, prefix=""):
    met = [r for r in results if r.cfg.lib == "ours" and r.met and r.cfg.name.startswith(prefix)]
    return min(met, key=lambda r: r.ms) if met else None


def _geomean(xs: list[float]) -> float:
    return float(np.exp(np.mean(np.log(xs))))


def jaxopt_ratios(all_results) -> dict[str, list[tuple[str, float]]]:
    """Time ratios of ours to the fastest jaxopt configuration meeting eps, per problem.

    ``"fastest"``: fastest of ours (any solver) / fastest jaxopt config; ``"Anderson"`` and
    ``"Broyden"``: our fastest of that algorithm / jaxopt's fastest of the same algorithm. Only
    problems where both sides met eps count.
    """
    out: dict[str, list[tuple[str, float]]] = {"fastest": [], "Anderson": [], "Broyden": []}
    for p, _, rs in all_results:
        jx = [r for r in rs if r.cfg.lib == "jaxopt" and r.met]
        best = _best_ours(rs)
        if jx and best is not None:
            out["fastest"].append((p.label, best.ms / min(r.ms for r in jx)))
        for alg in ("Anderson", "Broyden"):
            mine = _best_ours(rs, alg)
            theirs = [r for r in jx if r.cfg.name.startswith(alg)]
            if mine is not None and theirs:
                out[alg].append((p.label, mine.ms / min(r.ms for r in theirs)))
    return out


def _ratio_summary(pairs: list[tuple[str, float]]) -> str:
    if not pairs:
        return "no comparable problem"
    worst = max(pairs, key=lambda t: t[1])
    return (
        f"geometric mean **{_geomean([r for _, r in pairs]):.2f}** over {len(pairs)} problems, "
        f"worst {worst[1]:.2f} ({worst[0]})"
    )


def what_this_shows(rep) -> str:
    """Summary sentences derived from the measured numbers only."""
    lines = []
    all_results = rep["all_results"]
    for p, eps, results in all_results:
        bp = best_peer(results)
        fe_best = min_peer_fevals(results)
        best = _best_ours(results)
        if best is None and bp is None:
            lines.append(f"- {p.label}: no solver met eps={eps:g} within the budget.")
            continue
        if bp is None:
            lines.append(
                f"- {p.label}: no peer met eps={eps:g}; ours did ({best.cfg.name}, "
                f"{best.ms:.2f} ms, median fevals {best.fe_med:g})."
            )
            continue
        if best is None:
            lines.append(
                f"- {p.label}: **none of ours met eps={eps:g}** while {bp.cfg.lib} "
                f"{bp.cfg.name} ({bp.cfg.mode}) did in {bp.ms:.2f} ms."
            )
            continue
        fewest = min([r for r in results if r.cfg.lib == "ours" and r.met], key=lambda r: r.fe_med)
        lines.append(
            f"- {p.label}: fastest of ours {best.cfg.name} {best.ms:.2f} ms vs best peer "
            f"{bp.cfg.lib} {bp.cfg.name} ({bp.cfg.mode}) {bp.ms:.2f} ms "
            f"(**{best.ms / bp.ms:.2f}x**); fewest fevals of ours {fewest.cfg.name} median "
            f"{fewest.fe_med:g} vs lowest peer median {fe_best:g} "
            f"({fewest.fe_med / fe_best:.2f}x)."
        )

    # Aggregates over problems where at least one peer met eps.
    comparable = [(p, e, rs) for p, e, rs in all_results if best_peer(rs) is not None]
    if comparable:
        for prefix in ("Anderson", "Broyden"):
            met = [(p, rs) for p, _, rs in comparable if _best_ours(rs, prefix) is not None]
            fe_ok = [
                p
                for p, rs in met
                if min(
                    r.fe_med
                    for r in rs
                    if r.cfg.lib == "ours" and r.met and r.cfg.name.startswith(prefix)
                )
                <= min_peer_fevals(rs)
            ]
            lines.append(
                f"- Our {prefix} (best memory per problem) met eps on {len(met)} of the "
                f"{len(comparable)} problems where some peer did, with a median feval count no "
                f"higher than the lowest peer's on {len(fe_ok)} of them."
            )
    bar = [
        (p, rs)
        for p, _, rs in all_results
        if p.family == "S" and p.rho in (0.99, 0.999) and best_peer(rs) is not None
    ]
    if bar:
        parts = []
        for p, rs in bar:
            best = _best_ours(rs)
            ratio = best.ms / best_peer(rs).ms if best else float("nan")
            parts.append(f"{p.label}: {ratio:.2f}x ({'meets' if ratio <= 0.5 else 'misses'})")
        lines.append(
            "- Headline bar (fastest of ours <= 0.5x the best peer's time on S, rho 0.99/0.999): "
            + "; ".join(parts)
            + "."
        )
    ratios = jaxopt_ratios(all_results)
    s_only = [(lab, r) for lab, r in ratios["fastest"] if lab.startswith("S ")]
    lines.append(
        "- Time vs the fastest jaxopt configuration meeting eps (issue 12's no-slowdown bar: "
        "geometric mean <= 0.35, no case above 0.75): fastest of ours, S problems: "
        f"{_ratio_summary(s_only)}; all problems: {_ratio_summary(ratios['fastest'])}. "
        f"Same algorithm: Anderson {_ratio_summary(ratios['Anderson'])}; Broyden "
        f"{_ratio_summary(ratios['Broyden'])}."
    )
    if rep.get("per_step"):
        per = rep["per_step"][1]
        floor = per["bare f loop"]
        keys = [k for k in per if k != "bare f loop"]
        desc = ", ".join(
            f"{k.split(':')[0]} {k.split(':')[1]} {per[k]:.0f} us ({per[k] / floor:.1f}x)"
            for k in keys
        )
        lines.append(
            f"- Cost per f evaluation at a fixed budget (bare batched f: {floor:.0f} us): {desc}. "
            "Where two solvers need similar fevals, this per-iteration overhead sets the time "
            "ratio."
        )
    for p, summary in rep.get("n_summary", []):
        nan_cfgs = [f"{c.lib} {c.name} ({c.mode})" for c, _, nan, _ in summary if nan]
        ours = [f"{c.name}: {extra}" for c, _, _, extra in summary if c.lib == "ours"]
        lines.append(
            f"- {p.label}: returned NaN: {', '.join(nan_cfgs) if nan_cfgs else 'none'}. "
            f"Our status counts: {'; '.join(ours)}."
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
