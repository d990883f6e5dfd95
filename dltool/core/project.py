"""A generated project: its folder, config and `model.py`."""

import importlib.util
from pathlib import Path

from dltool.core import config as config_lib
from dltool.core.errors import ProjectError

MODEL_FILE = "model.py"


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


def load_model_module(project_dir):
    """Imports the project's `model.py` and returns the module.

    Raises:
        ProjectError: if `model.py` is missing, fails to import or has no
            `build_model`.
    """
    path = Path(project_dir) / MODEL_FILE
    if not path.is_file():
        raise ProjectError(f"no {MODEL_FILE} in {project_dir}")
    spec = importlib.util.spec_from_file_location("dltool_user_model", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        line = _user_line(e, path)
        raise ProjectError(f"{path}{line} failed to import: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "build_model", None)):
        raise ProjectError(f"{path} has no build_model(hp, config, ...) function")
    return module


def _user_line(error, path):
    if isinstance(error, SyntaxError) and error.lineno:
        return f":{error.lineno}"
    tb = error.__traceback__
    line = ""
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == str(path):
            line = f":{tb.tb_lineno}"
        tb = tb.tb_next
    return line


def build_model(module, config, model_kwargs, hp=None):
    """Calls the project's `build_model(hp, config, **model_kwargs)`.

    With `hp=None` a fresh `keras_tuner.HyperParameters` is used, so every
    hyperparameter takes its default, which `model.py` reads from the
    config's `[model]` section. Every `[model]` key must be one the model
    reads through `hp`, so a typo is reported instead of ignored.

    Args:
        module: The project's imported `model.py`.
        config: The run's `Config`.
        model_kwargs: What the data decides, e.g. `{"num_classes": 10}`.
        hp: A `keras_tuner.HyperParameters`, or None for the defaults.

    Returns:
        A tuple `(model, hp)`.

    Raises:
        ConfigError: if a `[model]` key is not read by the model.
    """
    import dltool._tf  # noqa: F401  (environment before TensorFlow loads)
    import keras_tuner

    hp = hp if hp is not None else keras_tuner.HyperParameters()
    model = module.build_model(hp, config, **model_kwargs)
    config_lib.check_model_keys(config.model, set(hp.values))
    return model, hp
