"""One setup path: a project's experiment, opened the same way by every command.

`dltool train`, `evaluate`, `export`, `predict` and `tune` all start from an
`Experiment`: the config (the project's, or a run's resolved one, with
`section.key=value` overrides), the template's task, the project's
`model.py`, then, as each command needs them, the strategy and precision,
the data and its batched datasets, and the model (fresh, or a run's best
weights). Opening the data decides the config's `auto` values
(`dltool.core.auto`): the experiment's config holds them from then on, so
the model is built, and the run folder written, with the values chosen.
"""

import importlib.util
import traceback
from pathlib import Path

import dltool._tf  # noqa: F401  (first: TensorFlow's environment, before keras_tuner loads it)
import keras_tuner  # noqa: E402

from dltool.core import auto
from dltool.core import config as config_lib
from dltool.core import project as project_lib
from dltool.core.errors import ConfigError, ProjectError
from dltool.data import pipeline
from dltool.engine import runtime
from dltool.tasks import phases, task_for

MODEL_FILE = "model.py"


class Experiment:
    """A project's config, task and model code, and what they set up.

    Use `Experiment.open` (the project's config) or `Experiment.for_run` (a
    run's resolved config) rather than the constructor.

    Args:
        project_dir: The project folder.
        config: The validated `Config`.
        run: The trained `Run` it was opened for (`for_run`), or None.

    Attributes:
        task: The template's `dltool.tasks.Task`.
        model_module: The project's imported `model.py`.
        auto_choices: The `dltool.core.auto.Choice`s `open_data` made for
            the config's `auto` values (empty before, or without any).

    Raises:
        ProjectError: `model.py` is missing or broken.
        ConfigError: settings the task cannot use together (`Task.check_config`).
    """

    def __init__(self, project_dir, config, run=None):
        self.project_dir = Path(project_dir)
        self.config = config
        self.run = run
        self.task = task_for(config.template)
        # Before TensorFlow starts: checking a pretrained backbone builds it.
        runtime.split_cpu(config["runtime"]["cpu_devices"])
        self.task.check_config(config)  # e.g. settings multi-label data cannot use
        auto.check(config)  # e.g. model.batchnorm_momentum = "fast"
        self.model_module = load_model_module(project_dir)
        self.auto_choices = []
        self._data_facts = None

    @classmethod
    def open(cls, project_dir, overrides=()):
        """Opens a project with its `config.toml` and `section.key=value` overrides.

        Raises:
            ProjectError: not a project.
            ConfigError: a bad key or value.
        """
        return cls(project_dir, project_lib.load_config(project_dir, overrides))

    @classmethod
    def for_run(cls, project_dir, run, overrides=()):
        """Opens a project with a run's resolved config (plus overrides).

        Relative paths in it (e.g. `data.source`) still refer to the project.
        """
        config = config_lib.load_config(run.config_file, overrides)
        config.root = Path(project_dir)
        return cls(project_dir, config, run)

    def prepare_runtime(self, cluster=None):
        """Sets the precision policy and creates the strategy of the config.

        Args:
            cluster: The `dltool.engine.cluster.Cluster` of a multi-worker
                run, or None.

        Returns:
            A tuple `(strategy, description)`, the description a line saying
            what was chosen and why.
        """
        settings = self.config["runtime"]  # its CPU devices are split (`__init__`)
        strategy = runtime.choose_strategy(settings["strategy"], cluster=cluster)
        precision = runtime.choose_precision(settings["precision"])
        runtime.set_precision(precision.value)
        made = runtime.make_strategy(strategy.value, cluster)
        description = (f"Strategy: {strategy.value} ({strategy.reason}), "
                       f"{made.num_replicas_in_sync} replica(s); "
                       f"precision: {precision.value} ({precision.reason})")
        if cluster is not None:
            role = "chief" if cluster.is_chief else "not chief: writes to a temporary folder"
            description += (f"\nWorker: {cluster.name} of {cluster.size} at {cluster.address} "
                            f"({role})")
        return made, description

    def open_data(self, skip_bad=False, run_meta=None, chosen=()):
        """Opens the config's data through the task (see `Task.open_data`),
        prepared as the run's training prepared it when opened `for_run`,
        or as `run_meta` says (the vocabulary of the weights training starts
        from, `dltool.engine.initfrom.data_meta`).

        Then decides the config's `auto` values (`resolve`): the
        experiment's `config` holds them from then on, `auto_choices` says
        what was chosen, and the data's report ends with one line per choice.

        Args:
            skip_bad: Skip unreadable examples instead of refusing the data.
            run_meta: See above.
            chosen: `auto.Choice`s decided before the data (a search's image
                size, `Task.check_searched_backbones`): the data is opened
                with them, and they are among the choices.

        Raises:
            DataError: missing or unusable data.
            ConfigError: an `auto` value this data cannot decide.
        """
        if run_meta is None and self.run is not None:
            run_meta = self.run.meta
        data = self.task.open_data(auto.apply(self.config, chosen), self.project_dir,
                                   skip_bad=skip_bad, run_meta=run_meta)
        self._data_facts = (data.sizes, [*chosen, *getattr(data, "auto_choices", [])])
        self.config, self.auto_choices = self.resolve(self.config)
        data.report = [*data.report, *(choice.line() for choice in self.auto_choices)]
        return data

    def resolve(self, config):
        """Decides the `auto` values of `config` for the data `open_data` opened.

        Args:
            config: This experiment's config, or another for the same data
                (a search's trial config: its own epochs).

        Returns:
            A tuple `(config, choices)`: the resolved `Config` (`config`
            itself when nothing is `auto`) and the `Choice`s made.

        Raises:
            ConfigError: an `auto` value the data cannot decide.
        """
        if self._data_facts is None:
            raise ConfigError("internal: the auto values are decided once the data is open")
        sizes, chosen = self._data_facts
        examples = sizes["train"]
        if config["training"]["include_validation"]:
            examples += sizes.get("val", 0)
        resolved, choices = auto.resolve(config, examples, chosen)
        return (resolved if choices else config), choices

    def datasets(self, data, config=None):
        """Returns batched `(train, val)` datasets; `val` is None without a split.

        With `training.include_validation` the validation examples are
        trained on too (the final fit of a tuned configuration) and `val` is
        None.

        Args:
            data: What `open_data` returned.
            config: The config whose `[training]` settings batch the data
                (a search's trial config); this experiment's when None.
        """
        config = config or self.config
        training = config["training"]
        cache = pipeline.should_cache(config["data"]["cache"], sum(data.sizes.values()),
                                      self.task.bytes_per_example(config))
        grouping = self.task.batching(config)
        train, train_size = data.splits["train"], data.sizes["train"]
        if training["include_validation"] and "val" in data.splits:
            train = train.concatenate(data.splits["val"])
            train_size += data.sizes["val"]
        train = pipeline.batched(train, training["batch_size"], training=True,
                                 seed=training["seed"], cache=cache,
                                 shuffle_buffer=train_size, **grouping)
        val = None
        if "val" in data.splits and not training["include_validation"]:
            val = pipeline.batched(data.splits["val"], training["batch_size"], training=False,
                                   cache=cache, **grouping)
        return train, val

    def build_model(self, meta, hp=None):
        """Builds the project's model for data described by `meta`.

        Args:
            meta: The data's metadata (`data.meta`, or a run's).
            hp: A `keras_tuner.HyperParameters`, or None for the defaults.

        Returns:
            A tuple `(model, hp)`.

        Raises:
            ConfigError: if a `[model]` key is not read by the model, or a
                config value is still "auto" (the data is not open).
        """
        return build_model(self.model_module, self.config, self.task.model_kwargs(meta), hp)

    def load_trained_model(self, run):
        """Rebuilds a run's model under its precision policy, with its best weights.

        Raises:
            ProjectError: if the weights do not fit the current `model.py`.
        """
        # The precision policy it was trained with (its variables are float32
        # in every policy, so the weights load either way).
        with runtime.precision_scope(run.get("precision", "float32")):
            model, _ = self.build_model(run.meta)
        model.optimizer.build(model.trainable_variables)  # so its saved state loads too
        try:
            phases.load_best_weights(model, run.weights_file)
        except (ValueError, OSError) as e:
            raise ProjectError(f"the weights of run {run.name} do not fit model.py as it "
                               f"is now: {str(e).splitlines()[0]}") from e
        return model


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
        ConfigError: if a `[model]` key is not read by the model, or a
            config value is still "auto" (the data is not open).
        ProjectError: if `build_model` raises a `ValueError`, `TypeError` or
            `KeyError` (Keras' errors for a value a layer cannot take, such
            as `model.dropout = 1.5` or an image size too small for the
            pooling stages): one line with the line of `model.py` and the
            error's first line.
    """
    # What model.py reads: [data] and [model] (training.epochs may stay "auto").
    left = [key for key in auto.unresolved(config) if key.startswith(("data.", "model."))]
    if left:
        raise ConfigError(f'{left[0]} is "auto": it is decided when the data is read '
                          "(a run's config holds the value chosen)")
    hp = hp if hp is not None else keras_tuner.HyperParameters()
    try:
        model = module.build_model(hp, config, **model_kwargs)
    except (ValueError, TypeError, KeyError) as e:
        raise ProjectError(_build_failure(module, e)) from e
    config_lib.check_model_keys(config.model, set(hp.values))
    runtime.build_from_one_replica(model)
    return model, hp


def _build_failure(module, error):
    """The one line for an error `model.py`'s `build_model` raised."""
    where = "model.py"
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if Path(frame.filename) == Path(module.__file__):
            where = f"model.py:{frame.lineno}"
            break
    lines = str(error).strip().splitlines()
    first = lines[0] if lines else type(error).__name__
    return (f"{where}: build_model failed: {type(error).__name__}: {first[:300]} (check the "
            "[model] and [data] values in config.toml)")
