"""MDEQ models on CPU: parameter counts, convergence at init, solve and train-step cost.

For each model config and each (forward solver, backward mode) pair this measures, per batch:
the forward pass (inject + vmapped fixed-point solve + head) and one forward+backward step
(``value_and_grad`` of a task loss w.r.t. all parameters), as medians of interleaved warm runs
(``jiio_jax.evaluation.clock.interleaved_medians``, compile excluded), plus XLA's
temporary-buffer size of each compiled program (``compiled.memory_analysis().temp_size_in_bytes``,
the peak scratch memory the CPU backend reports) and the compile time. Solvers run a fixed
budget (``--steps``) at a tolerance that the reference-size cells do not reach at init, so the
solvers are compared at equal work.

Usage (the run recorded in experiments/results/mdeq.md, which quotes the tables verbatim)::

    python experiments/benchmarks/mdeq.py --out /tmp/mdeq_tables.md

writes the measurements to ``<out stem>.json`` (``/tmp/mdeq_tables.json``), then the tables to
``--out`` from that JSON alone (``report``); ``--report_only`` rebuilds the tables from the JSON
without measuring. ``--out`` defaults to ``experiments/results/mdeq_tables.md``.
``--quick`` runs a seconds-long subset (used by tests/test_mdeq_benchmark.py).
``--only-equilibrium`` runs only the "Equilibrium at init" table (all configs, a few minutes)::

    python experiments/benchmarks/mdeq.py --only-equilibrium --out /tmp/mdeq_equilibrium.md
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import compile_ahead, interleaved_medians, machine_description, markdown_table  # noqa: E402

from jiio_jax import jacobian, models  # noqa: E402
from jiio_jax.deq import Implicit, OneStep  # noqa: E402
from jiio_jax.solvers import Anderson, Broyden, FixedPointIteration, Status  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "experiments", "results", "mdeq_tables.md")

# The reference's parameter counts, derived layer by layer from its PyTorch code (see
# tests/test_models_params.py, which asserts ours equal these).
REFERENCE_PARAMS = {
    "mnist_cls": 158_554,
    "cifar_cls": 158_986,
    "celeba_gen": 40_799_552,
    "celeba_gen_tiny": 15_982_080,
    "omniglot_meta": 2_345_093,
}


@dataclasses.dataclass(frozen=True)
class Case:
    """One benchmark row: a config, a batch size and a forward step budget."""

    config: str
    batch: int
    steps: int


def model_for(name: str, solver=None, backward=None):
    cfg = models.get_config(name)
    kwargs = {}
    if solver is not None:
        kwargs["solver"] = solver
    if backward is not None:
        kwargs["backward"] = backward
    if cfg.num_classes is not None:
        return models.MDEQClassifier(cfg, **kwargs)
    if cfg.latent_dim is not None:
        return models.MDEQGenerator(cfg, **kwargs)
    return models.MDEQMetaLearner(cfg, **kwargs)


def make_inputs(model, batch: int, key: jax.Array):
    """Random inputs and targets of the model's task (float32)."""
    cfg = model.config
    k1, k2 = jax.random.split(key)
    if isinstance(model, models.MDEQClassifier):
        inputs = jax.random.uniform(k1, (batch, *cfg.image_shape), jnp.float32)
        return inputs, jax.random.randint(k2, (batch,), 0, cfg.num_classes)
    if isinstance(model, models.MDEQGenerator):
        inputs = jax.random.normal(k1, (batch, cfg.latent_dim), jnp.float32)
        return inputs, jax.random.uniform(k2, (batch, *cfg.image_shape), jnp.float32, -1, 1)
    images = jax.random.uniform(k1, (batch, *cfg.image_shape), jnp.float32)
    inputs = models.MetaInput(images, jnp.zeros((batch, cfg.context_dim), jnp.float32))
    return inputs, jax.random.randint(k2, (batch,), 0, cfg.n_way)


def task_loss(model, params, inputs, targets):
    out, info = model(params, inputs)
    if isinstance(model, models.MDEQGenerator):
        return jnp.mean((out - targets) ** 2), info
    return optax.softmax_cross_entropy_with_integer_labels(out, targets).mean(), info


def solvers(steps: int):
    # tol far below what the cells reach at init: every solver spends the same budget.
    return {
        "anderson": Anderson(max_steps=steps, tol=1e-7, memory=5),
        "broyden": Broyden(max_steps=steps, tol=1e-7, memory=10),
        "fixed-point": FixedPointIteration(max_steps=steps, tol=1e-7),
    }


BACKWARDS = {
    "implicit": Implicit(solver=Anderson(max_steps=20, tol=1e-6)),
    "one-step": OneStep(),
}


def temp_mb(compiled) -> float | str:
    analysis = compiled.memory_analysis()
    if analysis is None or getattr(analysis, "temp_size_in_bytes", None) is None:
        return "n/a"
    return analysis.temp_size_in_bytes / 2**20


def bench_case(case: Case, solver_names: Sequence[str], backward_names: Sequence[str], repeats):
    """Times forward and forward+backward of ``case`` for every solver x backward pair."""
    base = model_for(case.config)
    params = jax.jit(base.init)(jax.random.key(0))
    inputs, targets = make_inputs(base, case.batch, jax.random.key(1))
    calls, meta = {}, {}
    for s_name in solver_names:
        solver = solvers(case.steps)[s_name]
        fwd_model = model_for(case.config, solver=solver)
        fwd, t_fwd = compile_ahead(lambda p, x, m=fwd_model: m(p, x), params, inputs)
        _, info = fwd(params, inputs)
        calls[(s_name, "forward")] = functools.partial(fwd, params, inputs)
        meta[(s_name, "forward")] = (t_fwd, temp_mb(fwd), info)
        for b_name in backward_names:
            m = model_for(case.config, solver=solver, backward=BACKWARDS[b_name])
            step = jax.value_and_grad(lambda p, x, y, m=m: task_loss(m, p, x, y), has_aux=True)
            fb, t_fb = compile_ahead(step, params, inputs, targets)
            calls[(s_name, b_name)] = functools.partial(fb, params, inputs, targets)
            meta[(s_name, b_name)] = (t_fb, temp_mb(fb), info)
    times = interleaved_medians(calls, repeats=repeats)
    rows = []
    for (s_name, mode), seconds in times.items():
        t_compile, mb, info = meta[(s_name, mode)]
        rows.append(
            [
                case.config,
                case.batch,
                s_name,
                mode,
                seconds * 1e3,
                mb,
                t_compile,
                float(jnp.mean(info.num_steps)),
                float(jnp.max(info.residual)),
            ]
        )
    return rows


def param_rows(names: Sequence[str]):
    rows = []
    for name in names:
        shapes = jax.eval_shape(model_for(name).init, jax.random.key(0))
        parts = {k: models.count_params(v) for k, v in shapes.items()}
        total = sum(parts.values())
        ref = REFERENCE_PARAMS.get(name, "-")
        rows.append([name, parts["injection"], parts["cell"], parts["head"], total, ref])
    return rows


def spectral_radius_of_first(model, params, inputs, z):
    """Power-method spectral radius of the cell's ``df/dz`` at sample 0's state ``z[0]``."""
    inp, z0 = jax.tree.map(lambda a: a[0], (inputs, z))
    x = model.inject(inp, params["injection"])
    f = lambda zz: model.cell(zz, x, params["cell"])
    return jacobian.spectral_radius(f, z0, jax.random.key(2), num_iters=100)


def convergence_rows(names: Sequence[str], batch: int, steps: int, with_radius: bool = True):
    """Residual of the cells at init (Anderson, ``steps`` evaluations) and the spectral radius
    of ``df/dz`` at the returned point of sample 0 (power method, 100 JVPs)."""
    rows = []
    for name in names:
        m = model_for(name, solver=Anderson(max_steps=steps, tol=1e-5, memory=5))
        params = jax.jit(m.init)(jax.random.key(0))
        inputs, _ = make_inputs(m, batch, jax.random.key(1))
        _, info = jax.jit(m)(params, inputs)
        statuses = sorted({Status(int(s)).name for s in info.status})
        radius = jax.jit(functools.partial(spectral_radius_of_first, m))

        rows.append(
            [
                name,
                batch,
                float(jnp.mean(info.num_steps)),
                float(jnp.max(info.residual)),
                "/".join(statuses),
                float(radius(params, inputs, info.z_star)) if with_radius else "skipped",
            ]
        )
    return rows


def measure(args) -> dict[str, Any]:
    """The measurements of ``args`` (JSON types): table rows as lists of cells."""
    start = time.perf_counter()
    all_solvers, all_modes = ("anderson", "broyden", "fixed-point"), ("implicit", "one-step")
    all_names = [
        "mnist_cls",
        "cifar_cls",
        "celeba_gen",
        "celeba_gen_tiny",
        "omniglot_meta",
        "tiny_cls",
        "tiny_gen",
        "tiny_meta",
    ]
    if args.quick:
        param_names = ["tiny_cls", "mnist_cls"]
        conv = convergence_rows(["tiny_cls"], batch=2, steps=3, with_radius=False)
        timing = bench_case(Case("tiny_cls", 2, 3), ("anderson",), ("one-step",), repeats=2)
    elif args.only_equilibrium:
        param_names, timing = [], []
        conv = convergence_rows(all_names, batch=2, steps=60)
    else:
        param_names = all_names
        conv = convergence_rows(param_names, batch=2, steps=60)
        timing = []
        for case in (Case("tiny_cls", 32, 18), Case("tiny_gen", 32, 18)):
            timing += bench_case(case, all_solvers, all_modes, args.repeats)
        for case in (
            Case("mnist_cls", 2, 8),
            Case("cifar_cls", 2, 8),
            Case("omniglot_meta", 2, 8),
            Case("celeba_gen", 1, 8),
        ):
            timing += bench_case(case, ("anderson",), all_modes, args.ref_repeats)
    return {
        "machine": machine_description(),
        "elapsed_s": time.perf_counter() - start,
        "only_equilibrium": bool(args.only_equilibrium),
        "params": param_rows(param_names),
        "equilibrium": conv,
        "timing": timing,
    }


def report(results: dict[str, Any]) -> str:
    """The markdown tables, from the saved measurements alone."""
    sections = [
        f"Device: {results['machine']}. Total benchmark time {results['elapsed_s']:.0f} s.",
        "### Parameter counts (ours via jax.eval_shape; reference derived from its PyTorch "
        "modules, copies excluded)\n\n"
        + markdown_table(
            ["config", "injection", "cell", "head", "total (ours)", "total (reference)"],
            results["params"],
        ),
        "### Equilibrium at init (Anderson m=5, relative tolerance 1e-5)\n\n"
        + markdown_table(
            ["config", "batch", "mean steps", "max rel. residual", "status", "rho(df/dz)"],
            results["equilibrium"],
        ),
        "### Time and memory per batch (float32, CPU)\n\n"
        + markdown_table(
            [
                "config",
                "batch",
                "solver",
                "pass",
                "median ms",
                "XLA temp MiB",
                "compile s",
                "mean fwd steps",
                "max fwd residual",
            ],
            results["timing"],
        ),
    ]
    if results["only_equilibrium"]:
        sections = [sections[0], sections[2]]
    return "\n\n".join(sections)


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", default=DEFAULT_OUT, help="the markdown tables; measurements: <out stem>.json"
    )
    parser.add_argument("--quick", action="store_true", help="seconds-long subset (smoke test)")
    parser.add_argument(
        "--only-equilibrium",
        action="store_true",
        help='only the "Equilibrium at init" table (skips parameter counts and timings)',
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--ref-repeats", type=int, default=3)
    common.add_report_only_flag(parser)
    args = parser.parse_args(argv)
    json_path = os.path.splitext(args.out)[0] + ".json"
    if args.report_only:
        results = common.load_results(json_path)
    else:
        results = common.save_results(json_path, measure(args))
    text = report(results)
    with open(args.out, "w") as f:
        f.write(text + "\n")
    print(text)
    return text


if __name__ == "__main__":
    main()
