"""Predict with an exported model: raw input in, readable output out.

`predict` streams: its inputs (`Inputs`: items, folders, table columns) are
read one at a time, checked, batched, given to the serving signature and
formatted batch by batch, so memory does not grow with their number.
"""

import concurrent.futures
import csv
import dataclasses
import itertools
import json
import os
from pathlib import Path

import numpy as np

from dltool.engine import export as export_lib
from dltool.engine import modelfiles
from dltool._tf import tf
from dltool.core import runs
from dltool.core.errors import DataError, ModelFileError, op_message
from dltool.data import text as text_lib
from dltool.tasks import task_for

# Inputs per call of the serving signature: the chunk `dltool predict` has
# always used. What a batch holds outside the graph is its inputs' encoded
# bytes (256 CIFAR-10 JPEGs: about 0.3 MB) and its outputs.
BATCH_SIZE = 256
# What `dltool predict --explain` names the picture of input NAME.EXT
# (`dltool.engine.explain`); a folder's files named so are not inputs.
EXPLAIN_SUFFIX = ".gradcam.png"


def load_predictor(project_dir, model_path=None, *, warn=None, keras_model=None):
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
        keras_model: The model already loaded from the `.keras` file
            `model_path` names (`predict --explain` loads it first), or None.

    Returns:
        A tuple `(serve, task, source, meta)`: `serve` maps a batch of raw
        inputs to the signature's outputs, `task` the template's `Task`,
        `source` the path used and `meta` the export's data metadata (its
        `dltool.json`'s `meta`).

    Raises:
        DltoolError: nothing exported, not a dltool export, unsafe file.
    """
    source, metadata = locate_model(project_dir, model_path)
    if source.suffix == ".keras":
        task = task_for(metadata["template"])  # imports what the model's layers need
        model = keras_model if keras_model is not None else modelfiles.load_keras_file(source)
        return task.serving_endpoint(model, metadata["meta"]).fn, task, source, metadata["meta"]
    version_dir = source
    warning = None if warn is None else untrusted_model_warning(project_dir, version_dir)
    if warning is not None:
        warn(warning)
    task = task_for(metadata["template"])  # first: registers the ops the graph needs
    serve = modelfiles.load_saved_model(version_dir)
    signature_input = next(iter(serve.structured_input_signature[1]))
    return (lambda batch: serve(**{signature_input: batch})), task, version_dir, \
        metadata["meta"]


def locate_model(project_dir, model_path=None):
    """Finds the model `dltool predict --model` names and reads its export's
    `dltool.json`.

    Args:
        project_dir: The project folder, or None.
        model_path: As `load_predictor` takes it.

    Returns:
        A tuple `(source, metadata)`: the `.keras` file or the SavedModel
        version folder, and the `dltool.json` beside it.

    Raises:
        DltoolError: nothing exported, not a dltool export.
    """
    if model_path is not None and str(model_path).endswith(".keras"):
        path = Path(model_path)
        return path, read_metadata(path.parent)
    version_dir = export_lib.resolve_export(project_dir, model_path)
    return version_dir, read_metadata(version_dir)


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
        metadata = read_metadata(folder)
    except ModelFileError:
        return f"no readable {export_lib.METADATA_FILE}"
    if not isinstance(metadata, dict) or metadata.get("name") != folder.parent.name \
            or str(metadata.get("version")) != folder.name:
        return f"its {export_lib.METADATA_FILE} names another export"
    if not any(run.name == metadata.get("run") and run.template == metadata.get("template")
               for run in runs.list_runs(project_dir)):
        return "no matching run"
    return None


def read_metadata(folder):
    """Reads an export's `dltool.json` (`predict`, `serve`).

    Returns:
        Its dict, which names at least the export's `template` (a string)
        and its data `meta` (a dict).

    Raises:
        ModelFileError: naming `folder`, if the file is missing, not JSON or
            lacks those keys.
    """
    try:
        metadata = json.loads((Path(folder) / export_lib.METADATA_FILE).read_text())
        if isinstance(metadata.get("template"), str) and isinstance(metadata.get("meta"), dict):
            return metadata
    except (OSError, ValueError, AttributeError):
        pass
    raise ModelFileError(f"{folder}: not a dltool export (no readable "
                         f"{export_lib.METADATA_FILE})")


@dataclasses.dataclass(frozen=True)
class Input:
    """One input of `dltool predict`.

    Attributes:
        shown: How the output and the messages name it (a path, a text).
        value: What the task reads (`Task.read_input`): a path or a text.
        text_file: Whether `value` is a UTF-8 text file whose contents are
            the input (a folder's `.txt` file, for a text template).
    """

    shown: str
    value: str
    text_file: bool = False


class Inputs:
    """The inputs of one `dltool predict`, expanded lazily, in order.

    Each argument is an input as the template takes it (an image path, a
    text), except a folder, which expands to its files with the task's
    `input_suffixes` (recursively, each folder's entries sorted by name,
    hidden ones left out), and,
    with `column`, a CSV or TSV file (its first row the header), which
    expands to that column's cells: the texts, or for a template whose
    inputs are paths (`Task.inputs_are_paths`), image paths relative to the
    table's folder.

    Expanding holds one folder's names or one table row at a time, never
    the whole list.

    Args:
        arguments: The command's inputs, in order.
        column: The table column to read, or None (then no argument is read
            as a table).
        lines: More inputs, taken as they are after the arguments (the
            lines of `--file`).
    """

    def __init__(self, arguments, *, column=None, lines=()):
        self.arguments = [str(a) for a in arguments]
        self.column = column
        self.lines = lines

    def expand(self, task):
        """Yields each `Input`, in order, as `task` takes them.

        Raises:
            DataError: a folder with no inputs, an unreadable folder or table,
                a table without the column or with bytes that are not UTF-8.
        """
        for argument in self.arguments:
            if os.path.isdir(argument):
                yield from _folder_inputs(task, argument)
            elif self.column is not None:
                yield from _table_inputs(task, argument, self.column)
            else:
                yield Input(argument, argument)
        for line in self.lines:
            yield Input(line, line)

    def count(self, task):
        """Returns how many inputs `expand` yields, from the names and rows only.

        Raises:
            DataError: as `expand`.
        """
        return sum(1 for _ in self.expand(task))


def _folder_inputs(task, folder):
    """The inputs of a folder: its files with the task's suffixes, sorted by
    path, but for the pictures `--explain` wrote (`EXPLAIN_SUFFIX`)."""
    found = False
    for path in _files_under(Path(folder), task.input_suffixes):
        if path.name.endswith(EXPLAIN_SUFFIX):
            continue
        found = True
        yield Input(str(path), str(path), text_file=not task.inputs_are_paths)
    if not found:
        raise DataError(f"{folder}: no inputs in this folder (looked for "
                        f"{', '.join(task.input_suffixes)} files)")


def _table_inputs(task, table, column):
    """The inputs of a CSV or TSV file's `column` (its first row the header)."""
    path = Path(table)
    delimiter = text_lib.DELIMITED_SUFFIXES.get(path.suffix.lower(), ",")
    # As the training reader does: a TSV cell may hold quotes as they are.
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, delimiter=delimiter, quoting=quoting)
            header = [name.strip() for name in next(reader, [])]
            if column not in header:
                raise DataError(f"{path}: no column named {column!r} (columns found: "
                                f"{', '.join(header) or 'none'})")
            index = header.index(column)
            for row in reader:
                cell = row[index].strip() if index < len(row) else ""
                if not cell and not any(field.strip() for field in row):
                    continue  # a blank line
                if task.inputs_are_paths:
                    yield Input(cell, str(path.parent / cell))
                else:
                    yield Input(cell, cell)
    except OSError as e:
        raise DataError(f"{path}: unreadable: {e.strerror}") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}:{reader.line_num + 1}: bytes that are not UTF-8; "
                        "fix the file") from None
    except csv.Error as e:
        raise DataError(f"{path}:{reader.line_num}: {e}") from None


def _files_under(folder, suffixes):
    """Yields the files of `folder` and its subfolders with one of `suffixes`,
    each folder's entries in name order; hidden files and folders are left out."""
    try:
        entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
    except OSError as e:
        raise DataError(f"{folder}: unreadable: {e.strerror}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _files_under(Path(entry.path), suffixes)
        elif Path(entry.name).suffix.lower() in suffixes:
            yield Path(entry.path)


def predict(project_dir, items, *, model_path=None, top_k=3, warn=None, skip_bad=False,
            on_bad=None, progress=None, batch_size=BATCH_SIZE, keras_model=None):
    """Predicts every input with an exported model, batch by batch.

    Args:
        project_dir: The project folder, or None.
        items: A list of raw inputs as the template takes them (image file
            paths, texts), or `Inputs` (folders, tables; what they expand
            to is the task's to say, known once the model is).
        model_path: See `load_predictor`.
        top_k: How many classes to return per item.
        warn: See `load_predictor`.
        skip_bad: Skip an input that cannot be read or decoded (and pass it
            to `on_bad`) instead of stopping at it.
        on_bad: Function called with `(shown, reason)` of each skipped input,
            or None.
        progress: Function called with `(done, total)` after each batch, or
            None. `total` is counted first (a pass over the names only).
        batch_size: Inputs per call of the serving signature.
        keras_model: See `load_predictor`.

    Returns:
        A tuple `(source, task, results)`: the model path used, the
        template's `Task` (which formats the results for the user) and the
        `(shown, prediction)` of every usable input, in order, each
        prediction what `task.format_prediction` returns (classifiers:
        `[(label, probability), ...]`, the top `top_k`). For a list of
        items, `results` is a list; otherwise an iterator that reads and
        predicts one batch at a time as it is consumed.

    Raises:
        DltoolError: the model (see `load_predictor`); without `skip_bad`,
            `DataError` naming the first unusable input (for an iterator:
            raised while iterating).
    """
    serve, task, source, meta = load_predictor(project_dir, model_path, warn=warn,
                                               keras_model=keras_model)
    task = task.for_export(meta)  # e.g. a multi-label export's predictions
    as_list = isinstance(items, (list, tuple))
    inputs = Inputs([], lines=[str(item) for item in items]) if as_list else items
    results = _predict_batches(serve, task, meta, inputs, top_k=top_k, skip_bad=skip_bad,
                               on_bad=on_bad, progress=progress, batch_size=batch_size)
    return source, task, list(results) if as_list else results


def _predict_batches(serve, task, meta, inputs, *, top_k, skip_bad, on_bad, progress,
                     batch_size):
    """Yields `(shown, prediction)` for each usable input, one batch read at a time.

    One thread reads the next batch while the signature runs on this one (it
    releases the GIL), so at most two batches are held.
    """
    total = inputs.count(task) if progress is not None else None
    done = 0
    batches = _read_batches(task, meta, inputs.expand(task), batch_size)
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as reader:
        pending = reader.submit(next, batches, None)
        while (batch := pending.result()) is not None:
            pending = reader.submit(next, batches, None)
            readable = []
            for item, value, reason in batch:
                if reason is None:
                    readable.append((item, value))
                else:
                    _refuse(item, reason, skip_bad, on_bad)
            for item, outputs, index in _serve_batch(serve, readable, skip_bad, on_bad):
                yield item.shown, task.format_prediction(outputs, index, top_k)
            done += len(batch)
            if progress is not None:
                progress(done, total)


def _read_batches(task, meta, inputs, batch_size):
    """Yields lists of `(input, serving input, None)` or `(input, None, reason)`."""
    while batch := list(itertools.islice(inputs, batch_size)):
        yield [(item, *_read(task, meta, item)) for item in batch]


def _read(task, meta, item):
    """Returns `(serving input, None)` for a usable input, `(None, reason)` otherwise."""
    try:
        value = _read_text_file(item.value) if item.text_file else item.value
        return task.read_input(value, meta), None
    except DataError as e:
        return None, str(e)


def _read_text_file(path):
    """The text of a folder's `.txt` input: the whole file, stripped."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise DataError(f"{path}: unreadable: {e.strerror}") from None
    try:
        return raw.removeprefix(b"\xef\xbb\xbf").decode("utf-8").strip()
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: bytes that are not UTF-8") from None


def _refuse(item, reason, skip_bad, on_bad):
    """Stops at an unusable input, or with `skip_bad` reports it and goes on."""
    if not skip_bad:
        raise DataError(reason)
    if on_bad is not None:
        on_bad(item.shown, reason)


def _serve_batch(serve, readable, skip_bad, on_bad):
    """Calls the signature on a batch; yields `(item, outputs, row)` per input.

    A batch the signature refuses (an image whose header is sound but whose
    data does not decode) is called again one input at a time, to find and
    name the inputs it refuses; the happy path decodes every input once.
    """
    if not readable:
        return
    try:
        outputs = _call(serve, [value for _, value in readable])
    except tf.errors.InvalidArgumentError as e:
        if len(readable) > 1:
            for pair in readable:
                yield from _serve_batch(serve, [pair], skip_bad, on_bad)
        else:
            item = readable[0][0]
            _refuse(item, f"{item.value}: cannot be decoded: "
                          f"{op_message(e.message, 'the model refused it')}", skip_bad, on_bad)
        return
    for index, (item, _) in enumerate(readable):
        yield item, outputs, index


def _call(serve, values):
    """The signature's outputs on one batch, as numpy arrays."""
    return {name: np.asarray(value) for name, value in serve(tf.constant(values)).items()}
