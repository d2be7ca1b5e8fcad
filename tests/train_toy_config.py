"""Config file for ``experiments/train.py`` runs of the training-loop tests' toy task.

Loading it registers the toy task (``tests/train_toy.py``) in the process, so the unmodified
entry script can train it: ``python experiments/train.py --config=tests/train_toy_config.py``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import train_toy  # noqa: E402  (registers the task)


def get_config(arg=None):
    """The toy config; ``arg`` is unused (overrides go through ``--config.<field>=``)."""
    del arg
    return train_toy.toy_config()
