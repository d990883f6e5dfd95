"""Export a trained run as a SavedModel that takes raw input.

Layout (TensorFlow Serving's): `saved_models/NAME/VERSION/`, VERSION counting
up from 1. Each version folder holds the SavedModel (`saved_model.pb`,
`variables/`, `assets/`) whose `serving_default` signature takes raw input and
returns readable output, plus `model.keras` (the Keras model) and
`dltool.json` (run, template, data metadata). The folder is written under a
temporary name and renamed into place, so a version is complete or absent.
"""

import json
from pathlib import Path

from dltool._tf import keras
from dltool.core import files, runs
from dltool.core.errors import ModelFileError, ProjectError
from dltool.core.scaffold import validate_project_name
from dltool.engine import reporting
from dltool.engine.callbacks import describe_weights, non_finite_weights
from dltool.engine.experiment import Experiment

EXPORT_ROOT = "saved_models"
METADATA_FILE = "dltool.json"
KERAS_FILE = "model.keras"


def versions(model_root):
    """Returns the numeric version folders under `model_root`, sorted."""
    root = Path(model_root)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def export(project_dir, run_name=None, name=None, *, overrides=(), echo=None):
    """Exports a run's best weights as the next version of a SavedModel.

    Args:
        project_dir: The project folder.
        run_name: Run to export; the newest trained one when None.
        name: Model name; `export.name` or the project name when None.
        overrides: `section.key=value` strings applied to the run's config.
        echo: Function that prints a progress line for the user, or None.

    Returns:
        A dict with `path` (the version folder), `version`, `name`, `run`.

    Raises:
        DltoolError: nothing trained yet, weights that do not fit `model.py`
            or that are not finite (`ModelFileError`); `StorageError` when
            `saved_models/NAME` cannot be written (read-only, full).
    """
    echo = echo or (lambda line: None)
    run = runs.find_trained(project_dir, run_name)
    echo(f"Loading run {run.name}")
    experiment = Experiment.for_run(project_dir, run, overrides)
    config = experiment.config
    model = experiment.load_trained_model(run)
    check_finite(model, run)
    name = validate_project_name(
        name or config["export"]["name"] or config["project"]["name"] or Path(project_dir).name,
        what="model name")
    model_root = Path(project_dir) / EXPORT_ROOT / name
    files.check_writable(model_root)  # before TensorFlow's C++ writers meet it
    files.remove_leftovers(model_root, recursive=False)  # versions killed exports left
    version = (versions(model_root) or [0])[-1] + 1
    with files.storage_errors(model_root / str(version)), \
            files.staging_folder(model_root / str(version)) as staging:
        echo("Writing the SavedModel (serving signature: raw input in, readable output out)")
        write_saved_model(model, experiment.task.serving_endpoint(model, run.meta), staging)
        echo(f"Writing {KERAS_FILE}")
        model.save(staging / KERAS_FILE)
        metadata = {"name": name, "version": version, "run": run.name,
                    "template": config.template, "meta": run.meta,
                    "best_value": run.get("best_value"), "monitor": run.get("monitor")}
        (staging / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    run.update(exported_version=f"{name}/{version}")
    reporting.write_run_report(project_dir, run, echo=echo)
    return {"path": model_root / str(version), "version": version, "name": name,
            "run": run.name}


def check_finite(model, run):
    """Refuses a model whose weights hold NaN or infinite values.

    Such a model predicts NaN for every input, and `dltool predict` would
    pick it as the newest export; it is refused before anything is written.

    Args:
        model: The run's model with its best weights loaded.
        run: The `Run` they come from, for the message.

    Raises:
        ModelFileError: naming the run and the first non-finite weight.
    """
    bad = non_finite_weights(model)
    if bad:
        raise ModelFileError(
            f"run {run.name}: its weights hold NaN or infinite values "
            f"({describe_weights(bad)}); nothing exported (train again, e.g. with a "
            "lower model.learning_rate)")


def write_saved_model(model, endpoint, path):
    """Writes `model` with one serving endpoint as a SavedModel at `path`.

    Args:
        model: The Keras model whose variables the endpoint uses.
        endpoint: The task's `ServingEndpoint`; its resources are saved too
            and its other endpoints become more signatures.
        path: Folder to write.
    """
    archive = keras.export.ExportArchive()
    archive.track(model)
    for resource in endpoint.resources:  # e.g. a vocabulary lookup table
        archive.track(resource)
    archive.add_endpoint(name="serve", fn=endpoint.fn, input_signature=endpoint.input_signature)
    for name, other in endpoint.endpoints.items():  # e.g. other decodings
        archive.add_endpoint(name=name, fn=other, input_signature=endpoint.input_signature)
    archive.write_out(str(path), verbose=False)


def resolve_export(project_dir, model_path=None):
    """Finds the SavedModel version folder `dltool predict` should use.

    Args:
        project_dir: The project folder (used when `model_path` is None), or
            None.
        model_path: A version folder, a model folder (its newest version is
            used), or None for the newest export of the project.

    Returns:
        The version folder.

    Raises:
        ProjectError: nothing exported yet.
        ModelFileError: `model_path` is not an export.
    """
    if model_path is None:
        if project_dir is None:
            raise ProjectError("no --model given and not in a project folder")
        roots = [p for p in (Path(project_dir) / EXPORT_ROOT).glob("*") if versions(p)]
        if not roots:
            raise ProjectError("nothing exported yet: run `dltool export` first")
        root = max(roots, key=lambda p: (p / str(versions(p)[-1])).stat().st_mtime)
        return root / str(versions(root)[-1])
    path = Path(model_path)
    if (path / "saved_model.pb").is_file():
        return path
    if versions(path):
        return path / str(versions(path)[-1])
    raise ModelFileError(f"{path}: not a SavedModel or a folder of numbered versions")
