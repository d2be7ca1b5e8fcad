"""Stopping a training run cleanly on SIGINT (Ctrl-C) or SIGTERM (e.g. a scheduler's preemption).

While :class:`StopOnSignal` is active, the first SIGINT / SIGTERM only sets a flag; the loop
checks it after every step, saves a checkpoint at the current step and raises
:class:`TrainingInterrupted`, which ``experiments/train.py`` prints as one line ("saved step N;
rerun the same command to resume"). A second signal gets the previous handler (Ctrl-C twice
stops at once, with Python's usual ``KeyboardInterrupt``).

The resumed run's parameters, optimizer state, data order and rngs are those of an
uninterrupted run. The train metrics of an unfinished log interval are not written: after the
resume, that interval's row in ``metrics.jsonl`` averages only the steps run after the resume
(with ``log_every=1`` every row is identical to the uninterrupted run's).

Handlers can only be installed from the main thread; elsewhere (and in multi-process runs,
where the processes would have to agree on the step to stop at) the context does nothing and
signals keep their default effect.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):  # noqa: N818 (a request to stop, not a failure)
    """Training stopped on a signal after saving a checkpoint at ``step``.

    Attributes:
      step: the step of the checkpoint that was saved (rerunning resumes from it).
      signum: the signal received.
    """

    def __init__(self, step: int, signum: int):
        self.step, self.signum = step, signum
        name = signal.Signals(signum).name
        super().__init__(f"{name}: saved step {step}; rerun the same command to resume.")


class StopOnSignal:
    """Context manager that turns the first SIGINT / SIGTERM into a stop request.

    Args:
      enabled: install the handlers (False: a no-op, e.g. for multi-process runs).
    """

    def __init__(self, enabled: bool = True):
        self._enabled = enabled and threading.current_thread() is threading.main_thread()
        self._previous: dict[int, object] = {}
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a signal arrived."""
        return self.signum is not None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        del frame
        self.signum = signum
        self._restore()  # A second signal acts as usual.

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def __enter__(self) -> StopOnSignal:
        if self._enabled:
            for signum in SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
