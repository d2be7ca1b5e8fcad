"""The episode iterator takes ``make_iterator``'s arguments (one declaration of the interface)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from helpers import load_config

from jiio_jax.data import make_episode_iterator, make_iterator


def test_episode_iterator_binds_make_iterators_signature():
    assert inspect.signature(make_episode_iterator) == inspect.signature(make_iterator)
    data = load_config("digits_meta", "small").data
    with pytest.raises(TypeError, match="seed"):
        make_episode_iterator(data, "test", 2)
    with pytest.raises(TypeError, match="shufle"):
        make_episode_iterator(data, "test", 2, seed=0, shufle=False)
    # The defaults are make_iterator's: repeat=True cycles the 4 test episodes, drop_remainder
    # shards them equally over the processes.
    it = make_episode_iterator(data, "test", 2, seed=0, process_index=1, process_count=2)
    first, second = next(it), next(it)  # this process's 2 episodes, then again
    np.testing.assert_array_equal(first["image"], second["image"])
    once = make_episode_iterator(data, "test", 2, seed=0, repeat=False, process_count=1)
    assert len(list(once)) == 2
