"""A small metric writer with CLU's method names and no TensorFlow.

``clu.metric_writers`` and ``flax.metrics.tensorboard`` import TensorFlow, so this writes
JSONL itself (always) and TensorBoard event files through ``tensorboardX`` (optional).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from typing import Any

from absl import logging

METRICS_FILE = "metrics.jsonl"
HPARAMS_FILE = "hparams.json"


def _to_python(value: Any) -> Any:
    value = float(value) if not isinstance(value, bool | int | str) else value
    # JSON has no NaN/Inf; keep them readable rather than producing invalid lines.
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _split_key(key: str) -> tuple[str, str]:
    split, _, name = key.rpartition("/")
    return split or "train", name


class MetricWriter:
    """Writes scalars to ``logdir/metrics.jsonl`` and optionally TensorBoard.

    Keys are ``"<split>/<name>"`` (e.g. ``"train/loss"``, ``"eval/psnr"``); each
    :meth:`write_scalars` call appends one JSON line per split,
    ``{"step": s, "split": "train", "loss": ..., ...}``. Only the process given
    ``enabled=True`` (process 0) writes; on the others every method is a no-op.

    Args:
      logdir: the output directory (the run's workdir).
      enabled: whether this process writes anything.
      tensorboard: also write TensorBoard event files to ``logdir/tensorboard`` when
        ``tensorboardX`` is installed (without it: one log line saying so, JSONL only). Where
        the events go and the ``tensorboard --logdir`` command are logged once.
      purge_step: on resume, the first step that will be written again; JSONL lines and
        TensorBoard events with ``step >= purge_step`` from the interrupted run are dropped so
        every step appears once.
    """

    def __init__(
        self,
        logdir: str,
        *,
        enabled: bool = True,
        tensorboard: bool = False,
        purge_step: int | None = None,
    ):
        self._enabled = enabled
        self._path = os.path.join(logdir, METRICS_FILE)
        self._logdir = logdir
        self._file = None
        self._tb = None
        if not enabled:
            return
        os.makedirs(logdir, exist_ok=True)
        if purge_step is not None:
            _purge_jsonl(self._path, purge_step)
        self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        if tensorboard:
            try:
                import tensorboardX  # Optional dependency; imported only when asked for.
            except ImportError:
                logging.info(
                    "No TensorBoard events: tensorboardX is not installed (pip install "
                    "tensorboardX); metrics are in %s.",
                    self._path,
                )
                return
            tb_dir = os.path.join(logdir, "tensorboard")
            self._tb = tensorboardX.SummaryWriter(tb_dir, purge_step=purge_step)
            logging.info(
                "TensorBoard events in %s; view with: tensorboard --logdir %s", tb_dir, tb_dir
            )

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Appends ``scalars`` (``"split/name" -> number``) for ``step``."""
        if not self._enabled:
            return
        by_split: dict[str, dict[str, Any]] = {}
        for key, value in scalars.items():
            split, name = _split_key(key)
            by_split.setdefault(split, {})[name] = _to_python(value)
            if self._tb is not None:
                self._tb.add_scalar(key, float(value), global_step=step)
        for split, values in by_split.items():
            self._file.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Writes flat hyperparameters to ``logdir/hparams.json`` (and TensorBoard as text)."""
        if not self._enabled:
            return
        flat = {
            k: v if isinstance(v, bool | int | float | str) else str(v) for k, v in hparams.items()
        }
        with open(os.path.join(self._logdir, HPARAMS_FILE), "w", encoding="utf-8") as f:
            json.dump(flat, f, indent=2, sort_keys=True)
        if self._tb is not None:
            table = "\n".join(f"| {k} | {v} |" for k, v in sorted(flat.items()))
            self._tb.add_text("hparams", "| name | value |\n|---|---|\n" + table, global_step=0)

    def flush(self) -> None:
        """Flushes the JSONL file and TensorBoard events to disk."""
        if self._file is not None:
            self._file.flush()
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        """Flushes and closes; further writes are errors."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        self._enabled = False


def _purge_jsonl(path: str, purge_step: int) -> None:
    """Drops lines with ``step >= purge_step`` (logged after the checkpoint we resume from)."""
    if not os.path.exists(path):
        return
    with open(path, encoding="utf-8") as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # A line cut short by a kill.
            continue
        if record.get("step", 0) < purge_step:
            kept.append(line if line.endswith("\n") else line + "\n")
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(kept)
    os.replace(tmp, path)


def read_metrics(path: str, split: str | None = None) -> list[dict[str, Any]]:
    """Reads a ``metrics.jsonl`` (optionally one split), skipping a truncated last line."""
    records = []
    if not os.path.exists(path):
        return records
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if split is None or record.get("split") == split:
                records.append(record)
    return records


def flatten_config(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"optim": {"lr": 1e-3}} -> {"optim.lr": 1e-3}`` (for ``write_hparams``)."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
