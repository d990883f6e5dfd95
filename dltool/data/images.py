"""Image data: class-per-folder directories and TensorFlow Datasets.

`open_image_data` reads the `[data]` section of a config and returns an
`ImageData` whose splits are tf.data datasets of `(image, label)` pairs, the
image a float32 tensor of shape `(height, width, 3)` with values in [0, 255]
(the model rescales). A folder source is checked before training: counts per
class, empty classes refused, every image decoded once so that corrupt files
are reported by path before the first epoch.
"""

import concurrent.futures
import dataclasses
from pathlib import Path

from dltool._tf import tf
from dltool.data import splits as splits_lib
from dltool.data.tfds_loader import prepared_builder
from dltool.core.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp"}
SAMPLES_ROOT = Path(__file__).resolve().parent / "samples"
_VAL_FOLDERS = ("val", "validation")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")


@dataclasses.dataclass
class ImageData:
    """Splits of an image data set.

    Attributes:
        class_names: Label names, index = label.
        image_size: `(height, width)` every image is resized to.
        splits: Dict of split name (`train`, `val`, `test`) to an unbatched
            `tf.data.Dataset` of `(image, label)`.
        sizes: Dict of split name to number of examples.
        report: Lines describing the data (counts, skipped files) to show.
        meta: What an exported model needs to know of the data (set by the
            task).
        run_files: Dict of file name to text the run folder keeps (none).
    """

    class_names: list
    image_size: tuple
    splits: dict
    sizes: dict
    report: list
    meta: dict = dataclasses.field(default_factory=dict)
    run_files: dict = dataclasses.field(default_factory=dict)


def decode_image(data, image_size):
    """Decodes JPEG/PNG/GIF/BMP bytes into a float32 `(h, w, 3)` image.

    The training pipeline and the exported serving signature both use this
    function, so the model sees the same pixels in both.
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, image_size)
    image.set_shape([image_size[0], image_size[1], 3])
    return image


def check_image_file(path):
    """Returns why `path` is not a usable image, or None if it is one."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        return f"unreadable: {e.strerror}"
    if not data:
        return "empty file"
    if not data.startswith(_IMAGE_MAGIC):
        return "not a JPEG, PNG, GIF or BMP image"
    try:
        tf.io.decode_image(data, channels=3, expand_animations=False)
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        return "cannot be decoded: " + e.message.splitlines()[0][:120]
    return None


def find_bad_images(paths):
    """Decodes every image once.

    Returns:
        A list of `(path, reason)` for the files that are not usable images.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        reasons = list(pool.map(check_image_file, paths))
    return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def open_image_data(data, root, *, seed, skip_bad=False):
    """Opens the image data a `[data]` config section describes.

    Args:
        data: The config's `data` dict (`source`, `image_size`,
            `validation_split`, ...).
        root: Folder that relative paths in `source` are relative to.
        seed: Seed of the validation split when there is no `val/` folder.
        skip_bad: Drop corrupt images (and say how many) instead of failing.

    Returns:
        An `ImageData`.

    Raises:
        DataError: missing or empty data, empty class, corrupt images.
    """
    source = data["source"]
    image_size = tuple(data["image_size"])
    if source.startswith("tfds:"):
        return _open_tfds(source[len("tfds:"):], image_size, data["validation_split"])
    folder = resolve_folder(source, root)
    return _open_folder(folder, image_size, data["validation_split"], seed,
                        skip_bad or data["skip_bad"])


def resolve_folder(source, root):
    """Returns the folder a `source` string names (`builtin:NAME` or a path)."""
    if source.startswith("builtin:"):
        folder = SAMPLES_ROOT / source[len("builtin:"):]
        if not folder.is_dir():
            available = ", ".join(sorted(p.name for p in SAMPLES_ROOT.iterdir() if p.is_dir()))
            raise DataError(f"no built-in data set {source!r}; available: builtin:{available}")
        return folder
    folder = Path(source).expanduser()
    if not folder.is_absolute():
        folder = Path(root) / folder
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    return folder


def _open_folder(folder, image_size, validation_split, seed, skip_bad):
    train_dir = folder / "train" if (folder / "train").is_dir() else folder
    class_names = sorted(p.name for p in train_dir.iterdir()
                         if p.is_dir() and not p.name.startswith(".")
                         and p.name not in ("test",) + _VAL_FOLDERS)
    if not class_names:
        raise DataError(f"no class folders in {train_dir}: expected {train_dir}/<class>/<image>")
    files = {"train": _list_split(train_dir, class_names)}
    val_dir = next((folder / n for n in _VAL_FOLDERS if (folder / n).is_dir()), None)
    if val_dir is not None:
        files["val"] = _list_split(val_dir, class_names)
    if (folder / "test").is_dir():
        files["test"] = _list_split(folder / "test", class_names)

    report = []
    bad = find_bad_images([p for split in files.values() for p, _ in split])
    if bad and not skip_bad:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(f"{len(bad)} unusable image(s): {shown}{more}; "
                        "remove them or pass --skip-bad")
    if bad:
        bad_paths = {p for p, _ in bad}
        files = {s: [(p, y) for p, y in f if p not in bad_paths] for s, f in files.items()}
        report.append(f"skipped {len(bad)} unusable image(s) (--skip-bad)")

    counts = {s: _count(f, len(class_names)) for s, f in files.items()}
    empty = [class_names[i] for i, n in enumerate(counts["train"]) if n == 0]
    if empty:
        raise DataError(f"class {empty[0]!r} in {train_dir} has no usable images")
    if "val" not in files and validation_split > 0:
        files["train"], files["val"] = splits_lib.stratified_split(files["train"],
                                                                  validation_split, seed)
        report.append(f"validation: {validation_split:.0%} of train per class (seed {seed})")
    report[:0] = splits_lib.count_table(class_names, {s: _count(f, len(class_names))
                                                      for s, f in files.items()})
    splits = {s: _paths_dataset(f, image_size) for s, f in files.items()}
    sizes = {s: len(f) for s, f in files.items()}
    return ImageData(class_names, image_size, splits, sizes, report)


def _list_split(split_dir, class_names):
    extra = sorted(p.name for p in split_dir.iterdir() if p.is_dir()
                   and not p.name.startswith(".") and p.name not in class_names)
    if extra and split_dir.name != "train":
        raise DataError(f"{split_dir} has class folder {extra[0]!r} that train/ does not have")
    pairs = []
    for label, name in enumerate(class_names):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            continue
        for path in sorted(class_dir.iterdir()):
            if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith("."):
                pairs.append((str(path), label))
    if not pairs:
        raise DataError(f"no images in {split_dir} (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")
    return pairs


def _count(pairs, num_classes):
    return splits_lib.count_labels((label for _, label in pairs), num_classes)


def _paths_dataset(pairs, image_size):
    paths = tf.constant([p for p, _ in pairs])
    labels = tf.constant([y for _, y in pairs], dtype=tf.int32)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.map(lambda p, y: (decode_image(tf.io.read_file(p), image_size), y),
                  num_parallel_calls=tf.data.AUTOTUNE)


def _open_tfds(name, image_size, validation_split):
    builder = prepared_builder(name)
    info = builder.info
    label_feature = info.features["label"]
    available = set(info.splits.keys())
    wanted = {"train": "train"}
    if "validation" in available:
        wanted["val"] = "validation"
    elif validation_split > 0:
        cut = 100 - round(validation_split * 100)
        wanted = {"train": f"train[:{cut}%]", "val": f"train[{cut}%:]"}
    if "test" in available:
        wanted["test"] = "test"
    splits, sizes = {}, {}
    for split, spec in wanted.items():
        ds = builder.as_dataset(split=spec, as_supervised=True, shuffle_files=False)
        sizes[split] = int(ds.cardinality())
        splits[split] = ds.map(
            lambda x, y: (tf.image.resize(tf.image.grayscale_to_rgb(x) if x.shape[-1] == 1
                                          else x, image_size), tf.cast(y, tf.int32)),
            num_parallel_calls=tf.data.AUTOTUNE)
    report = [f"TFDS {name}: " + ", ".join(f"{s} {n}" for s, n in sizes.items())]
    return ImageData(list(label_feature.names), image_size, splits, sizes, report)
