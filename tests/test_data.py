"""Image data: folder layouts, preflight checks, splits, TFDS (mocked offline)."""

import numpy as np
import pytest

from dltool._tf import tf
from dltool.data import images, pipeline
from dltool.core.errors import DataError

DATA = {"source": "", "image_size": [16, 16], "validation_split": 0.25, "cache": "auto",
        "skip_bad": False, "max_pixels": 40_000_000}


def _jpeg(seed=0, size=(20, 24)):
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def make_folder(root, counts, split="train"):
    for name, n in counts.items():
        folder = root / split / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (folder / f"{i:03d}.jpg").write_bytes(_jpeg(i))
    return root


def _open(root, **changes):
    return images.open_image_data({**DATA, "source": str(root), **changes}, root, seed=1)


def test_counts_classes_and_seeded_stratified_split(tmp_path):
    make_folder(tmp_path, {"cat": 8, "dog": 4})
    data = _open(tmp_path)
    assert data.class_names == ["cat", "dog"]
    assert data.sizes == {"train": 9, "val": 3}
    labels = [int(y) for _, y in data.splits["val"]]
    assert sorted(labels) == [0, 0, 1]
    assert data.report[0].split() == ["class", "train", "val"]
    assert data.report[1].split() == ["cat", "6", "2"]
    again = _open(tmp_path)
    assert [int(y) for _, y in again.splits["val"]] == labels
    image, label = next(iter(data.splits["train"]))
    assert image.shape == (16, 16, 3) and image.dtype == tf.float32
    assert float(tf.reduce_max(image)) > 1.0


def test_val_and_test_folders_are_used(tmp_path):
    make_folder(tmp_path, {"a": 3, "b": 3})
    make_folder(tmp_path, {"a": 2, "b": 1}, split="val")
    make_folder(tmp_path, {"a": 1, "b": 1}, split="test")
    data = _open(tmp_path)
    assert data.sizes == {"train": 6, "val": 3, "test": 2}


def test_classes_directly_under_source(tmp_path):
    for name in ("x", "y"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "1.jpg").write_bytes(_jpeg())
        (tmp_path / name / "2.jpg").write_bytes(_jpeg(1))
    assert _open(tmp_path).class_names == ["x", "y"]


def _with_bad_files(tmp_path):
    make_folder(tmp_path, {"cat": 4, "dog": 4})
    good = _jpeg(5)
    bad = {
        "cat/empty.jpg": b"",
        "cat/truncated.jpg": good[: len(good) // 3],
        "dog/text.jpg": b"hello, I am not an image",
        "dog/fake.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
    }
    for name, content in bad.items():
        (tmp_path / "train" / name).write_bytes(content)
    (tmp_path / "train" / "cat" / "notes.txt").write_text("ignored: not an image suffix")
    return {str(tmp_path / "train" / n) for n in bad}


def test_preflight_reports_every_bad_file_by_path(tmp_path):
    bad = _with_bad_files(tmp_path)
    found = images.find_bad_images(
        [str(p) for p in (tmp_path / "train").rglob("*") if p.suffix in (".jpg", ".png")],
        DATA["max_pixels"])
    assert {p for p, _ in found} == bad
    with pytest.raises(DataError) as error:
        _open(tmp_path)
    message = str(error.value)
    assert message.startswith("4 unusable image(s): ")
    assert "pass --skip-bad" in message
    assert "empty.jpg (empty file)" in message


def test_skip_bad_drops_and_counts(tmp_path):
    _with_bad_files(tmp_path)
    data = _open(tmp_path, skip_bad=True)
    assert data.sizes["train"] + data.sizes["val"] == 8
    assert "skipped 4 unusable image(s) (--skip-bad)" in data.report
    assert len(list(data.splits["train"])) == data.sizes["train"]


@pytest.mark.parametrize("setup, message", [
    (lambda p: None, "data folder {p}/missing does not exist"),
    (lambda p: (p / "missing" / "train").mkdir(parents=True), "no class folders in"),
    (lambda p: (p / "missing" / "train" / "cat").mkdir(parents=True), "no images in"),
])
def test_missing_or_empty_data(tmp_path, setup, message):
    setup(tmp_path)
    with pytest.raises(DataError, match=message.format(p=tmp_path)):
        images.open_image_data({**DATA, "source": "missing"}, tmp_path, seed=1)


def test_empty_class_refused(tmp_path):
    make_folder(tmp_path, {"cat": 3})
    (tmp_path / "train" / "dog").mkdir()
    with pytest.raises(DataError, match="class 'dog' in .* has no usable images"):
        _open(tmp_path)


def test_test_split_with_unknown_class_refused(tmp_path):
    make_folder(tmp_path, {"cat": 3, "dog": 3})
    make_folder(tmp_path, {"cow": 1}, split="test")
    with pytest.raises(DataError, match="class folder 'cow' that train/ does not have"):
        _open(tmp_path)


def test_builtin_sample_ships_with_the_package(tmp_path):
    data = images.open_image_data({**DATA, "source": "builtin:cifar10", "validation_split": 0.1},
                                  tmp_path, seed=1)
    assert len(data.class_names) == 10
    assert data.sizes == {"train": 450, "val": 50, "test": 200}
    with pytest.raises(DataError, match="no built-in data set 'builtin:mnist'"):
        images.open_image_data({**DATA, "source": "builtin:mnist"}, tmp_path, seed=1)


def test_tfds_source_offline_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=12, data_dir=str(tmp_path)):
        data = images.open_image_data({**DATA, "source": "tfds:cifar10"}, tmp_path, seed=1)
        assert len(data.class_names) == 10  # names come from the TFDS builder's ClassLabel
        assert {"train", "val"} <= set(data.splits)  # val: a slice of train
        image, label = next(iter(data.splits["train"]))
        assert image.shape == (16, 16, 3) and label.dtype == tf.int32


def test_tfds_unknown_dataset_is_one_line_error(tmp_path):
    with pytest.raises(DataError, match="could not load TFDS data set 'no_such_dataset_xyz'"):
        images.open_image_data({**DATA, "source": "tfds:no_such_dataset_xyz"}, tmp_path, seed=1)


def test_pipeline_batches_shuffles_and_caches():
    ds = tf.data.Dataset.range(10).map(lambda x: (x, x))
    batches = list(pipeline.batched(ds, 4, training=True, seed=3, cache=True))
    assert [len(b[0]) for b in batches] == [4, 4, 2]
    assert sorted(int(v) for b in batches for v in b[0]) == list(range(10))
    ordered = list(pipeline.batched(ds, 4, training=False))
    assert [int(v) for v in ordered[0][0]] == [0, 1, 2, 3]
    assert pipeline.should_cache("auto", 1000, 1000)
    assert not pipeline.should_cache("auto", 10**9, 10**6)
    assert not pipeline.should_cache("off", 1, 1)
