"""The wheel carries the templates and the embedded data."""

import subprocess
import sys
import zipfile

import pytest

import dltool

from conftest import REPO


@pytest.mark.slow
def test_wheel_includes_templates_and_sample_data(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob(f"{dltool.DISTRIBUTION.replace('-', '_')}-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("dltool/cli.py",
                     "dltool/templates/image-classifier/template.toml",
                     "dltool/templates/image-classifier/project/model.py",
                     "dltool/templates/image-classifier/project/config.toml.jinja",
                     "dltool/templates/image-classifier/project/.gitignore",
                     "dltool/templates/image-classifier/project/samples/cat.jpg",
                     "dltool/templates/image-classifier/project/tests/test_project.py",
                     "dltool/data/samples/cifar10/README.md",
                     "dltool/data/samples/cifar10/train/cat/0000.jpg",
                     "dltool/data/samples/cifar10/test/truck/0019.jpg",
                     "dltool/data/samples/fra-eng/fra.txt",
                     "dltool/data/samples/fra-eng/README.md",
                     "dltool/templates/translator/project/model.py",
                     "dltool/templates/translator/project/samples/sentences.txt"):
        assert required in names, required
    sources = {f"dltool/{p.relative_to(REPO / 'dltool').as_posix()}"
               for p in (REPO / "dltool").rglob("*.py")}
    assert sources <= names, sorted(sources - names)
    assert sum(n.startswith("dltool/data/samples/cifar10/") and n.endswith(".jpg")
               for n in names) == 700
    assert not [n for n in names if "__pycache__" in n]
    metadata = next(n for n in names if n.endswith("METADATA"))
    requires = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Requires-Dist: keras>=3.15.1" in requires
    assert "Requires-Dist: sacrebleu>=2.4" in requires and "Requires-Dist: keras-hub" in requires
    assert f"Name: {dltool.DISTRIBUTION}" in requires


def test_install_lines_name_the_distribution(tmp_path):
    """`dltool` on the package index is an unrelated project (issue 18, point
    10): setup.cfg, the README and every generated project name
    `dltool-keras`, and nothing links to the other project."""
    import configparser
    import tomllib

    from dltool.core import scaffold

    setup = configparser.ConfigParser()
    setup.read(REPO / "setup.cfg")
    assert setup["metadata"]["name"] == dltool.DISTRIBUTION == "dltool-keras"
    assert f"`{dltool.DISTRIBUTION}`" in (REPO / "README.md").read_text()
    for template in ("image-classifier", "sentiment", "translator"):
        project = scaffold.render_project(template, tmp_path / template)["path"]
        readme = (project / "README.md").read_text()
        assert "https://pypi.org/project/dltool-keras/" in readme
        assert "pip install dltool-keras" in readme
        answers = tomllib.loads((project / ".dltool-answers.toml").read_text())
        assert answers["distribution"] == "dltool-keras"
    other_project = "pypi.org/project/" + "dltool/"
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True)
    for name in tracked.stdout.split():
        path = REPO / name
        if path.suffix in (".md", ".jinja", ".py", ".cfg", ".toml") and path.is_file():
            assert other_project not in path.read_text(errors="replace"), name
