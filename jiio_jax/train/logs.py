"""Log hygiene for the command-line entry points."""

from __future__ import annotations

import logging as std_logging

from absl import logging


class QuietLibraries(std_logging.Filter):
    """Drops orbax's per-save INFO chatter (dozens of lines per checkpoint); keeps warnings."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


def hide_library_info() -> None:
    """Installs :class:`QuietLibraries` on absl's handler (call once, in ``main``)."""
    logging.get_absl_handler().addFilter(QuietLibraries())
