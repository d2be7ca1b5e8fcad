"""Meta-learning: episodes (split, shapes, rotations, resume), the inner solve, configs, runs.

Episode tests need no compilation. The task tests use the configs' ``:small`` variants (a
one-branch 4-channel MDEQ, 3-way 1-shot); the two ``train_and_evaluate`` runs also check that
the loss and gradient of both inner solvers are finite (the loop raises otherwise).
"""

from __future__ import annotations

import dataclasses
import os

import jax
import ml_collections
import numpy as np
import pytest
from helpers import load_config, write_omniglot

from jiio_jax.data import episodes
from jiio_jax.tasks import get_task
from jiio_jax.train import load_state, train_and_evaluate

pytestmark = pytest.mark.usefixtures("fast_compile")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32 = np.float32


def _data(**fields) -> ml_collections.ConfigDict:
    data = load_config("digits_meta").data
    data.update(fields)
    return data


def _unrotations(images: np.ndarray, rotations: np.ndarray, store, members) -> list[int]:
    """For each image ``[H, W]``, the store index it is a quarter turn of (by ``rotations``)."""
    lookup = {store[i].tobytes(): i for i in members}
    pairs = zip(images, rotations, strict=True)
    return [lookup.get(np.rot90(im, -int(r)).tobytes(), -1) for im, r in pairs]


# -- episodes ---------------------------------------------------------------------------------
def test_digits_classes_are_disjoint_by_digit_and_seeded():
    options = episodes.read_episode_config(_data())
    _, pools = episodes.build_pools(options)
    train, test = pools["train"], pools["test"]
    assert (len(train), len(test)) == (24, 16)
    assert not set(train.class_ids) & set(test.class_ids)
    # Classes are (digit, quarter turn): a digit's four turns fall in one split.
    train_digits, test_digits = set(train.class_ids // 4), set(test.class_ids // 4)
    assert not train_digits & test_digits and len(train_digits | test_digits) == 10
    np.testing.assert_array_equal(train.base_rotation, train.class_ids % 4)
    again = episodes.build_pools(options)[1]["train"].class_ids
    np.testing.assert_array_equal(again, train.class_ids)
    other = episodes.build_pools(episodes.read_episode_config(_data(seed=1)))[1]["train"]
    assert set(other.class_ids) != set(train.class_ids)


def test_episode_batches_shapes_labels_determinism_and_resume():
    data = _data(n_way=4, k_shot=2, n_query=3)
    it = episodes.make_episode_iterator(data, "train", 6, seed=3)
    first = [next(it) for _ in range(3)]
    b = first[0]
    assert b["image"].shape == (6, 4 * 5, 8, 8, 1) and b["image"].dtype == F32
    assert b["label"].dtype == np.int32 and b["class"].shape == (6, 4)
    expected = np.r_[np.repeat(np.arange(4), 2), np.repeat(np.arange(4), 3)]
    assert (b["label"] == expected).all()
    assert -1.0 <= b["image"].min() and b["image"].max() <= 1.0
    train_ids = set(episodes.build_pools(episodes.read_episode_config(data))[1]["train"].class_ids)
    assert set(np.concatenate([x["class"].ravel() for x in first])) <= train_ids
    assert all(len(set(row)) == 4 for row in b["class"])  # n_way distinct classes per episode
    # Same seed, same stream; the iterator state resumes at exactly the next batch.
    replay = episodes.make_episode_iterator(data, "train", 6, seed=3)
    np.testing.assert_array_equal(next(replay)["image"], first[0]["image"])
    state = replay.get_state()
    resumed = episodes.make_episode_iterator(data, "train", 6, seed=3)
    resumed.set_state(state)
    for expected_batch in first[1:]:
        got = next(resumed)
        for key in expected_batch:
            np.testing.assert_array_equal(got[key], expected_batch[key])
    # Test episodes: a fixed, finite set from the held-out classes, sharded over processes.
    test_ids = set(episodes.build_pools(episodes.read_episode_config(data))[1]["test"].class_ids)
    shards = [
        list(episodes.make_episode_iterator(
            _data(n_way=4, num_test_episodes=10), "test", 1, seed=0, repeat=False,
            process_index=p, process_count=3))
        for p in range(3)
    ]  # fmt: skip
    assert [len(s) for s in shards] == [3, 3, 3]  # 10 -> 9 for equal shards
    assert set(np.concatenate([x["class"].ravel() for s in shards for x in s])) <= test_ids


def test_digit_rotation_is_shared_by_a_class_support_and_query():
    data = _data(n_way=5, k_shot=2, n_query=2, rotate=True)
    options = episodes.read_episode_config(data)
    store, pools = episodes.build_pools(options)
    batch = next(episodes.make_episode_iterator(data, "train", 16, seed=0))
    assert len(np.unique(batch["rotation"])) == 4  # the augmentation draws every turn
    for e in range(16):
        for j in range(5):
            rows = np.r_[2 * j : 2 * j + 2, 10 + 2 * j : 10 + 2 * j + 2]  # support, query of j
            class_id = batch["class"][e, j]
            turns = (class_id % 4 + batch["rotation"][e, j]) % 4
            members = np.flatnonzero(store.labels == class_id // 4)
            found = _unrotations(batch["image"][e, rows, ..., 0], [turns] * 4, store, members)
            assert min(found) >= 0  # every image is a drawing of the class's digit, same turn


def test_omniglot_layout_split_resize_and_rotations(tmp_path):
    write_omniglot(tmp_path)
    data = load_config("omniglot_meta", "small").data
    data.update(path=str(tmp_path), num_train_characters=3, n_way=3, k_shot=1, n_query=2)
    info = episodes.episode_info(data)
    assert info.image_shape == (28, 28, 1)
    assert (info.num_train_classes, info.num_test_classes) == (3, 3)
    store, pools = episodes.build_pools(episodes.read_episode_config(data))
    assert len(store.files) == 24 and store[0].shape == (28, 28)
    assert not set(pools["train"].class_ids) & set(pools["test"].class_ids)
    for split in ("train", "test"):
        batch = next(episodes.make_episode_iterator(data, split, 8, seed=1))
        assert set(batch["class"].ravel()) == set(pools[split].class_ids)
        for e in range(8):
            for j in range(3):
                c = list(pools[split].class_ids).index(batch["class"][e, j])
                rows = [j, 3 + 2 * j, 4 + 2 * j]  # its support shot and two queries
                found = _unrotations(
                    batch["image"][e, rows, ..., 0],
                    [batch["rotation"][e, j]] * 3,
                    store,
                    pools[split].members[c],
                )
                assert min(found) >= 0 and len(set(found)) == 3


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"data.n_way": 17}, ValueError, r"config\.data\.n_way=17 exceeds the 16 meta-test"),
        ({"data.num_train_characters": 10}, ValueError, r"config\.data\.num_train_characters"),
        ({"data.k_shot": 200}, ValueError, r"config\.data\.k_shot \+ config\.data\.n_query"),
        ({"data.name": "mnist"}, ValueError, r"config\.data\.name"),
        ({"model.method": "sgd"}, ValueError, r"config\.model\.method='sgd'"),
        ({"model.eval_methods": ("jiio", "lbfgs")}, ValueError, r"eval_methods\[1\]"),
        ({"model.mdeq.meta_pool": 8}, ValueError, r"config\.model\.mdeq\.meta_pool=8"),
        ({"model.jiio.max_steps": 0}, ValueError, r"config\.model\.jiio: `max_steps`"),
        ({"eval.jiio_steps": 0}, ValueError, r"config\.eval\.jiio_steps=0 must be an int >= 1"),
        ({"data.name": "omniglot", "data.path": "/no/such"}, FileNotFoundError, r"data\.path"),
    ],
)
def test_bad_config_names_the_field(change, error, match):
    config = load_config("digits_meta")
    for key, value in change.items():
        section, field = key.rsplit(".", 1)
        target = config
        for part in section.split("."):
            target = target[part]
        target[field] = value
    with pytest.raises(error, match=match):
        get_task("meta")(config)


def test_meta_test_budget_comes_from_config_eval():
    """``config.eval.jiio_steps`` changes only ``max_steps`` of the meta-test JIIO; absent (a run
    recorded before the field existed) or ``None``, meta-testing uses training's JIIO."""
    task = get_task("meta")(load_config("digits_meta"))
    assert (task.jiio.max_steps, task.eval_jiio.max_steps) == (60, 80)
    assert dataclasses.replace(task.eval_jiio, max_steps=60) == task.jiio
    small = get_task("meta")(load_config("digits_meta", "small"))
    assert small.eval_jiio == small.jiio
    config = load_config("digits_meta")
    del config["eval"]
    assert get_task("meta")(config).eval_jiio == task.jiio
    config.eval = {"jiio_step": 80}
    with pytest.raises(ValueError, match=r"config\.eval has unknown fields \['jiio_step'\]"):
        get_task("meta")(config)


# -- the task ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "method"), [("digits_meta", "jiio"), ("omniglot_meta", "projected_adam")]
)
def test_small_config_trains_two_steps(tmp_path, name, method):
    """Both configs' ``:small`` variants run through ``train_and_evaluate`` (one device: the
    4-device mesh compiles twice as long). To keep compilation short each run covers one inner
    solver for training and evaluation: JIIO with the Jacobian penalty on digits, projected
    Adam without it on the Omniglot layout."""
    config = load_config(name, "small")
    config.model.method = method
    config.num_devices = 1
    if name == "digits_meta":
        # At init the support loss is nearly flat in v (a 4-channel MDEQ): let v move freely
        # (no L2 on it, a large step), so the JIIO objective is the support loss itself.
        config.model.context_l2 = 0.0
        config.model.jiio.update(max_steps=16, step_size=0.3)
        config.model.eval_methods = ("jiio",)
        config.eval.jiio_steps = 20  # meta-testing's budget (config.eval), not training's
    else:
        write_omniglot(tmp_path / "omniglot")
        config.data.update(path=str(tmp_path / "omniglot"), num_train_characters=3)
        config.model.eval_methods = ("projected_adam",)
        config.model.jac_weight = 0.0
    final = train_and_evaluate(config, str(tmp_path / "run"))
    assert final["step"] == 2
    for key in ("train/loss", "train/grad_norm", "train/query_loss", "train/support_loss"):
        assert np.isfinite(final[key]), key
    assert (final["train/jac_loss"] > 0) == (config.model.jac_weight > 0)
    inner_steps = config.model.jiio.max_steps if method == "jiio" else config.model.adam.num_steps
    assert final["train/inner_steps"] == inner_steps
    if name == "digits_meta":
        assert final["eval/inner_steps_jiio"] == 20
    for m in config.model.eval_methods:
        assert 0.0 <= final[f"eval/query_acc_{m}"] <= 1.0
        assert np.isfinite(final[f"eval/query_loss_{m}"])
    if name == "digits_meta":
        # The JIIO inner solve lowers the support loss below its value at v = 0.
        unadapted = final["eval/support_loss_unadapted"]
        assert final["eval/support_loss_jiio"] < unadapted - 2e-3
    state = load_state(str(tmp_path / "run"))
    assert int(state["step"]) == 2
    assert all(x.dtype == F32 for x in jax.tree.leaves(state["params"]))
