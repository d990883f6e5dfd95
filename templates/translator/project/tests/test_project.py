"""This project's own tests: run them with `pytest tests` after every change.

They check that config.toml is valid, that build_model() builds the model the
config describes, and that the whole loop (train -> export -> predict) works
on a copy of this project trained briefly, with a small model, on dltool's
built-in sample.
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
SMALL = {"model.embedding_dim": 16, "model.units": 16, "model.transformer_layers": 1,
         "model.heads": 2, "data.source_vocabulary_size": 500,
         "data.target_vocabulary_size": 500, "decoding.beam_width": 2,
         "training.verbose": 0}


def test_config_is_valid():
    config = project_lib.load_config(PROJECT)
    assert config.template == "translator"


@pytest.mark.parametrize("architecture", ["rnn", "transformer"])
def test_model_builds_from_config(architecture):
    config = project_lib.load_config(PROJECT, [f"model.architecture={architecture}"])
    module = experiment_lib.load_model_module(PROJECT)
    model, hp = experiment_lib.build_model(
        module, config, {"source_vocabulary_size": 50, "target_vocabulary_size": 60})
    source = np.random.randint(1, 50, (2, 7)).astype("int32")
    target = np.random.randint(1, 60, (2, 5)).astype("int32")
    source[1, 3:] = 0  # a short sentence: padding after three tokens
    logits = np.asarray(model({"source_ids": source, "target_ids": target}, training=False))
    assert logits.shape == (2, 5, 60) and np.isfinite(logits).all()
    assert set(config.model) <= set(hp.values)


@pytest.fixture
def copy(tmp_path):
    target = tmp_path / PROJECT.name
    shutil.copytree(PROJECT, target,
                    ignore=shutil.ignore_patterns("runs", "saved_models", "__pycache__"))
    return target


def test_train_export_predict(copy):
    runner = CliRunner()

    def run(*args):
        result = runner.invoke(cli, [*map(str, args), "--project", str(copy)],
                               catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    sets = [arg for key, value in {**SMALL, "data.source": "builtin:fra-eng"}.items()
            for arg in ("--set", f"{key}={value}")]
    run("train", "--epochs", "1", *sets)
    run("export")
    sentences = (copy / "samples" / "sentences.txt").read_text(encoding="utf-8").splitlines()
    lines = run("predict", "--file", copy / "samples" / "sentences.txt").strip().splitlines()
    assert lines[0].startswith("Model: ")
    assert [line.split(" ->")[0] for line in lines[1:]] == sentences
    lines = run("predict", "How are you?").strip().splitlines()
    assert lines[1].startswith("How are you? ->")
