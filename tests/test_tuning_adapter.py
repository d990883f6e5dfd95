"""keras-tuner behind one adapter: the version check against setup.cfg's range."""

import configparser
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from dltool.tuning import adapter

REPO = Path(__file__).resolve().parents[1]


def _declared_range():
    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    for line in setup["options"]["install_requires"].split("\n"):
        if line.strip() and Requirement(line.strip()).name == "keras-tuner":
            return Requirement(line.strip()).specifier
    raise AssertionError("setup.cfg declares no keras-tuner range")


def test_setup_cfg_declares_a_bounded_range_and_the_installed_version_is_in_it():
    declared = _declared_range()
    assert any(s.operator == "<" for s in declared) and any(s.operator == ">=" for s in declared)
    import keras_tuner

    assert declared.contains(keras_tuner.__version__)
    adapter.check_version()  # the installed one passes


@pytest.mark.parametrize("version", ["1.3.5", "1.5.0", "2.0.0"])
def test_a_version_outside_the_range_is_one_clear_line(version):
    with pytest.raises(adapter.UnsupportedVersionError) as raised:
        adapter.check_version(version, SpecifierSet(">=1.4.7,<1.5"))
    message = str(raised.value)
    assert message == (f"keras-tuner {version} is installed, but dltool is tested with "
                       "keras-tuner<1.5,>=1.4.7 (it uses some of its internals): "
                       "pip install 'keras-tuner<1.5,>=1.4.7'")
