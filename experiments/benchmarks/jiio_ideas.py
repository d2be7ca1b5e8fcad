"""Issue 14's "fewer steps" ideas, measured: JIIO variants' cost vs steps on trained decoders.

The problem is ``jiio_vs_inner_loops.py`` (a): the dense digits decoder
``z = tanh(W z + U x + b)`` (``z`` in R^256, ``x`` in R^16, ``||W||_2 = 0.9``), trained by that
benchmark's protocol (300 Adam steps on JIIO latents, seed 0), plus a held-back decoder trained
the same way from seed 7. Each variant is ``jiio.JIIO(step_size=0.01, memory=5, **changes)``
(the benchmark's selected JIIO) at ``T`` steps, run batched on held-out digits (batches of 64);
its latents are scored at the DEQ re-solved to 1e-6 (mean cost over the batches, lower is
better), the same scoring as the benchmark. Adam-40 (lr 0.1, cold start, the benchmark's
selected lr) is the cost every variant has to reach. One timing per variant at ``--time_steps``
(compile excluded, variants interleaved, medians) gives its per-step cost.

Two more kinds of rows (2026-12-07, eighth session):

* **Block scaling** of the joint state for the accelerator, by reparametrising the problem
  (``x = x' / c_x``, cost ``k C``; the step size becomes ``alpha c_x^2 / k`` so the x step is
  unchanged): Anderson's inner products then weigh the x block ``c_x^2`` and the mu block
  ``k^2`` times more. Rows ``"block scaling ..."``: keys ``x_scale`` / ``cost_scale``.
* **Quasi-Newton on x** (not JIIO variants; written here): ``one-shot L-BFGS`` iterates
  ``z <- f(z, x)``, ``mu <- g_z`` (no accelerator) and moves ``x`` by an L-BFGS step on the
  current ``g_x`` (memory 8, steps clipped to norm 0.3); ``exact L-BFGS`` is the inner-loop
  baseline ``optax.lbfgs()`` (zoom line search) on ``x -> C(z*(x))`` with the baselines'
  forward and adjoint solves (Anderson to 1e-4), timed beside cold Adam-40 and JIIO.

The measuring part writes ``<out>/jiio_ideas.json``; ``--report_only`` rewrites
``<out>/jiio_ideas_table.md`` from it. ``experiments/results/jiio_ideas.md`` discusses the table.

Usage:
  python experiments/benchmarks/jiio_ideas.py                  # ~7 min on 2 idle CPU cores
  python experiments/benchmarks/jiio_ideas.py --quick --out /tmp/x
  python experiments/benchmarks/jiio_ideas.py --report_only
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import jiio_vs_inner_loops as bench  # noqa: E402
from common import (  # noqa: E402
    interleaved_medians,
    load_results,
    machine_description,
    markdown_table,
    save_results,
)

from jiio_jax import jiio  # noqa: E402

# name -> changes to the base JIIO. The first is the reference's algorithm.
VARIANTS = {
    "reference (z0 = 0, no start guard)": {"start": "given", "no_worse_than_start": False},
    "default (z0 = 0, start guard)": {},
    "start at z*(x0), mu0 = grad_z C": {"start": "equilibrium"},
    "RMSprop x step, alpha 0.1": {"x_preconditioner": "rmsprop", "step_size": 0.1},
    "Barzilai-Borwein x step": {"x_preconditioner": "barzilai_borwein"},
    "heavy ball 0.3": {"x_momentum": 0.3},
    "heavy ball 0.6": {"x_momentum": 0.6},
    "Anderson memory 10": {"memory": 10},
    "Type-II Anderson": {"anderson_type": "type2"},
    "Broyden (memory 30)": {"accelerator": "broyden", "memory": 30},
    "block scaling: x block x3": {"x_scale": 3.0},
    "block scaling: x block x10": {"x_scale": 10.0},
    "block scaling: mu block x10": {"cost_scale": 10.0},
    "block scaling: mu block x0.1": {"cost_scale": 0.1},
}
# Rows that are not JIIO variants (functions below), described in the table's "changes" column.
QUASI_NEWTON = {
    "one-shot L-BFGS": {"x step": "L-BFGS on the current g_x", "z, mu": "plain iteration"},
    "exact L-BFGS": {"inner loop": "optax.lbfgs() on C(z*(x))", "solves": "as Adam's"},
}
# Reparametrisation keys of VARIANTS (not JIIO fields): x = x' / x_scale, cost * cost_scale.
SCALES = ("x_scale", "cost_scale")
HELD_BACK_SEED = 7


@dataclasses.dataclass(frozen=True)
class IdeasConfig:
    bench: bench.BenchConfig = bench.BenchConfig()
    steps: tuple = (10, 15, 20, 30, 40)
    time_steps: int = 30
    repeats: int = 5
    adam_lr: float = 0.1
    adam_steps: int = 40
    lbfgs_time_steps: int = 10  # exact L-BFGS's timed run (it reaches Adam-40's cost there)
    lbfgs_memory: int = 8
    one_shot_max_step: float = 0.3

    @classmethod
    def quick(cls) -> IdeasConfig:
        return cls(
            bench=bench.BenchConfig.quick(), steps=(3,), time_steps=3, repeats=1, lbfgs_time_steps=3
        )


def measure_decoder(cfg: IdeasConfig, params, batches) -> dict:
    layer, cost, z0, x0 = bench.dense_problem(cfg.bench)

    @jax.jit
    def score(x, ys):
        def one(xi, y):
            return cost(bench.SCORE(lambda z: layer(z, xi, params, y), z0).value, xi, params, y)

        return jnp.mean(jax.vmap(one)(x, ys))

    def run_jiio(solver, x_scale=1.0, cost_scale=1.0):
        def scaled_layer(z, x, p, y):
            return layer(z, x / x_scale, p, y)

        def scaled_cost(z, x, p, y):
            return cost_scale * cost(z, x / x_scale, p, y)

        def one(y):
            sol = jiio.solve(scaled_layer, scaled_cost, z0, x0 * x_scale, params, y, solver=solver)
            return sol.x / x_scale

        return jax.jit(jax.vmap(one))

    def scored(fn) -> float:
        return float(np.mean([score(fn(ys), ys) for ys in batches]))  # fn: ys -> x

    adam = jax.jit(
        lambda ys: jax.vmap(
            lambda y: (
                jiio.inner_adam(
                    layer,
                    cost,
                    z0,
                    x0,
                    params,
                    y,
                    num_steps=cfg.adam_steps,
                    learning_rate=cfg.adam_lr,
                    forward_solver=bench.FORWARD,
                    backward=bench.BACKWARD,
                ).x
            )
        )(ys)
    )

    def jiio_builder(changes):
        scales = {k: changes.get(k, 1.0) for k in SCALES}
        kw = {k: v for k, v in changes.items() if k not in SCALES}
        alpha = cfg.bench.train_alpha * scales["x_scale"] ** 2 / scales["cost_scale"]
        kw = {"step_size": alpha, "memory": cfg.bench.memory, **kw}
        return lambda t: run_jiio(jiio.JIIO(max_steps=t, **kw), **scales)

    def quasi_newton_builder(make):
        return lambda t: jax.jit(jax.vmap(make(cfg, layer, cost, z0, x0, params, t)))

    # name -> (steps -> jitted ys -> x, the T it is timed at)
    builders = {name: (jiio_builder(c), cfg.time_steps) for name, c in VARIANTS.items()}
    builders["one-shot L-BFGS"] = (quasi_newton_builder(one_shot_lbfgs), cfg.time_steps)
    builders["exact L-BFGS"] = (quasi_newton_builder(exact_lbfgs), cfg.lbfgs_time_steps)
    assert set(builders) == set(VARIANTS) | set(QUASI_NEWTON)
    rows, timed = {}, {}
    for name, (build, time_at) in builders.items():
        rows[name] = {}
        for t in cfg.steps:
            fn = build(t)
            rows[name][t] = scored(fn)
            if t == time_at:
                jax.block_until_ready(fn(batches[0]))  # compile outside the timing
                timed[name] = lambda fn=fn: fn(batches[0])
            print(f"  {name:45s} T={t:3d} cost {rows[name][t]:8.3f}", flush=True)
    jax.block_until_ready(adam(batches[0]))
    timed[f"cold Adam-{cfg.adam_steps}"] = lambda: adam(batches[0])
    times = interleaved_medians(timed, repeats=cfg.repeats) if timed else {}
    return {
        "adam_cost": scored(adam),
        "initial_cost": float(
            np.mean([score(jnp.zeros((ys.shape[0], *x0.shape), ys.dtype), ys) for ys in batches])
        ),
        "costs": rows,
        "time_ms": {k: 1e3 * v for k, v in times.items()},
    }


def one_shot_lbfgs(cfg: IdeasConfig, layer, cost, z0, x0, params, steps: int):
    """``y -> x`` after ``steps`` one-shot steps: ``z <- f(z, x)``, ``mu <- g_z`` (one f and one
    VJP, no accelerator) and ``x <- x - d``, ``d`` the L-BFGS direction for the current ``g_x``
    (two-loop recursion over the last ``lbfgs_memory`` pairs ``(dx, dg_x)`` with positive
    curvature, initial scaling ``s^T y / y^T y``, 0.01 before the first pair), clipped to norm
    ``one_shot_max_step``."""
    m = cfg.lbfgs_memory

    def direction(g, s_hist, y_hist, valid, gamma):
        curv = jnp.sum(s_hist * y_hist, axis=1)
        rho = jnp.where(valid, 1.0 / jnp.where(valid, curv, 1.0), 0.0)
        q, alphas = g, []
        for i in reversed(range(m)):  # newest pair last
            a = rho[i] * (s_hist[i] @ q)
            q, alphas = q - a * y_hist[i], [a, *alphas]
        r = gamma * q
        for i in range(m):
            r = r + s_hist[i] * (alphas[i] - rho[i] * (y_hist[i] @ r))
        return r

    def run(y):
        def body(_, state):
            z, mu, x, s_hist, y_hist, valid, x_prev, g_prev = state
            (fz, c), vjp = jax.vjp(
                lambda z, x: (layer(z, x, params, y), cost(z, x, params, y)), z, x
            )
            g_z, g_x = vjp((mu, jnp.ones_like(c)))
            s, dy = x - x_prev, g_x - g_prev
            ok = s @ dy > 1e-10 * (s @ s)
            s_hist = jnp.where(ok, jnp.roll(s_hist, -1, 0).at[-1].set(s), s_hist)
            y_hist = jnp.where(ok, jnp.roll(y_hist, -1, 0).at[-1].set(dy), y_hist)
            valid = jnp.where(ok, jnp.roll(valid, -1).at[-1].set(True), valid)
            newest = (s_hist[-1] @ y_hist[-1]) / jnp.maximum(y_hist[-1] @ y_hist[-1], 1e-30)
            d = direction(g_x, s_hist, y_hist, valid, jnp.where(valid[-1], newest, 0.01))
            d = d * jnp.minimum(1.0, cfg.one_shot_max_step / (jnp.linalg.norm(d) + 1e-12))
            return fz, g_z, x - d, s_hist, y_hist, valid, x, g_x

        hist = jnp.zeros((m, x0.shape[0]), x0.dtype)
        state = (z0, jnp.zeros_like(z0), x0, hist, hist, jnp.zeros((m,), bool), x0, x0 * 0)
        return jax.lax.fori_loop(0, steps, body, state)[2]

    return run


def exact_lbfgs(cfg: IdeasConfig, layer, cost, z0, x0, params, steps: int):
    """``y -> x`` after ``steps`` iterations of ``optax.lbfgs()`` (zoom line search, memory 10)
    on the reduced problem ``x -> C(z*(x), x)``: every value and gradient is a forward solve and
    an implicit adjoint solve, the inner-Adam baseline's (``bench.FORWARD`` / ``BACKWARD``)."""
    import optax

    from jiio_jax import deq

    opt = optax.lbfgs()

    def run(y):
        def reduced(x):
            x = x.astype(x0.dtype)  # optax's line search may promote to float64 under x64
            z = deq.fixed_point(
                layer, z0, x, params, y, solver=bench.FORWARD, backward=bench.BACKWARD
            ).value
            return cost(z, x, params, y)

        value_and_grad = optax.value_and_grad_from_state(reduced)

        def body(_, carry):
            x, state = carry
            value, grad = value_and_grad(x, state=state)
            updates, state = opt.update(grad, state, x, value=value, grad=grad, value_fn=reduced)
            return optax.apply_updates(x, updates), state

        return jax.lax.fori_loop(0, steps, body, (x0, opt.init(x0)))[0].astype(x0.dtype)

    return run


def measure(cfg: IdeasConfig, command: str) -> dict:
    start = time.time()
    images, _, train_idx, test_idx = bench.load_data(cfg.bench.seed)
    n = cfg.bench.eval_batches * cfg.bench.batch
    held_out = test_idx[:n].reshape(cfg.bench.eval_batches, cfg.bench.batch)
    batches = [jnp.asarray(2 * images[i] - 1) for i in held_out]
    decoders = {}
    for label, seed in (
        ("trained (seed 0)", cfg.bench.seed),
        ("held back (seed 7)", HELD_BACK_SEED),
    ):
        rng = np.random.default_rng(seed)
        params, loss = bench.train_dense_decoder(cfg.bench, images, train_idx, rng, seed)
        print(f"{label}: decoder trained, final train loss {loss:.3f}", flush=True)
        decoders[label] = {"train_loss": loss, **measure_decoder(cfg, params, batches)}
    return {
        "machine": machine_description(),
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "seconds": time.time() - start,
        "steps": list(cfg.steps),
        "time_steps": cfg.time_steps,
        "adam": {"lr": cfg.adam_lr, "steps": cfg.adam_steps},
        "variants": {**VARIANTS, **QUASI_NEWTON},
        "lbfgs_time_steps": cfg.lbfgs_time_steps,
        "decoders": decoders,
    }


def report(results: dict) -> str:
    steps = results["steps"]
    adam = results["adam"]
    adam_row = f"cold Adam-{adam['steps']}"  # its timing row (measure_decoder)
    lines = [
        "# JIIO variants on trained dense decoders (issue 14: fewer steps)",
        "",
        f"Machine: {results['machine']}",
        "",
        f"Command: `{results['command']}` ({results['date']}, {results['seconds'] / 60:.1f} min)",
        "",
        "Cost = mean reconstruction cost over the held-out batches at the DEQ re-solved to "
        "1e-6 (lower is better). Every variant: `jiio.JIIO(step_size=0.01, memory=5, "
        "**changes)` (block scaling: on the reparametrised problem, step size "
        "`0.01 x_scale^2 / cost_scale`). **Bold**: reaches cold Adam-"
        f"{adam['steps']}'s cost (lr {adam['lr']}). Time: one batch of 64 at "
        f"T = {results['time_steps']} (exact L-BFGS: T = {results['lbfgs_time_steps']}), "
        "variants and cold Adam interleaved, compile excluded.",
    ]
    for label, d in results["decoders"].items():
        target = d["adam_cost"]
        rows = []
        for name, costs in d["costs"].items():
            cells = [
                f"**{c:.3g}**" if c <= target else f"{c:.3g}"
                for c in (costs[str(t)] for t in steps)
            ]
            ms = d["time_ms"].get(name)
            rows.append([name, json.dumps(results["variants"][name]), *cells, _fmt_ms(ms)])
        lines += [
            "",
            f"## Decoder {label}: final train loss {d['train_loss']:.2f}, cost at x = 0 "
            f"{d['initial_cost']:.1f}, Adam-{adam['steps']} {target:.3g} in "
            f"{_fmt_ms(d['time_ms'].get(adam_row))} ms",
            "",
            markdown_table(
                ["variant", "changes", *[f"T = {t}" for t in steps], "ms / batch"], rows
            ),
        ]
    return "\n".join(lines) + "\n"


def _fmt_ms(ms) -> str:
    return "" if ms is None else f"{ms:.1f}"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--out", default=os.path.join(bench.REPO, "experiments", "results"))
    parser.add_argument("--report_only", action="store_true", help="rewrite the table only")
    args = parser.parse_args(argv)
    path = os.path.join(args.out, "jiio_ideas.json")
    if args.report_only:
        results = load_results(path)
    else:
        cfg = IdeasConfig.quick() if args.quick else IdeasConfig()
        command = "python experiments/benchmarks/jiio_ideas.py" + (" --quick" if args.quick else "")
        results = save_results(path, measure(cfg, command))  # int keys -> str, as on disk
    table = report(results)
    with open(os.path.join(args.out, "jiio_ideas_table.md"), "w") as f:
        f.write(table)
    print(table)


if __name__ == "__main__":
    main()
