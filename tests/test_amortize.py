"""Amortized JIIO training (``config.model.amortize``): the per-example cache of the generative
task, its checkpointing and exact resume, cold-start evaluation and config errors.

Runs the ``digits_gen:small`` model on a 10-image npz (batch 4, 4 CPU devices), so the second
epoch starts at step 3 and a few steps see warm batches. The training runs and the cold/warm
loss comparison compile the JIIO-MDEQ train step (minutes on a loaded CPU): ``-m slow``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from helpers import load_config

from jiio_jax import data as data_lib
from jiio_jax.tasks import get_task
from jiio_jax.train import load_state, read_metrics, train_and_evaluate
from jiio_jax.train import mesh as mesh_lib

pytestmark = pytest.mark.usefixtures("fast_compile")

NUM_TRAIN = 10


@pytest.fixture(scope="module")
def npz_path(tmp_path_factory):
    rng = np.random.default_rng(0)
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    np.savez(
        path,
        image_train=rng.integers(0, 256, (NUM_TRAIN, 8, 8), dtype=np.uint8),
        image_test=rng.integers(0, 256, (4, 8, 8), dtype=np.uint8),
    )
    return str(path)


def _config(npz_path, **overrides):
    config = load_config("digits_gen", "small")
    config.data.name = "npz"
    config.data.path = npz_path
    config.model.amortize = True
    config.update_from_flattened_dict(
        {
            "log_every": 1,
            "eval_every": 100,
            "checkpoint_every": 2,
            "keep_checkpoints": 5,
            # A run resumed with a longer num_train_steps keeps its learning rates.
            "optim.schedule": "constant",
        }
    )
    config.update_from_flattened_dict(overrides)
    return config


def _train_records(workdir):
    records = read_metrics(os.path.join(workdir, "metrics.jsonl"))
    return [{k: v for k, v in r.items() if k != "steps_per_sec"} for r in records]


def _assert_equal(a, b):
    jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.fixture(scope="module")
def reference(npz_path, tmp_path_factory):
    """An uninterrupted 6-step amortized run: (workdir, final metrics)."""
    workdir = str(tmp_path_factory.mktemp("amortized"))
    final = train_and_evaluate(_config(npz_path, num_train_steps=6), workdir)
    return workdir, final


def test_index_is_the_position_in_the_split(npz_path):
    config = _config(npz_path)
    source = data_lib.get_source(config.data, "train")
    it = data_lib.make_iterator(config.data, "train", 5, seed=3)
    epochs = []
    for _ in range(3):  # Three shuffled epochs (grain offsets later epochs' element indices).
        seen = []
        for _ in range(2):
            batch = next(it)
            assert batch["index"].dtype == np.int32
            for image, index in zip(batch["image"], batch["index"], strict=True):
                np.testing.assert_array_equal(image, source[int(index)]["image"])
            seen.extend(batch["index"].tolist())
        assert sorted(seen) == list(range(NUM_TRAIN))
        epochs.append(seen)
    assert epochs[0] != epochs[1] != epochs[2]


@pytest.mark.slow
def test_amortized_run_trains_and_caches_what_it_saw(reference):
    workdir, final = reference
    assert np.isfinite(final["train/loss"]) and np.isfinite(final["eval/psnr"])
    train = [r for r in _train_records(workdir) if r["split"] == "train"]
    # 10 examples in batches of 4: step 3 holds epoch 1's last 2 (new: a cold batch) and 2 of
    # epoch 2; from step 4 on every example was seen.
    assert [r["warm"] for r in train] == [0, 0, 0, 1, 1, 1]
    steps = [r["solver_steps"] for r in train]
    assert steps == [8, 8, 8, 3, 3, 3]  # model.jiio.max_steps, then model.amortize_jiio's.

    after_two = load_state(workdir, step=2, item="cache")
    # 8 of 10 examples seen in 2 steps; the cache is padded to 12 rows (4 devices).
    assert after_two["x"].shape == (12, 16)
    seen = after_two["age"] == 0
    assert seen.sum() == 8 and not seen[NUM_TRAIN:].any()
    assert (after_two["age"][~seen] == -1).all()
    assert (np.abs(after_two["x"][seen]).sum(-1) > 0).all()
    assert (after_two["x"][~seen] == 0).all()
    for leaf in jax.tree.leaves(after_two["z"]) + jax.tree.leaves(after_two["mu"]):
        assert (leaf[~seen] == 0).all() and np.abs(leaf[seen]).sum() > 0

    final_cache = load_state(workdir, item="cache")
    # Steps 4-6 are warm: 12 warm visits on top of the entries of steps 1-3 (age 0 then).
    assert final_cache["age"][:NUM_TRAIN].min() >= 0
    assert final_cache["age"][:NUM_TRAIN].sum() == 12
    assert (final_cache["age"][NUM_TRAIN:] == -1).all()


@pytest.mark.slow
def test_resume_is_exact_with_the_cache(npz_path, reference, tmp_path):
    """3 steps, then the same workdir to 6 steps == 6 steps at once (params, cache, metrics)."""
    ref_dir, ref_final = reference
    workdir = str(tmp_path)
    train_and_evaluate(_config(npz_path, num_train_steps=3), workdir)
    final = train_and_evaluate(_config(npz_path, num_train_steps=6), workdir)
    _assert_equal(load_state(workdir), load_state(ref_dir))
    _assert_equal(load_state(workdir, item="cache"), load_state(ref_dir, item="cache"))
    # Train records (the 3-step run also evaluated at its last step).
    train = [r for r in _train_records(workdir) if r["split"] == "train"]
    assert train == [r for r in _train_records(ref_dir) if r["split"] == "train"]
    assert final == ref_final


@pytest.mark.slow
def test_resume_after_crash_is_exact(npz_path, reference, tmp_path, monkeypatch):
    """A crash fetching step 6's batch (last checkpoint: step 4) and a restart: the same run."""
    ref_dir, _ = reference
    workdir = str(tmp_path)
    calls = []
    global_batch = mesh_lib.global_batch

    def crashing(local, sharding):
        if local["image"].shape[0] == 4:
            calls.append(1)
            if len(calls) == 6:
                raise KeyboardInterrupt("simulated crash")
        return global_batch(local, sharding)

    with monkeypatch.context() as m:
        m.setattr(mesh_lib, "global_batch", crashing)
        with pytest.raises(KeyboardInterrupt):
            train_and_evaluate(_config(npz_path, num_train_steps=6), workdir)
    assert int(load_state(workdir)["step"]) == 4
    train_and_evaluate(_config(npz_path, num_train_steps=6), workdir)
    _assert_equal(load_state(workdir), load_state(ref_dir))
    _assert_equal(load_state(workdir, item="cache"), load_state(ref_dir, item="cache"))


def _task_and_params(config):
    task = get_task("generative")(config)
    images = jnp.asarray(np.random.default_rng(1).uniform(-1, 1, (4, 8, 8, 1)), jnp.float32)
    params = task.init_params(jax.random.key(0), {"image": images})
    return task, params, {"image": images, "index": jnp.arange(4)}


@pytest.mark.slow
def test_cold_batch_is_the_plain_loss_and_evaluation_is_cold(npz_path):
    amortized, params, batch = _task_and_params(_config(npz_path))
    plain = get_task("generative")(_config(npz_path, **{"model.amortize": False}))
    assert plain.example_cache(4) is None
    key, step = jax.random.key(5), jnp.int32(0)
    entries = jax.tree.map(lambda c: c[:4], amortized.example_cache(4))

    @jax.jit
    def cached(p, entries):
        def loss(p):
            return amortized.cached_loss(p, batch, entries, key, step)

        return jax.value_and_grad(loss, has_aux=True)(p)

    (loss, (metrics, new)), grads = cached(params, entries)
    (ref_loss, ref_metrics), ref_grads = jax.jit(jax.value_and_grad(plain.loss, has_aux=True))(
        params, batch, key, step
    )
    # The same solve and loss; only XLA's fusion differs inside lax.cond (float32 rounding).
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, ref_grads
    )
    assert metrics["warm"] == 0 and metrics["solver_steps"] == ref_metrics["solver_steps"] == 8
    assert (new["age"] == 0).all()

    # A warm batch (every example seen) runs the warm budget from the cached start.
    (_, (warm_metrics, warm_new)), _ = cached(params, new)
    assert warm_metrics["warm"] == 1 and warm_metrics["solver_steps"] == 3
    assert (warm_new["age"] == 1).all()
    # Evaluation has no cache: the same cold start as the plain task.
    _assert_equal(
        jax.jit(amortized.evaluate)(params, batch, key), jax.jit(plain.evaluate)(params, batch, key)
    )


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model.amortize": "yes"}, "config.model.amortize="),
        ({"model.amortize_state": 1}, "config.model.amortize_state="),
        ({"model.amortize_max_age": -1}, "config.model.amortize_max_age="),
        ({"model.amortize_jiio.max_steps": 0}, "config.model.amortize_jiio"),
        ({"model.method": "vae"}, "config.model.amortize=True"),
    ],
)
def test_bad_amortize_config_names_the_field(npz_path, changes, field):
    # Not type-safe, so that a wrongly typed value reaches the task's own check.
    config = ml_collections.ConfigDict(_config(npz_path).to_dict(), type_safe=False)
    config.update_from_flattened_dict(changes)
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        get_task("generative")(config)
