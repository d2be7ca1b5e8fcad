"""Scale suite: the reference MDEQ architectures timed on whatever backend JAX finds.

One command measures, with synthetic inputs of the real shapes (all float32 unless stated):

1. **train step** per architecture (``celeba_gen``, ``mnist_cls``, ``cifar_cls``,
   ``omniglot_meta``): forward solve + implicit backward + Adam update, jitted; compile time
   separately, median step time, images/s, memory (below). The task's inner optimisation is
   *not* in this step (generator: latents given; classifiers: clean images; meta learner: task
   contexts given) -- its cost is what Tables 3 and 2 measure.
2. **Table 3**: latent optimisation on the CelebA generator: Adam-40 (each step a DEQ forward
   solve + implicit backward, ``jiio.inner_adam``, lr 1, cold start) vs JIIO-40 / JIIO-100
   (``jiio.solve``, the reference's memory 40 and step 0.01 -> 0.003). Targets are the
   generator's own images at random latents, so the reached cost can go to 0.
3. **Table 2**: L2 attack (eps 1 on [0, 1] images) on the MNIST classifier: PGD-20
   (normalised steps of 0.2, ``jiio.pgd``) vs JIIO-80 (memory 20, steps 0.6 -> 0.2,
   normalised, ``jiio.solve``). Labels are the (untrained) model's clean predictions, so clean
   accuracy is 1 and the reached CE / accuracy say how strong each attack is.
4. **bf16 vs float32** train step for the cell, when ``MDEQConfig`` has a ``compute_dtype``
   field; otherwise the table says "bf16 switch not available".
5. **1 -> N device scaling** of the train step (data parallel: a ``('data',)`` mesh, batch
   sharded with ``NamedSharding``, parameters replicated), when there are several devices.

Methods compared in a table are timed interleaved (``jiio_jax.evaluation.clock``: compile apart,
one untimed run, then medians of interleaved warm runs). Memory:
``device.memory_stats()["peak_bytes_in_use"]`` after the program ran where the backend has it
(GPU; a process-wide peak, so it only grows through the run), and always XLA's compiled
memory analysis (temp + argument + output bytes of the program).

Usage::

    python experiments/benchmarks/scale.py                  # full run (GPU: paper batches)
    python experiments/benchmarks/scale.py --small --out=/tmp/scale.md   # CI-sized, CPU
    # CPU record at the reference sizes with small batches (experiments/results/scale.md):
    python experiments/benchmarks/scale.py --batch=celeba_gen=1,mnist_cls=2,cifar_cls=2,\\
omniglot_meta=1 --table3_batch=1 --table2_batch=2 --repeats=1 --budget_s=3000

``--budget_s`` bounds the wall time: a section (or item) that would start after it is
reported as "skipped: budget", and repeats are cut to what fits. ``--out`` is a markdown file:
the run writes its measurements to ``<out stem>_<platform>.json`` and then, from that JSON alone
(``render``), replaces only its own platform's block of ``--out`` (so GPU and CPU records
coexist). ``--report_only --platform=cpu`` rebuilds that block from the saved JSON without
measuring.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import re
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common  # noqa: E402
from common import (  # noqa: E402
    compile_ahead,
    interleaved_medians,
    machine_description,
    markdown_table,
    timed_call,
)

from jiio_jax import jiio, models  # noqa: E402
from jiio_jax.deq import Implicit  # noqa: E402
from jiio_jax.solvers import Anderson  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUT = os.path.join(REPO, "experiments", "results", "scale.md")

REFERENCE_ARCHS = ("celeba_gen", "mnist_cls", "cifar_cls", "omniglot_meta")
# The reference's per-GPU batches (JIIO_REFERENCE.md §3.5: 12x4, 48x2, 48x2, 20 tasks x 4).
# omniglot_meta counts tasks; a task's train step sees its n_way (5) query images.
PAPER_BATCH = {"celeba_gen": 12, "mnist_cls": 48, "cifar_cls": 48, "omniglot_meta": 20}
# --small: CI stand-ins of the same kinds (16x16 / 14x14 tiny presets), tiny batches.
SMALL_ARCHS = ("tiny_gen", "tiny_cls", "tiny_meta")
SMALL_BATCH = {"tiny_gen": 2, "tiny_cls": 2, "tiny_meta": 1}

# The reference's solver budgets: F_THRES 18 forward, B_THRES 20 backward (§3.5).
FORWARD = Anderson(max_steps=18, tol=1e-4, memory=5)
BACKWARD = Implicit(Anderson(max_steps=20, tol=1e-4, memory=5))
SCORE = Anderson(max_steps=50, tol=1e-5, memory=5)  # every inner result re-solved with this
SECTIONS = ("train", "table3", "table2", "dtype", "scaling")
MIB = 2**20


@dataclasses.dataclass(frozen=True)
class Settings:
    """What one run measures (see ``main``'s flags)."""

    archs: tuple[str, ...]
    batch: dict
    gen_arch: str
    cls_arch: str
    table3_batch: int
    table2_batch: int
    adam_steps: int
    jiio_gen_steps: tuple[int, ...]
    pgd_steps: int
    jiio_adv_steps: int
    repeats: int
    scaling_archs: tuple[str, ...]
    dtype_archs: tuple[str, ...]
    budget_s: float
    sections: tuple[str, ...]


# ------------------------------------------------------------------------------------------
# Models, inputs, memory.
# ------------------------------------------------------------------------------------------


def build_model(cfg: models.MDEQConfig):
    kw = {"solver": FORWARD, "backward": BACKWARD}
    if cfg.num_classes is not None:
        return models.MDEQClassifier(cfg, **kw)
    if cfg.latent_dim is not None:
        return models.MDEQGenerator(cfg, **kw)
    return models.MDEQMetaLearner(cfg, **kw)


def images_per_batch(model, batch: int) -> int:
    """Images one train step processes (meta: ``batch`` tasks x ``n_way`` query images)."""
    if isinstance(model, models.MDEQMetaLearner):
        return batch * model.config.n_way
    return batch


def synthetic_batch(model, batch: int, key: jax.Array):
    """Inputs and targets of the real shapes: images in [0, 1] (classifier, meta), latents
    N(0, 1) and target images in [-1, 1] (generator), one context per task (meta)."""
    cfg = model.config
    k1, k2, k3 = jax.random.split(key, 3)
    n = images_per_batch(model, batch)
    if isinstance(model, models.MDEQClassifier):
        images = jax.random.uniform(k1, (n, *cfg.image_shape), jnp.float32)
        return images, jax.random.randint(k2, (n,), 0, cfg.num_classes)
    if isinstance(model, models.MDEQGenerator):
        latents = jax.random.normal(k1, (n, cfg.latent_dim), jnp.float32)
        return latents, jax.random.uniform(k2, (n, *cfg.image_shape), jnp.float32, -1, 1)
    images = jax.random.uniform(k1, (n, *cfg.image_shape), jnp.float32)
    contexts = jax.random.normal(k3, (batch, cfg.context_dim), jnp.float32)
    contexts = jnp.repeat(contexts, cfg.n_way, axis=0)
    return models.MetaInput(images, contexts), jax.random.randint(k2, (n,), 0, cfg.n_way)


def task_loss(model, params, inputs, targets):
    out, info = model(params, inputs)
    if isinstance(model, models.MDEQGenerator):
        return jnp.mean((out - targets) ** 2), info
    return optax.softmax_cross_entropy_with_integer_labels(out, targets).mean(), info


def make_train_step(model, optimizer):
    """``(params, opt_state, inputs, targets) -> (params, opt_state, loss, mean fwd steps)``."""

    def step(params, opt_state, inputs, targets):
        grad_fn = jax.value_and_grad(lambda p: task_loss(model, p, inputs, targets), has_aux=True)
        (loss, info), grads = grad_fn(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, jnp.mean(info.num_steps)

    return step


def xla_mib(compiled) -> float | None:
    """temp + argument + output bytes of a compiled program (XLA's memory analysis), MiB."""
    try:
        ma = compiled.memory_analysis()
    except Exception:  # some backends do not implement it
        return None
    if ma is None:
        return None
    parts = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
    return sum(getattr(ma, p, 0) or 0 for p in parts) / MIB


def device_peak_mib() -> float | None:
    """``peak_bytes_in_use`` of device 0 (process-wide peak), or None where not reported."""
    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:
        return None
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"] / MIB


def fmt(x: Any) -> Any:
    return "n/a" if x is None else x


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


# ------------------------------------------------------------------------------------------
# Budget-aware running and progress.
# ------------------------------------------------------------------------------------------


class Clock:
    """Elapsed time, the budget, progress lines."""

    def __init__(self, budget_s: float):
        self.start, self.budget_s = time.perf_counter(), budget_s

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.budget_s - self.elapsed()

    def log(self, msg: str) -> None:
        print(f"[{self.elapsed():7.1f} s] {msg}", flush=True)

    def over(self, what: str) -> bool:
        if self.left() <= 0:
            self.log(f"skipped: budget ({what}; {self.budget_s:.0f} s used up)")
            return True
        return False


def run_once(fn: Callable, *args: Any) -> tuple[Any, float]:
    """Runs ``fn`` once (the warm-up after compilation); returns ``(output, seconds)``."""
    return timed_call(functools.partial(fn, *args))


def timed(
    clock: Clock, entries: dict[str, tuple[Callable, tuple]], repeats: int, first: dict
) -> dict:
    """Medians of ``n`` interleaved warm runs, ``1 <= n <= repeats`` (``n`` cut to what the
    budget fits). ``first[name]``: the seconds of each program's first run after compilation
    (its untimed warm-up, never reported: on XLA:CPU it was up to 8x slower than the warm runs),
    used only to size ``n``. Returns ``{name: seconds}``."""
    per_round = sum(first.values())
    fit = int(max(clock.left(), 0) // max(per_round, 1e-9))
    n = max(1, min(repeats, fit))
    if n < repeats:
        clock.log(f"  repeats cut to {n} (budget)")
    calls = {name: functools.partial(fn, *args) for name, (fn, args) in entries.items()}
    return interleaved_medians(calls, repeats=n, warmup=0)


# ------------------------------------------------------------------------------------------
# Sections.
# ------------------------------------------------------------------------------------------


def measure_train_step(clock, cfg, batch, repeats, mesh=None, label=None):
    """Compiles and times one data-parallel (or single-device) train step; returns a dict."""
    model = build_model(cfg)
    optimizer = optax.adam(1e-3)
    params = jax.jit(model.init)(jax.random.key(0))
    opt_state = optimizer.init(params)
    inputs, targets = synthetic_batch(model, batch, jax.random.key(1))
    if mesh is not None:
        rep = NamedSharding(mesh, PartitionSpec())
        shard = NamedSharding(mesh, PartitionSpec("data"))
        params, opt_state = jax.device_put((params, opt_state), rep)
        inputs, targets = jax.device_put((inputs, targets), shard)
    step = make_train_step(model, optimizer)
    clock.log(f"{label or cfg}: compiling")
    compiled, t_compile = compile_ahead(step, params, opt_state, inputs, targets)
    args = (params, opt_state, inputs, targets)
    (_, _, loss, steps), first = run_once(compiled, *args)
    seconds = timed(clock, {"step": (compiled, args)}, repeats, {"step": first})["step"]
    n_img = images_per_batch(model, batch)
    return {
        "batch": batch,
        "images": n_img,
        "step_ms": seconds * 1e3,
        "images_per_s": n_img / seconds,
        "compile_s": t_compile,
        "xla_mib": xla_mib(compiled),
        "device_peak_mib": device_peak_mib(),
        "loss": float(loss),
        "mean_fwd_steps": float(steps),
        "params": models.count_params(params),
    }


def section_train(clock, s: Settings) -> list[dict]:
    rows = []
    for name in s.archs:
        if clock.over(f"train step {name}"):
            rows.append({"arch": name, "batch": s.batch[name], "skipped": "budget"})
            continue
        cfg = models.get_config(name)
        r = measure_train_step(clock, cfg, s.batch[name], s.repeats, label=f"train {name}")
        rows.append({"arch": name, **r})
        clock.log(
            f"  train {name} batch {r['batch']}: {r['step_ms']:.1f} ms/step, "
            f"{r['images_per_s']:.2f} img/s, compile {r['compile_s']:.1f} s"
        )
    return rows


def generator_problem(gen):
    def layer(z, x, p, target):
        del target
        return gen.cell(z, gen.inject(x, p["injection"]), p["cell"])

    def cost(z, x, p, target):
        return jnp.sum((gen.head(z, p["head"]) - target) ** 2)

    return layer, cost


def section_table3(clock, s: Settings) -> dict:
    """Adam-K vs JIIO-T latent optimisation on the generator (per batch)."""
    cfg = models.get_config(s.gen_arch)
    gen = build_model(cfg)
    params = jax.jit(gen.init)(jax.random.key(0))
    true_latents = jax.random.normal(jax.random.key(2), (s.table3_batch, cfg.latent_dim))
    targets = jax.jit(gen)(params, true_latents)[0]
    layer, cost = generator_problem(gen)
    z0, x0 = gen.z0(jnp.float32), jnp.zeros((cfg.latent_dim,), jnp.float32)
    pixels = math.prod(cfg.image_shape)

    def adam(p, ys):
        return jax.vmap(
            lambda y: jiio.inner_adam(
                layer,
                cost,
                z0,
                x0,
                p,
                y,
                num_steps=s.adam_steps,
                learning_rate=1.0,  # the reference's Adam(lr 1) on the latent
                forward_solver=FORWARD,
                backward=BACKWARD,
            )
        )(ys)

    def jiio_run(steps):
        # The reference's celeba_vae.yaml: memory 40, alpha 0.01 -> 0.003; no start guard
        # (the reference has none, and it would add a forward solve).
        solver = jiio.JIIO(
            step_size=0.01,
            final_step_size=0.003,
            max_steps=steps,
            memory=40,
            no_worse_than_start=False,
        )

        def run(p, ys):
            return jax.vmap(lambda y: jiio.solve(layer, cost, z0, x0, p, y, solver=solver))(ys)

        return run

    @jax.jit
    def score(x, p, ys):
        def one(xi, y):
            z = SCORE(lambda z: layer(z, xi, p, y), z0).value
            return cost(z, xi, p, y) / pixels

        return jnp.mean(jax.vmap(one)(x, ys))

    methods = {f"Adam-{s.adam_steps}": adam}
    methods.update({f"JIIO-{t}": jiio_run(t) for t in s.jiio_gen_steps})
    entries, rows, first = {}, {}, {}
    for name, fn in methods.items():
        if clock.over(f"table 3 {name}"):
            rows[name] = {"skipped": "budget"}
            continue
        clock.log(f"table 3 {name} on {s.gen_arch}, batch {s.table3_batch}: compiling")
        compiled, t_compile = compile_ahead(fn, params, targets)
        out, first[name] = run_once(compiled, params, targets)
        rows[name] = {
            "compile_s": t_compile,
            "mse_per_pixel": float(score(out.x, params, targets)),
            "xla_mib": xla_mib(compiled),
            "device_peak_mib": device_peak_mib(),
        }
        entries[name] = (compiled, (params, targets))
    if entries and not clock.over("table 3 timing"):
        for name, sec in timed(clock, entries, s.repeats, first).items():
            rows[name]["ms_per_batch"] = sec * 1e3
            clock.log(f"  table 3 {name}: {sec * 1e3:.0f} ms/batch")
    start = float(score(jnp.zeros((s.table3_batch, cfg.latent_dim)), params, targets))
    return {"arch": s.gen_arch, "batch": s.table3_batch, "start_mse": start, "rows": rows}


def classifier_problem(clf):
    def f(z, delta, p, image, label):
        del label
        return clf.cell(z, clf.inject(image + delta, p["injection"]), p["cell"])

    def cost(z, delta, p, image, label):
        logits = clf.head(z, p["head"])
        return -optax.softmax_cross_entropy_with_integer_labels(logits, label)

    return f, cost


def section_table2(clock, s: Settings) -> dict:
    """PGD-k vs JIIO-T L2 attacks (eps 1) on the classifier (per batch)."""
    cfg = models.get_config(s.cls_arch)
    clf = build_model(cfg)
    params = jax.jit(clf.init)(jax.random.key(0))
    images = jax.random.uniform(jax.random.key(3), (s.table2_batch, *cfg.image_shape))
    labels = jnp.argmax(jax.jit(clf)(params, images)[0], axis=-1)  # clean accuracy 1
    f, cost = classifier_problem(clf)
    z0, eps = clf.z0(jnp.float32), 1.0
    ball = jiio.L2Ball(eps)

    def pgd(p, xs, ys):
        return jax.vmap(
            lambda x, y: jiio.pgd(
                f,
                cost,
                z0,
                jnp.zeros_like(x),
                p,
                x,
                y,
                step_size=0.2,  # the reference's lr 0.2 on g / ||g||
                num_steps=s.pgd_steps,
                projection=ball,
                direction="normalized",
                forward_solver=FORWARD,
                backward=BACKWARD,
            )
        )(xs, ys)

    # The reference's mnist_cls.yaml: memory 20, alpha 0.6 -> 0.2, normalised steps.
    solver = jiio.JIIO(
        step_size=0.6,
        final_step_size=0.2,
        max_steps=s.jiio_adv_steps,
        memory=20,
        normalize_step=True,
        no_worse_than_start=False,
    )

    def jiio_attack(p, xs, ys):
        return jax.vmap(
            lambda x, y: jiio.solve(
                f, cost, z0, jnp.zeros_like(x), p, x, y, solver=solver, projection=ball
            )
        )(xs, ys)

    @jax.jit
    def evaluate(delta, p, xs, ys):
        def one(d, x, y):
            z = SCORE(lambda z: f(z, d, p, x, y), z0).value
            logits = clf.head(z, p["head"])
            ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            return ce, jnp.argmax(logits) == y

        ce, correct = jax.vmap(one)(delta, xs, ys)
        return jnp.mean(ce), jnp.mean(correct)

    methods = {f"PGD-{s.pgd_steps}": pgd, f"JIIO-{s.jiio_adv_steps}": jiio_attack}
    entries, rows, first = {}, {}, {}
    for name, fn in methods.items():
        if clock.over(f"table 2 {name}"):
            rows[name] = {"skipped": "budget"}
            continue
        clock.log(f"table 2 {name} on {s.cls_arch}, batch {s.table2_batch}: compiling")
        compiled, t_compile = compile_ahead(fn, params, images, labels)
        out, first[name] = run_once(compiled, params, images, labels)
        ce, acc = evaluate(out.x, params, images, labels)
        norm = float(jnp.max(jnp.sqrt(jnp.sum(out.x.reshape(out.x.shape[0], -1) ** 2, -1))))
        rows[name] = {
            "compile_s": t_compile,
            "ce": float(ce),
            "robust_acc": float(acc),
            "max_l2": norm,
            "xla_mib": xla_mib(compiled),
            "device_peak_mib": device_peak_mib(),
        }
        entries[name] = (compiled, (params, images, labels))
    if entries and not clock.over("table 2 timing"):
        for name, sec in timed(clock, entries, s.repeats, first).items():
            rows[name]["ms_per_batch"] = sec * 1e3
            clock.log(f"  table 2 {name}: {sec * 1e3:.0f} ms/batch")
    clean_ce, clean_acc = evaluate(jnp.zeros_like(images), params, images, labels)
    return {
        "arch": s.cls_arch,
        "batch": s.table2_batch,
        "epsilon": eps,
        "clean_ce": float(clean_ce),
        "clean_acc": float(clean_acc),
        "rows": rows,
    }


def bf16_config(cfg: models.MDEQConfig) -> tuple[models.MDEQConfig | None, str]:
    """The config with a bfloat16 cell, or ``(None, why not)``."""
    if "compute_dtype" not in {f.name for f in dataclasses.fields(cfg)}:
        return None, "bf16 switch not available (MDEQConfig has no compute_dtype field)"
    errors = []
    for value in ("bfloat16", jnp.bfloat16):
        try:
            return cfg.replace(compute_dtype=value), ""
        except (TypeError, ValueError) as e:
            errors.append(f"{value!r}: {e}")
    return None, "bf16 switch rejected: " + "; ".join(errors)


def section_dtype(clock, s: Settings, train_rows: list[dict]) -> list[dict]:
    rows = []
    done = {r["arch"]: r for r in train_rows if "step_ms" in r}
    for name in s.dtype_archs:
        cfg = models.get_config(name)
        cfg16, why = bf16_config(cfg)
        if cfg16 is None:
            rows.append({"arch": name, "note": why})
            clock.log(f"dtype {name}: {why}")
            continue
        if clock.over(f"dtype {name}"):
            rows.append({"arch": name, "note": "skipped: budget"})
            continue
        batch = s.batch.get(name, s.table2_batch)
        f32 = done.get(name) if done.get(name, {}).get("batch") == batch else None
        if f32 is None:
            f32 = measure_train_step(clock, cfg, batch, s.repeats, label=f"dtype {name} f32")
        b16 = measure_train_step(clock, cfg16, batch, s.repeats, label=f"dtype {name} bf16")
        rows.append({"arch": name, "float32": f32, "bfloat16": b16, "note": ""})
        clock.log(f"  dtype {name}: f32 {f32['step_ms']:.1f} ms, bf16 {b16['step_ms']:.1f} ms")
    return rows


def section_scaling(clock, s: Settings) -> dict:
    devices = jax.devices()
    if len(devices) < 2:
        clock.log("scaling: skipped, 1 device")
        return {"note": f"skipped: 1 device ({devices[0].device_kind})", "rows": []}
    counts = sorted({1, *[2**k for k in range(1, 8) if 2**k < len(devices)], len(devices)})
    rows = []
    for name in s.scaling_archs:
        base = None
        cfg, per_device = models.get_config(name), s.batch.get(name, s.table2_batch)
        for n in counts:
            if clock.over(f"scaling {name} x{n}"):
                rows.append({"arch": name, "devices": n, "skipped": "budget"})
                continue
            mesh = Mesh(np.array(devices[:n]), ("data",))
            r = measure_train_step(
                clock, cfg, per_device * n, s.repeats, mesh=mesh, label=f"scaling {name} x{n}"
            )
            base = base or r["images_per_s"]
            r["efficiency"] = r["images_per_s"] / (n * base)
            rows.append({"arch": name, "devices": n, "per_device_batch": per_device, **r})
            clock.log(f"  scaling {name} x{n}: {r['images_per_s']:.2f} img/s")
    return {"note": "", "rows": rows}


# ------------------------------------------------------------------------------------------
# Report.
# ------------------------------------------------------------------------------------------

PAPER_TABLE3 = {"Adam-40": 7659, "JIIO-40": 862, "JIIO-100": 2156}
PAPER_TABLE2 = {"PGD-20": 4360, "JIIO-80": 1401}


def render(results: dict) -> str:
    res, out = results["sections"], []
    out.append(
        f"Device: {results['machine']}. Load average (1 min) at start / end: "
        f"{results['load_start']:.1f} / {results['load_end']:.1f}. "
        f"Total {results['total_s']:.0f} s. jax_default_matmul_precision: "
        f"{results.get('matmul_precision', 'not recorded')} (None: the backend default; recent "
        "NVIDIA GPUs may then run float32 convs and matmuls in TF32)."
    )
    repeats = results["settings"]["repeats"]
    out.append(
        f"Timing: compile time separate; one untimed warm-up run, then the median of {repeats} "
        "interleaved warm run(s) per program (fewer where the budget cut them: see the log)"
        + ". Memory: XLA MiB = compiled temp + argument + output bytes; device peak = "
        "memory_stats()['peak_bytes_in_use'] (process-wide, n/a where not reported)."
    )
    out.append(f"Command:\n```\n{results['command']}\n```")
    if "train" in res:
        rows = []
        for r in res["train"]:
            if "skipped" in r:
                rows.append([r["arch"], r["batch"], *["skipped: budget"] * 8])
                continue
            rows.append(
                [
                    r["arch"],
                    r["batch"],
                    r["images"],
                    r["params"],
                    r["step_ms"],
                    r["images_per_s"],
                    r["compile_s"],
                    fmt(r["xla_mib"]),
                    fmt(r["device_peak_mib"]),
                    r["mean_fwd_steps"],
                ]
            )
        out.append(
            "### Train step (forward + implicit backward + Adam update, float32)\n\n"
            + markdown_table(
                [
                    "arch",
                    "batch",
                    "images",
                    "params",
                    "ms/step",
                    "images/s",
                    "compile s",
                    "XLA MiB",
                    "device peak MiB",
                    "mean fwd steps",
                ],
                rows,
            )
        )
    if "table3" in res:
        t = res["table3"]
        rows = []
        for name, r in t["rows"].items():
            if "skipped" in r:
                rows.append([name, "skipped: budget", "", "", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    fmt(r.get("ms_per_batch", "skipped: budget")),
                    r["mse_per_pixel"],
                    r["compile_s"],
                    fmt(r["xla_mib"]),
                    fmt(r["device_peak_mib"]),
                    PAPER_TABLE3.get(name, "-"),
                ]
            )
        out.append(
            f"### Table 3: latent optimisation, {t['arch']}, batch {t['batch']} "
            f"(start MSE/pixel {t['start_mse']:.4g})\n\n"
            + markdown_table(
                [
                    "method",
                    "ms/batch",
                    "reached MSE/pixel",
                    "compile s",
                    "XLA MiB",
                    "device peak MiB",
                    "paper ms (GPU, CelebA)",
                ],
                rows,
            )
        )
    if "table2" in res:
        t = res["table2"]
        rows = []
        for name, r in t["rows"].items():
            if "skipped" in r:
                rows.append([name, "skipped: budget", "", "", "", "", "", ""])
                continue
            rows.append(
                [
                    name,
                    fmt(r.get("ms_per_batch", "skipped: budget")),
                    r["ce"],
                    r["robust_acc"],
                    r["max_l2"],
                    r["compile_s"],
                    fmt(r["xla_mib"]),
                    PAPER_TABLE2.get(name, "-"),
                ]
            )
        out.append(
            f"### Table 2: L2 attack (eps {t['epsilon']}), {t['arch']}, batch {t['batch']} "
            f"(clean CE {t['clean_ce']:.3g}, clean acc {t['clean_acc']:.3g})\n\n"
            + markdown_table(
                [
                    "method",
                    "ms/batch",
                    "CE reached",
                    "accuracy reached",
                    "max L2 norm of delta",
                    "compile s",
                    "XLA MiB",
                    "paper ms (GPU, MNIST)",
                ],
                rows,
            )
        )
    if "dtype" in res:
        rows = []
        for r in res["dtype"]:
            if r["note"]:
                rows.append([r["arch"], r["note"], "", "", ""])
            else:
                f32, b16 = r["float32"], r["bfloat16"]
                rows.append(
                    [
                        r["arch"],
                        f32["step_ms"],
                        b16["step_ms"],
                        f32["step_ms"] / b16["step_ms"],
                        f"{_g(f32['xla_mib'])} / {_g(b16['xla_mib'])}",
                    ]
                )
        out.append(
            "### bf16 vs float32 (train step)\n\n"
            + markdown_table(
                ["arch", "float32 ms/step", "bfloat16 ms/step", "speed-up", "XLA MiB f32 / bf16"],
                rows,
            )
        )
    if "scaling" in res:
        sc = res["scaling"]
        if sc["note"]:
            out.append(f"### 1 -> N device scaling\n\n{sc['note']}")
        else:
            rows = []
            for r in sc["rows"]:
                if "skipped" in r:
                    rows.append([r["arch"], r["devices"], "skipped: budget", "", "", "", ""])
                    continue
                rows.append(
                    [
                        r["arch"],
                        r["devices"],
                        r["per_device_batch"],
                        r["step_ms"],
                        r["images_per_s"],
                        r["efficiency"],
                        fmt(r["xla_mib"]),
                    ]
                )
            out.append(
                "### 1 -> N device scaling (data parallel, batch sharded over ('data',))\n\n"
                + markdown_table(
                    [
                        "arch",
                        "devices",
                        "batch/device",
                        "ms/step",
                        "images/s",
                        "efficiency",
                        "XLA MiB",
                    ],
                    rows,
                )
            )
    for name in results["skipped_sections"]:
        out.append(f"### {name}\n\nskipped: budget")
    for name, error in results["failed_sections"].items():
        out.append(f"### {name}\n\nFAILED: {error}")
    return "\n\n".join(out)


def write_block(path: str, platform: str, title: str, body: str) -> None:
    """Replaces this platform's block of ``path`` (between markers), keeping the others."""
    begin, end = f"<!-- scale:{platform}:begin -->", f"<!-- scale:{platform}:end -->"
    block = f"{begin}\n## {title}\n\n{body}\n{end}"
    text = ""
    if os.path.exists(path):
        with open(path) as fh:
            text = fh.read()
    pattern = re.compile(re.escape(begin) + ".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        header = "# Scale suite (experiments/benchmarks/scale.py)\n\n" if not text else ""
        text = header + text.rstrip("\n") + ("\n\n" if text else "") + block
    with open(path, "w") as fh:
        fh.write(text.rstrip("\n") + "\n")


# ------------------------------------------------------------------------------------------
# Command line.
# ------------------------------------------------------------------------------------------


def parse_batches(text: str | None, archs: Sequence[str], defaults: dict) -> dict:
    batch = {a: defaults.get(a, 2) for a in archs}
    if not text:
        return batch
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit() or int(value) <= 0:
            raise SystemExit(f"--batch: expected ARCH=POSITIVE_INT items, got {item!r}.")
        batch[name.strip()] = int(value)
    return batch


def settings_from(args) -> Settings:
    if args.small:
        archs, defaults = SMALL_ARCHS, SMALL_BATCH
        gen, cls = "tiny_gen", "tiny_cls"
        t3, t2, adam, jsteps, pgd, jadv, repeats = 2, 2, 4, (6,), 3, 8, 2
    else:
        archs, defaults = REFERENCE_ARCHS, PAPER_BATCH
        gen, cls = "celeba_gen", "mnist_cls"
        t3, t2, adam, jsteps, pgd, jadv, repeats = 12, 48, 40, (40, 100), 20, 80, 5
    if args.archs:
        archs = tuple(a.strip() for a in args.archs.split(","))
    for a in (*archs, args.gen_arch or gen, args.cls_arch or cls):
        if a not in models.CONFIGS:
            raise SystemExit(f"unknown architecture {a!r}; choose from {sorted(models.CONFIGS)}.")
    sections = tuple(x.strip() for x in args.sections.split(",")) if args.sections else SECTIONS
    for x in sections:
        if x not in SECTIONS:
            raise SystemExit(f"--sections: unknown section {x!r}; choose from {SECTIONS}.")
    jiio_gen = (
        tuple(int(v) for v in args.jiio_gen_steps.split(",")) if args.jiio_gen_steps else jsteps
    )
    return Settings(
        archs=archs,
        batch=parse_batches(args.batch, archs, defaults),
        gen_arch=args.gen_arch or gen,
        cls_arch=args.cls_arch or cls,
        table3_batch=args.table3_batch or t3,
        table2_batch=args.table2_batch or t2,
        adam_steps=args.adam_steps or adam,
        jiio_gen_steps=jiio_gen,
        pgd_steps=args.pgd_steps or pgd,
        jiio_adv_steps=args.jiio_adv_steps or jadv,
        repeats=args.repeats or repeats,
        # --small: one architecture for bf16 and scaling (each row is another compilation).
        dtype_archs=(args.cls_arch or cls,)
        if args.small
        else tuple(dict.fromkeys((args.gen_arch or gen, args.cls_arch or cls))),
        scaling_archs=(args.cls_arch or cls,)
        if args.small
        else tuple(dict.fromkeys((args.cls_arch or cls, args.gen_arch or gen))),
        budget_s=args.budget_s,
        sections=sections,
    )


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CI size: tiny presets, batches")
    parser.add_argument("--out", default=DEFAULT_OUT, help="markdown report path")
    parser.add_argument(
        "--budget_s",
        type=float,
        default=360.0,
        help="no new item starts after this many seconds (the item in flight finishes: the "
        "default leaves 2 minutes of the 8-minute GPU allowance for it)",
    )
    parser.add_argument("--batch", default=None, help="per-device batches, ARCH=N,ARCH=N")
    parser.add_argument("--archs", default=None, help="train-step architectures (comma list)")
    parser.add_argument("--gen_arch", default=None, help="generator of Table 3")
    parser.add_argument("--cls_arch", default=None, help="classifier of Table 2")
    parser.add_argument("--table3_batch", type=int, default=None)
    parser.add_argument("--table2_batch", type=int, default=None)
    parser.add_argument("--adam_steps", type=int, default=None, help="Table 3 Adam-K")
    parser.add_argument("--jiio_gen_steps", default=None, help="Table 3 JIIO-T list, e.g. 40,100")
    parser.add_argument("--pgd_steps", type=int, default=None, help="Table 2 PGD-k")
    parser.add_argument("--jiio_adv_steps", type=int, default=None, help="Table 2 JIIO-T")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs (median)")
    parser.add_argument("--sections", default=None, help=f"subset of {','.join(SECTIONS)}")
    parser.add_argument(
        "--platform",
        default=None,
        help="with --report_only: whose saved measurements to report (default: the backend "
        "JAX finds)",
    )
    common.add_report_only_flag(parser)
    args = parser.parse_args(argv)
    if args.report_only:
        if not args.out:
            raise SystemExit("--report_only needs --out (the report whose JSON to read).")
        platform = args.platform or jax.devices()[0].platform
        results = common.load_results(json_path(args.out, platform))
        write_report(results, args.out)
        return results
    s = settings_from(args)
    argv_used = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join(["python", "experiments/benchmarks/scale.py", *argv_used])
    xla_flags = os.environ.get("XLA_FLAGS")
    if xla_flags:
        command = f"XLA_FLAGS={shlex.quote(xla_flags)} {command}"

    clock = Clock(s.budget_s)
    load_start = os.getloadavg()[0]
    clock.log(f"{machine_description()}; budget {s.budget_s:.0f} s; sections {s.sections}")
    sections: dict[str, Any] = {}
    skipped, failed = [], {}
    for name in s.sections:
        if clock.over(f"section {name}"):
            skipped.append(name)
            continue
        try:
            if name == "train":
                sections["train"] = section_train(clock, s)
            elif name == "table3":
                sections["table3"] = section_table3(clock, s)
            elif name == "table2":
                sections["table2"] = section_table2(clock, s)
            elif name == "dtype":
                sections["dtype"] = section_dtype(clock, s, sections.get("train", []))
            elif name == "scaling":
                sections["scaling"] = section_scaling(clock, s)
        except Exception as e:  # GPU minutes are scarce: report it, run the other sections
            traceback.print_exc()
            clock.log(f"section {name} FAILED: {type(e).__name__}: {e}")
            failed[name] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    device = jax.devices()[0]
    results = {
        "machine": machine_description(),
        "platform": device.platform,
        "device_kind": device.device_kind,
        "jax_version": jax.__version__,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
        "command": command,
        "settings": dataclasses.asdict(s),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
        "total_s": clock.elapsed(),
        "sections": sections,
        "skipped_sections": skipped,
        "failed_sections": failed,
    }
    results["stamp"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    if args.out:
        results = common.save_results(json_path(args.out, device.platform), results)
    else:
        results = common.as_json(results)
    write_report(results, args.out)
    print(json.dumps({k: results[k] for k in ("platform", "device_kind", "total_s")}))
    return results


def json_path(out: str, platform: str) -> str:
    """Where a run on ``platform`` saves its measurements: ``<out stem>_<platform>.json``."""
    return f"{os.path.splitext(out)[0]}_{platform}.json"


def write_report(results: dict, out: str | None) -> str:
    """Prints the report of ``results`` (the saved measurements) and, if ``out``, replaces this
    platform's block of ``out`` with it; returns the report."""
    report = render(results)
    # Measurements saved before the stamp was recorded: the title says so.
    stamp = results.get("stamp", "date not recorded")
    title = f"{results['platform']}: {results['device_kind']} ({stamp})"
    print("\n" + report + "\n", flush=True)
    if out:
        write_block(out, results["platform"], title, report)
        print(f"wrote {out}", flush=True)
    return report


if __name__ == "__main__":
    sys.exit(1 if main()["failed_sections"] else 0)
