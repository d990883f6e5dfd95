"""Predict with an exported model: raw input in, readable output out."""

import json
from pathlib import Path

import numpy as np

from dltool.engine import export as export_lib
from dltool.engine import modelfiles
from dltool._tf import tf
from dltool.core import runs
from dltool.core.errors import ModelFileError
from dltool.tasks import task_for

_CHUNK = 256


def load_predictor(project_dir, model_path=None, *, warn=None):
    """Loads an exported model for prediction.

    Args:
        project_dir: The project folder, or None.
        model_path: A SavedModel version folder, a model folder, a `.keras`
            file next to its `dltool.json`, or None for the project's newest
            export.
        warn: Function that prints a warning line for the user, called
            before a SavedModel loads that `project_dir` did not export
            (`untrusted_model_warning`); None for no warning (`--trusted`).
            A `.keras` file gets none: `modelfiles.check_keras_file` vets
            everything it holds.

    Returns:
        A tuple `(serve, task, source, meta)`: `serve` maps a batch of raw
        inputs to the signature's outputs, `task` the template's `Task`,
        `source` the path used and `meta` the export's data metadata (its
        `dltool.json`'s `meta`).

    Raises:
        DltoolError: nothing exported, not a dltool export, unsafe file.
    """
    if model_path is not None and str(model_path).endswith(".keras"):
        path = Path(model_path)
        metadata = _read_metadata(path.parent)
        task = task_for(metadata["template"])  # imports what the model's layers need
        model = modelfiles.load_keras_file(path)
        return task.serving_endpoint(model, metadata["meta"]).fn, task, path, metadata["meta"]
    version_dir = export_lib.resolve_export(project_dir, model_path)
    metadata = _read_metadata(version_dir)
    warning = None if warn is None else untrusted_model_warning(project_dir, version_dir)
    if warning is not None:
        warn(warning)
    serve = modelfiles.load_saved_model(version_dir)
    signature_input = next(iter(serve.structured_input_signature[1]))
    return (lambda batch: serve(**{signature_input: batch})), \
        task_for(metadata["template"]), version_dir, metadata["meta"]


def untrusted_model_warning(project_dir, version_dir):
    """Returns the warning for a SavedModel the project did not export, or None.

    A SavedModel is a program: loading and calling it runs its graph, which
    may read and write files, with the user's permissions. It counts as
    exported from the project when it is what `dltool export` wrote there:
    the folder `PROJECT/saved_models/NAME/VERSION` (symbolic links resolved)
    whose `dltool.json` names that NAME and VERSION and a run of
    `PROJECT/runs/` with the same template. Anything else (another
    project's export, a download, a forged `dltool.json`) gets the warning.

    Args:
        project_dir: The project folder, or None (then every model gets it).
        version_dir: The SavedModel folder about to be loaded.

    Returns:
        A one-line warning naming `version_dir`, or None.
    """
    reason = _not_exported_reason(project_dir, version_dir)
    if reason is None:
        return None
    return (f"Warning: {version_dir} was not exported from this project ({reason}): "
            "a SavedModel is a program and runs with your permissions; pass --trusted "
            "if you trust its source")


def _not_exported_reason(project_dir, version_dir):
    """Why `version_dir` is not an export of `project_dir`, or None if it is."""
    if project_dir is None:
        return "not in a project folder"
    exports = (Path(project_dir) / export_lib.EXPORT_ROOT).resolve()
    folder = Path(version_dir).resolve()
    if folder.parent.parent != exports:
        return f"not in {export_lib.EXPORT_ROOT}/NAME/VERSION"
    try:
        metadata = _read_metadata(folder)
    except ModelFileError:
        return f"no readable {export_lib.METADATA_FILE}"
    if not isinstance(metadata, dict) or metadata.get("name") != folder.parent.name \
            or str(metadata.get("version")) != folder.name:
        return f"its {export_lib.METADATA_FILE} names another export"
    if not any(run.name == metadata.get("run") and run.template == metadata.get("template")
               for run in runs.list_runs(project_dir)):
        return "no matching run"
    return None


def _read_metadata(folder):
    try:
        return json.loads((Path(folder) / export_lib.METADATA_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{folder}: not a dltool export (no readable "
                             f"{export_lib.METADATA_FILE})") from e


def predict(project_dir, items, *, model_path=None, top_k=3, echo=None, warn=None):
    """Predicts every item with an exported model.

    Args:
        project_dir: The project folder, or None.
        items: Raw inputs as the template takes them (image file paths,
            texts).
        model_path: See `load_predictor`.
        top_k: How many classes to return per item.
        echo: Function that prints a progress line for the user (once per
            chunk of 256 inputs, when there is more than one), or None.
        warn: See `load_predictor`.

    Returns:
        A tuple `(source, task, results)`: the model path used, the
        template's `Task` (which formats the results for the user) and a
        list of `(item, prediction)`, each prediction what
        `task.format_prediction` returns (classifiers: `[(label,
        probability), ...]`, the top `top_k`).
    """
    serve, task, source, meta = load_predictor(project_dir, model_path, warn=warn)
    inputs = task.read_inputs(items, meta)
    results = []
    for start in range(0, len(inputs), _CHUNK):
        chunk = inputs[start:start + _CHUNK]
        outputs = {k: np.asarray(v) for k, v in serve(tf.constant(chunk)).items()}
        for i, item in enumerate(items[start:start + _CHUNK]):
            results.append((item, task.format_prediction(outputs, i, top_k)))
        if echo is not None and len(inputs) > _CHUNK:
            echo(f"Predicted {len(results)}/{len(inputs)}")
    return source, task, results
