"""Image bombs: images whose header states more pixels than `data.max_pixels`.

A PNG of 23000x23000 black pixels compresses to 1.5 MB and decodes to 1.6 GB.
These tests write such files cheaply (`write_png_bomb`), check that the
header reader gives the size of real JPEG, PNG, GIF and BMP files, and that
train and predict refuse a bomb by path, with one line and bounded memory.
"""

import io
import json
import os
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image  # matplotlib's dependency: the GIF and BMP encoder

from conftest import TINY_MODEL, invoke
from dltool._tf import tf
from dltool.data import images

LIMIT = 40_000_000  # the template's default data.max_pixels
BOMB_SIDE = 23000
BOMB_REASON = (f"{BOMB_SIDE}x{BOMB_SIDE}, {BOMB_SIDE ** 2} pixels, "
               f"over data.max_pixels = {LIMIT}")


def _png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _zlib_of_zeros(size, piece=1 << 20):
    """Returns the zlib stream of `size` zero bytes, without compressing them all.

    After a full flush the compressor starts afresh, so every further piece
    of zeros compresses to the same bytes: two pieces are compressed and the
    second repeated. The Adler-32 of zeros is `size % 65521` (high) and 1.
    """
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(piece)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    again = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(size, piece)
    end = zlib.compressobj(9, zlib.DEFLATED, -15)
    last = end.compress(bytes(rest)) + end.flush()
    body = (first + again * (whole - 1) if whole else b"") + last
    return b"\x78\xda" + body + struct.pack(">I", ((size % 65521) << 16) | 1)


def write_png_bomb(path, width, height):
    """Writes a valid black RGB PNG of `width` x `height` (filter 0 rows of zeros)."""
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n")
        f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
        f.write(_png_chunk(b"IDAT", _zlib_of_zeros(height * (1 + 3 * width))))
        f.write(_png_chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def bomb_bytes(tmp_path_factory):
    """The bytes of a 23000x23000 PNG (about 1.5 MB)."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.png"
    write_png_bomb(path, BOMB_SIDE, BOMB_SIDE)
    return path.read_bytes()


def _jpeg(seed, size=(20, 24)):
    pixels = np.random.default_rng(seed).integers(0, 255, (*size, 3), dtype=np.uint8)
    return tf.io.encode_jpeg(pixels).numpy()


def _data_with_bombs(root, bomb_bytes, bombs=4):
    """A class-per-folder data set: 2 classes of 8 JPEGs, and `bombs` PNG bombs in cat/."""
    for name in ("cat", "dog"):
        folder = root / "train" / name
        folder.mkdir(parents=True)
        for i in range(8):
            (folder / f"{i:03d}.jpg").write_bytes(_jpeg(i))
    paths = [root / "train" / "cat" / f"bomb{i}.png" for i in range(bombs)]
    for path in paths:
        path.write_bytes(bomb_bytes)
    return root, paths


# Runs the command as its child and prints the child's peak RSS. A process
# forked from pytest starts with pytest's own resident pages counted in its
# peak (measured: a child of a 1.5 GB parent that only ran `python -c pass`
# reported 1,514 MB), so the command is forked from this small launcher.
_LAUNCHER = """
import resource, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
try:
    code = child.wait(float(sys.argv[1]))
except subprocess.TimeoutExpired:
    child.kill()
    code = child.wait()
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
sys.stderr.write(f"\\n{PEAK_MARK}{peak}\\n")
sys.exit(code if code >= 0 else 128 - code)
"""
PEAK_MARK = "DLTOOL_TEST_PEAK_KB="


def _run_measured(args, cwd, timeout=300):
    """Runs `python -m dltool.cli ARGS`; returns `(exit code, stdout, stderr, peak RSS in MB)`.

    The peak is the command's own, measured by `_LAUNCHER` (the command is
    killed after `timeout` seconds).
    """
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    launcher = _LAUNCHER.replace("{PEAK_MARK}", PEAK_MARK)
    proc = subprocess.run([sys.executable, "-c", launcher, str(timeout), sys.executable, "-m",
                           "dltool.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, timeout=timeout + 60)
    err, _, peak = proc.stderr.decode().rpartition(f"\n{PEAK_MARK}")
    return proc.returncode, proc.stdout.decode(), err, int(peak) / 1024


def _error_lines(stderr):
    """The lines of stderr that are not TensorFlow's own logging."""
    return [line for line in stderr.splitlines()
            if line.strip() and not line.startswith(("WARNING: All log", "I0000", "E0000",
                                                     "W0000"))]


# ---- the header reader ----

def _gif(frames, size):
    buffer = io.BytesIO()
    pictures = [Image.new("L", size, 255 * (i % 2)) for i in range(frames)]  # frames differ
    pictures[0].save(buffer, "GIF", save_all=frames > 1, append_images=pictures[1:])
    return buffer.getvalue()


def _pil(kind, size):
    buffer = io.BytesIO()
    Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(buffer, kind)
    return buffer.getvalue()


def _jpeg_with_exif(size):
    """A JPEG with a 40 KB APP1 segment and fill bytes before its frame header."""
    data = tf.io.encode_jpeg(np.zeros((size[1], size[0], 3), np.uint8)).numpy()
    app1 = b"\xff\xe1" + struct.pack(">H", 40_002) + b"Exif\x00\x00" + bytes(39_994)
    return data[:2] + app1 + b"\xff\xff" + data[2:]


@pytest.mark.parametrize("encode, size, pixels", [
    (lambda s: tf.io.encode_jpeg(np.zeros((s[1], s[0], 3), np.uint8)).numpy(), (53, 37), None),
    (lambda s: tf.io.encode_jpeg(np.zeros((s[1], s[0], 3), np.uint8),
                                 progressive=True).numpy(), (640, 480), None),
    (_jpeg_with_exif, (321, 123), None),
    (lambda s: tf.io.encode_png(np.zeros((s[1], s[0], 3), np.uint8)).numpy(), (300, 17), None),
    (lambda s: _gif(1, s), (45, 67), None),
    (lambda s: _gif(5, s), (40, 30), 5 * 40 * 30),
    (lambda s: _pil("BMP", s), (33, 21), None),
], ids=["jpeg", "jpeg-progressive", "jpeg-exif", "png", "gif", "gif-5-frames", "bmp"])
def test_header_reader_gives_the_size_of_real_files(encode, size, pixels):
    data = encode(size)
    assert tf.io.decode_image(data, expand_animations=False).shape[:2] == (size[1], size[0])
    found = images.read_image_size(io.BytesIO(data))
    assert found == (size[0], size[1], pixels or size[0] * size[1])


def test_header_reader_reads_the_embedded_samples():
    for path in sorted(images.SAMPLES_ROOT.glob("cifar10/test/*/000[0-2].jpg")):
        with open(path, "rb") as f:
            assert images.read_image_size(f)[:2] == (32, 32), path


def test_header_reader_reads_a_few_bytes_of_a_bomb(bomb_bytes):
    class CountingStream(io.BytesIO):
        read_bytes = 0

        def read(self, size=-1):
            data = super().read(size)
            self.read_bytes += len(data)
            return data

    stream = CountingStream(bomb_bytes)
    assert images.read_image_size(stream) == (BOMB_SIDE, BOMB_SIDE, BOMB_SIDE ** 2)
    assert stream.read_bytes <= 64


@pytest.mark.parametrize("data, size", [
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
     b"\xff\xc0\x00\x11\x08" + struct.pack(">HH", 60000, 50000) + b"\x03" + bytes(9),
     (50000, 60000)),
    (b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
     + b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0) + b"\x08\x01\x00\x00\x3b",
     (65535, 65535)),
    (b"BM" + bytes(12) + struct.pack("<IiiHH", 40, 100000, -70000, 1, 24) + bytes(24),
     (100000, 70000)),
], ids=["jpeg", "gif", "bmp"])
def test_huge_headers_are_refused_unread(data, size):
    assert images.read_image_size(io.BytesIO(data))[:2] == size
    assert images.check_image_bytes(data, LIMIT) == \
        f"{size[0]}x{size[1]}, {size[0] * size[1]} pixels, over data.max_pixels = {LIMIT}"


def test_animated_gif_counts_all_its_frames():
    data = _gif(12, (2000, 2000))  # 4 MP a frame, 48 MP in all: TensorFlow reads them all
    assert images.check_image_bytes(data, 5_000_000) == \
        "2000x2000, 48000000 pixels in its frames, over data.max_pixels = 5000000"
    assert images.check_image_bytes(data, 48_000_000) is None


def test_png_bomb_writer_writes_a_valid_png(tmp_path):
    write_png_bomb(tmp_path / "small.png", 301, 199)
    image = tf.io.decode_image((tmp_path / "small.png").read_bytes())
    assert image.shape == (199, 301, 3) and int(tf.reduce_max(image)) == 0


# ---- the preflight ----

def test_preflight_checks_at_most_its_workers_at_once(tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    paths = []
    for i in range(60):
        paths.append(str(tmp_path / "data" / f"{i}.jpg"))
        (tmp_path / "data" / f"{i}.jpg").write_bytes(_jpeg(i))
    check = images.inspect_image_file
    lock = threading.Lock()
    counts = {"submitted": 0, "finished": 0, "running": 0, "most_pending": 0, "most_running": 0}

    def counted_check(path, max_pixels):
        with lock:
            counts["running"] += 1
            counts["most_running"] = max(counts["most_running"], counts["running"])
        time.sleep(0.3 if path == paths[0] else 0.005)  # lets the submitter run ahead
        try:
            return check(path, max_pixels)
        finally:
            with lock:
                counts["running"] -= 1
                counts["finished"] += 1

    submit = images.concurrent.futures.ThreadPoolExecutor.submit

    def counted_submit(pool, fn, *args, **kwargs):
        with lock:
            counts["submitted"] += 1
            counts["most_pending"] = max(counts["most_pending"],
                                         counts["submitted"] - counts["finished"])
        return submit(pool, fn, *args, **kwargs)

    monkeypatch.setattr(images, "inspect_image_file", counted_check)
    monkeypatch.setattr(images.concurrent.futures.ThreadPoolExecutor, "submit", counted_submit)
    assert images.find_bad_images(paths, LIMIT) == []
    assert counts["finished"] == len(paths)
    assert counts["most_running"] <= images.PREFLIGHT_WORKERS
    assert counts["most_pending"] <= 2 * images.PREFLIGHT_WORKERS


def test_train_refuses_bombs_by_path_in_bounded_memory(project, tmp_path, bomb_bytes):
    data, bombs = _data_with_bombs(tmp_path / "data", bomb_bytes)
    code, out, err, peak_mb = _run_measured(
        ["train", "--epochs", 1, "--set", f"data.source={data}", *TINY_MODEL], cwd=project)
    assert code == 1, out + err
    (line,) = _error_lines(err)
    assert line.startswith("Error: 4 unusable image(s): ")
    for bomb in bombs[:3]:  # the message shows three, then "and 1 more"
        assert f"{bomb} ({BOMB_REASON})" in line
    assert line.endswith("and 1 more; remove them or pass --skip-bad")
    assert not list((project / "runs").glob("*")), "a run was started"
    # Decoding the four at once took 7.2 GB; TensorFlow alone takes about 0.7.
    assert peak_mb < 2500, f"peak RSS {peak_mb:.0f} MB"


@pytest.fixture(scope="module")
def skipped_and_exported(tmp_path_factory, bomb_bytes):
    """A project trained with --skip-bad on data holding bombs, then exported.

    Returns:
        `(project, the train command's output)`.
    """
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("skip")
    runner = CliRunner()
    assert invoke(runner, "new", "image-classifier", root / "proj").exit_code == 0
    data, _ = _data_with_bombs(root / "data", bomb_bytes, bombs=2)
    trained = invoke(runner, "train", "--project", root / "proj", "--epochs", 1, "--skip-bad",
                     "--set", f"data.source={data}", "--set", "data.validation_split=0.25",
                     *TINY_MODEL)
    assert trained.exit_code == 0, trained.output
    exported = invoke(runner, "export", "--project", root / "proj")
    assert exported.exit_code == 0, exported.output
    return root / "proj", trained.output


@pytest.mark.slow
def test_skip_bad_skips_the_bombs_and_says_so(skipped_and_exported):
    project, output = skipped_and_exported
    assert "skipped 2 unusable image(s) (--skip-bad)" in output
    (run,) = (project / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["sizes"]["train"] + record["sizes"]["val"] == 16  # the 16 JPEGs only


# ---- predict ----

@pytest.mark.slow
def test_export_records_the_limit(skipped_and_exported):
    project, _ = skipped_and_exported
    metadata = json.loads((project / "saved_models" / "proj" / "1" / "dltool.json").read_text())
    assert metadata["meta"]["max_pixels"] == LIMIT


@pytest.mark.slow
def test_predict_refuses_a_bomb_in_one_line_in_bounded_memory(skipped_and_exported, tmp_path,
                                                               bomb_bytes):
    project, _ = skipped_and_exported
    bomb = tmp_path / "big.png"
    bomb.write_bytes(bomb_bytes)
    code, out, err, peak_mb = _run_measured(["predict", bomb, "samples/cat.jpg"], cwd=project)
    assert code == 1, out + err
    assert _error_lines(err) == [f"Error: {bomb}: {BOMB_REASON}"]
    assert out == ""
    # Decoding it took 2.3 GB (checked, then decoded again by the SavedModel).
    assert peak_mb < 1500, f"peak RSS {peak_mb:.0f} MB"


@pytest.mark.slow
def test_predict_applies_the_exported_limit_or_the_default(skipped_and_exported, runner,
                                                           copy_project):
    project = copy_project(skipped_and_exported[0])
    metadata_file = project / "saved_models" / "proj" / "1" / "dltool.json"
    metadata = json.loads(metadata_file.read_text())
    cat = project / "samples" / "cat.jpg"  # 32x32
    metadata["meta"]["max_pixels"] = 1000
    metadata_file.write_text(json.dumps(metadata))
    result = invoke(runner, "predict", cat, "--project", project)
    assert result.exit_code == 1
    assert result.output.strip() == \
        f"Error: {cat}: 32x32, 1024 pixels, over data.max_pixels = 1000"
    del metadata["meta"]["max_pixels"]  # as exported before the limit was recorded
    metadata_file.write_text(json.dumps(metadata))
    result = invoke(runner, "predict", cat, "--project", project)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[1].startswith(f"{cat}: ")
