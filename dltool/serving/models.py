"""The model `dltool serve` serves: its versions, each loaded once.

TensorFlow Serving's layout is dltool's export layout:
`saved_models/NAME/VERSION/`, the highest VERSION being the default. Each
version's `serving_default` signature is loaded once, by
`dltool.engine.modelfiles.load_saved_model` after
`dltool.engine.predict.untrusted_model_warning` (as `dltool predict` does),
and described the way TF Serving's metadata endpoint describes a signature.
"""

import dataclasses
from pathlib import Path

from dltool._tf import tf
from dltool.core.errors import ModelFileError
from dltool.engine import export as export_lib
from dltool.engine import modelfiles
from dltool.engine import predict as predict_lib
from dltool.tasks import task_for

SIGNATURE = "serving_default"
# TF Serving's names of the dtypes a dltool signature holds (the DataType
# enum of tensorflow/core/framework/types.proto).
_DTYPE_NAMES = {"float32": "DT_FLOAT", "float64": "DT_DOUBLE", "string": "DT_STRING",
                "bool": "DT_BOOL", "int32": "DT_INT32", "int64": "DT_INT64"}


def find_versions(project_dir, model=None):
    """Finds the name and the version folders of the model to serve.

    Args:
        project_dir: The project folder, or None outside one.
        model: A model name under `saved_models/`, a path to a
            `saved_models/NAME` folder (all its versions) or to one version
            folder (that version only), or None for the project's newest
            export (all versions of its model).

    Returns:
        A tuple `(name, {version number: folder})`.

    Raises:
        ProjectError: nothing exported, or no project and no model path.
        ModelFileError: `model` names no export.
    """
    if model is None:
        root = export_lib.resolve_export(project_dir).parent
    else:
        named = Path(project_dir) / export_lib.EXPORT_ROOT / model \
            if project_dir is not None and "/" not in model else None
        root = named if named is not None and export_lib.versions(named) else Path(model)
        if not root.exists():
            where = f" or {named}" if named is not None else ""
            raise ModelFileError(f"{model}: no such model folder{where}")
        if (root / "saved_model.pb").is_file():
            if not root.name.isdigit():
                raise ModelFileError(f"{root}: a version folder must be named by its "
                                     "number (saved_models/NAME/VERSION)")
            return root.resolve().parent.name, {int(root.name): root}
    numbers = export_lib.versions(root)
    if not numbers:
        raise ModelFileError(f"{root}: not a SavedModel or a folder of numbered versions")
    return root.resolve().name, {number: root / str(number) for number in numbers}


@dataclasses.dataclass
class LoadedVersion:
    """One version of the served model, loaded.

    Attributes:
        number: The version number.
        path: Its folder.
        serve: Maps a list of raw inputs (bytes) to the signature's outputs
            (output name to numpy array, one row per input); blocking.
        input_name: The signature's one input (`images`, `texts`).
        outputs: Output name to its `tf.TensorSpec`.
        template: The template that exported it.
        check_input: Maps one raw input to why it must not reach the model,
            or None.
        batcher: The version's `Batcher`, set by the app.
    """

    number: int
    path: Path
    serve: object
    input_name: str
    outputs: dict
    template: str
    check_input: object
    batcher: object = None

    def signature_def(self):
        """The version's signature as TF Serving's metadata endpoint gives it."""
        return {SIGNATURE: {
            "inputs": {self.input_name: _tensor_info(
                tf.TensorSpec((None,), tf.string), f"{SIGNATURE}_{self.input_name}:0")},
            "outputs": {name: _tensor_info(spec, name) for name, spec in self.outputs.items()},
            "method_name": "tensorflow/serving/predict",
        }}


def load_version(project_dir, number, path, *, warn=None):
    """Loads one version folder's serving signature.

    Like `dltool.engine.predict.load_predictor` (the same warning, the same
    safe loader), but keeping the signature itself: its input's name and
    its outputs are what the metadata endpoint and the row format need.

    Args:
        project_dir: The project folder, or None.
        number: The version number.
        path: The version folder.
        warn: Function that prints a warning line, called before a
            SavedModel loads that `project_dir` did not export
            (`untrusted_model_warning`); None for no warning (`--trusted`).

    Returns:
        A `LoadedVersion`.

    Raises:
        ModelFileError: not a dltool export, or a signature that does not
            take one batch of strings.
    """
    path = Path(path)
    metadata = predict_lib.read_metadata(path)
    task = task_for(metadata["template"])
    warning = None if warn is None else predict_lib.untrusted_model_warning(project_dir, path)
    if warning is not None:
        warn(warning)
    signature = modelfiles.load_saved_model(path)
    inputs = signature.structured_input_signature[1]
    (input_name, input_spec), *others = inputs.items()
    if others or input_spec.dtype != tf.string or input_spec.shape.rank != 1:
        raise ModelFileError(f"{path}: its {SIGNATURE} signature does not take one batch "
                             "of strings (dltool serve serves dltool's exports)")
    outputs = {name: tf.TensorSpec(tensor.shape, tensor.dtype)
               for name, tensor in signature.structured_outputs.items()}

    def serve(batch):
        results = signature(**{input_name: tf.constant(batch, tf.string)})
        return {name: value.numpy() for name, value in results.items()}

    meta = metadata["meta"]
    return LoadedVersion(number, path, serve, input_name, outputs, task.name,
                         lambda data: task.raw_input_problem(data, meta))


def _tensor_info(spec, name):
    """A `TensorInfo` as TF Serving's JSON shows it."""
    shape = tf.TensorShape(spec.shape)
    dims = [] if shape.rank is None else \
        [{"size": str(-1 if d is None else d), "name": ""} for d in shape.as_list()]
    return {"dtype": _DTYPE_NAMES.get(spec.dtype.name, f"DT_{spec.dtype.name.upper()}"),
            "tensor_shape": {"dim": dims, "unknown_rank": shape.rank is None},
            "name": name}
