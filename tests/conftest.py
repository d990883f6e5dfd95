"""Shared fixtures: a CLI runner, generated projects and a trained project.

Training in tests uses the embedded 700-image CIFAR-10 sample and a tiny
model (`model.filters=8`, `model.blocks=1`), so a run takes seconds on CPU.
"""

import json
import os
import shutil
import signal
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_MODEL = ("--set", "model.filters=8", "--set", "model.blocks=1",
              "--set", "training.verbose=0")


@pytest.fixture
def runner():
    return CliRunner()


def invoke(runner, *args):
    """Runs the dltool CLI in-process; returns the click Result."""
    from dltool.cli import cli

    return runner.invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def project(tmp_path, runner):
    """A freshly generated image-classifier project."""
    result = invoke(runner, "new", "image-classifier", tmp_path / "proj")
    assert result.exit_code == 0, result.output
    return tmp_path / "proj"


@pytest.fixture(scope="session")
def trained_project(tmp_path_factory):
    """An image-classifier project trained 2 epochs (tiny model) and exported once.

    Tests that change it must work on a copy (`copy_project`).
    """
    root = tmp_path_factory.mktemp("trained")
    runner = CliRunner()
    result = invoke(runner, "new", "image-classifier", root / "proj")
    assert result.exit_code == 0, result.output
    project = root / "proj"
    result = invoke(runner, "train", "--project", project, "--epochs", 2, *TINY_MODEL)
    assert result.exit_code == 0, result.output
    result = invoke(runner, "export", "--project", project)
    assert result.exit_code == 0, result.output
    return project


# The sentiment model the shared text project trains: small enough to train and
# convert in seconds, learning enough (5 epochs at 0.005: test accuracy 0.685
# on the embedded sample, against 0.495 after 1 epoch at the default rate) for
# the quantized exports' accuracy to mean something.
TEXT_MODEL = ("--set", "model.embedding_dim=16", "--set", "model.units=16",
              "--set", "model.learning_rate=0.005", "--set", "data.sequence_length=12",
              "--set", "data.subword_buckets=1000", "--set", "training.verbose=0")


@pytest.fixture(scope="session")
def trained_text_project(tmp_path_factory):
    """A sentiment project trained 5 epochs (`TEXT_MODEL`) and exported once.

    Tests that change it must work on a copy (`copy_project`).
    """
    project = tmp_path_factory.mktemp("sentiment") / "reviews"
    runner = CliRunner()
    for args in (("new", "sentiment", project),
                 ("train", "--project", project, "--epochs", 5, *TEXT_MODEL),
                 ("export", "--project", project)):
        result = invoke(runner, *args)
        assert result.exit_code == 0, result.output
    return project


@pytest.fixture
def copy_project(tmp_path):
    """Returns a function that copies a project into this test's tmp_path."""
    def copy(project):
        target = tmp_path / project.name
        shutil.copytree(project, target, symlinks=True)
        return target
    return copy


def rewrite_keras_config(source, target, edit):
    """Copies the archive `source` to `target`, passing its config.json through `edit`."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w") as rewritten:
        for info in original.infolist():
            data = original.read(info.filename)
            if info.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            rewritten.writestr(info, data)
    return target


def kill_after_epochs(process, project, epochs, timeout=300):
    """SIGKILLs the training `process` once its run of `project` has recorded
    `epochs` epochs; returns the epochs recorded when it was killed (or when
    it ended, or `timeout` seconds passed)."""
    deadline, done = time.monotonic() + timeout, 0
    while time.monotonic() < deadline and process.poll() is None:
        # Not the `.tmp-*` folder a new run is made in, renamed a moment later.
        runs = [p for p in (project / "runs").glob("*/run.json")
                if not p.parent.name.startswith(".")]
        try:
            done = json.loads(runs[0].read_text()).get("epochs_done", 0) if runs else 0
        except (FileNotFoundError, ValueError):  # replaced while read
            done = 0
        if done >= epochs:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    process.wait()
    return done


# ---- tiny KerasHub presets (no preset can be downloaded here) ----

# Written with `save_to_preset` into temporary folders: KerasHub loads a local
# folder through the same code as a named preset.
IMAGE_SIZE = 24  # the tiny converter's size, which data.image_size = "auto" takes


def save_image_preset(folder, image_size=IMAGE_SIZE):
    """A 2-stage ResNet (88,960 parameters) and its ImageConverter (resizing
    to `image_size`), random weights."""
    import keras_hub  # here: importing conftest loads no TensorFlow

    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 16],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block")
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(image_size, image_size), scale=[1 / 58.4, 1 / 57.1, 1 / 57.4],
        offset=[-123.7 / 58.4, -116.3 / 57.1, -103.5 / 57.4])
    backbone.save_to_preset(str(folder))
    converter.save_to_preset(str(folder))
    return folder


def save_text_preset(folder):
    """A 1-layer BERT of width 16 and its WordPiece tokenizer, random weights."""
    import keras_hub

    vocabulary = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "movie", "good",
                  "bad", "a", "is", "film"]
    backbone = keras_hub.models.BertBackbone(vocabulary_size=len(vocabulary), num_layers=1,
                                             num_heads=2, hidden_dim=16, intermediate_dim=32,
                                             max_sequence_length=32)
    backbone.save_to_preset(str(folder))
    keras_hub.models.BertTokenizer(vocabulary=vocabulary).save_to_preset(str(folder))
    return folder


@pytest.fixture(scope="session")
def image_preset(tmp_path_factory):
    return save_image_preset(tmp_path_factory.mktemp("presets") / "tiny_resnet")


@pytest.fixture(scope="session")
def text_preset(tmp_path_factory):
    return save_text_preset(tmp_path_factory.mktemp("presets") / "tiny_bert")
