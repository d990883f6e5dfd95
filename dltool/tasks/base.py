"""`Task`: the contract between dltool and one template.

dltool's engine (train, evaluate, export, predict, tune), its reports and
its CLI know nothing about images, texts or translations: they ask the run's
task. A template names its task class in its `template.toml`
(`task = "dltool.tasks.image_classifier:ImageClassifierTask"`) and
`dltool.tasks.task_for` returns its one instance.

A task may import the data, report and core layers, never the engine; this
module imports only core's errors.
"""

import dataclasses

from dltool.core.errors import ConfigError


@dataclasses.dataclass
class ServingEndpoint:
    """What an exported SavedModel serves: raw input in, readable output out.

    Attributes:
        fn: The `serving_default` function.
        input_signature: Its `tf.TensorSpec`s (raw input: image bytes,
            strings).
        resources: Layers `fn` uses besides the model (a text vectorizer),
            tracked so the export saves their lookup tables.
        endpoints: More signatures with the same input, name to function
            (e.g. the translator's other decodings).
    """

    fn: object
    input_signature: list
    resources: list = dataclasses.field(default_factory=list)
    endpoints: dict = dataclasses.field(default_factory=dict)


class Task:
    """What one template does with its data, its model and their results.

    Subclasses implement the methods that raise `NotImplementedError`; the
    others are optional hooks with a default that does nothing special.

    Args:
        spec: The template's `template.toml` contents (`name`,
            `description`, `task`, ...), as `dltool.core.scaffold` reads it.

    Attributes:
        name: The template's name (`image-classifier`).
        spec: The template's `template.toml` contents.
        json_ensure_ascii: Whether `dltool predict --json` escapes non-ASCII
            characters (`json.dumps`' `ensure_ascii`).
        inputs_are_paths: Whether an input of `dltool predict` names a file
            (an image) rather than being the input itself (a text). A
            folder's files and a table's cells are then paths; otherwise a
            folder's files are read as UTF-8 texts and a table's cells are
            the texts.
        input_suffixes: The file suffixes, lower case, that a folder given
            to `dltool predict` expands to (recursively).
    """

    json_ensure_ascii = True
    inputs_are_paths = False
    input_suffixes = (".txt",)

    def __init__(self, spec):
        self.spec = dict(spec)
        self.name = self.spec["name"]

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r})"

    # ---- data and model ----

    def open_data(self, config, root, *, skip_bad=False, run_meta=None):
        """Opens the data a config names.

        Args:
            config: The project's or run's `Config`.
            root: The project folder (relative data paths start there).
            skip_bad: Drop unusable data files instead of failing.
            run_meta: When the data is opened for a trained run (`dltool
                evaluate`), that run's `meta`: what training decided (e.g. a
                vocabulary), to prepare the data exactly as in training.
                None when training.

        Returns:
            The data: `splits` (name to unbatched `tf.data.Dataset` of
            `(inputs, target)`), `sizes` (name to example count), `report`
            and `meta` (a JSON-able dict of what the data decided and the
            exported model needs: class names, vocabularies, ...).

        Raises:
            DataError: the data is missing or unusable.
        """
        raise NotImplementedError

    def bytes_per_example(self, config):
        """Returns the memory one decoded example takes, for caching decisions."""
        raise NotImplementedError

    def model_kwargs(self, meta):
        """Returns the data-dependent keyword arguments of the project's `build_model`.

        Args:
            meta: The data's (or run's) `meta` dict.
        """
        raise NotImplementedError

    def fit_options(self, config, data):
        """Extra arguments of `model.fit` (training and every tuning trial).

        The default refuses `training.class_weight` and `training.calibrate`
        (a classifier's): a template without classes takes only `"none"` and
        `false` (its default).

        Args:
            config: The run's config.
            data: The opened data (`open_data`).

        Returns:
            A dict of keyword arguments, `{}` by default.

        Raises:
            ConfigError: a setting the task cannot apply, before anything is
                written.
        """
        if config["training"]["class_weight"] != "none":
            raise ConfigError(f"training.class_weight applies to classifiers; the {self.name} "
                              'template takes only "none"')
        if config["training"]["calibrate"]:
            raise ConfigError(f"training.calibrate applies to classifiers; the {self.name} "
                              "template takes only false")
        return {}

    def calibrate(self, model, dataset, echo, meta=None):
        """Fits a calibration of the trained model's scores, after training
        (and after `after_fit`).

        Called when `training.calibrate` is on, which the default
        `fit_options` refuses: the default does nothing.

        Args:
            model: The trained model, with its best weights.
            dataset: The batched validation split.
            echo: Function that prints a line for the user.
            meta: The run's `meta`.

        Returns:
            A JSON-able dict with at least `temperature` (recorded in
            `run.json` as `calibration`, the temperature in the run's
            `meta`), or None when there is nothing to record.
        """
        return None

    def check_config(self, config):
        """Refuses, when a command opens the project, settings the task cannot
        use together; does nothing by default.

        Args:
            config: The project's or run's `Config`.

        Raises:
            ConfigError: one line naming the key.
        """

    def check_searched_backbones(self, config, values):
        """Checks the `model.backbone` values a search lists (`[search]`'s
        `backbone`), before any data is read or trial runs; does nothing by
        default (a `model.py` that does not read `backbone` is refused by
        the search's check of its space).

        Args:
            config: The search's `Config` (not changed).
            values: The searched values.

        Returns:
            The `dltool.core.auto.Choice`s of `"auto"` values that must be
            the same for every trial, decided here from the backbones (an
            image size: the data is decoded once); `[]` by default. The
            search opens the data with them (`Experiment.open_data`).

        Raises:
            ConfigError: one line naming `search.backbone` and the value.
        """
        return []

    def model_facts(self, config):
        """What `dltool info` says of the project's model (e.g. its pretrained
        backbone and what each training phase trains); `{}` by default.

        Args:
            config: The project's `Config`.

        Returns:
            A dict of fact name to a line or a list of lines.

        Raises:
            ConfigError: a setting the task refuses (`check_config`).
        """
        return {}

    def after_fit(self, model, data, config, run, echo=None):
        """What the task decides once training has fitted the model (e.g. a
        multi-label classifier's decision thresholds, recorded in `run.meta`);
        nothing by default.

        Args:
            model: The trained model, with the run's best weights.
            data: The opened data.
            config: The run's config.
            run: The `Run`.
            echo: Function that prints a line for the user, or None.
        """

    def batching(self, config):
        """Returns extra `dltool.data.pipeline.batched` arguments (grouping by
        length, ...); `{}` by default."""
        return {}

    # ---- serving and predicting ----

    def serving_endpoint(self, model, meta):
        """Builds the exported model's serving function: raw input in,
        readable output out.

        Args:
            model: The trained Keras model.
            meta: The run's `meta` dict.

        Returns:
            A `ServingEndpoint`.
        """
        raise NotImplementedError

    def for_export(self, meta):
        """What formats the predictions of an export (`dltool predict`): the task
        itself by default.

        Args:
            meta: The export's `meta` (its `dltool.json`).
        """
        return self

    def read_inputs(self, items, meta):
        """Turns `dltool predict`'s items into what the serving function takes.

        Args:
            items: The command's inputs (image paths, texts).
            meta: The export's `meta` (its `dltool.json`), e.g. the image
                classifier's limit on an image's pixels.

        Returns:
            A list, one entry per item (`read_input` of each).

        Raises:
            DataError: naming the first item that cannot be read.
        """
        return [self.read_input(item, meta) for item in items]

    def read_input(self, item, meta):
        """Turns one of `dltool predict`'s items into what the serving function
        takes; `dltool predict` reads its inputs one at a time with it, so
        their number does not bound memory.

        Args:
            item: An input (an image path, a text; see `inputs_are_paths`).
            meta: The export's `meta` (its `dltool.json`).

        Returns:
            The serving function's input for the item (bytes, a string).

        Raises:
            DataError: `ITEM: reason`, when the item cannot be read.
        """
        raise NotImplementedError

    def raw_input_problem(self, data, meta):
        """Checks one raw input before it reaches the serving signature, which
        takes whatever it is given (`dltool predict`, `dltool serve`).

        Args:
            data: The raw input (image bytes, a string).
            meta: The export's `meta`.

        Returns:
            Why the input is refused, or None to let it through (the default:
            any string is a text).
        """
        return None

    def format_prediction(self, outputs, index, top_k):
        """Returns the prediction of one input from a batch's serving outputs.

        Args:
            outputs: Dict of output name to numpy array, one row per input.
            index: The input's row.
            top_k: How many classes a classifier returns.

        Returns:
            A JSON-able value, what `prediction_line` and the other
            `prediction_*` methods take.
        """
        raise NotImplementedError

    def explain_refusal(self):
        """Says why `dltool predict --explain` cannot explain this template's
        predictions, or None when it can (`explainer`).

        Returns:
            One line; the default: it applies to the image classifier only.
        """
        return f"--explain applies to the image classifier, not to a {self.name} model"

    def explainer(self, model, meta):
        """Returns what draws `dltool predict --explain`'s pictures.

        Called only when `explain_refusal` is None.

        Args:
            model: The export's Keras model (`model.keras`).
            meta: The export's `meta`.

        Returns:
            A function of a list of `read_input` values that returns, for
            each, `(picture, None)` (a uint8 RGB array `(h, w, 3)`) or
            `(None, reason)` for one it cannot draw.

        Raises:
            ConfigError: the model cannot be explained.
        """
        raise NotImplementedError

    # ---- exporting to other formats (LiteRT, ONNX) ----

    def format_refusal(self, export_format, quantize, meta):
        """Says why the template's model cannot be exported in a format.

        The SavedModel (`savedmodel`) takes every template; LiteRT and ONNX
        have no image decoder or tokenizer among their ops, so a template
        that supports them overrides this and `inference_model`.

        Args:
            export_format: `savedmodel`, `litert` or `onnx`.
            quantize: The quantization asked for (`none`, `float16`, ...).
            meta: The run's `meta`.

        Returns:
            None when it can; otherwise one line saying why not and what
            works instead.
        """
        if export_format == "savedmodel":
            return None
        return (f"the {self.name} template has no {export_format} export yet; "
                "--format savedmodel works (TensorFlow Serving, `dltool predict`)")

    def inference_model(self, model, meta, export_format):
        """Returns the model a LiteRT or ONNX export converts: numeric input
        (pixels, token ids) in, the model's output out, nothing that only
        training uses.

        Args:
            model: The trained Keras model.
            meta: The run's `meta`.
            export_format: `litert` or `onnx`. An input with a fixed batch
                size (`keras.Input(batch_size=1)`) is converted with that
                size (LiteRT's loops need static shapes).
        """
        raise NotImplementedError

    def input_spec(self, export_format, meta):
        """Describes, for `dltool.json`, the input an export takes.

        Args:
            export_format: `savedmodel`, `litert` or `onnx`.
            meta: The run's `meta`.

        Returns:
            A JSON-able dict: its `name`, `shape`, `dtype` and how to make it
            from raw input (value range, resize rule, tokenizer); `{}` by
            default.
        """
        return {}

    def output_labels(self, meta):
        """The label names an export writes to `labels.txt` (index = output
        position), or None when its output has no labels (the default)."""
        return None

    def client_snippet(self, export_format, meta):
        """Python that uses an export without dltool, for its README.md.

        Args:
            export_format: `savedmodel`, `litert` or `onnx`.
            meta: The run's `meta`.

        Returns:
            The code, or None when the task has none for that format (the
            default).
        """
        return None

    # ---- evaluating and reporting ----

    def evaluate_split(self, model, data, split, config, run, echo=None):
        """Evaluates a model on one split; may write files to the run folder.

        Args:
            model: The trained Keras model.
            data: What `open_data` returned.
            split: The split's name (`test`, `val`).
            config: The run's `Config`.
            run: The `dltool.core.runs.Run`.
            echo: Function that prints a progress line for the user, or None.

        Returns:
            A JSON-able dict of the figures, with at least `examples`.
        """
        raise NotImplementedError

    def report_sections(self, run, split, evaluation):
        """The template's part of the run report for one evaluated split.

        Args:
            run: The `dltool.core.runs.Run`.
            split: The split evaluated.
            evaluation: The `evaluation-SPLIT.json` contents.

        Returns:
            A list of `dltool.report.reports.Section`s; `[]` by default.
        """
        return []

    # ---- what the CLI prints ----

    def evaluation_lines(self, result):
        """The lines `dltool evaluate` prints of an evaluation.

        Args:
            result: What `dltool.engine.evaluate.evaluate` returned (`run`,
                `split` and `evaluate_split`'s figures).

        Returns:
            A list of lines; by default the one that names the run, the
            split and the number of examples.
        """
        return [f"Run {result['run']}, {result['split']} split, {result['examples']} examples"]

    def evaluation_summary(self, result):
        """The one line `dltool evaluate --quiet` prints: the headline score."""
        raise NotImplementedError

    def prediction_line(self, item, prediction):
        """The line `dltool predict` prints of one input and its prediction."""
        raise NotImplementedError

    def prediction_summary(self, prediction):
        """The line `dltool predict --quiet` prints of one prediction."""
        raise NotImplementedError

    def prediction_record(self, item, prediction):
        """One input and its prediction as `dltool predict --json` lists it
        (a JSON-able dict)."""
        raise NotImplementedError

    def prediction_columns(self, top_k):
        """The header of the table `dltool predict --output` writes.

        Args:
            top_k: How many classes a classifier returns per input.

        Returns:
            A list of column names, `input` first.
        """
        raise NotImplementedError

    def prediction_row(self, item, prediction, top_k):
        """One input and its prediction as a row of `prediction_columns(top_k)`
        (text and number cells)."""
        raise NotImplementedError

    def prediction_warning(self, item, prediction):
        """A warning about one prediction for stderr, or None (the default)."""
        return None

    def run_facts(self, evaluation):
        """The facts of a test-split evaluation that `dltool runs` shows of the
        run (its row, `--json` and `--compare`, after the common ones).

        `dltool evaluate` records them in `run.json`, so `dltool runs` reads
        them without importing the task (nor TensorFlow).

        Args:
            evaluation: What `evaluate_split` returned on the test split.

        Returns:
            A JSON-able dict of fact name to value; `{}` by default.
        """
        return {}

    def table_score(self, facts):
        """What `dltool runs` shows in its `test` column: `[metric name,
        value]`, or None (`-`).

        Args:
            facts: What `run_facts` returned.
        """
        return None
