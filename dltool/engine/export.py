"""Export a trained run as a SavedModel that takes raw input, or as LiteRT / ONNX.

Layout of the SavedModel (TensorFlow Serving's): `saved_models/NAME/VERSION/`,
VERSION counting up from 1. Each version folder holds the SavedModel
(`saved_model.pb`, `variables/`, `assets/`) whose `serving_default` signature
takes raw input and returns readable output, plus `model.keras` (the Keras
model) and `dltool.json` (run, template, data metadata).

The other formats (`dltool.engine.formats`) go to a sibling root,
`exports/NAME/FORMAT/VERSION/` with FORMAT `litert`, `litert-float16`,
`litert-dynamic`, `litert-int8`, `onnx` or `onnx-dynamic`, each version
counting up on its own: `model.tflite` or `model.onnx` and `dltool.json`. They are kept out of
`saved_models/`, so `resolve_export` (`dltool predict`) and TensorFlow
Serving only ever see SavedModels there.

Every version folder also holds what a client needs without dltool:
`labels.txt` (a classifier's label names, one a line, index = output
position), the input the model expects in `dltool.json` (`input`) and a
`README.md` with a client snippet for its format. It is written under a
temporary name and renamed into place, so a version is complete or absent.
"""

import json
from pathlib import Path

from dltool._tf import keras
from dltool.core import files, runs
from dltool.core.errors import DltoolError, ModelFileError, ProjectError
from dltool.core.scaffold import validate_project_name
from dltool.engine import formats, reporting
from dltool.engine.callbacks import describe_weights, non_finite_weights
from dltool.engine.experiment import Experiment

EXPORT_ROOT = "saved_models"
FORMATS_ROOT = "exports"  # LiteRT and ONNX exports, out of TensorFlow Serving's way
LABELS_FILE = "labels.txt"
README_FILE = "README.md"
METADATA_FILE = "dltool.json"
KERAS_FILE = "model.keras"


def versions(model_root):
    """Returns the numeric version folders under `model_root`, sorted."""
    root = Path(model_root)
    if not root.is_dir():
        return []
    return sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())


def export(project_dir, run_name=None, name=None, *, export_format="savedmodel",
           quantize="none", overrides=(), echo=None):
    """Exports a run's best weights as the next version of a model in a format.

    Args:
        project_dir: The project folder.
        run_name: Run to export; the newest trained one when None.
        name: Model name; `export.name` or the project name when None.
        export_format: `savedmodel` (raw input in, readable output out),
            `litert` or `onnx` (numeric input, see `dltool.engine.formats`).
        quantize: `none`; for `litert` `float16`, `dynamic` or `int8`
            (calibrated on `formats.CALIBRATION_EXAMPLES` training examples
            drawn with the run's `training.seed`); for `onnx` `dynamic`.
        overrides: `section.key=value` strings applied to the run's config.
        echo: Function that prints a progress line for the user, or None.

    Returns:
        A dict with `path` (the version folder), `version`, `name`, `run`,
        `format`, `quantize` and `file` (the model file's name, or None for
        a SavedModel).

    Raises:
        DltoolError: nothing trained yet, weights that do not fit `model.py`
            or that are not finite (`ModelFileError`); a format or
            quantization the model cannot take (`ConfigError`), or whose
            converter is not installed (`ProjectError`), before anything is
            written; `StorageError` when the model's folder cannot be written
            (read-only, full).
    """
    echo = echo or (lambda line: None)
    run = runs.find_trained(project_dir, run_name)
    experiment = Experiment.for_run(project_dir, run, overrides)
    config, task = experiment.config, experiment.task
    formats.check_request(task, export_format, quantize, run.meta)
    echo(f"Loading run {run.name}")
    model = experiment.load_trained_model(run)
    check_finite(model, run)
    name = validate_project_name(
        name or config["export"]["name"] or config["project"]["name"] or Path(project_dir).name,
        what="model name")
    model_root = export_root(project_dir, name, export_format, quantize)
    files.check_writable(model_root)  # before TensorFlow's C++ writers meet it
    files.remove_leftovers(model_root, recursive=False)  # versions killed exports left
    version = (versions(model_root) or [0])[-1] + 1
    metadata = {"name": name, "version": version, "run": run.name,
                "template": config.template, "format": export_format, "quantize": quantize,
                "input": task.input_spec(export_format, run.meta), "meta": run.meta,
                "best_value": run.get("best_value"), "monitor": run.get("monitor")}
    calibration = None
    if quantize == "int8":
        seed = config["training"]["seed"]
        echo(f"Drawing {formats.CALIBRATION_EXAMPLES} calibration examples from the "
             f"training split (seed {seed})")
        data = experiment.open_data()
        calibration = formats.calibration_batches(data.splits["train"], data.sizes["train"],
                                                  formats.CALIBRATION_EXAMPLES, seed)
        metadata["calibration"] = {"split": "train", "examples": len(calibration),
                                   "seed": seed}
    model_file = formats.MODEL_FILES.get(export_format)
    with files.storage_errors(model_root / str(version)), \
            files.staging_folder(model_root / str(version)) as staging:
        if export_format == "savedmodel":
            echo("Writing the SavedModel (serving signature: raw input in, readable output out)")
            write_saved_model(model, task.serving_endpoint(model, run.meta), staging)
            echo(f"Writing {KERAS_FILE}")
            model.save(staging / KERAS_FILE)
        else:
            echo(f"Writing {model_file} ({describe_format(export_format, quantize)})")
            write_converted(task.inference_model(model, run.meta, export_format),
                            staging / model_file,
                            export_format, quantize, calibration)
            metadata["file"] = model_file
        write_client_files(staging, task, metadata)
    if export_format == "savedmodel":  # what `dltool runs` shows and `predict` uses
        run.update(exported_version=f"{name}/{version}")
    reporting.write_run_report(project_dir, run, echo=echo)
    return {"path": model_root / str(version), "version": version, "name": name,
            "run": run.name, "format": export_format, "quantize": quantize,
            "file": model_file}


def export_root(project_dir, name, export_format="savedmodel", quantize="none"):
    """Returns the folder whose numbered versions hold a model's exports in a format.

    `saved_models/NAME` for a SavedModel; `exports/NAME/FORMAT` for the
    others, FORMAT suffixed with the quantization (`litert-int8`).
    """
    if export_format == "savedmodel":
        return Path(project_dir) / EXPORT_ROOT / name
    kind = export_format if quantize == "none" else f"{export_format}-{quantize}"
    return Path(project_dir) / FORMATS_ROOT / name / kind


def describe_format(export_format, quantize):
    """A few words for the user: `LiteRT, int8 weights and activations`."""
    titles = {"savedmodel": "SavedModel", "litert": "LiteRT", "onnx": "ONNX"}
    kinds = {"none": "float32", "float16": "float16 weights",
             "dynamic": "int8 weights, activations quantized at run time (dynamic range)",
             "int8": "int8 weights and activations, float32 input and output"}
    return f"{titles[export_format]}, {kinds[quantize]}"


def write_converted(model, path, export_format, quantize, calibration):
    """Writes the inference model in a format other than the SavedModel.

    Args:
        model: The task's `inference_model`.
        path: The model file to write.
        export_format: `litert` or `onnx`.
        quantize: The quantization (`formats.QUANTIZATIONS`).
        calibration: int8 calibration inputs, or None.

    Raises:
        ModelFileError: the converter refused the model (e.g. a layer of the
            user's `model.py` that needs TensorFlow kernels LiteRT lacks),
            in one line with the converter's first line.
    """
    try:
        if export_format == "litert":
            formats.write_litert(model, path, quantize, calibration)
        else:
            formats.write_onnx(model, path, quantize)
    except (OSError, DltoolError):
        raise  # a refused write: `files.storage_errors` words it
    except Exception as e:  # the converters' own errors: ConverterError, ValueError, ...
        first = next((line.strip() for line in str(e).splitlines() if line.strip()),
                     type(e).__name__)
        raise ModelFileError(f"the {export_format} converter refused the model: {first[:300]}; "
                             "--format savedmodel takes every model") from e


def write_client_files(folder, task, metadata):
    """Writes `dltool.json`, `labels.txt` (a classifier's) and `README.md`.

    Args:
        folder: The (staging) version folder.
        task: The run's `Task`.
        metadata: What `dltool.json` holds (`name`, `version`, `format`,
            `input`, `meta`, ...).
    """
    labels = task.output_labels(metadata["meta"])
    if labels is not None:
        metadata["labels_file"] = LABELS_FILE
        (folder / LABELS_FILE).write_text("".join(f"{label}\n" for label in labels),
                                          encoding="utf-8")
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")
    (folder / README_FILE).write_text(
        client_readme(metadata, task.client_snippet(metadata["format"], metadata["meta"])),
        encoding="utf-8")


def client_readme(metadata, snippet):
    """The version folder's README.md: what it holds, its input, a client.

    Args:
        metadata: The `dltool.json` contents.
        snippet: The task's client code for the format, or None.

    Returns:
        Markdown text.
    """
    export_format, quantize = metadata["format"], metadata["quantize"]
    lines = [f"# {metadata['name']}, version {metadata['version']}: "
             f"{describe_format(export_format, quantize)}", "",
             f"Exported by dltool from run {metadata['run']} ({metadata['template']} "
             "template).", ""]
    model_file = metadata.get("file", "saved_model.pb, variables/")
    lines += [f"- `{model_file}`: the model", "- `dltool.json`: this export's description "
              "(`input`: what the model takes; `meta`: the data's metadata)"]
    if "labels_file" in metadata:
        lines.append("- `labels.txt`: the label names, one a line; line i is output i")
    if metadata["meta"].get("temperature") is not None:
        lines.append(f"- calibrated probabilities: temperature scaling (T = "
                     f"{metadata['meta']['temperature']:.4g}, `meta.temperature`) is applied "
                     "inside the model; do not apply it again")
    if "calibration" in metadata:
        calibration = metadata["calibration"]
        lines.append(f"- int8 calibration: {calibration['examples']} examples of the "
                     f"{calibration['split']} split, seed {calibration['seed']}")
    if metadata["input"]:
        lines += ["", "## Input", ""]
        lines += [f"- {key}: `{value if isinstance(value, str) else json.dumps(value)}`"
                  for key, value in metadata["input"].items()]
    if snippet is not None:
        lines += ["", "## Client", "", "Save as `client.py` in this folder and run "
                  "`python client.py FILE...`:", "", "```python", snippet.rstrip("\n"), "```"]
    return "\n".join(lines) + "\n"


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
