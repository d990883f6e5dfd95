"""Image data: class-per-folder directories, CSV/TSV manifests and TensorFlow Datasets.

`open_image_data` reads the `[data]` section of a config and returns an
`ImageData` whose splits are tf.data datasets of `(image, label)` pairs, the
image a float32 tensor of shape `(height, width, 3)` with values in [0, 255]
(the model rescales). A folder or manifest (`dltool.data.manifests`: rows of
`path,label[,split]`) source is checked before training: counts per class,
empty classes refused, every image decoded once so that corrupt files are
reported by path before the first epoch.

Before an image is decoded, its size is read from its header
(`read_image_size`) and an image over `data.max_pixels` is refused by path
(`check_image_file`, and `check_image_bytes` for bytes a server receives): a
PNG of 1.5 MB can hold 23000x23000 pixels, 1.6 GB once decoded.
"""

import collections
import concurrent.futures
import dataclasses
import io
import struct
import typing
from pathlib import Path

from dltool._tf import tf
from dltool.core import auto
from dltool.data import manifests
from dltool.data import splits as splits_lib
from dltool.data.tfds_loader import prepared_builder
from dltool.core.errors import DataError, op_message

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".gif", ".bmp"}
SAMPLES_ROOT = Path(__file__).resolve().parent / "samples"
_VAL_FOLDERS = ("val", "validation")
_IMAGE_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
# Images the preflight decodes at once: its memory is at most this many
# images of `data.max_pixels` (3 bytes a pixel) and their files.
PREFLIGHT_WORKERS = 4
# JPEG markers of a frame header (SOF0..SOF15) that give the image's size;
# C4 (DHT), C8 (JPG) and CC (DAC) are in that range but are not frame headers.
_JPEG_FRAME_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# JPEG markers without a length field: TEM, RST0..RST7 and SOI.
_JPEG_BARE_MARKERS = frozenset({0x01, *range(0xD0, 0xD9)})


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
        class_counts: Training examples per class, or None when the source
            does not give them (TFDS).
        auto_choices: The `dltool.core.auto.Choice` of `data.image_size`
            when the config says "auto"; empty otherwise.
    """

    class_names: list
    image_size: tuple
    splits: dict
    sizes: dict
    report: list
    meta: dict = dataclasses.field(default_factory=dict)
    run_files: dict = dataclasses.field(default_factory=dict)
    class_counts: list = None
    auto_choices: list = dataclasses.field(default_factory=list)


def decode_image(data, image_size):
    """Decodes JPEG/PNG/GIF/BMP bytes into a float32 `(h, w, 3)` image.

    The training pipeline and the exported serving signature both use this
    function, so the model sees the same pixels in both.
    """
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, image_size)
    image.set_shape([image_size[0], image_size[1], 3])
    return image


class ImageSize(typing.NamedTuple):
    """An image's size as its header states it.

    Attributes:
        width: Width in pixels (a GIF's logical screen).
        height: Height in pixels.
        pixels: Pixels the decoder holds: `width * height`; for a GIF the sum
            of its frames' areas, when larger (TensorFlow's GIF decoder reads
            every frame even when it returns the first one: 100 frames of
            2000x2000 took 400 MB).
    """

    width: int
    height: int
    pixels: int


def read_image_size(stream):
    """Reads the size of a JPEG, PNG, GIF or BMP image from its header.

    Nothing is decoded. PNG, BMP and a GIF's screen take the first few dozen
    bytes; a JPEG's segments before its frame header (EXIF, ICC profile) are
    skipped with seeks, and a GIF's blocks are walked to count its frames.

    Args:
        stream: A binary file object that can seek, at any position.

    Returns:
        An `ImageSize`, or None when the header is missing or truncated or
        the data is none of the four formats.
    """
    stream.seek(0)
    head = stream.read(26)
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        if len(head) < 24 or head[12:16] != b"IHDR":  # IHDR is always the first chunk
            return None
        width, height = struct.unpack(">II", head[16:24])
        return ImageSize(width, height, width * height)
    if head.startswith((b"GIF87a", b"GIF89a")):
        return _gif_size(stream, head)
    if head.startswith(b"BM"):
        # A BITMAPINFOHEADER (40 bytes) or a later version of it. The 12-byte
        # OS/2 header has 16-bit fields that TensorFlow does not decode.
        if len(head) < 26 or struct.unpack("<I", head[14:18])[0] < 40:
            return None
        width, height = struct.unpack("<ii", head[18:26])  # height < 0: top-down rows
        return ImageSize(abs(width), abs(height), abs(width) * abs(height))
    if head.startswith(b"\xff\xd8"):
        return _jpeg_size(stream)
    return None


def _jpeg_size(stream):
    """Returns the `ImageSize` of a JPEG's first frame header, or None.

    The segments before it are walked the way libjpeg reads them: stray
    bytes before a marker and fill bytes (0xFF) are skipped, every other
    marker's segment is skipped by its length.
    """
    stream.seek(2)  # past SOI
    while True:
        marker = _next_jpeg_marker(stream)
        if marker is None or marker in (0x00, 0xD9, 0xDA):
            return None  # the data ends, or image data (SOS) before any frame header
        if marker in _JPEG_BARE_MARKERS:
            continue
        length = stream.read(2)
        if len(length) < 2 or struct.unpack(">H", length)[0] < 2:
            return None
        if marker in _JPEG_FRAME_MARKERS:
            frame = stream.read(5)  # sample precision, height, width
            if len(frame) < 5:
                return None
            _, height, width = struct.unpack(">BHH", frame)
            return ImageSize(width, height, width * height)
        stream.seek(struct.unpack(">H", length)[0] - 2, io.SEEK_CUR)


def _next_jpeg_marker(stream):
    """Returns the code of the next JPEG marker (the byte after 0xFF), or None at the end."""
    byte = stream.read(1)
    while byte and byte != b"\xff":
        byte = stream.read(1)
    while byte == b"\xff":
        byte = stream.read(1)
    return byte[0] if byte else None


def _gif_size(stream, head):
    """Returns a GIF's `ImageSize`: its screen, and the area of all its frames.

    Args:
        stream: The GIF file.
        head: Its first bytes (at least the 13 of the header and screen
            descriptor, or it is truncated).
    """
    if len(head) < 13:
        return None
    width, height, flags = struct.unpack("<HHB", head[6:11])
    colour_table = 3 << ((flags & 7) + 1) if flags & 0x80 else 0  # global colour table
    stream.seek(13 + colour_table)
    pixels = 0
    while True:
        block = stream.read(1)
        if block == b"\x2c":  # image descriptor: left, top, width, height, flags
            frame = stream.read(9)
            if len(frame) < 9:
                return None
            _, _, frame_width, frame_height, frame_flags = struct.unpack("<HHHHB", frame)
            pixels += frame_width * frame_height
            if frame_flags & 0x80:  # local colour table
                stream.seek(3 << ((frame_flags & 7) + 1), io.SEEK_CUR)
            stream.seek(1, io.SEEK_CUR)  # LZW minimum code size
        elif block == b"\x21":  # extension: label, then sub-blocks
            stream.seek(1, io.SEEK_CUR)
        else:  # the trailer (0x3B), or the data ends: what was read is what decodes
            return ImageSize(width, height, max(pixels, width * height)) if pixels else None
        if not _skip_gif_sub_blocks(stream):
            return None


def _skip_gif_sub_blocks(stream):
    """Skips GIF data sub-blocks up to their terminator; returns False if the data ends first."""
    while True:
        size = stream.read(1)
        if not size:
            return False
        if size == b"\x00":
            return True
        stream.seek(size[0], io.SEEK_CUR)


def check_image_size(size, max_pixels):
    """Returns why an image of `size` must not be decoded, or None.

    Args:
        size: The `ImageSize` its header states, or None if it has none.
        max_pixels: The largest `size.pixels` allowed (`data.max_pixels`).
    """
    if size is None:
        return "cannot be decoded: no image size in its header"
    if size.pixels > max_pixels:
        frames = " in its frames" if size.pixels != size.width * size.height else ""
        return (f"{size.width}x{size.height}, {size.pixels} pixels{frames}, "
                f"over data.max_pixels = {max_pixels}")
    return None


def _check_header(stream, max_pixels):
    """Returns why the image in `stream` is not usable, judged by its header (nothing decoded)."""
    head = stream.read(len(max(_IMAGE_MAGIC, key=len)))
    if not head:
        return "empty file"
    if not head.startswith(_IMAGE_MAGIC):
        return "not a JPEG, PNG, GIF or BMP image"
    return check_image_size(read_image_size(stream), max_pixels)


def check_image_bytes(data, max_pixels):
    """Returns why encoded image bytes must not be decoded, or None.

    Checks the format and the size the header states, without decoding:
    what a server calls on each request's bytes before they reach the
    exported model, whose serving signature decodes whatever it is given.

    Args:
        data: The encoded image (bytes).
        max_pixels: The limit on its pixels: for an export,
            `ImageClassifierTask.max_pixels(meta)` (the `data.max_pixels` it
            was trained with).

    Returns:
        A one-line reason, or None if the bytes may be decoded.
    """
    return _check_header(io.BytesIO(data), max_pixels)


def check_image_file(path, max_pixels):
    """Returns why `path` is not a usable image, or None if it is one.

    See `inspect_image_file`, which also returns the image's size.
    """
    return inspect_image_file(path, max_pixels)[0]


def inspect_image_file(path, max_pixels):
    """Checks an image file and reads its size from its header.

    The header is checked first (`check_image_bytes`' checks), so an image
    over the limit is never decoded; a usable-looking one is then decoded
    once, to find corrupt data.

    Args:
        path: The image file.
        max_pixels: The limit on its pixels (`data.max_pixels`).

    Returns:
        A tuple `(reason, size)`: why it is not a usable image (None if it
        is one), and the `ImageSize` its header states (None if it has none).
    """
    size = None
    try:
        with open(path, "rb") as f:
            reason = _check_header(f, max_pixels)
            if reason is not None:
                return reason, size
            size = read_image_size(f)
            f.seek(0)
            data = f.read()
    except OSError as e:
        return f"unreadable: {e.strerror}", size
    return decode_original(data)[1], size


def decode_original(data):
    """Decodes image bytes at their own size, RGB (as `decode_image` does
    before it resizes).

    Returns:
        `(uint8 array (height, width, 3), None)`, or `(None, reason)` when
        the bytes do not decode (`cannot be decoded: ...`).
    """
    try:
        return tf.io.decode_image(data, channels=3, expand_animations=False).numpy(), None
    except (tf.errors.InvalidArgumentError, tf.errors.UnknownError) as e:
        return None, "cannot be decoded: " + op_message(e.message, "not an image")


def find_bad_images(paths, max_pixels, sizes=None):
    """Checks every image once (`inspect_image_file`), `PREFLIGHT_WORKERS` at a time.

    Args:
        paths: The image files.
        max_pixels: The limit on an image's pixels (`data.max_pixels`).
        sizes: A dict that gets the `ImageSize` of each usable image, by
            path; or None.

    Returns:
        A list of `(path, reason)` for the files that are not usable images.
    """
    found = _map_in_order(lambda path: inspect_image_file(path, max_pixels), paths,
                          PREFLIGHT_WORKERS)
    bad = []
    for path, (reason, size) in zip(paths, found):
        if reason is not None:
            bad.append((path, reason))
        elif sizes is not None:
            sizes[path] = size
    return bad


def _map_in_order(fn, items, workers):
    """Yields `fn(item)` for each item, in order, computed by `workers` threads.

    At most `workers` calls run at once, and at most twice as many are
    submitted: `pool.map` submits them all up front, and a million pending
    futures alone took 1.7 GB.
    """
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        pending = collections.deque()
        for item in items:
            if len(pending) == 2 * workers:
                yield pending.popleft().result()
            pending.append(pool.submit(fn, item))
        while pending:
            yield pending.popleft().result()


def open_image_data(data, root, *, seed, skip_bad=False):
    """Opens the image data a `[data]` config section describes.

    Args:
        data: The config's `data` dict (`source`, `image_size`,
            `validation_split`, `max_pixels`, ...).
        root: Folder that relative paths in `source` are relative to.
        seed: Seed of the validation split when there is no `val/` folder.
        skip_bad: Drop corrupt images (and say how many) instead of failing.

    Returns:
        An `ImageData`.

    Raises:
        DataError: missing or empty data, empty class, corrupt images or
            images over `data["max_pixels"]`.
    """
    source = data["source"]
    image_size = data["image_size"]  # a list, or "auto" (decided by the preflight)
    if source.startswith("tfds:"):
        return _open_tfds(source[len("tfds:"):], image_size, data["validation_split"])
    skip_bad = skip_bad or data["skip_bad"]
    if not source.startswith("builtin:") and manifests.is_manifest(source):
        manifest = resolve_path(source, root)
        report = []
        rows = manifests.read_manifest(manifest, skip_bad, report)
        class_names = sorted({label for _, label in rows["train"]})
        index = {name: i for i, name in enumerate(class_names)}
        files = {split: [(file, index[label]) for file, label in entries]
                 for split, entries in rows.items()}
        return _open_files(files, class_names, manifest, image_size, data["validation_split"],
                           seed, skip_bad, data["max_pixels"], report)
    folder = resolve_folder(source, root)
    return _open_folder(folder, image_size, data["validation_split"], seed, skip_bad,
                        data["max_pixels"])


def resolve_folder(source, root):
    """Returns the folder a `source` string names (`builtin:NAME` or a path)."""
    if source.startswith("builtin:"):
        folder = SAMPLES_ROOT / source[len("builtin:"):]
        if not folder.is_dir():
            available = ", ".join(sorted(p.name for p in SAMPLES_ROOT.iterdir() if p.is_dir()))
            raise DataError(f"no built-in data set {source!r}; available: builtin:{available}")
        return folder
    folder = resolve_path(source, root)
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist")
    return folder


def resolve_path(source, root):
    """`source` as a path, relative ones under `root`."""
    path = Path(source).expanduser()
    return path if path.is_absolute() else Path(root) / path


def _open_folder(folder, image_size, validation_split, seed, skip_bad, max_pixels):
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
    return _open_files(files, class_names, train_dir, image_size, validation_split, seed,
                       skip_bad, max_pixels, [])


def _open_files(files, class_names, origin, image_size, validation_split, seed, skip_bad,
                max_pixels, report):
    """The preflight and datasets of listed images, from folders or a manifest.

    Args:
        files: Dict of split name to a list of `(path string, label)`.
        class_names: Class names, index = label.
        origin: The train folder or the manifest, for the messages.
        image_size: `[height, width]`, or "auto": from the sizes of the
            training images the preflight reads (`auto.choose_image_size`).
        report: Lines already to show (a manifest's skipped rows).
    """
    sizes = {}
    files = drop_bad_images(files, max_pixels, skip_bad, report, sizes=sizes)
    counts = {s: _count(f, len(class_names)) for s, f in files.items()}
    empty = [class_names[i] for i, n in enumerate(counts["train"]) if n == 0]
    if empty:
        raise DataError(f"class {empty[0]!r} in {origin} has no usable images")
    if "val" not in files and validation_split > 0:
        files["train"], files["val"] = splits_lib.stratified_split(files["train"],
                                                                  validation_split, seed)
        report.append(f"validation: {validation_split:.0%} of train per class (seed {seed})")
    counts = {s: _count(f, len(class_names)) for s, f in files.items()}
    report[:0] = [*splits_lib.count_table(class_names, counts),
                  splits_lib.balance_line(class_names, counts["train"])]
    choices = []
    if auto.is_auto(image_size):
        choices.append(auto.choose_image_size([(sizes[p].width, sizes[p].height)
                                               for p, _ in files["train"]]))
        image_size = choices[-1].value
    image_size = tuple(image_size)
    splits = {s: _paths_dataset(f, image_size) for s, f in files.items()}
    return ImageData(class_names, image_size, splits, {s: len(f) for s, f in files.items()},
                     report, class_counts=counts["train"], auto_choices=choices)


def drop_bad_images(files, max_pixels, skip_bad, report, sizes=None):
    """The preflight: checks every listed image once (`find_bad_images`).

    Args:
        files: Dict of split name to a list of `(path string, label)`.
        max_pixels: The limit on an image's pixels (`data.max_pixels`).
        skip_bad: Drop the unusable images instead of failing.
        report: A list that gets the line saying how many were skipped.
        sizes: A dict that gets each usable image's `ImageSize` by path
            (its header's, read by the same check), or None.

    Returns:
        `files` without the unusable images.

    Raises:
        DataError: naming the first unusable images, without `skip_bad`.
    """
    bad = find_bad_images([p for split in files.values() for p, _ in split], max_pixels,
                          sizes)
    if bad and not skip_bad:
        shown = "; ".join(f"{p} ({r})" for p, r in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise DataError(f"{len(bad)} unusable image(s): {shown}{more}; "
                        "remove them or pass --skip-bad")
    if bad:
        bad_paths = {p for p, _ in bad}
        files = {s: [(p, y) for p, y in f if p not in bad_paths] for s, f in files.items()}
        report.append(f"skipped {len(bad)} unusable image(s) (--skip-bad)")
    return files


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


def _paths_dataset(pairs, image_size, label_dtype=tf.int32):
    paths = tf.constant([p for p, _ in pairs])
    labels = tf.constant([y for _, y in pairs], dtype=label_dtype)
    ds = tf.data.Dataset.from_tensor_slices((paths, labels))
    return ds.map(lambda p, y: (decode_image(tf.io.read_file(p), image_size), y),
                  num_parallel_calls=tf.data.AUTOTUNE)


def _open_tfds(name, image_size, validation_split):
    builder = prepared_builder(name)
    info = builder.info
    label_feature = info.features["label"]
    choices = []
    if auto.is_auto(image_size):
        choices.append(_tfds_image_size(name, info))
        image_size = choices[-1].value
    image_size = tuple(image_size)
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
    return ImageData(list(label_feature.names), image_size, splits, sizes, report,
                     auto_choices=choices)


def _tfds_image_size(name, info):
    """The `auto` image size of a TFDS data set: from the size its features
    declare (`tfds:cifar10`: 32x32), which every image has.

    Raises:
        DataError: its images have no declared size (they vary).
    """
    shape = info.features["image"].shape if "image" in info.features else None
    if not shape or shape[0] is None or shape[1] is None:
        raise DataError(f'data.image_size = "auto" needs images of one declared size; '
                        f"tfds:{name}'s images vary: set data.image_size = [height, width]")
    height, width = shape[:2]
    return auto.choose_image_size([(width, height)] * info.splits["train"].num_examples)
