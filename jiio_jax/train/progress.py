"""Progress reporting: steps/s and ETA for the periodic log line (a CLU ``ReportProgress``
without TensorFlow)."""

from __future__ import annotations

import time


def format_duration(seconds: float) -> str:
    """``3725 -> '1h02m05s'``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class ReportProgress:
    """Measures training throughput between reports.

    Time spent in eval and checkpointing is excluded from steps/s (bracket it with
    :meth:`pause`/:meth:`resume`) so the rate reflects the train step.

    Args:
      num_train_steps: the final step (for the ETA).
      first_step: the step the run (re)started from.
    """

    def __init__(self, num_train_steps: int, first_step: int = 0):
        self._total = num_train_steps
        self._last_step = first_step
        self._last_time = time.perf_counter()
        self._paused = 0.0
        self._pause_start: float | None = None
        self.steps_per_sec = float("nan")

    def pause(self) -> None:
        """Stops the clock (before eval or checkpointing)."""
        if self._pause_start is None:
            self._pause_start = time.perf_counter()

    def resume(self) -> None:
        """Restarts the clock."""
        if self._pause_start is not None:
            self._paused += time.perf_counter() - self._pause_start
            self._pause_start = None

    def restart(self, step: int) -> None:
        """Restarts the clock at ``step`` (after the compiling first step, so that the rate and
        the ETA come from warm steps only)."""
        self._last_step, self._last_time, self._paused = step, time.perf_counter(), 0.0
        self._pause_start = None

    def report(self, step: int) -> dict[str, float]:
        """Rate and ETA since the previous report; call after the step's results are fetched."""
        now = time.perf_counter()
        elapsed = now - self._last_time - self._paused
        if step > self._last_step and elapsed > 0:
            self.steps_per_sec = (step - self._last_step) / elapsed
        self._last_step, self._last_time, self._paused = step, now, 0.0
        eta = (self._total - step) / self.steps_per_sec if self.steps_per_sec > 0 else float("nan")
        return {"steps_per_sec": self.steps_per_sec, "eta_sec": eta}

    def line(self, step: int, rate: dict[str, float], scalars: dict[str, float]) -> str:
        """The log line: ``step 120/1000 | loss 0.1234 | ... | 35.1 steps/s | ETA 25s``.

        Args:
          step: the current step.
          rate: the output of :meth:`report`.
          scalars: metric name -> value, in the order to print (the caller picks a short set;
            ``metrics.jsonl`` has all of them).
        """
        eta = rate["eta_sec"]
        steps_per_sec = rate["steps_per_sec"]
        parts = [f"step {step}/{self._total}"]
        parts += [f"{k} {v:.4g}" for k, v in scalars.items()]
        parts += [
            f"{steps_per_sec:.2f} steps/s" if steps_per_sec == steps_per_sec else "? steps/s",
            f"ETA {format_duration(eta) if eta == eta else '?'}",
        ]
        return " | ".join(parts)
