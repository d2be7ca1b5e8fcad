"""Tests for jiio_jax.data: sources, preprocessing, and the sharded, checkpointable iterator."""

import sys
import types

import grain
import numpy as np
import orbax.checkpoint as ocp
import pytest
from ml_collections import ConfigDict
from PIL import Image

from jiio_jax.data import DatasetInfo, dataset_info, folder, get_source, make_iterator
from jiio_jax.data.config import read_config
from jiio_jax.data.images import natural_key
from jiio_jax.data.tfds_source import tfds_record_to_example


def _config(**overrides) -> ConfigDict:
    fields = dict(
        name="digits",
        path="",
        tfds_name="",
        image_size=8,
        channels=1,
        crop=0,
        flip=False,
        num_workers=0,
        seed=0,
    )
    fields.update(overrides)
    return ConfigDict(fields)


def _all(source) -> tuple[np.ndarray, np.ndarray]:
    examples = [source[i] for i in range(len(source))]
    return np.stack([e["image"] for e in examples]), np.stack([e["label"] for e in examples])


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])


def _id_npz(tmp_path, n: int, name: str = "ids.npz"):
    """npz whose label is the example's id and whose image is a left-bright/right-dark 4x4."""
    image = np.zeros((4, 4, 1), np.uint8)
    image[:, :2] = 255
    path = tmp_path / name
    np.savez(
        path,
        image_train=np.repeat(image[None], n, axis=0),
        label_train=np.arange(n),
        image_test=np.repeat(image[None], n, axis=0),
        label_test=np.arange(n),
    )
    return _config(name="npz", path=str(path), image_size=4)


# --- digits -------------------------------------------------------------------------------


def test_digits_shapes_range_and_info():
    train = get_source(_config(), "train")
    example = train[0]
    assert example["image"].shape == (8, 8, 1) and example["image"].dtype == np.float32
    assert example["label"].dtype == np.int32 and example["label"].shape == ()
    images, labels = _all(train)
    assert images.min() == -1.0 and images.max() == 1.0
    assert set(labels.tolist()) == set(range(10))
    assert dataset_info(_config()) == DatasetInfo((8, 8, 1), 10, 1497, 300)
    # path, crop, flip, num_workers and seed are optional.
    minimal = ConfigDict(dict(name="digits", image_size=8, channels=1))
    np.testing.assert_array_equal(get_source(minimal, "train")[0]["image"], example["image"])


def test_digits_split_is_a_deterministic_stratified_partition():
    from sklearn.datasets import load_digits

    train_images, _ = _all(get_source(_config(), "train"))
    test_images, test_labels = _all(get_source(_config(), "test"))
    assert len(train_images) == 1497 and len(test_images) == 300
    # Train + test is the whole dataset as a multiset, so with 1497 + 300 = 1797 the two are
    # disjoint by index.
    everything = (load_digits().images / 8 - 1).astype(np.float32)
    split_rows = sorted(x.tobytes() for x in np.concatenate([train_images, test_images])[..., 0])
    assert split_rows == sorted(x.tobytes() for x in everything)
    assert np.bincount(test_labels, minlength=10).min() >= 29  # Stratified: ~30 per class.
    again, _ = _all(get_source(_config(), "test"))
    np.testing.assert_array_equal(again, test_images)
    other_seed, _ = _all(get_source(_config(seed=1), "test"))
    assert not np.array_equal(other_seed, test_images)


def test_digits_resize_and_rgb():
    small, labels = _all(get_source(_config(), "test"))
    big, big_labels = _all(get_source(_config(image_size=16, channels=3), "test"))
    assert big.shape == (300, 16, 16, 3) and big.dtype == np.float32
    assert big.min() >= -1.0 and big.max() <= 1.0
    np.testing.assert_array_equal(big[..., 0], big[..., 2])  # Grey repeated into RGB.
    np.testing.assert_array_equal(labels, big_labels)
    # Bilinear upsampling keeps each image's mean brightness.
    np.testing.assert_allclose(big.mean(axis=(1, 2, 3)), small.mean(axis=(1, 2, 3)), atol=0.05)


# --- image folder -------------------------------------------------------------------------


def _write_folder(folder, n: int, size=(30, 20), prefix="img") -> None:
    """``n`` RGB images ``<prefix><i>.png`` (width x height ``size``) whose red channel is 10*i,
    with a white 10x10 centre square on a black frame in green, and blue 0."""
    folder.mkdir(parents=True, exist_ok=True)
    width, height = size
    for i in range(n):
        pixels = np.zeros((height, width, 3), np.uint8)
        pixels[..., 0] = 10 * i
        top, left = (height - 10) // 2, (width - 10) // 2
        pixels[top : top + 10, left : left + 10, 1] = 255
        Image.fromarray(pixels).save(folder / f"{prefix}{i}.png")


def test_natural_key_orders_numbers_by_value():
    names = ["img10.png", "img2.png", "img1.png", "a.png", "img02b.png"]
    assert sorted(names, key=natural_key) == [
        "a.png",
        "img1.png",
        "img2.png",
        "img02b.png",
        "img10.png",
    ]


def test_image_folder_natural_order_split_crop_and_resize(tmp_path):
    _write_folder(tmp_path / "faces", 12)
    config = _config(name="image_folder", path=str(tmp_path / "faces"), image_size=5, channels=3)
    train_images, train_labels = _all(get_source(config, "train"))
    test_images, _ = _all(get_source(config, "test"))
    # Natural order: img0..img9 train, img10 and img11 test (ceil(10%) of 12 = 2). Plain string
    # order would have put img8 and img9 last.
    red = np.round((train_images[:, 0, 0, 0] + 1) * 127.5)
    np.testing.assert_array_equal(red, 10 * np.arange(10))
    np.testing.assert_array_equal(np.round((test_images[:, 0, 0, 0] + 1) * 127.5), [100, 110])
    assert train_images.shape == (10, 5, 5, 3) and train_images.dtype == np.float32
    assert train_images.min() >= -1.0 and train_images.max() <= 1.0
    assert (train_labels == 0).all()
    # Without a crop the black frame blends into the green border pixels...
    assert train_images[0, 0, 0, 1] == -1.0
    # ...while the 10x10 centre crop is the white square only.
    cropped, _ = _all(get_source(_config(**{**config, "crop": 10}), "train"))
    np.testing.assert_array_equal(cropped[..., 1], np.ones((10, 5, 5), np.float32))
    # Matches crop + resize done directly with PIL (torchvision's CenterCrop + Resize).
    with Image.open(tmp_path / "faces" / "img3.png") as image:
        expected = np.asarray(image.crop((10, 5, 20, 15)).resize((5, 5), Image.BILINEAR))
    np.testing.assert_allclose(cropped[3], expected / 127.5 - 1, atol=1e-6)
    grey, _ = _all(get_source(_config(**{**config, "channels": 1}), "test"))
    assert grey.shape == (2, 5, 5, 1)
    info = dataset_info(config)
    assert info == DatasetInfo((5, 5, 3), 1, 10, 2)


def test_image_folder_class_subfolders(tmp_path):
    _write_folder(tmp_path / "root" / "dog", 5)
    _write_folder(tmp_path / "root" / "cat", 4)
    (tmp_path / "root" / "empty").mkdir()
    config = _config(name="image_folder", path=str(tmp_path / "root"), image_size=4)
    _, train_labels = _all(get_source(config, "train"))
    _, test_labels = _all(get_source(config, "test"))
    # Classes sorted by name (cat=0, dog=1); the last image of each class is held out.
    np.testing.assert_array_equal(train_labels, [0, 0, 0, 1, 1, 1, 1])
    np.testing.assert_array_equal(test_labels, [0, 1])
    assert dataset_info(config).num_classes == 2


def test_image_folder_celeba_layout_uses_the_standard_partition(tmp_path, monkeypatch):
    # Writing 202,599 files is too slow for a unit test; shrink the CelebA constants instead.
    monkeypatch.setattr(folder, "CELEBA_NUM_IMAGES", 12)
    monkeypatch.setattr(
        folder, "CELEBA_SPLITS", {"train": (0, 7), "validation": (7, 9), "test": (9, None)}
    )
    _write_folder(tmp_path / "img_align_celeba", 12, prefix="")
    config = _config(name="image_folder", path=str(tmp_path / "img_align_celeba"), channels=3)
    ids = {}
    for split in ("train", "validation", "test"):
        images, _ = _all(get_source(config, split))
        ids[split] = np.round((images[:, 0, 0, 0] + 1) * 127.5 / 10).astype(int).tolist()
    assert ids == {"train": list(range(7)), "validation": [7, 8], "test": [9, 10, 11]}


# --- npz ----------------------------------------------------------------------------------


def test_npz_uint8_with_labels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
    np.savez(
        tmp_path / "d.npz",
        image_train=images,
        label_train=np.arange(6),
        image_test=images[:2],
        label_test=np.array([7, 1]),
    )
    config = _config(name="npz", path=str(tmp_path / "d.npz"), channels=3)
    got, labels = _all(get_source(config, "train"))
    np.testing.assert_allclose(got, images / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(labels, np.arange(6))
    assert dataset_info(config) == DatasetInfo((8, 8, 3), 8, 6, 2)
    grey, _ = _all(get_source(_config(**{**config, "channels": 1}), "test"))
    luma = (images[:2] / 127.5 - 1) @ np.array([0.299, 0.587, 0.114])
    np.testing.assert_allclose(grey[..., 0], luma, atol=1e-5)
    with pytest.raises(ValueError, match="image_validation"):
        get_source(config, "validation")


@pytest.mark.parametrize("low", [0.0, -1.0])
def test_npz_float_without_labels(tmp_path, low):
    # One 'image' array (no split keys, no labels): float in [0, 1] or [-1, 1], split 90/10.
    images = np.linspace(low, 1.0, 20 * 4 * 4, dtype=np.float64).reshape(20, 4, 4)
    np.savez(tmp_path / "f.npz", image=images)
    config = _config(name="npz", path=str(tmp_path / "f.npz"), image_size=4)
    train, train_labels = _all(get_source(config, "train"))
    test, _ = _all(get_source(config, "test"))
    expected = images * 2 - 1 if low == 0.0 else images
    np.testing.assert_allclose(train[..., 0], expected[:18], atol=1e-6)
    np.testing.assert_allclose(test[..., 0], expected[18:], atol=1e-6)
    assert train.dtype == np.float32 and (train_labels == 0).all()
    assert dataset_info(config) == DatasetInfo((4, 4, 1), 1, 18, 2)


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "bad.npz", pixels=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match=r"config\.data\.path.*image_train"):
        get_source(_config(name="npz", path=str(tmp_path / "bad.npz"), image_size=4), "train")
    np.savez(tmp_path / "range.npz", image=np.full((2, 4, 4), 3.0))
    with pytest.raises(ValueError, match=r"\[0, 1\] or \[-1, 1\]"):
        get_source(_config(name="npz", path=str(tmp_path / "range.npz"), image_size=4), "train")


# --- tfds ---------------------------------------------------------------------------------


def test_tfds_without_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # Makes the import fail.
    config = _config(name="tfds", tfds_name="mnist", path="/data/tfds")
    with pytest.raises(ImportError, match="pip install tensorflow-datasets") as info:
        get_source(config, "train")
    assert "tfds build mnist --data_dir /data/tfds" in str(info.value)


def test_tfds_record_mapping_and_fake_module(monkeypatch):
    options = read_config(_config(name="tfds", tfds_name="mnist", image_size=4, channels=3))
    record = {"image": np.full((28, 28, 1), 255, np.uint8), "label": np.int64(7)}
    example = tfds_record_to_example(record, options)
    np.testing.assert_array_equal(example["image"], np.ones((4, 4, 3), np.float32))
    assert example["label"] == 7 and example["label"].dtype == np.int32
    no_label = tfds_record_to_example({"image": np.zeros((8, 8, 3), np.uint8)}, options)
    assert no_label["label"] == 0 and no_label["image"].min() == -1.0

    # A stand-in module: opening works for "train" and fails like an unprepared dataset else.
    label_feature = types.SimpleNamespace(num_classes=10)
    info = types.SimpleNamespace(features={"label": label_feature})

    class FakeSource(list):
        dataset_info = info

    def data_source(name, split, data_dir):
        if split != "train":
            raise FileNotFoundError(f"{name} is not prepared in {data_dir}")
        return FakeSource([record] * 3)

    monkeypatch.setitem(
        sys.modules, "tensorflow_datasets", types.SimpleNamespace(data_source=data_source)
    )
    config = _config(name="tfds", tfds_name="mnist", path="/x", image_size=4)
    source = get_source(config, "train")
    assert len(source) == 3 and source.num_classes == 10
    assert source[0]["image"].shape == (4, 4, 1)
    with pytest.raises(FileNotFoundError, match=r"config\.data\.path.*tfds build"):
        get_source(config, "test")


# --- iterator -----------------------------------------------------------------------------


def test_iterator_is_deterministic_and_reshuffles_each_epoch():
    config = _config()
    first = _take(make_iterator(config, "test", 50, seed=3), 12)
    second = _take(make_iterator(config, "test", 50, seed=3), 12)
    _assert_batches_equal(first, second)
    assert first[0]["image"].shape == (50, 8, 8, 1) and first[0]["image"].dtype == np.float32
    assert first[0]["label"].dtype == np.int32
    other = _take(make_iterator(config, "test", 50, seed=4), 1)
    assert not np.array_equal(other[0]["image"], first[0]["image"])
    # 300 examples = 6 batches per epoch; both epochs hold the same images in new orders.
    epoch0 = np.concatenate([b["image"] for b in first[:6]])
    epoch1 = np.concatenate([b["image"] for b in first[6:]])
    assert not np.array_equal(epoch0, epoch1)
    assert sorted(x.tobytes() for x in epoch0) == sorted(x.tobytes() for x in epoch1)


def test_iterator_shards_cover_an_epoch_disjointly(tmp_path):
    config = _id_npz(tmp_path, 41)
    seen = []
    for index in range(2):
        iterator = make_iterator(
            config, "train", 5, seed=0, repeat=False, process_index=index, process_count=2
        )
        ids = np.concatenate([b["label"] for b in iterator])
        assert len(ids) == 20  # 41 -> 40 for equal shards, 4 batches of 5 each.
        seen.append(ids)
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 40  # All but the one cut for equal shards.


def test_iterator_single_pass_keeps_every_example(tmp_path):
    config = _id_npz(tmp_path, 23)
    iterator = make_iterator(
        config, "test", 5, seed=0, shuffle=False, repeat=False, drop_remainder=False
    )
    batches = list(iterator)
    assert [len(b["label"]) for b in batches] == [5, 5, 5, 5, 3]
    np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches]), np.arange(23))


def test_iterator_state_resumes_at_the_next_batch():
    config = _config()
    iterator = make_iterator(config, "train", 16, seed=0)
    _take(iterator, 3)
    state = iterator.get_state()
    expected = _take(iterator, 2)
    resumed = make_iterator(config, "train", 16, seed=0)
    resumed.set_state(state)
    _assert_batches_equal(_take(resumed, 2), expected)


def test_iterator_orbax_checkpoint_roundtrip(tmp_path):
    config = _config()
    iterator = make_iterator(config, "train", 16, seed=0)
    _take(iterator, 4)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(
            4,
            args=ocp.args.Composite(
                data_iter=grain.checkpoint.CheckpointSave(iterator),
                meta=ocp.args.JsonSave({"step": 4}),
            ),
        )
        manager.wait_until_finished()
    expected = _take(iterator, 2)

    fresh = make_iterator(config, "train", 16, seed=0)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        assert manager.latest_step() == 4
        restored = manager.restore(
            4,
            args=ocp.args.Composite(
                data_iter=grain.checkpoint.CheckpointRestore(fresh),
                meta=ocp.args.JsonRestore(),
            ),
        )
    assert restored.meta == {"step": 4}
    _assert_batches_equal(_take(restored.data_iter, 2), expected)


def test_worker_processes_give_the_same_batches_and_resume():
    # Workers split the stream by batch index, so the batches do not depend on num_workers.
    config = _config(flip=True)
    expected = _take(make_iterator(config, "train", 32, seed=1), 4)
    config.num_workers = 2
    iterator = make_iterator(config, "train", 32, seed=1)
    try:
        got = _take(iterator, 2)
        state = iterator.get_state()
        got += _take(iterator, 2)
        _assert_batches_equal(got, expected)
        iterator.set_state(state)  # Rewind the running workers to batch 2.
        _assert_batches_equal(_take(iterator, 2), expected[2:])
    finally:
        iterator.close()


def test_flip_is_random_reproducible_and_train_only(tmp_path):
    config = _id_npz(tmp_path, 64)
    config.flip = True

    def left_bright(batch):  # The unflipped image is bright on its left half.
        return batch["image"][:, 0, 0, 0] > 0

    def flips(split, seed):
        iterator = make_iterator(config, split, 64, seed=seed, shuffle=False)
        return [~left_bright(b) for b in _take(iterator, 2)]  # Two epochs.

    epoch0, epoch1 = flips("train", 0)
    assert 10 < epoch0.sum() < 54  # About half of 64 flipped.
    assert not np.array_equal(epoch0, epoch1)  # Fresh flips each epoch.
    np.testing.assert_array_equal(flips("train", 0)[0], epoch0)
    assert not np.array_equal(flips("train", 1)[0], epoch0)
    assert not flips("test", 0)[0].any()
    flipped = make_iterator(config, "train", 64, seed=0, shuffle=False)
    batch = next(flipped)
    mirrored = batch["image"][~epoch0][0, :, ::-1]
    np.testing.assert_array_equal(
        batch["image"][epoch0], np.broadcast_to(mirrored, (epoch0.sum(), *mirrored.shape))
    )


def test_no_tensorflow_import():
    next(make_iterator(_config(flip=True), "train", 8, seed=0))
    assert not [m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow.")]


# --- errors -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["image_folder", "npz"])
def test_missing_path(tmp_path, name):
    with pytest.raises(FileNotFoundError, match=r"config\.data\.path=.*nowhere"):
        get_source(_config(name=name, path=str(tmp_path / "nowhere")), "train")


def test_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"config\.data\.path=.*no images"):
        get_source(_config(name="image_folder", path=str(tmp_path)), "train")


@pytest.mark.parametrize(
    ("overrides", "split", "match"),
    [
        ({"name": "mnist"}, "train", r"config\.data\.name must be one of \('digits'"),
        ({}, "val", r"split must be one of \('train', 'validation', 'test'\)"),
        ({}, "validation", r"digits has splits \('train', 'test'\)"),
        ({"channels": 2}, "train", r"config\.data\.channels must be 1 or 3"),
        ({"image_size": 0}, "train", r"config\.data\.image_size must be an integer >= 1"),
        ({"crop": 9}, "train", r"config\.data\.crop=9 is larger than the image"),
        ({"name": "tfds"}, "train", r"config\.data\.tfds_name is required"),
    ],
)
def test_config_errors(overrides, split, match):
    with pytest.raises(ValueError, match=match):
        get_source(_config(**overrides), split)


def test_iterator_argument_errors():
    with pytest.raises(ValueError, match="process_index"):
        make_iterator(_config(), "train", 8, seed=0, process_index=2, process_count=2)
    with pytest.raises(ValueError, match="batch_size"):
        make_iterator(_config(), "train", 0, seed=0)
