"""Meta-test of a trained ``meta`` run: query accuracy with a 95% CI and inner-loop wall time.

The counterpart of the reference's ``jiio_imaml_test.py`` (§4.4, §5.5 of JIIO_REFERENCE.md)
without its pitfalls (§7.17-18): the episodes come from the held-out meta-test classes, each
is used once (no sampling with replacement), the model has no train-mode layers, and the timed
region is the inner solve alone with one device sync per batch (no per-iteration syncs). Every
inner solver is timed in the same process on the same episodes, after an untimed compile.

Usage::

  python -m jiio_jax.tasks.meta_eval --config=configs/digits_meta.py --workdir=/tmp/meta_jiio
  # options: --methods=jiio,projected_adam --num_episodes=600 --batch_size=50 --step=N

prints the results and writes them to ``<workdir>/meta_test.json``.
"""

from __future__ import annotations

import functools
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jiio_jax.configs.meta import check_methods
from jiio_jax.tasks.meta import MetaTask, accuracy, cross_entropy

RESULTS_FILE = "meta_test.json"


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
        return jax.vmap(accuracy)(logits, labels), jnp.mean(cross_entropy(logits, labels), -1)

    results = {}
    for method in methods:
        adapt = jax.jit(functools.partial(task.adapt, method=method))
        s_img, s_lab, _, _ = task.split_batch(batches[0])
        jax.block_until_ready(adapt(params, s_img, s_lab))  # Compile, untimed.
        seconds, per_episode = [], []
        for batch in batches:
            s_img, s_lab, q_img, q_lab = task.split_batch(batch)
            start = time.perf_counter()
            inner = jax.block_until_ready(adapt(params, s_img, s_lab))
            seconds.append(time.perf_counter() - start)
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


def main() -> None:
    """Command line: see the module docstring."""
    from absl import app, flags
    from ml_collections import config_flags

    from jiio_jax.train.checkpoint import load_state

    config_flag = config_flags.DEFINE_config_file("config", None, "The run's config file.")
    workdir = flags.DEFINE_string("workdir", None, "The run's workdir.", required=True)
    methods = flags.DEFINE_list("methods", None, "Inner solvers (default: model.eval_methods).")
    num_episodes = flags.DEFINE_integer("num_episodes", None, "Meta-test episodes.")
    batch_size = flags.DEFINE_integer("batch_size", None, "Episodes per batch.")
    step = flags.DEFINE_integer("step", None, "Checkpoint step (default: the latest).")

    def run(argv):
        if len(argv) > 1:
            raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
        params = load_state(workdir.value, step.value)["params"]
        results = meta_test(
            config_flag.value,
            params,
            methods=methods.value,
            num_episodes=num_episodes.value,
            batch_size=batch_size.value,
        )
        text = json.dumps(results, indent=2, sort_keys=True)
        with open(os.path.join(workdir.value, RESULTS_FILE), "w", encoding="utf-8") as f:
            f.write(text + "\n")
        print(text)

    flags.mark_flags_as_required(["config"])
    app.run(run)


if __name__ == "__main__":
    main()
