"""Image CSV/TSV manifests (`data.source = "labels.csv"`): paths relative to
the file or absolute, an optional split column, the same preflight as folders,
and every bad row named by file and line."""

import pytest

from conftest import invoke
from dltool.core.errors import DataError
from dltool.data import images
from test_data import DATA, _jpeg


def _images(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:03d}.jpg"
        path.write_bytes(_jpeg(i))
        paths.append(path)
    return paths


def _open(manifest, root, **changes):
    return images.open_image_data({**DATA, "source": str(manifest), **changes}, root, seed=1)


def test_relative_and_absolute_paths_splits_and_counts(tmp_path):
    photos = _images(tmp_path / "photos", 10)
    other = _images(tmp_path / "elsewhere", 2)
    rows = ["path,label,split"]
    rows += [f"photos/{p.name},{'cat' if i % 2 else 'dog'}," for i, p in enumerate(photos[:8])]
    rows += [f"photos/{photos[8].name},cat,test", f"photos/{photos[9].name},dog,TEST",
             f"{other[0]},cat,val", f"{other[1]},dog,validation"]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    data = _open("labels.csv", tmp_path)
    assert data.class_names == ["cat", "dog"]
    assert data.sizes == {"train": 8, "val": 2, "test": 2}  # a val split given: none held out
    assert data.class_counts == [4, 4]
    assert data.report[0].split() == ["class", "train", "val", "test"]
    image, label = next(iter(data.splits["test"]))
    assert image.shape == (16, 16, 3) and int(label) == 0


def test_tsv_without_split_column_holds_out_validation(tmp_path):
    photos = _images(tmp_path / "p", 8)
    rows = ["label\tpath"] + [f"{'a' if i < 4 else 'b'}\tp/{p.name}" for i, p in enumerate(photos)]
    (tmp_path / "m.tsv").write_text("\n".join(rows) + "\n")
    data = _open(tmp_path / "m.tsv", tmp_path)
    assert data.sizes == {"train": 6, "val": 2}
    assert "validation: 25% of train per class (seed 1)" in data.report


@pytest.mark.parametrize("lines, message", [
    (["file,label", "p/000.jpg,cat"],
     "m.csv:1: a manifest's header names the columns path and label (and optionally split); "
     "found file, label"),
    (["path,label", "p/000.jpg"], "m.csv:2: expected the fields path, label; got 1"),
    (["path,label", "p/000.jpg,"], "m.csv:2: empty label"),
    (["path,label,split", "p/000.jpg,cat,dev"],
     "m.csv:2: split 'dev' is not one of train, val, validation, test (or empty: train)"),
    (["path,label", "p/000.jpg,cat", "p/404.jpg,dog", "p/405.jpg,dog"],
     "m.csv:3: no image file {root}/p/404.jpg (2 such rows); fix the manifest or pass "
     "--skip-bad"),
    (["path,label,split", "p/000.jpg,cat,train", "p/001.jpg,dog,test"],
     "m.csv:3: label 'dog' of a test row has no training rows (labels: cat)"),
    (["path,label,split", "p/000.jpg,cat,test"], "m.csv has no training rows (split empty or "
                                                 "train)"),
])
def test_bad_rows_are_named_by_file_and_line(tmp_path, lines, message):
    _images(tmp_path / "p", 2)
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        _open("m.csv", tmp_path)
    assert str(error.value) == f"{tmp_path}/" + message.format(root=tmp_path)


def test_missing_images_skipped_with_skip_bad_and_corrupt_ones_by_path(tmp_path):
    photos = _images(tmp_path / "p", 4)
    (tmp_path / "p" / "bad.jpg").write_bytes(b"not an image")
    rows = ["path,label"] + [f"p/{p.name},{'a' if i % 2 else 'b'}" for i, p in enumerate(photos)]
    (tmp_path / "m.csv").write_text("\n".join(rows + ["p/gone.jpg,a", "p/bad.jpg,b"]) + "\n")
    with pytest.raises(DataError, match=r"m.csv:6: no image file .*gone.jpg"):
        _open("m.csv", tmp_path)
    data = _open("m.csv", tmp_path, skip_bad=True, validation_split=0.0)
    assert data.sizes == {"train": 4}
    assert "skipped 1 row(s) of m.csv whose image file is missing (--skip-bad)" in data.report
    assert "skipped 1 unusable image(s) (--skip-bad)" in data.report
    with pytest.raises(DataError, match="data manifest .*nothing.csv does not exist"):
        _open("nothing.csv", tmp_path)


@pytest.mark.slow
def test_train_from_a_manifest(runner, tmp_path):
    from dltool.data.images import SAMPLES_ROOT

    rows = ["path,label,split"]
    for split in ("train", "test"):
        for folder in sorted((SAMPLES_ROOT / "cifar10" / split).iterdir())[:3]:
            rows += [f"{p},{folder.name},{split}" for p in sorted(folder.iterdir())[:12]]
    (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
    project = tmp_path / "proj"
    assert invoke(runner, "new", "image-classifier", project, "--data",
                  tmp_path / "labels.csv").exit_code == 0
    result = invoke(runner, "train", "--project", project, "--epochs", 1, "--set",
                    "model.filters=8", "--set", "model.blocks=1", "--set", "training.verbose=0")
    assert result.exit_code == 0, result.output
    assert "airplane        11       1      12" in result.output
    result = invoke(runner, "evaluate", "--project", project)
    assert result.exit_code == 0 and "test split, 36 examples" in result.stdout


def test_new_writes_a_relative_data_path_from_the_project(runner, tmp_path, monkeypatch):
    """`--data` is typed from the current folder; the project reads it from its own."""
    import tomllib

    (tmp_path / "labels.csv").write_text("path,label\n")
    (tmp_path / "photos").mkdir()
    monkeypatch.chdir(tmp_path)
    for index, (data, written) in enumerate((
            ("labels.csv", "../labels.csv"), ("photos", "../photos"),
            (str(tmp_path / "photos"), str(tmp_path / "photos")),
            ("tfds:cifar10", "tfds:cifar10"), ("missing.csv", "missing.csv"))):
        project = tmp_path / f"proj{index}"
        assert invoke(runner, "new", "image-classifier", project.name, "--data",
                      data).exit_code == 0
        config = tomllib.loads((project / "config.toml").read_text())
        assert config["data"]["source"] == written, data
