"""Shared fixtures: a CLI runner, generated projects and a trained project.

Training in tests uses the embedded 700-image CIFAR-10 sample and a tiny
model (`model.filters=8`, `model.blocks=1`), so a run takes seconds on CPU.
"""

import os
import shutil
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


@pytest.fixture
def copy_project(tmp_path):
    """Returns a function that copies a project into this test's tmp_path."""
    def copy(project):
        target = tmp_path / project.name
        shutil.copytree(project, target, symlinks=True)
        return target
    return copy
