r"""Robust accuracy of an adversarially trained (or undefended) MDEQ classifier: PGD-k, JIIO-k.

``attack(config, params, options)`` for ``config.task == "adversarial"`` (paper §5.2,
``JIIO_REFERENCE.md`` §4.3, §5.4). For every attack of ``options.attacks`` and every ``k`` of
``options.steps`` (default ``config.eval.pgd_steps``) it perturbs the test images inside the
threat set ``S(x)`` of the run (``config.eval.epsilon`` or ``config.model.epsilon`` on the
[0, 1] pixel scale, ``config.model.norm``, valid pixel range kept with ``clip_pixels``) and
scores the perturbed images. Unlike the reference (§7.3, §7.16, §7.18):

- always eval mode: no dropout, in the attack and in the scoring;
- every number comes from the DEQ **re-solved from z = 0** at ``x + delta`` with the run's
  forward solver, never from the attack's internal equilibrium;
- PGD-k uses the config's evaluation PGD (``config.eval.pgd_step_size``, ``pgd_random_start``)
  with ``k`` steps; JIIO-k the config's evaluation JIIO (``config.eval.jiio_step_size`` and the
  ``config.model.jiio`` fields) with ``max_steps = k``;
- the feasibility of every ``delta`` is checked (``BallBox.violation``, reported as
  ``max_violation``: an attack must never leave the set);
- all test images are used (``options.num_examples``, default the whole split; the last
  partial batch is padded with copies of its first image, and the copies are discarded).

Only the public pieces of the task are used (``AdversarialTask.settings``, ``.model``,
``.eval_radius``, ``.step_scale`` and ``jiio_jax.tasks.attacks``); the attacks are the same
functions as ``AdversarialTask.evaluate``'s.

Results (JSON): ``clean_acc``, ``clean_ce``, ``epsilon``, ``norm``, ``num_examples``,
``batch_size``, the attack settings, and ``attacks[name][str(k)]`` with ``robust_acc``,
``robust_ce``, ``delta_norm`` (mean ``||delta||`` in the threat norm, [0, 1] scale),
``delta_l2`` (mean L2 norm, [0, 1] scale), ``max_violation`` ([0, 1] scale),
``seconds`` (wall time of the attack over all batches, compilation excluded, one device sync
per batch), ``compile_seconds`` and, for JIIO, ``mean_steps`` (augmented-map evaluations).
``robust_acc_vs_steps.png`` plots robust accuracy against ``k`` per attack.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jiio_jax.configs import adversarial as adv_config
from jiio_jax.evaluation.clock import compile_ahead, timed_call
from jiio_jax.losses import accuracy, cross_entropy
from jiio_jax.tasks.attacks import pgd_attack, threat_sets

F32 = jnp.float32
# Attack-step counts above this are refused (PGD-100 on the 300 digits test images takes
# about 100 s on 2 loaded CPU cores; PGD-1000 would take ~20 minutes).
MAX_STEPS = 1000
PLOT_FILE = "robust_acc_vs_steps.png"


def check_steps(steps: tuple[int, ...], what: str) -> tuple[int, ...]:
    """Sorted unique step counts, each in ``[1, MAX_STEPS]`` (ValueError otherwise)."""
    bad = [s for s in steps if not isinstance(s, int) or not 1 <= s <= MAX_STEPS]
    if not steps or bad:
        raise ValueError(
            f"{what} steps {tuple(steps)!r}: each must be an int in [1, {MAX_STEPS}] "
            f"(offending: {bad})."
        )
    return tuple(sorted(set(steps)))


def check_task(config: ml_collections.ConfigDict, tasks: tuple[str, ...], name: str) -> None:
    if config.task not in tasks:
        raise ValueError(
            f"evaluation {name!r} needs config.task in {list(tasks)}, got {config.task!r}."
        )


def float32_params(params: Any) -> Any:
    return jax.tree.map(lambda a: jnp.asarray(a, F32), params)


def load_test_split(
    config: ml_collections.ConfigDict, num_examples: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """The first ``num_examples`` test images ``[N, H, W, C]`` (float32, [-1, 1]) and labels
    ``[N]`` in the split's order (no shuffling; the whole split when ``None``)."""
    from jiio_jax import data as data_lib

    it = data_lib.make_iterator(
        config.data,
        "test",
        256,
        seed=config.seed,
        shuffle=False,
        repeat=False,
        drop_remainder=False,
        process_index=0,
        process_count=1,
    )
    images, labels, count = [], [], 0
    for batch in it:
        images.append(np.asarray(batch["image"], np.float32))
        labels.append(np.asarray(batch["label"], np.int32))
        count += len(labels[-1])
        if num_examples is not None and count >= num_examples:
            break
    images, labels = np.concatenate(images), np.concatenate(labels)
    if num_examples is not None:
        images, labels = images[:num_examples], labels[:num_examples]
    if len(labels) == 0:
        raise ValueError("the test split is empty.")
    return images, labels


def padded_batches(images: np.ndarray, labels: np.ndarray, batch_size: int):
    """Yields ``(images [B, ...], labels [B], valid [B] bool)`` covering every example once;
    the last batch is padded with copies of its first example (``valid`` False)."""
    n = len(labels)
    for start in range(0, n, batch_size):
        idx = np.arange(start, min(start + batch_size, n))
        valid = np.ones(batch_size, bool)
        if len(idx) < batch_size:
            valid[len(idx) :] = False
            idx = np.concatenate([idx, np.full(batch_size - len(idx), idx[0])])
        yield jnp.asarray(images[idx]), jnp.asarray(labels[idx]), valid


class AttackFns:
    """Jitted, eval-mode attack and scoring functions of one adversarial task.

    ``pgd(params, images, labels, key, steps)`` -> ``(delta, forward_steps [B])``
    (``attacks.pgd_attack``, i.e. ``jiio.pgd``; ``steps`` traced: one compilation for every
    ``k``; ``pgd_counted`` is the same function, named for the timing),
    ``jiio(k)(params, images, labels)`` -> ``(delta, num_steps [B])`` and
    ``score(params, images, labels, delta)`` -> per-example ``(acc, ce, violation, delta_norm,
    delta_l2, forward_steps)`` at the DEQ re-solved from zero at ``images + delta``
    (norms and violations on the [0, 1] pixel scale).
    """

    def __init__(self, config: ml_collections.ConfigDict):
        from jiio_jax.tasks.adversarial import AdversarialTask

        self.task = task = AdversarialTask(config)
        self.settings = s = task.settings
        self.radius = task.eval_radius  # [-1, 1] scale
        self._jiio: dict[int, Any] = {}

        def threats(images):
            return threat_sets(images, self.radius, s.norm, s.clip_pixels)

        def logits_of(params, images):
            return task.model(params, images)  # No dropout key: eval mode.

        def pgd(params, images, labels, key, steps):
            """``(delta [B, ...], forward f-evaluations [B])`` of PGD-``steps`` (eval mode)."""
            sol = pgd_attack(
                task.model,
                params,
                images,
                labels,
                threats(images),
                steps=steps,
                step_size=s.eval_pgd.step_size,
                key=key if s.eval_pgd.random_start else None,
            )
            return sol.x, sol.forward_steps

        def score(params, images, labels, delta):
            logits, info = logits_of(params, images + delta)
            acc = accuracy(logits, labels)
            ce = cross_entropy(logits, labels)
            violation = jax.vmap(lambda t, d: t.violation(d))(threats(images), delta)
            flat = delta.reshape(delta.shape[0], -1)
            l2 = jnp.sqrt(jnp.sum(flat * flat, axis=1))
            norm = l2 if s.norm == "l2" else jnp.max(jnp.abs(flat), axis=1)
            # epsilon and the reported norms are on the [0, 1] scale (slope 1/2 from [-1, 1]).
            return acc, ce, violation / 2.0, norm / 2.0, l2 / 2.0, info.num_steps

        self._threats = threats
        self.pgd = jax.jit(pgd)
        # The f-evaluation count of the timing comes with the attack itself (jiio.pgd counts).
        self.pgd_counted = self.pgd
        self.score = jax.jit(score)

    def jiio(self, steps: int):
        """The jitted JIIO-``steps`` attack ``(params, images, labels) -> (delta, num_steps)``."""
        if steps not in self._jiio:
            # The evaluation attack at max_steps = steps; step sizes relative to the radius.
            solver = dataclasses.replace(
                self.settings.eval_jiio,
                max_steps=steps,
                step_scale=self.radius * self.task.step_scale,
            )
            task = self.task

            def run(params, images, labels):
                params = jax.lax.stop_gradient(params)
                sol = task.jiio_attack(params, images, labels, radius=self.radius, solver=solver)
                return jax.lax.stop_gradient(sol.x), sol.num_steps

            self._jiio[steps] = jax.jit(run)
        return self._jiio[steps]

    def compiled_attack(self, name: str, steps: int, params, images, labels, key):
        """``(fn, compile_seconds)``: the attack compiled ahead of time for these shapes;
        ``fn(params, images, labels, key) -> (delta, num_steps [B] or None)``."""
        if name == "pgd":
            k = jnp.asarray(steps, jnp.int32)
            compiled, seconds = compile_ahead(self.pgd, params, images, labels, key, k)
            fn = lambda p, x, y, key_: (compiled(p, x, y, key_, k)[0], None)  # noqa: E731
        else:
            compiled, seconds = compile_ahead(self.jiio(steps), params, images, labels)
            fn = lambda p, x, y, key_: compiled(p, x, y)  # noqa: E731
        return fn, seconds


_FNS_CACHE: dict[str, AttackFns] = {}


def attack_fns(config: ml_collections.ConfigDict) -> AttackFns:
    """``AttackFns`` of ``config``, cached by the config's contents: ``attack`` and ``timing``
    of the same run share their compiled attacks."""
    key = config.to_json(sort_keys=True)
    if key not in _FNS_CACHE:
        if len(_FNS_CACHE) >= 4:
            _FNS_CACHE.pop(next(iter(_FNS_CACHE)))
        _FNS_CACHE[key] = AttackFns(config)
    return _FNS_CACHE[key]


def _settings_summary(s: adv_config.AdversarialSettings) -> dict[str, Any]:
    jiio = s.eval_jiio
    return {
        "pgd": {"step_size": s.eval_pgd.step_size, "random_start": s.eval_pgd.random_start},
        "jiio": {
            "step_size": jiio.step_size.value,
            "final_step_size": jiio.final_step_size,
            "config_max_steps": jiio.max_steps,
            **{k: getattr(jiio, k) for k in ("accelerator", "anderson_type", "memory")},
            "best_iterate": jiio.best_iterate,
            "z_damping": jiio.z_damping,
            "mu_damping": jiio.mu_damping,
        },
        "step_sizes_relative_to": "epsilon",
    }


def _plot(path: str, per_attack: dict[str, dict[str, dict]], clean_acc: float, title: str):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.2), dpi=100)
    for name, rows in per_attack.items():
        ks = sorted(int(k) for k in rows)
        ax.plot(ks, [rows[str(k)]["robust_acc"] for k in ks], "o-", label=f"{name.upper()}-k")
    ax.axhline(clean_acc, color="gray", ls="--", lw=1, label="clean")
    ax.set_xlabel("attack steps k")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def attack(config: ml_collections.ConfigDict, params: Any, options: Any) -> dict[str, Any]:
    """Robust accuracy under PGD-k and JIIO-k (see the module docstring).

    Raises:
      ValueError: not an adversarial run, or a step count outside ``[1, MAX_STEPS]``.
    """
    check_task(config, ("adversarial",), "attack")
    fns = attack_fns(config)
    s = fns.settings
    steps = check_steps(options.steps or (s.eval_pgd.steps,), "attack")
    batch_size = options.batch_size or config.eval_batch_size
    images, labels = load_test_split(config, options.num_examples)
    params = float32_params(params)
    batches = list(padded_batches(images, labels, batch_size))
    key = jax.random.key(options.seed)

    def scored(deltas) -> dict[str, float]:
        """Means over the valid examples of ``score`` at each batch's ``delta``."""
        parts = []
        for (x, y, valid), d in zip(batches, deltas, strict=True):
            out = jax.device_get(fns.score(params, x, y, d))
            parts.append(np.stack(out)[:, valid].astype(np.float64))
        acc, ce, viol, norm, l2, fwd = np.concatenate(parts, axis=1)
        return {
            "acc": float(acc.mean()),
            "ce": float(ce.mean()),
            "max_violation": float(viol.max()),
            "delta_norm": float(norm.mean()),
            "delta_l2": float(l2.mean()),
            "resolve_steps": float(fwd.mean()),
        }

    clean = scored([jnp.zeros_like(x) for x, _, _ in batches])
    results: dict[str, Any] = {
        "epsilon": s.eval_epsilon,
        "norm": s.norm,
        "clip_pixels": s.clip_pixels,
        "num_examples": len(labels),
        "batch_size": batch_size,
        "steps": list(steps),
        "clean_acc": clean["acc"],
        "clean_ce": clean["ce"],
        "clean_resolve_steps": clean["resolve_steps"],
        "settings": _settings_summary(s),
        "device": jax.devices()[0].device_kind,
        "attacks": {},
    }
    for name in options.attacks:
        rows = {}
        for k in steps:
            keys = [jax.random.fold_in(key, i) for i in range(len(batches))]
            fn, compile_seconds = fns.compiled_attack(name, k, params, *batches[0][:2], keys[0])
            deltas, seconds, n_steps = [], 0.0, []
            for (x, y, valid), k_b in zip(batches, keys, strict=True):
                (delta, num), call_seconds = timed_call(functools.partial(fn, params, x, y, k_b))
                seconds += call_seconds
                deltas.append(delta)
                if num is not None:
                    n_steps.append(np.asarray(num)[valid])
            out = scored(deltas)
            row = {
                "robust_acc": out["acc"],
                "robust_ce": out["ce"],
                "delta_norm": out["delta_norm"],
                "delta_l2": out["delta_l2"],
                "max_violation": out["max_violation"],
                "resolve_steps": out["resolve_steps"],
                "seconds": seconds,
                "compile_seconds": compile_seconds,
            }
            if n_steps:
                row["mean_steps"] = float(np.concatenate(n_steps).mean())
            rows[str(k)] = row
        results["attacks"][name] = rows
    plot = os.path.join(options.output_dir, PLOT_FILE)
    os.makedirs(options.output_dir, exist_ok=True)
    title = f"{s.norm} eps={s.eval_epsilon:g}, {len(labels)} test images"
    _plot(plot, results["attacks"], results["clean_acc"], title)
    results["plot"] = plot
    return results
