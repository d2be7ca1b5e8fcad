"""JIIO vs PGD-k adversarial training on digits, interleaved in one process (the paper's Table 3).

Every method trains the same MDEQ classifier (``configs/digits_adv.py``: same init, same
batches, same optimizer and schedule, same epsilon warm-up) and only the inner maximisation
differs: JIIO-T (one augmented fixed-point solve of T steps) or PGD-k (k DEQ forward solves +
implicit backward passes). Train steps of the methods alternate (``jiio step 1, pgd step 1,
jiio step 2, ...``) so load drift on a shared machine hits all of them alike; each step is
timed to ``block_until_ready`` and compilation is timed separately
(``jiio_jax.evaluation.clock``). At the evaluation points
every model is scored identically in eval mode on the whole test split: clean accuracy and
robust accuracy under PGD-20 and JIIO-80, each from a DEQ re-solved at the attacked input
(``AdversarialTask.evaluate``).

Usage (writes the measurements to experiments/results/adversarial.json, then
adversarial.md and adversarial_training.png from that JSON alone)::

  python experiments/benchmarks/adversarial_training.py
  python experiments/benchmarks/adversarial_training.py --methods=jiio:20,jiio:40,pgd:20
  python experiments/benchmarks/adversarial_training.py --smoke --out=/tmp/adv_bench
  python experiments/benchmarks/adversarial_training.py --report_only --out=/tmp/adv_bench
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import compile_ahead, machine_description, markdown_table, timed_call  # noqa: E402

from jiio_jax import data as data_lib  # noqa: E402
from jiio_jax.tasks import get_task  # noqa: E402
from jiio_jax.train.loop import make_eval_step, make_train_step  # noqa: E402
from jiio_jax.train.optim import create_optimizer  # noqa: E402
from jiio_jax.train.state import create_train_state  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CONFIG_FILE = os.path.join(REPO, "configs", "digits_adv.py")


def load_config(variant: str | None):
    spec = importlib.util.spec_from_file_location("digits_adv", CONFIG_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(variant)


def parse_method(spec: str) -> tuple[str, int]:
    """``"jiio:20"`` -> ``("jiio", 20)``; ValueError naming the flag otherwise."""
    name, _, steps = spec.partition(":")
    if name not in ("jiio", "pgd", "clean") or (name != "clean" and not steps.isdigit()):
        raise ValueError(
            f"--methods entry {spec!r}: use jiio:<steps>, pgd:<steps> or clean (e.g. pgd:20)."
        )
    return name, int(steps) if steps else 0


def method_config(base, name: str, steps: int):
    """The base config with the training attack set to ``name``-``steps``."""
    config = base.copy_and_resolve_references()
    m = config.model
    m.method = name
    if name == "jiio":
        m.jiio.max_steps = steps
    elif name == "pgd":
        # Madry et al.'s step: 2.5 eps / k (as a fraction of eps).
        m.pgd.update(steps=steps, step_size=2.5 / steps)
    return config


class Run:
    """One method's training state, jitted step and timings."""

    def __init__(self, label: str, config, batch0: dict[str, jax.Array]):
        self.label = label
        self.task = get_task(config.task)(config)
        tx, lr_fn = create_optimizer(config.optim, config.num_train_steps)
        params = self.task.init_params(jax.random.key(config.seed), batch0)
        key_data = jax.random.key_data(jax.random.split(jax.random.key(config.seed), 3)[1])
        self.state = create_train_state(params, tx, key_data)
        self.step, self.compile_seconds = compile_ahead(
            make_train_step(self.task, tx, lr_fn), self.state, batch0, donate_argnums=0
        )
        self.step_seconds: list[float] = []
        self.metrics: list[dict[str, float]] = []

    def train_step(self, batch: dict[str, jax.Array]) -> None:
        (self.state, metrics), seconds = timed_call(lambda: self.step(self.state, batch))
        self.step_seconds.append(seconds)
        loss = float(metrics["loss"])
        if not np.isfinite(loss):
            raise FloatingPointError(f"{self.label}: loss {loss} at step {len(self.step_seconds)}.")
        self.metrics.append({k: float(v) for k, v in metrics.items()})


def evaluate(eval_step, params, batches: list[dict[str, jax.Array]]) -> dict[str, float]:
    sums: dict[str, float] = {}
    count = 0
    for i, batch in enumerate(batches):
        out = jax.device_get(eval_step(params, batch, jax.random.key(i)))
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + float(v)
        count += batch["image"].shape[0]
    return {k: v / count for k, v in sums.items()}


def plot(path: str, history: dict[str, list[dict[str, float]]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for label, points in history.items():
        t = [p["train_seconds"] / 60 for p in points]
        axes[0].plot(t, [p["robust_acc_pgd"] for p in points], "o-", label=label)
        axes[1].plot(t, [p["robust_acc_jiio"] for p in points], "o-", label=label)
    for ax, title in zip(axes, ("PGD-20", "JIIO-80"), strict=True):
        ax.set_xlabel("training time (min, compile excluded)")
        ax.set_ylabel(f"robust accuracy under {title}")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def measure(args, argv_used: list[str]) -> dict[str, Any]:
    """Trains every method of ``args.methods`` interleaved; the measurements (JSON types)."""
    base = load_config("small" if args.smoke else None)
    if args.steps is not None:
        if args.steps < 1:
            raise ValueError(f"--steps={args.steps} must be positive.")
        base.num_train_steps = args.steps
    if args.eval_points < 1:
        raise ValueError(f"--eval_points={args.eval_points} must be positive.")
    num_steps = base.num_train_steps
    methods = [parse_method(s) for s in args.methods.split(",") if s]
    if len(methods) < 2:
        raise ValueError("--methods needs at least two methods to compare.")
    labels = [f"{n.upper()}-{k}" if n != "clean" else "clean" for n, k in methods]

    train_iter = data_lib.make_iterator(
        base.data, "train", base.batch_size, seed=base.seed, process_index=0, process_count=1
    )
    eval_batches = list(
        data_lib.make_iterator(
            base.data,
            "test",
            base.eval_batch_size,
            seed=base.seed,
            shuffle=False,
            repeat=False,
            process_index=0,
            process_count=1,
        )
    )[: base.num_eval_batches]
    eval_batches = [jax.tree.map(jnp.asarray, b) for b in eval_batches]
    batch0 = jax.tree.map(jnp.asarray, next(train_iter))

    print(f"machine: {machine_description()}")
    runs = [
        Run(label, method_config(base, name, k), batch0)
        for label, (name, k) in zip(labels, methods, strict=True)
    ]
    for run in runs:
        print(f"{run.label}: train step compiled in {run.compile_seconds:.1f}s")
    # Evaluation does not depend on the training method: one task scores every model.
    eval_step = jax.jit(make_eval_step(runs[0].task))
    points = args.eval_points
    eval_at = sorted({round(num_steps * (i + 1) / points) for i in range(points)})
    history: dict[str, list[dict[str, float]]] = {r.label: [] for r in runs}

    batch = batch0
    for step in range(1, num_steps + 1):
        for run in runs:
            run.train_step(batch)
        if step in eval_at:
            for run in runs:
                start = time.perf_counter()
                scores = evaluate(eval_step, run.state.params, eval_batches)
                scores.update(
                    step=step,
                    train_seconds=sum(run.step_seconds),
                    eval_seconds=time.perf_counter() - start,
                )
                history[run.label].append(scores)
                print(
                    f"step {step} {run.label}: train {scores['train_seconds']:.0f}s, "
                    f"clean {scores['clean_acc']:.3f}, PGD-20 {scores['robust_acc_pgd']:.3f}, "
                    f"JIIO-80 {scores['robust_acc_jiio']:.3f}",
                    flush=True,
                )
        if step < num_steps:
            batch = jax.tree.map(jnp.asarray, next(train_iter))
    return {
        "command": "python experiments/benchmarks/adversarial_training.py " + " ".join(argv_used),
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine_description(),
        "load_end": os.getloadavg()[0],
        "smoke": bool(args.smoke),
        "epsilon": base.model.epsilon,
        "num_steps": num_steps,
        "batch_size": base.batch_size,
        "num_test": sum(int(b["image"].shape[0]) for b in eval_batches),
        "history": history,
        "compile_seconds": {r.label: r.compile_seconds for r in runs},
        "step_seconds": {r.label: r.step_seconds for r in runs},
    }


def report(results: dict[str, Any]) -> tuple[str, str]:
    """``(adversarial.md text, the final table)`` from the saved measurements alone."""
    history, compile_seconds = results["history"], results["compile_seconds"]
    step_seconds = results["step_seconds"]
    total = {label: sum(step_seconds[label]) for label in history}
    slowest = max(history, key=total.get)
    slowest_with_compile = total[slowest] + compile_seconds[slowest]
    rows = []
    for label in history:
        final = history[label][-1]
        rows.append(
            [
                label,
                final["clean_acc"],
                final["robust_acc_pgd"],
                final["robust_acc_jiio"],
                f"{total[label]:.0f}",
                f"{statistics.median(step_seconds[label]):.3f}",
                f"{compile_seconds[label]:.0f}",
                f"{total[slowest] / total[label]:.2f}x",
                f"{slowest_with_compile / (total[label] + compile_seconds[label]):.2f}x",
            ]
        )
    headers = [
        "training",
        "clean acc",
        "robust (PGD-20)",
        "robust (JIIO-80)",
        "train time (s)",
        "median s/step",
        "compile (s)",
        f"speed-up vs {slowest}",
        "incl. compile",
    ]
    table = markdown_table(headers, rows)
    curve_rows = [
        [lab, p["step"], f"{p['train_seconds']:.0f}", p["clean_acc"], p["robust_acc_pgd"]]
        + [p["robust_acc_jiio"]]
        for lab, points in history.items()
        for p in points
    ]
    curves = markdown_table(
        ["training", "step", "train time (s)", "clean", "PGD-20", "JIIO-80"], curve_rows
    )
    text = f"""# Adversarial training: JIIO vs PGD (digits, interleaved)

Produced by `{results["command"].strip()}` ({results["date"]}).
Machine: {results["machine"]}; load average at the end {results["load_end"]:.1f}.

Config `configs/digits_adv.py`{" (:small)" if results["smoke"] else ""}: tiny MDEQ classifier, \
L2 epsilon {results["epsilon"]} on the [0, 1] pixel scale, {results["num_steps"]} steps of batch \
{results["batch_size"]}, same init, batches and optimizer for every method; train steps of the \
methods alternate in one process. PGD-k training uses Madry's step 2.5 eps / k. Train time \
is the sum of the timed steps; compilation is timed apart (it does not grow with the run, \
so the last column understates the ratio of a longer run). Evaluation in eval mode on \
{results["num_test"]} test images, every accuracy from a DEQ re-solved at the attacked input.

{table}

Robust accuracy during training (`adversarial_training.png`):

{curves}
"""
    return text, table


def main(argv=None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--methods", default="jiio:20,pgd:20", help="comma-separated")
    parser.add_argument("--steps", type=int, default=None, help="default: the config's 300")
    parser.add_argument("--eval_points", type=int, default=3, help="evaluations per run")
    parser.add_argument("--smoke", action="store_true", help="configs/digits_adv.py:small")
    parser.add_argument("--out", default=os.path.join(REPO, "experiments", "results"))
    common.add_report_only_flag(parser)
    args = parser.parse_args(argv)
    json_path = os.path.join(args.out, "adversarial.json")
    if args.report_only:
        results = common.load_results(json_path)
    else:
        argv_used = list(argv) if argv is not None else sys.argv[1:]
        results = common.save_results(json_path, measure(args, argv_used))
    text, table = report(results)
    print(table)
    plot(os.path.join(args.out, "adversarial_training.png"), results["history"])
    with open(os.path.join(args.out, "adversarial.md"), "w", encoding="utf-8") as f:
        f.write(text)
    return {"history": results["history"], "table": table}


if __name__ == "__main__":
    main()
