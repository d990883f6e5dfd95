"""This project's own tests: run them with `pytest tests` after every change.

They check that config.toml is valid, that build_model() builds the model the
config describes, and that the whole loop (train → export → predict) works on
a copy of this project trained for one epoch on dltool's built-in sample.
"""

import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from dltool.core import auto
from dltool.core import project as project_lib
from dltool.engine import experiment as experiment_lib
from dltool.cli import cli

PROJECT = Path(__file__).resolve().parents[1]


def test_config_is_valid():
    config = project_lib.load_config(PROJECT)
    assert config.template == "image-classifier"


def _config():
    """The project's config, its "auto" values (e.g. data.image_size) decided
    as `dltool train` decides them for the built-in sample: 450 training
    images of 32x32."""
    config = project_lib.load_config(PROJECT)
    config, _ = auto.resolve(config, 450, [auto.choose_image_size([(32, 32)] * 450)])
    return config


def test_model_builds_from_config():
    config = _config()
    module = experiment_lib.load_model_module(PROJECT)
    model, hp = experiment_lib.build_model(module, config, {"num_classes": 4})
    height, width = config["data"]["image_size"]
    assert model.input_shape == (None, height, width, 3)
    assert model.output_shape == (None, 4)
    assert model.output.dtype == "float32"
    images = np.random.uniform(0, 255, (2, height, width, 3)).astype("float32")
    probabilities = np.asarray(model(images, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    assert set(config.model) <= set(hp.values)


def test_multi_label_model_ends_in_a_sigmoid_per_label():
    """With data.multi_label = true each label is a yes/no of its own."""
    config = _config()
    module = experiment_lib.load_model_module(PROJECT)
    model, _ = experiment_lib.build_model(module, config,
                                          {"num_classes": 4, "multi_label": True})
    assert model.output_shape == (None, 4)
    # Binary cross-entropy, with model.label_smoothing when it is not 0.
    assert model.loss == "binary_crossentropy" or type(model.loss).__name__ == "BinaryCrossentropy"
    height, width = config["data"]["image_size"]
    images = np.random.uniform(0, 255, (2, height, width, 3)).astype("float32")
    probabilities = np.asarray(model(images, training=False))
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert not np.allclose(probabilities.sum(axis=-1), 1.0)  # independent labels


def test_search_space_fits_the_model():
    """Every [search] entry is a hyperparameter build_model reads, of its type."""
    from dltool.tuning import space as search_space

    config = _config()
    module = experiment_lib.load_model_module(PROJECT)
    data_kwargs = {"num_classes": 4}
    _, declared = experiment_lib.build_model(module, config, data_kwargs)
    space = search_space.search_hyperparameters(config)
    search_space.check_against_model(space, declared, config["tune"]["tuner"])
    _, hp = experiment_lib.build_model(module, config, data_kwargs, hp=space)
    assert {p.name for p in space.space} <= set(hp.values)


@pytest.fixture
def copy(tmp_path):
    target = tmp_path / PROJECT.name
    shutil.copytree(PROJECT, target,
                    ignore=shutil.ignore_patterns("runs", "saved_models", "tuning",
                                                  "__pycache__"))
    return target


def test_train_export_predict(copy):
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(cli, [*map(str, args), "--project", str(copy)],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    run("train", "--epochs", "1", "--set", "data.source=builtin:cifar10",
        "--set", "training.verbose=0")
    run("export")
    output = run("predict", *sorted((copy / "samples").glob("*.jpg")))
    lines = output.strip().splitlines()
    assert lines[0].startswith("Model: ")
    assert len(lines) == 1 + len(list((copy / "samples").glob("*.jpg")))
