"""Log hygiene for the command-line entry points."""

from __future__ import annotations

import logging as std_logging

from absl import logging


class QuietLibraries(std_logging.Filter):
    """Drops orbax's per-save INFO chatter (dozens of lines per checkpoint); keeps warnings."""

    def filter(self, record: std_logging.LogRecord) -> bool:
        return record.levelno >= std_logging.WARNING or "/orbax/" not in record.pathname


# JAX probes every backend it knows at startup and logs each failure at INFO ("Unable to
# initialize backend 'tpu': ... libtpu.so"), which on a CPU or GPU machine is expected.
_BACKEND_PROBE_LOGGER = "jax._src.xla_bridge"


def hide_library_info() -> None:
    """Installs :class:`QuietLibraries` on absl's handler and keeps JAX's backend probing at
    WARNING (call once, in ``main``)."""
    logging.get_absl_handler().addFilter(QuietLibraries())
    std_logging.getLogger(_BACKEND_PROBE_LOGGER).setLevel(std_logging.WARNING)
