"""A generated project: its folder and its config.

This module never imports TensorFlow.
"""

from pathlib import Path

from dltool.core import config as config_lib
from dltool.core.errors import ProjectError


def find_project(path=None):
    """Returns the project folder: `path`, or the current folder.

    Raises:
        ProjectError: if the folder has no `config.toml`.
    """
    folder = Path(path) if path is not None else Path.cwd()
    if not (folder / config_lib.CONFIG_FILE).is_file():
        raise ProjectError(f"no {config_lib.CONFIG_FILE} in {folder.absolute()}: "
                           "run this in a project folder or pass --project DIR")
    return folder.absolute()


def load_config(project_dir, overrides=()):
    """Loads and validates a project's config with `section.key=value` overrides."""
    return config_lib.load_config(Path(project_dir) / config_lib.CONFIG_FILE, overrides)
