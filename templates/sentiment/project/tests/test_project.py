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

from dltool.core import project as project_lib
from dltool.engine import experiment as experiment_lib
from dltool.cli import cli

PROJECT = Path(__file__).resolve().parents[1]


def test_config_is_valid():
    config = project_lib.load_config(PROJECT)
    assert config.template == "sentiment"


def test_model_builds_from_config():
    config = project_lib.load_config(PROJECT)
    module = experiment_lib.load_model_module(PROJECT)
    model, hp = experiment_lib.build_model(module, config,
                                        {"num_classes": 3, "vocabulary_size": 100})
    length, per_word = config["data"]["sequence_length"], config["data"]["subwords_per_word"]
    assert model.output_shape == (None, 3)
    assert model.output.dtype == "float32"
    token_ids = np.random.randint(0, 100, (2, length)).astype("int32")
    token_ids[1, 3:] = 0  # a short text: padding after three tokens
    features = {"token_ids": token_ids}
    if config["data"]["subword_buckets"]:
        subword_ids = np.random.randint(1, 100, (2, length, per_word)).astype("int32")
        subword_ids[1, 3:] = 0
        features["subword_ids"] = subword_ids
    assert {name: tuple(x.shape) for name, x in model.input.items()} == {
        name: (None, *x.shape[1:]) for name, x in features.items()}
    probabilities = np.asarray(model(features, training=False))
    np.testing.assert_allclose(probabilities.sum(axis=-1), 1.0, rtol=1e-5)
    assert set(config.model) <= set(hp.values)


def test_multi_label_model_ends_in_a_sigmoid_per_label():
    """With data.multi_label = true each label is a yes/no of its own."""
    config = project_lib.load_config(PROJECT)
    module = experiment_lib.load_model_module(PROJECT)
    model, _ = experiment_lib.build_model(
        module, config, {"num_classes": 3, "vocabulary_size": 100, "multi_label": True})
    assert model.output_shape == (None, 3)
    assert model.loss == "binary_crossentropy"
    length, per_word = config["data"]["sequence_length"], config["data"]["subwords_per_word"]
    features = {"token_ids": np.random.randint(1, 100, (2, length)).astype("int32")}
    if config["data"]["subword_buckets"]:
        features["subword_ids"] = np.random.randint(1, 100, (2, length, per_word)).astype("int32")
    probabilities = np.asarray(model(features, training=False))
    assert ((probabilities > 0) & (probabilities < 1)).all()
    assert not np.allclose(probabilities.sum(axis=-1), 1.0)  # independent labels


def test_search_space_fits_the_model():
    """Every [search] entry is a hyperparameter build_model reads, of its type."""
    from dltool.tuning import space as search_space

    config = project_lib.load_config(PROJECT)
    module = experiment_lib.load_model_module(PROJECT)
    data_kwargs = {"num_classes": 3, "vocabulary_size": 100}
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

    sample_data = {"source": "builtin:sst2", "text_column": "sentence", "label_column": "label",
                   "delimiter": "auto", "labels": "0,1", "label_names": "negative,positive"}
    sets = [arg for key, value in sample_data.items() for arg in ("--set", f"data.{key}={value}")]
    run("train", "--epochs", "1", *sets, "--set", "training.verbose=0")
    run("export")
    texts = (copy / "samples" / "reviews.txt").read_text(encoding="utf-8").splitlines()
    lines = run("predict", "--file", copy / "samples" / "reviews.txt").strip().splitlines()
    assert lines[0].startswith("Model: ")
    assert len(lines) == 1 + len(texts)
    lines = run("predict", "an utterly charming film").strip().splitlines()
    assert lines[1].startswith("an utterly charming film: ")
