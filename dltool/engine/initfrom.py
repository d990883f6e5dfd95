"""Start training from the weights of an earlier run or export (`dltool train --init-from`).

A source is one of:

- a run of this project, by name (`dltool runs`), or a run folder of any
  project: its best weights (`best.weights.h5`), loaded into this project's
  `model.py` built with the run's own resolved config and data metadata;
- an exported version folder (`saved_models/NAME/N`): its `model.keras` and
  `dltool.json` (template, classes, vocabularies). The SavedModel beside
  them is never loaded: it is a program, and its variables carry no layer
  structure to match;
- a `.keras` file: checked and loaded in safe mode
  (`modelfiles.load_keras_file`). Without a `dltool.json` beside it, its
  template and classes are unknown: its head is rebuilt, and a text template
  refuses it (it has no vocabulary).

Layers are matched the way Keras matches them in a weights file: by their
kind and rank among the layers of that kind holding weights (`conv2d`,
`conv2d_1`, ..., `dense`), then by the shapes of their weights. Not by
`layer.name`: Keras generates those from a per-process counter (a second
build of the same `model.py` in one process names its first convolution
`conv2d_2`), so the names a `.keras` file holds depend on what its process
built before.

Every layer must fit, except the classification head (the last layer holding
weights) when the classes differ (other names, order or count), when
`data.multi_label` differs (a sigmoid head is not a softmax one) or when the
source's classes are unknown: that head keeps its fresh weights. A text
project is vectorized with the source's vocabulary (as a pretrained model
keeps its tokenizer), so its embeddings mean the same tokens. The optimizer
starts fresh.
"""

import dataclasses
import re
from pathlib import Path

from dltool.core import files, runs
from dltool.core.errors import ConfigError, ModelFileError, ProjectError
from dltool.engine import callbacks as dl_callbacks
from dltool.engine import export as export_lib
from dltool.engine import modelfiles
from dltool.engine.experiment import Experiment
from dltool.tasks import multilabel

# The data metadata a text template's vocabulary lives in (sentiment;
# translator), which the new run takes over from its source.
_VOCABULARY_KEYS = ("vocabulary", "source_vocabulary", "target_vocabulary")
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


@dataclasses.dataclass
class Source:
    """The weights training starts from.

    Attributes:
        path: Its absolute path (run folder, version folder or `.keras` file).
        kind: `run`, `export` or `keras file`.
        name: The run name, `NAME/VERSION` of an export, or the file name.
        template: Its template, or None when unknown (a bare `.keras` file).
        meta: Its data metadata (class names, vocabularies), or None when unknown.
        layers: `(key, class name, arrays)` of each layer holding weights, in
            model order (`layer_weights`).
    """

    path: Path
    kind: str
    name: str
    template: str
    meta: dict
    layers: list

    @property
    def label(self):
        """How messages name it: `run 20261201-101500`, `export cifar/2`, ..."""
        return f"{self.kind} {self.name}"


@dataclasses.dataclass
class Start:
    """What `match` decided: the arrays to load into the new model.

    Attributes:
        record: What `run.json` records as `init_from`.
        assignments: `(layer, arrays)` to set.
    """

    record: dict
    assignments: list


def open_source(project_dir, text, template):
    """Finds the source `--init-from` names and reads its weights.

    Args:
        project_dir: The project folder (a run name is looked up in its `runs/`).
        text: What `--init-from` got.
        template: This project's template.

    Returns:
        A `Source`.

    Raises:
        ProjectError: no such run, file or folder (naming close run names), a
            run without trained weights, a folder that is neither a run nor
            an exported version, or a source of another template.
        ModelFileError: a file that is not a model, or that dltool refuses.
    """
    kind, path, run = _locate(project_dir, text)
    if kind == "run":
        _check_template(run.template, template, f"run {run.name}")
        if not run.has_weights():
            raise ProjectError(f"--init-from: run {run.name} has no trained weights yet")
        try:  # its own resolved config: another project's [model] settings
            experiment = Experiment.for_run(project_dir, run)
        except (ConfigError, ProjectError) as e:
            raise ProjectError(f"--init-from: run {run.name}: {e}") from e
        try:  # what the model's size follows (classes, vocabularies)
            experiment.task.model_kwargs(run.meta)
        except (KeyError, TypeError, ValueError) as e:
            raise ProjectError(f"--init-from: run {run.name}: its {runs.Run.RECORD_FILE} "
                               f"does not describe its data (meta: {e})") from e
        try:
            model = experiment.load_trained_model(run)
        except (ConfigError, ProjectError) as e:
            raise ProjectError(f"--init-from: run {run.name}: {e}") from e
        return Source(path, "run", run.name, run.template, run.meta, layer_weights(model))
    metadata = _export_metadata(path if kind == "export" else path.parent)
    template_of = metadata.get("template") if metadata else None
    name = (f"{path.parent.name}/{path.name}" if kind == "export" else path.name)
    _check_template(template_of, template, f"{kind} {name}")
    model_file = path / export_lib.KERAS_FILE if kind == "export" else path
    if not model_file.is_file():
        raise ProjectError(f"--init-from: {path} has no {export_lib.KERAS_FILE} (only a "
                           "SavedModel export keeps one; export it again with --format "
                           "savedmodel)")
    model = modelfiles.load_keras_file(model_file)
    meta = metadata.get("meta") if metadata else None
    return Source(path, kind, name, template_of, meta if isinstance(meta, dict) else None,
                  layer_weights(model))


def _locate(project_dir, text):
    """Returns `(kind, absolute path, Run or None)` of what `--init-from`
    names (a `.keras` file is checked when it is loaded)."""
    if _URI.match(text):
        raise ProjectError(f"--init-from: {text}: remote sources are refused; download it "
                           "first")
    try:
        run = runs.find_run(project_dir, text)
        return "run", run.dir.resolve(), run
    except ProjectError as e:
        no_run = e
    path = Path(text).expanduser()
    if path.is_dir():
        run = _folder_run(path)
        return ("run" if run else "export"), path.resolve(), run
    if path.is_file():
        if path.suffix != ".keras":
            raise ModelFileError(f"--init-from: {path}: not a model (give a run, a run "
                                 "folder, an exported version folder or a .keras file)")
        return "keras file", path.resolve(), None
    if "/" in text or path.suffix:
        raise ProjectError(f"--init-from: {text}: no such file or folder")
    raise ProjectError(f"--init-from: {no_run}")


def _folder_run(path):
    """The `Run` of a run folder, or None for an exported version folder."""
    if (path / runs.Run.RECORD_FILE).is_file():
        run = runs.Run.open(path)
        if run is None:
            raise ProjectError(f"--init-from: {path}: its {runs.Run.RECORD_FILE} is damaged")
        return run
    if (path / export_lib.METADATA_FILE).is_file():
        return None
    versions = export_lib.versions(path)
    if versions:
        raise ProjectError(f"--init-from: {path} holds exported versions: give one of them, "
                           f"e.g. {path / str(versions[-1])}")
    raise ProjectError(f"--init-from: {path}: not a run folder (no {runs.Run.RECORD_FILE}) "
                       f"or an exported version (no {export_lib.METADATA_FILE})")


def _export_metadata(folder):
    """The `dltool.json` of an export version folder, or None if it has none."""
    path = Path(folder) / export_lib.METADATA_FILE
    if not path.is_file():
        return None
    metadata = files.read_json(path)
    if not isinstance(metadata, dict):
        raise ProjectError(f"--init-from: {path}: damaged (not a JSON object)")
    return metadata


def _check_template(found, template, label):
    if found is not None and found != template:
        raise ProjectError(f"--init-from: {label} was trained with the {found} template; "
                           f"this project's is {template}: start from a run or export of "
                           "the same template")


def data_meta(source):
    """The metadata the new run's data is opened with (`Task.open_data`'s
    `run_meta`): the source's vocabularies (with the translator's kind of
    tokens, `tokens`, when the source has one), or None."""
    if source is None or not source.meta:
        return None
    kept = {key: source.meta[key] for key in _VOCABULARY_KEYS if key in source.meta}
    if kept and "tokens" in source.meta:
        kept["tokens"] = source.meta["tokens"]
    return kept or None


def layer_weights(model):
    """The weights of a model's layers, keyed as Keras keys them in a weights file.

    Args:
        model: A built Keras model.

    Returns:
        A list of `(key, class name, arrays)` for each top-level layer
        holding weights, in model order; the key is the snake-case class
        name, suffixed `_1`, `_2`... from its second layer on.
    """
    return [(key, type(layer).__name__, layer.get_weights()) for key, layer in _keyed(model)]


def _keyed(model):
    """`(key, layer)` of each top-level layer holding weights (`layer_weights`)."""
    keyed, seen = [], {}
    for layer in model.layers:
        if not layer.weights:
            continue
        kind = _snake_case(type(layer).__name__)
        rank = seen.get(kind, 0)
        seen[kind] = rank + 1
        keyed.append((kind if rank == 0 else f"{kind}_{rank}", layer))
    return keyed


def _snake_case(name):
    """`Conv2D` → `conv2d`, `BatchNormalization` → `batch_normalization`: Keras'
    rule (`keras.src.utils.naming.to_snake_case`) for its weights-file keys."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def match(source, model, meta):
    """Pairs the source's layers with the new model's; decides the head.

    Args:
        source: The `Source`.
        model: The new, built model.
        meta: The new run's data metadata.

    Returns:
        A `Start`.

    Raises:
        ModelFileError: naming the first layer that does not fit (another
            shape, or a layer only one of the models has), or a text
            source without a vocabulary.
    """
    for key in _VOCABULARY_KEYS:
        if key in meta and (source.meta or {}).get(key) is None:
            raise ModelFileError(f"--init-from: {source.label} has no vocabulary (a .keras "
                                 "file without its dltool.json): give the run or the "
                                 "exported version folder")
    targets = _keyed(model)
    head_reason = _head_reason(source.meta, meta) if targets else None
    given = {key: (kind, arrays) for key, kind, arrays in source.layers}
    assignments, loaded, new = [], [], []
    for i, (key, layer) in enumerate(targets):
        if head_reason and i == len(targets) - 1:
            new.append(key)
            continue
        if key not in given:
            raise ModelFileError(f"--init-from: {source.label} does not fit this project's "
                                 f"model: it has no layer {key} ({type(layer).__name__})")
        theirs = [tuple(a.shape) for a in given[key][1]]
        ours = [tuple(w.shape) for w in layer.weights]
        if theirs != ours:
            raise ModelFileError(
                f"--init-from: {source.label} does not fit this project's model: layer {key} "
                f"({type(layer).__name__}) has weights {_shapes(theirs)} there and "
                f"{_shapes(ours)} here (compare its [model] settings with these)")
        assignments.append((layer, given[key][1]))
        loaded.append(key)
    keys_here = {key for key, _ in targets}
    extra = [key for key, _, _ in source.layers if key not in keys_here]
    if extra:
        raise ModelFileError(f"--init-from: {source.label} does not fit this project's model: "
                             f"this model has no layer {extra[0]} ({given[extra[0]][0]})")
    record = {"source": str(source.path), "kind": source.kind, "name": source.name,
              "template": source.template,
              "class_names": (source.meta or {}).get("class_names"),
              "multi_label": multilabel.is_multi_label(source.meta or {}),
              "loaded": loaded, "new": new, "head": head_reason,
              "vocabulary": "the source's" if data_meta(source) else None}
    return Start(record, assignments)


def _head_reason(theirs, ours):
    """Why the head is rebuilt (the classes differ...), or None to load it."""
    if "class_names" not in ours:
        return None  # no classes (translator): every layer loads
    if theirs is None or "class_names" not in theirs:
        return "the source's classes are unknown"
    if list(theirs["class_names"]) != list(ours["class_names"]):
        return "the classes differ"
    if multilabel.is_multi_label(theirs) != multilabel.is_multi_label(ours):
        return "multi-label (sigmoid) and single-label (softmax) heads differ"
    return None


def _shapes(shapes):
    return ", ".join(str(shape) for shape in shapes) or "none"


def apply(start, backup_dir, echo):
    """Loads the start's weights into the new model, unless the run resumes.

    A run that resumes from its own checkpoint (`backup_dir` holds one) is
    not loaded again: `callbacks.TrainingBackup` restores its weights.

    Args:
        start: The `Start` (`match`).
        backup_dir: The backup folder the run restores from.
        echo: Function that prints a line for the user.
    """
    if dl_callbacks.TrainingBackup(backup_dir).checkpoints():
        echo(f"Init from {start.record['kind']} {start.record['name']}: not loaded again, "
             "the run resumes from its own checkpoint")
        return
    for layer, arrays in start.assignments:
        layer.set_weights(arrays)
    echo(f"Init from {runs.describe_start(start.record)}")
