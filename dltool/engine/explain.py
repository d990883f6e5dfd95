"""`dltool predict --explain`: a picture of what the model looked at, per input.

The SavedModel's signature takes image bytes and has no gradients with
respect to the pixels, so the explanations come from the export's Keras
model (`model.keras`, beside the SavedModel in its version folder, loaded
by `modelfiles.load_keras_file` with its checks and safe mode), the same
weights the signature serves. The task draws the pictures
(`Task.explainer`: the image classifier's Grad-CAM overlays); this module
plans where they go and writes them.

Each input `DIR/NAME.EXT` gets `DIR/NAME.gradcam.png` (`EXPLAIN_SUFFIX`),
or `OUT/NAME.gradcam.png` with an output folder. Everything that can be
refused is refused before the first prediction, in one line: a template
that does not explain, a model without a feature map, two inputs that would
write the same file, a folder that cannot be written. The PNGs are then
written under temporary names and renamed into place together once every
one is drawn: on an error none is left.
"""

import contextlib
import dataclasses
import itertools
from pathlib import Path

from PIL import Image

from dltool.core import files
from dltool.core.errors import ConfigError, DataError, ModelFileError, StorageError
from dltool.engine import export as export_lib
from dltool.engine import modelfiles
from dltool.engine.predict import EXPLAIN_SUFFIX, locate_model
from dltool.tasks import task_for

# Images drawn per call of the model (decoded at their own size, so at most
# this many full images are held).
BATCH_SIZE = 32


def explanation_file(path, out_dir=None):
    """Returns where the picture of input image `path` goes: `NAME.gradcam.png`
    beside it, or in `out_dir`."""
    path = Path(path)
    return (Path(out_dir) if out_dir is not None else path.parent) / \
        f"{path.stem}{EXPLAIN_SUFFIX}"


@dataclasses.dataclass
class Explanations:
    """The pictures one `dltool predict --explain` will write.

    Made by `plan_explanations`; `write` draws and writes them.

    Attributes:
        source: The model the predictions must use (the SavedModel folder,
            or the `.keras` file), for `predict`'s `model_path`.
        task: The export's `Task`.
        meta: The export's `meta`.
        draw: The task's `explainer`.
        targets: `(input, picture path)` of each input, in order, each input
            once.
        out_dir: The output folder, or None (beside the inputs).
        model: The Keras model the pictures are drawn with (for `predict`'s
            `keras_model` when `source` is that `.keras` file: loaded once).
    """

    source: Path
    task: object
    meta: dict
    draw: object
    targets: list
    out_dir: Path = None
    model: object = None

    def write(self, skipped=(), skip_bad=False, batch_size=BATCH_SIZE):
        """Draws and writes the picture of every input, all or none.

        Args:
            skipped: The `shown` names of inputs the predictions skipped
                (`--skip-bad`): they get no picture.
            skip_bad: Skip an input that cannot be drawn instead of stopping.
            batch_size: Inputs drawn per call of the model.

        Returns:
            The list of the pictures' paths.

        Raises:
            DataError: without `skip_bad`, naming the first input that cannot
                be read or decoded; `StorageError`: a folder refused a write.
        """
        skipped = set(skipped)
        chosen = iter([(item, path) for item, path in self.targets if item.shown not in skipped])
        written = []
        if self.out_dir is not None:
            with files.storage_errors(self.out_dir):
                self.out_dir.mkdir(parents=True, exist_ok=True)
        with files.storage_errors(self.out_dir or "the inputs' folders"), \
                contextlib.ExitStack() as renames:
            while batch := list(itertools.islice(chosen, batch_size)):
                values, readable = [], []
                for item, path in batch:
                    try:
                        values.append(self.task.read_input(item.value, self.meta))
                        readable.append((item, path))
                    except DataError:
                        if not skip_bad:
                            raise
                for (item, path), (picture, reason) in zip(readable, self.draw(values)):
                    if picture is None:
                        if skip_bad:
                            continue
                        raise DataError(f"{item.value}: {reason}")
                    _write_png(picture, renames.enter_context(files.replacing(path)))
                    written.append(path)
        return written


def plan_explanations(project_dir, inputs, *, model_path=None, out_dir=None):
    """Checks that `dltool predict --explain` can explain every input, before
    anything is predicted, and loads what draws the pictures.

    Args:
        project_dir: The project folder, or None.
        inputs: The command's `dltool.engine.predict.Inputs`.
        model_path: As `predict.load_predictor` takes it: a SavedModel
            version folder, a model folder, a `.keras` file next to its
            `dltool.json`, or None for the project's newest export.
        out_dir: The folder to write the pictures to, or None (beside each
            input).

    Returns:
        An `Explanations`.

    Raises:
        ConfigError: the template does not explain (`Task.explain_refusal`),
            or the model cannot be explained.
        ModelFileError: no export, or no `model.keras` in the export.
        DataError: two inputs whose pictures would have the same path, a
            folder or table of inputs that cannot be read.
        StorageError: a folder the pictures go to cannot be written.
    """
    source, metadata = locate_model(project_dir, model_path)
    keras_file = source if source.suffix == ".keras" else source / export_lib.KERAS_FILE
    task = task_for(metadata["template"])  # imports what the model's layers need
    refusal = task.explain_refusal()
    if refusal is not None:
        raise ConfigError(refusal)
    out_dir = Path(out_dir) if out_dir is not None else None
    targets, owners = [], {}
    for item in inputs.expand(task):
        path = explanation_file(item.value, out_dir)
        owner = owners.setdefault(path, item.value)
        if owner != item.value:
            raise DataError(f"{owner} and {item.value} would both be explained in {path}; "
                            "explain them in separate commands or rename one")
        if len(owners) > len(targets):  # not the same input again
            targets.append((item, path))
    folders = {out_dir} if out_dir is not None else {path.parent for _, path in targets}
    for folder in sorted(folders):
        try:
            files.check_writable(folder)
        except StorageError as e:
            hint = "" if out_dir is not None else \
                "; write the pictures elsewhere with --explain-dir DIR"
            raise StorageError(f"{e} (for --explain){hint}") from None
    if not keras_file.is_file():
        raise ModelFileError(f"{source}: no {export_lib.KERAS_FILE} beside the SavedModel: "
                             "--explain needs the Keras model; export the run again")
    model = modelfiles.load_keras_file(keras_file)
    return Explanations(source, task, metadata["meta"], task.explainer(model, metadata["meta"]),
                        targets, out_dir, model)


def _write_png(picture, path):
    """Writes a uint8 RGB array as a PNG file."""
    Image.fromarray(picture).save(path, format="PNG")
