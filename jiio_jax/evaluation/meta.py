"""Meta-test of a ``meta`` run: query accuracy with a 95% CI and inner-loop time per method.

``meta(config, params, options)`` (``experiments/evaluate.py --task=meta``) wraps
:func:`meta_test` (held-out meta-test classes, each episode used once, the timed region the
batched inner solve with one device sync per batch, compilation excluded) with ``options.methods``
(default ``config.model.eval_methods``; JIIO at ``config.eval.jiio_steps``, by default the
training budget), ``options.num_examples`` episodes (default
``config.data.num_test_episodes``; rounded down to a multiple of the batch size) and
``options.batch_size`` (default ``config.eval_batch_size``), and adds per method:

- ``time_ratio_vs_jiio``: its mean inner time per batch over JIIO's (> 1: slower than JIIO);
- ``overlaps_jiio_ci``: whether its 95% interval ``acc +- ci`` overlaps JIIO's (the
  accuracies are then not distinguishable at that level);
- ``acc_diff_vs_jiio``: its accuracy minus JIIO's.

Results: ``{"methods": {method: {...}}, "num_episodes", "batch_size"}``.

``meta_test`` is the counterpart of the reference's ``jiio_imaml_test.py`` (§4.4, §5.5 of
JIIO_REFERENCE.md) without its pitfalls (§7.17-18): the episodes come from the held-out
meta-test classes, each is used once (no sampling with replacement), the model has no
train-mode layers, and the timed region is the inner solve alone with one device sync per batch
(no per-iteration syncs). Every inner solver is timed in the same process on the same episodes,
after an untimed compile.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jiio_jax.configs.meta import check_methods
from jiio_jax.evaluation.clock import timed_call
from jiio_jax.evaluation.robustness import check_task
from jiio_jax.losses import accuracy
from jiio_jax.tasks.meta import MetaTask, cross_entropy


def meta(config: ml_collections.ConfigDict, params: Any, options: Any) -> dict[str, Any]:
    """Meta-test accuracy, CIs and inner-loop times (see the module docstring).

    Raises:
      ValueError: not a meta run, an unknown method, or fewer episodes than one batch.
    """
    check_task(config, ("meta",), "meta")
    per_method = meta_test(
        config,
        params,
        methods=options.methods,
        num_episodes=options.num_examples,
        batch_size=options.batch_size,
    )
    ref = per_method.get("jiio")
    for row in per_method.values():
        if ref is None:
            break
        row["time_ratio_vs_jiio"] = row["inner_seconds_per_batch"] / ref["inner_seconds_per_batch"]
        row["acc_diff_vs_jiio"] = row["query_acc"] - ref["query_acc"]
        gap = abs(row["query_acc"] - ref["query_acc"])
        row["overlaps_jiio_ci"] = bool(gap <= row["query_acc_ci95"] + ref["query_acc_ci95"])
    first = next(iter(per_method.values()))
    return {
        "methods": per_method,
        "num_episodes": first["num_episodes"],
        "batch_size": first["batch_size"],
        "note": (
            "query_acc_ci95 = 1.96 standard errors over episodes; inner_seconds_per_batch = "
            "mean wall time of the batched inner solve (compiled first, one device sync per "
            "batch); time_ratio_vs_jiio > 1 means slower than JIIO."
        ),
    }


def test_batches(task: MetaTask, batch_size: int):
    """The meta-test episodes in order, ``batch_size`` per batch (device arrays), once each."""
    iterator = task.make_iterator(
        "test",
        batch_size,
        seed=task.config.seed,
        shuffle=False,
        repeat=False,
        process_index=0,
        process_count=1,
    )
    for batch in iterator:
        yield jax.tree.map(jnp.asarray, batch)


def meta_test(
    config: ml_collections.ConfigDict,
    params: Any,
    *,
    methods: Sequence[str] | None = None,
    num_episodes: int | None = None,
    batch_size: int | None = None,
) -> dict[str, dict[str, float]]:
    """Adapts to meta-test episodes with each inner solver and scores the queries.

    Args:
      config: the run's config (task ``"meta"``).
      params: the trained parameters (e.g. ``load_state(workdir)["params"]``).
      methods: inner solvers to compare; default ``config.model.eval_methods``.
      num_episodes: meta-test episodes (default ``config.data.num_test_episodes``); rounded
        down to a multiple of ``batch_size``.
      batch_size: episodes per batch (default ``config.eval_batch_size``).

    Returns:
      Per method: ``query_acc`` (mean over episodes), ``query_acc_ci95`` (1.96 standard errors
      over episodes), ``query_loss``, ``support_loss``, ``inner_steps``, ``inner_fevals``,
      ``inner_seconds_per_batch`` (mean wall time of the batched inner solve, device-synced),
      ``inner_seconds_per_batch_std``, ``batch_size`` and ``num_episodes``.
    """
    config = ml_collections.ConfigDict(config.to_dict())  # A private, unlocked copy.
    batch_size = batch_size or config.eval_batch_size
    num_episodes = num_episodes or config.data.num_test_episodes
    num_episodes -= num_episodes % batch_size
    if num_episodes < 1:
        raise ValueError(f"need at least batch_size={batch_size} meta-test episodes.")
    config.data.num_test_episodes = num_episodes
    task = MetaTask(config)
    methods = check_methods(tuple(methods) if methods else task.eval_methods)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    batches = list(test_batches(task, batch_size))

    @jax.jit
    def score(p, contexts, images, labels):
        logits, _, _ = task.predict(p, contexts, images)
        acc = jnp.mean(accuracy(logits, labels), axis=-1)
        return acc, jnp.mean(cross_entropy(logits, labels), -1)

    results = {}
    for method in methods:
        adapt = jax.jit(functools.partial(task.adapt, method=method, solver=task.eval_jiio))
        s_img, s_lab, _, _ = task.split_batch(batches[0])
        jax.block_until_ready(adapt(params, s_img, s_lab))  # Compile, untimed.
        seconds, per_episode = [], []
        for batch in batches:
            s_img, s_lab, q_img, q_lab = task.split_batch(batch)
            inner, call_seconds = timed_call(functools.partial(adapt, params, s_img, s_lab))
            seconds.append(call_seconds)
            acc, loss = score(params, inner.context, q_img, q_lab)
            per_episode.append(
                np.stack(
                    jax.device_get([acc, loss, inner.support_loss, inner.steps, inner.fevals])
                ).astype(np.float64)
            )
        acc, loss, support, steps, fevals = np.concatenate(per_episode, axis=1)
        results[method] = {
            "query_acc": float(acc.mean()),
            "query_acc_ci95": float(1.96 * acc.std(ddof=1) / np.sqrt(len(acc))),
            "query_loss": float(loss.mean()),
            "support_loss": float(support.mean()),
            "inner_steps": float(steps.mean()),
            "inner_fevals": float(fevals.mean()),
            "inner_seconds_per_batch": float(np.mean(seconds)),
            "inner_seconds_per_batch_std": float(np.std(seconds)),
            "batch_size": batch_size,
            "num_episodes": len(acc),
        }
    return results
