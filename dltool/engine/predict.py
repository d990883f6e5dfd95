"""Predict with an exported model: raw input in, readable output out."""

import json
from pathlib import Path

import numpy as np

from dltool.engine import export as export_lib
from dltool.engine import modelfiles
from dltool._tf import tf
from dltool.core.errors import ModelFileError
from dltool.tasks import task_for

_CHUNK = 256


def load_predictor(project_dir, model_path=None):
    """Loads an exported model for prediction.

    Args:
        project_dir: The project folder, or None.
        model_path: A SavedModel version folder, a model folder, a `.keras`
            file next to its `dltool.json`, or None for the project's newest
            export.

    Returns:
        A tuple `(serve, task, source)`: `serve` maps a batch of raw inputs
        to the signature's outputs, `task` the template's `Task` and
        `source` the path used.

    Raises:
        DltoolError: nothing exported, not a dltool export, unsafe file.
    """
    if model_path is not None and str(model_path).endswith(".keras"):
        path = Path(model_path)
        metadata = _read_metadata(path.parent)
        task = task_for(metadata["template"])  # imports what the model's layers need
        model = modelfiles.load_keras_file(path)
        return task.serving_endpoint(model, metadata["meta"]).fn, task, path
    version_dir = export_lib.resolve_export(project_dir, model_path)
    metadata = _read_metadata(version_dir)
    serve = modelfiles.load_saved_model(version_dir)
    signature_input = next(iter(serve.structured_input_signature[1]))
    return (lambda batch: serve(**{signature_input: batch})), \
        task_for(metadata["template"]), version_dir


def _read_metadata(folder):
    try:
        return json.loads((Path(folder) / export_lib.METADATA_FILE).read_text())
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{folder}: not a dltool export (no readable "
                             f"{export_lib.METADATA_FILE})") from e


def predict(project_dir, items, *, model_path=None, top_k=3, echo=None):
    """Predicts every item with an exported model.

    Args:
        project_dir: The project folder, or None.
        items: Raw inputs as the template takes them (image file paths,
            texts).
        model_path: See `load_predictor`.
        top_k: How many classes to return per item.
        echo: Function that prints a progress line for the user (once per
            chunk of 256 inputs, when there is more than one), or None.

    Returns:
        A tuple `(source, task, results)`: the model path used, the
        template's `Task` (which formats the results for the user) and a
        list of `(item, prediction)`, each prediction what
        `task.format_prediction` returns (classifiers: `[(label,
        probability), ...]`, the top `top_k`).
    """
    serve, task, source = load_predictor(project_dir, model_path)
    inputs = task.read_inputs(items)
    results = []
    for start in range(0, len(inputs), _CHUNK):
        chunk = inputs[start:start + _CHUNK]
        outputs = {k: np.asarray(v) for k, v in serve(tf.constant(chunk)).items()}
        for i, item in enumerate(items[start:start + _CHUNK]):
            results.append((item, task.format_prediction(outputs, i, top_k)))
        if echo is not None and len(inputs) > _CHUNK:
            echo(f"Predicted {len(results)}/{len(inputs)}")
    return source, task, results
