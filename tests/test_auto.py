"""`auto` config values (dltool.core.auto): each rule, explicit values, bad
values, and a run trained with them that evaluate and export rebuild."""

import json
import tomllib

import numpy as np
import pytest

from conftest import invoke
from dltool.core import auto
from dltool.core.config import load_config


def _config(tmp_path, runner, *overrides):
    project = tmp_path / "proj"
    if not project.exists():
        result = invoke(runner, "new", "image-classifier", project)
        assert result.exit_code == 0, result.output
    return load_config(project / "config.toml", overrides)


def test_image_size_follows_the_images():
    assert auto.choose_image_size([(32, 32)] * 450).value == [32, 32]
    assert auto.choose_image_size([(28, 28)] * 10).value == [32, 32]  # to a multiple of 16
    small_photos = [(64, 48)] * 5 + [(40, 30)] * 2  # median short side 48
    assert auto.choose_image_size(small_photos).value == [48, 48]
    photos = auto.choose_image_size([(4032, 3024), (640, 480), (1024, 768)])
    assert photos.value == [auto.IMAGE_SIZE_CAP] * 2
    assert "768 px" in photos.reason and "CPU" in photos.reason


def test_momentum_follows_the_training_steps():
    few = auto.choose_batchnorm_momentum(8, 15)  # the embedded sample, 15 epochs
    assert few.value == 0.95 and "120 training steps" in few.reason
    assert auto.choose_batchnorm_momentum(2, 10).value == auto.MOMENTUM_MIN
    assert auto.choose_batchnorm_momentum(113, 44).value == 0.99  # CIFAR-10's 7,200
    steps = [auto.choose_batchnorm_momentum(8, e).value for e in (5, 15, 30, 60, 100)]
    assert steps == sorted(steps) and steps[0] < steps[-1]


def test_epochs_follow_the_data_size():
    assert auto.choose_epochs(450, 64).value == auto.MAX_EPOCHS
    assert auto.choose_epochs(7_200, 64).value == 44
    assert auto.choose_epochs(20_000, 64).value == 16  # 313 steps an epoch
    assert auto.choose_epochs(1_000_000, 64).value == auto.MIN_EPOCHS


def test_defaults_are_auto_and_resolve_from_the_data(tmp_path, runner):
    config = _config(tmp_path, runner)
    assert config["data"]["image_size"] == "auto" and config["training"]["epochs"] == "auto"
    assert config.model["batchnorm_momentum"] == "auto"
    size = auto.choose_image_size([(32, 32)] * 450)
    resolved, choices = auto.resolve(config, 450, [size])
    assert resolved["data"]["image_size"] == [32, 32]
    assert resolved["training"]["epochs"] == 44
    assert resolved.model["batchnorm_momentum"] == auto.choose_batchnorm_momentum(8, 44).value
    assert [c.key for c in choices] == ["data.image_size", "training.epochs",
                                        "model.batchnorm_momentum"]
    assert config["training"]["epochs"] == "auto"  # the config given is not changed
    assert auto.unresolved(resolved) == []


def test_explicit_values_win(tmp_path, runner):
    config = _config(tmp_path, runner, "data.image_size=[48, 40]", "training.epochs=3",
                     "model.batchnorm_momentum=0.5")
    resolved, choices = auto.resolve(config, 450, [auto.choose_image_size([(32, 32)])])
    assert choices == []
    assert resolved["data"]["image_size"] == [48, 40]
    assert resolved["training"]["epochs"] == 3 and resolved.model["batchnorm_momentum"] == 0.5
    # An explicit epochs still sets the steps an auto momentum follows.
    config = _config(tmp_path, runner, "data.image_size=[32, 32]", "training.epochs=15")
    resolved, choices = auto.resolve(config, 450)
    assert [c.key for c in choices] == ["model.batchnorm_momentum"]
    assert resolved.model["batchnorm_momentum"] == 0.95


@pytest.mark.parametrize("override, expected", [
    ('model.batchnorm_momentum="fast"',
     'model.batchnorm_momentum must be "auto" or a number from 0.0 to 0.999; got \'fast\''),
    ("model.batchnorm_momentum=1.5",
     'model.batchnorm_momentum must be "auto" or a number from 0.0 to 0.999; got 1.5'),
    ("data.image_size=[0, 5]",
     'data.image_size must be "auto" or a list of 2 integers from 16 to 4096; got [0, 5]'),
    ('data.image_size="big"',
     'data.image_size must be "auto" or a list of 2 integers from 16 to 4096; got \'big\''),
    ('training.epochs="many"',
     'training.epochs must be "auto" or an integer from 1 to 1000000; got \'many\''),
])
def test_bad_value_is_one_clear_error(runner, project, override, expected):
    result = invoke(runner, "train", "--project", project, "--set", override)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert lines == [f"Error: {expected}"]
    assert not (project / "runs").exists()


def test_auto_is_refused_where_the_template_has_no_rule(tmp_path, runner):
    assert invoke(runner, "new", "sentiment", tmp_path / "text").exit_code == 0
    result = invoke(runner, "train", "--project", tmp_path / "text",
                    "--set", 'training.epochs="auto"')
    assert result.exit_code == 1
    assert "training.epochs must be an integer from 1 to 1000000; got 'auto'" in result.stderr


def _photos(root, size=(60, 80)):
    """Two classes of 6 photo-sized (60x80) JPEGs, 2 test images each."""
    from dltool._tf import tf

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 2)):
        for label, name in enumerate(("dark", "light")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 100, (*size, 3)) + 150 * label
                (folder / f"{i}.jpg").write_bytes(
                    tf.io.encode_jpeg(pixels.astype(np.uint8)).numpy())
    return root


def test_a_run_records_its_auto_values_and_is_rebuilt_the_same(tmp_path, runner):
    data = _photos(tmp_path / "photos")
    project = tmp_path / "proj"
    assert invoke(runner, "new", "image-classifier", project, "--data", data).exit_code == 0
    tiny = ("--set", "model.filters=8", "--set", "model.blocks=1", "--set",
            "training.verbose=0", "--set", "training.calibrate=false")

    info = invoke(runner, "info", "--project", project, "--json")
    assert info.exit_code == 0, info.output
    lines = json.loads(info.stdout)["auto"]
    assert lines[0].startswith("data.image_size = [64, 64] (auto: the median short side of the "
                               "10 training images is 60 px")
    assert [line.split(" = ")[0] for line in lines] == [
        "data.image_size", "training.epochs", "model.batchnorm_momentum"]

    result = invoke(runner, "train", "--project", project, "--epochs", 2, *tiny)
    assert result.exit_code == 0, result.output
    assert "data.image_size = [64, 64] (auto: " in result.output
    assert "model.batchnorm_momentum = 0.9 (auto: 2 training steps (1 an epoch x 2 epochs)" \
        in result.output
    (run,) = (project / "runs").iterdir()
    record = json.loads((run / "run.json").read_text())
    assert record["auto"]["data.image_size"]["value"] == [64, 64]
    assert record["auto"]["model.batchnorm_momentum"]["value"] == 0.9
    assert "training.epochs" not in record["auto"]  # --epochs 2 was given
    assert record["meta"]["image_size"] == [64, 64]
    saved = tomllib.loads((run / "config.toml").read_text())
    assert saved["data"]["image_size"] == [64, 64]
    assert saved["model"]["batchnorm_momentum"] == 0.9 and saved["training"]["epochs"] == 2

    from dltool.core import runs
    from dltool.engine.experiment import Experiment

    trained = runs.find_trained(project)
    model = Experiment.for_run(project, trained).load_trained_model(trained)  # what export builds
    assert model.input_shape == (None, 64, 64, 3)
    momentums = {layer.momentum for layer in model.layers if hasattr(layer, "moving_mean")}
    assert momentums == {0.9}
    result = invoke(runner, "evaluate", "--project", project, "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["examples"] == 4
    result = invoke(runner, "export", "--project", project)
    assert result.exit_code == 0, result.output
    exported = json.loads((project / "saved_models" / "proj" / "1" / "dltool.json").read_text())
    assert exported["meta"]["image_size"] == [64, 64]
    assert "resized to 64x64" in exported["input"]["content"]
