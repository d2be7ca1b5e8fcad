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

The measuring part writes ``<out>/jiio_ideas.json``; ``--report_only`` rewrites
``<out>/jiio_ideas_table.md`` from it. ``experiments/results/jiio_ideas.md`` discusses the table.

Usage:
  python experiments/benchmarks/jiio_ideas.py                  # ~15 min on 2 CPU cores
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
}
HELD_BACK_SEED = 7


@dataclasses.dataclass(frozen=True)
class IdeasConfig:
    bench: bench.BenchConfig = bench.BenchConfig()
    steps: tuple = (10, 15, 20, 30, 40)
    time_steps: int = 30
    repeats: int = 5
    adam_lr: float = 0.1
    adam_steps: int = 40

    @classmethod
    def quick(cls) -> IdeasConfig:
        return cls(bench=bench.BenchConfig.quick(), steps=(3,), time_steps=3, repeats=1)


def measure_decoder(cfg: IdeasConfig, params, batches) -> dict:
    layer, cost, z0, x0 = bench.dense_problem(cfg.bench)

    @jax.jit
    def score(x, ys):
        def one(xi, y):
            return cost(bench.SCORE(lambda z: layer(z, xi, params, y), z0).value, xi, params, y)

        return jnp.mean(jax.vmap(one)(x, ys))

    def run_jiio(solver):
        return jax.jit(
            lambda ys: jax.vmap(
                lambda y: jiio.solve(layer, cost, z0, x0, params, y, solver=solver)
            )(ys)
        )

    def scored(fn) -> float:
        return float(np.mean([score(fn(ys).x, ys) for ys in batches]))

    adam = jax.jit(
        lambda ys: jax.vmap(
            lambda y: jiio.inner_adam(
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
            )
        )(ys)
    )
    rows, timed = {}, {}
    for name, changes in VARIANTS.items():
        rows[name] = {}
        for t in cfg.steps:
            kw = {"step_size": cfg.bench.train_alpha, "memory": cfg.bench.memory, **changes}
            fn = run_jiio(jiio.JIIO(max_steps=t, **kw))
            rows[name][t] = scored(fn)
            if t == cfg.time_steps:
                jax.block_until_ready(fn(batches[0]))  # compile outside the timing
                timed[name] = lambda fn=fn: fn(batches[0])
            print(f"  {name:45s} T={t:3d} cost {rows[name][t]:8.3f}", flush=True)
    times = interleaved_medians(timed, repeats=cfg.repeats) if timed else {}
    return {
        "adam_cost": scored(adam),
        "initial_cost": float(
            np.mean([score(jnp.zeros((ys.shape[0], *x0.shape), ys.dtype), ys) for ys in batches])
        ),
        "costs": rows,
        "time_ms": {k: 1e3 * v for k, v in times.items()},
    }


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
        "variants": VARIANTS,
        "decoders": decoders,
    }


def report(results: dict) -> str:
    steps = results["steps"]
    adam = results["adam"]
    lines = [
        "# JIIO variants on trained dense decoders (issue 14: fewer steps)",
        "",
        f"Machine: {results['machine']}",
        "",
        f"Command: `{results['command']}` ({results['date']}, {results['seconds'] / 60:.1f} min)",
        "",
        "Cost = mean reconstruction cost over the held-out batches at the DEQ re-solved to "
        "1e-6 (lower is better). Every variant: `jiio.JIIO(step_size=0.01, memory=5, "
        "**changes)`. **Bold**: reaches cold Adam-"
        f"{adam['steps']}'s cost (lr {adam['lr']}). Time: one batch of 64 at "
        f"T = {results['time_steps']}, variants interleaved, compile excluded.",
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
            f"{d['initial_cost']:.1f}, Adam-{adam['steps']} {target:.3g}",
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
