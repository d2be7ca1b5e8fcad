"""Meta-test of a ``meta`` run: query accuracy with a 95% CI and inner-loop time per method.

``meta(config, params, options)`` wraps ``jiio_jax.tasks.meta_eval.meta_test`` (held-out
meta-test classes, each episode used once, the timed region the batched inner solve with one
device sync per batch, compilation excluded; see its docstring) with ``options.methods``
(default ``config.model.eval_methods``), ``options.num_examples`` episodes (default
``config.data.num_test_episodes``; rounded down to a multiple of the batch size) and
``options.batch_size`` (default ``config.eval_batch_size``), and adds per method:

- ``time_ratio_vs_jiio``: its mean inner time per batch over JIIO's (> 1: slower than JIIO);
- ``overlaps_jiio_ci``: whether its 95% interval ``acc +- ci`` overlaps JIIO's (the
  accuracies are then not distinguishable at that level);
- ``acc_diff_vs_jiio``: its accuracy minus JIIO's.

Results: ``{"methods": {method: {...}}, "num_episodes", "batch_size"}``.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from jiio_jax.evaluation.robustness import check_task


def meta(config: ml_collections.ConfigDict, params: Any, options: Any) -> dict[str, Any]:
    """Meta-test accuracy, CIs and inner-loop times (see the module docstring).

    Raises:
      ValueError: not a meta run, an unknown method, or fewer episodes than one batch.
    """
    from jiio_jax.tasks.meta_eval import meta_test

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
