"""Cost of one augmented JIIO step relative to a bare ``f + VJP`` step (issue 14, "cheaper steps").

Both programs run ``T`` steps in a ``lax.fori_loop``, ``jax.vmap``-ed over a batch:

* **bare**: ``(f(z, x), C(z, x))`` and one VJP with cotangents ``(mu, 1)`` per step, then
  ``z <- f(z, x)``, ``x <- x - 0.01 g_x``, ``mu <- g_z``: the arithmetic every JIIO step must do;
* **JIIO**: ``jiio.solve`` with ``start="given"``, ``no_worse_than_start=False`` and no
  tolerance (no start solve, fixed-length loop), Type-I Anderson at memory 5 and 10, and the
  plain augmented iteration (``accelerator="none"``). Its total includes the one extra
  augmented-map evaluation at the returned point (block residuals), i.e. ``T + 1``
  evaluations divided by ``T``.

Models: (a) the dense ``tanh`` decoder of ``jiio_vs_inner_loops.py`` (256-d state, 16-d latent,
64 output pixels; random init rescaled to ``||W||_2 = 0.9``: the step cost of a fixed-length
loop does not depend on the parameter values), batch 64, T = 40; (b) the MDEQ generator of its
section (c) (branches (16, 32), 8x8 digits), untrained init, batch 32, T = 20; (c) with
``--workdir W``, also a trained generative run's own inner problem (its decoder, its first 100
test images, T = 40; e.g. the README's main job).

Timing: ``jiio_jax.evaluation.clock`` (compile excluded, one warm-up call, ``--repeats``
interleaved rounds); the report gives the median and the minimum over rounds (on a shared,
loaded CPU the minimum is the least disturbed sample). The measuring part writes
``<out>/jiio_step_cost.json``, the report part ``<out>/jiio_step_cost_table.md`` from that JSON
alone (``experiments/results/jiio_step_cost.md`` is the written-up result).

Usage:
  /work/venv/bin/python experiments/benchmarks/jiio_step_cost.py
  /work/venv/bin/python experiments/benchmarks/jiio_step_cost.py --quick --out /tmp/x
  /work/venv/bin/python experiments/benchmarks/jiio_step_cost.py --workdir /tmp/digits_gen
  /work/venv/bin/python experiments/benchmarks/jiio_step_cost.py --report_only
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
import jiio_vs_inner_loops as inner  # noqa: E402
from common import compile_ahead, interleaved_times, machine_description  # noqa: E402

from jiio_jax import jiio  # noqa: E402

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class StepCostConfig:
    hidden: int = 256
    latent: int = 16
    dense_batch: int = 64
    dense_steps: int = 40
    mdeq_channels: tuple = (16, 32)
    mdeq_batch: int = 32
    mdeq_steps: int = 20
    memories: tuple = (5, 10)
    # --workdir: a trained generative run's own inner problem, on its first test images.
    trained_batch: int = 100
    trained_steps: int = 40
    repeats: int = 9
    marginal: bool = False  # cost per step from T and 2T (see step_costs)
    seed: int = 0

    @classmethod
    def quick(cls) -> StepCostConfig:
        return cls(
            hidden=24,
            latent=4,
            dense_batch=4,
            dense_steps=4,
            mdeq_channels=(4, 8),
            mdeq_batch=2,
            mdeq_steps=3,
            memories=(2,),
            trained_batch=2,
            trained_steps=3,
            repeats=1,
        )


def bare_loop(layer, cost, z0, x0, steps: int):
    """``steps`` bare ``f + VJP`` steps for one problem (see the module docstring)."""

    def run(p, target):
        def body(_, carry):
            z, x, mu = carry
            (fz, c), vjp = jax.vjp(
                lambda z_, x_: (layer(z_, x_, p, target), cost(z_, x_, p, target)), z, x
            )
            gz, gx = vjp((mu, jnp.ones_like(c)))
            return fz, jax.tree.map(lambda a, b: a - 0.01 * b, x, gx), gz

        return jax.lax.fori_loop(0, steps, body, (z0, x0, jax.tree.map(jnp.zeros_like, z0)))

    return run


def jiio_loop(layer, cost, z0, x0, steps: int, **fields):
    solver = jiio.JIIO(
        step_size=0.01,
        max_steps=steps,
        start="given",
        no_worse_than_start=False,
        **fields,
    )

    def run(p, target):
        return jiio.solve(layer, cost, z0, x0, p, target, solver=solver)

    return run


def step_costs(
    problem, params, targets, steps: int, memories, repeats: int, marginal: bool = False
) -> dict[str, Any]:
    """ms per step of bare / JIIO variants; every program compiled first, then timed interleaved.

    ``marginal=False``: total / ``steps``. ``marginal=True``: every program also at ``2 steps``
    and the cost per step is ``(t(2 steps) - t(steps)) / steps``, which cancels what a solve
    costs once (set-up, JIIO's extra evaluation at the returned point), with ``t`` the median
    (and, apart, the minimum) over rounds.
    """
    layer, cost, z0, x0 = problem
    lengths = (steps, 2 * steps) if marginal else (steps,)
    programs = {}
    for t in lengths:
        tag = "" if t == steps else "@2T"
        programs["bare" + tag] = bare_loop(layer, cost, z0, x0, t)
        programs["jiio_none" + tag] = jiio_loop(layer, cost, z0, x0, t, accelerator="none")
        for m in memories:
            programs[f"jiio_m{m}" + tag] = jiio_loop(layer, cost, z0, x0, t, memory=m)
    calls, compile_s = {}, {}
    for name, run in programs.items():
        batched = jax.vmap(run, in_axes=(None, 0))
        compiled, compile_s[name] = compile_ahead(batched, params, targets)
        calls[name] = functools.partial(compiled, params, targets)
    samples = interleaved_times(calls, repeats)
    names = [k for k in programs if not k.endswith("@2T")]
    # The fastest round: the least disturbed by the other processes of a shared machine.
    med = {k: 1e3 * float(np.median(v)) for k, v in samples.items()}
    low = {k: 1e3 * min(v) for k, v in samples.items()}
    if marginal:
        ms = {k: (med[k + "@2T"] - med[k]) / steps for k in names}
        ms_min = {k: (low[k + "@2T"] - low[k]) / steps for k in names}
    else:
        ms = {k: med[k] / steps for k in names}
        ms_min = {k: low[k] / steps for k in names}
    for name in names:
        print(
            f"  {name:10s} {ms[name]:.3f} ms/step  ratio {ms[name] / ms['bare']:.2f}  "
            f"min {ms_min[name]:.3f} ratio {ms_min[name] / ms_min['bare']:.2f}  "
            f"(compile {compile_s[name]:.1f} s)",
            flush=True,
        )
    return {
        "ms_per_step": ms,
        "ms_per_step_min": ms_min,
        "compile_s": compile_s,
        "steps": steps,
        "marginal": marginal,
        "batch": len(targets),
    }


def trained_problem(workdir: str, batch: int):
    """A trained generative run's inner problem (its decoder, its first ``batch`` test images)
    as ``((layer, cost, z0, x0), params, targets)`` for :func:`step_costs`; ``layer`` and
    ``cost`` take ``(z, x, decoder_params, image)``."""
    from jiio_jax.evaluation.robustness import load_test_split
    from jiio_jax.tasks import get_task
    from jiio_jax.train.checkpoint import load_state
    from jiio_jax.train.record import evaluation_config

    config = evaluation_config(workdir)
    if config.task != "generative":
        raise SystemExit(
            f"--workdir: {workdir} is a {config.task!r} run; the step cost is measured on a "
            "generative run's inner problem (e.g. configs/digits_gen.py)."
        )
    task = get_task(config.task)(config)
    decoder = load_state(workdir)["params"]["decoder"]
    images, _ = load_test_split(config, batch)
    # The same (z, x, p, target) form as section (b)'s untrained MDEQ generator.
    return inner.mdeq_problem(task, decoder), decoder, jnp.asarray(images)


def measure(cfg: StepCostConfig, command: str, workdir: str | None = None) -> dict[str, Any]:
    images, *_ = inner.load_data(cfg.seed)
    icfg = dataclasses.replace(
        inner.BenchConfig(), hidden=cfg.hidden, latent=cfg.latent, mdeq_channels=cfg.mdeq_channels
    )
    results: dict[str, Any] = {
        "config": dataclasses.asdict(cfg),
        "machine": machine_description(),
        "load_average": os.getloadavg(),
        "command": command,
    }
    dense = inner.dense_problem(icfg)
    decoder = inner.init_dense_deq(jax.random.key(cfg.seed), cfg.hidden, cfg.latent, 64)
    targets = jnp.asarray(2 * images[: cfg.dense_batch] - 1)
    print("dense decoder:", flush=True)
    results["dense"] = step_costs(
        dense, decoder, targets, cfg.dense_steps, cfg.memories, cfg.repeats, cfg.marginal
    )
    task = inner.mdeq_task(icfg)
    params = jax.jit(task.model.init)(jax.random.key(cfg.seed + 2))
    mdeq = inner.mdeq_problem(task, params)
    targets = jnp.asarray(2 * images[: cfg.mdeq_batch] - 1).reshape(-1, 8, 8, 1)
    print("MDEQ generator:", flush=True)
    results["mdeq"] = step_costs(
        mdeq, params, targets, cfg.mdeq_steps, cfg.memories, cfg.repeats, cfg.marginal
    )
    if workdir:
        problem, params, targets = trained_problem(workdir, cfg.trained_batch)
        print(f"trained run {workdir}:", flush=True)
        results["trained"] = step_costs(
            problem, params, targets, cfg.trained_steps, cfg.memories, cfg.repeats, cfg.marginal
        )
        results["trained"]["workdir"] = workdir
    results["load_average_end"] = os.getloadavg()
    return results


def report(results: dict[str, Any]) -> str:
    cfg = results["config"]
    rows = []
    sections = [("dense", "dense decoder"), ("mdeq", "MDEQ generator")]
    if "trained" in results:
        sections.append(("trained", f"trained run `{results['trained']['workdir']}`"))
    for key, label in sections:
        r = results[key]
        ms, ms_min = r["ms_per_step"], r["ms_per_step_min"]
        for name, t in ms.items():
            steps = (
                f"T={r['steps']} vs {2 * r['steps']}" if r.get("marginal") else f"T={r['steps']}"
            )
            rows.append(
                [
                    f"{label} (batch {r['batch']}, {steps})",
                    name,
                    t,
                    t / ms["bare"],
                    ms_min[name],
                    ms_min[name] / ms_min["bare"],
                ]
            )
    headers = ["model", "program", "ms / step (median)", "ratio", "ms / step (min)", "ratio (min)"]
    table = common.markdown_table(headers, rows)
    load = ", ".join(f"{x:.1f}" for x in results["load_average"])
    if cfg.get("marginal"):
        per_step = (
            "Cost per step = (t(2T) - t(T)) / T with t the median (minimum) over rounds: what a "
            "solve costs once (set-up, "
            "JIIO's extra evaluation at the returned point) cancels."
        )
    else:
        per_step = (
            "Cost per step = total / T: JIIO's total includes its one extra augmented-map "
            "evaluation at the returned point (T + 1 evaluations per T steps)."
        )
    return (
        "## Step cost\n\n"
        f"{results['machine']}; load average at start {load}. Medians and minima of "
        f"{cfg['repeats']} interleaved rounds, compile excluded (`jiio_jax.evaluation.clock`). "
        f"{per_step}\n\n"
        f"{table}\n\nCommand: `{results['command']}`\n"
    )


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--out", default=os.path.join("experiments", "results"))
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument(
        "--marginal",
        action="store_true",
        help="cost per step as (t(2T) - t(T)) / T, without what a solve costs once",
    )
    parser.add_argument(
        "--workdir",
        default=None,
        help="also a trained generative run's inner problem (its decoder, test images)",
    )
    common.add_report_only_flag(parser)
    args = parser.parse_args(argv)
    stem = "jiio_step_cost_marginal" if args.marginal else "jiio_step_cost"
    path = os.path.join(args.out, stem + ".json")
    if args.report_only:
        results = common.load_results(path)
    else:
        cfg = StepCostConfig.quick() if args.quick else StepCostConfig()
        if args.repeats is not None:
            cfg = dataclasses.replace(cfg, repeats=args.repeats)
        cfg = dataclasses.replace(cfg, marginal=args.marginal)
        flags = sys.argv[1:] if argv is None else list(argv)
        command = " ".join(["python", "experiments/benchmarks/jiio_step_cost.py", *flags])
        results = common.save_results(path, measure(cfg, command, args.workdir))
    text = report(results)
    with open(os.path.join(args.out, stem + "_table.md"), "w", encoding="utf-8") as fh:
        fh.write(text)
    print(text, flush=True)
    return results


if __name__ == "__main__":
    main()
