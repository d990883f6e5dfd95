"""Train a project's model: data → strategy → model → fit with callbacks.

`train` resumes the newest unfinished run with the same resolved config
(Keras' `BackupAndRestore` restores the weights, the optimizer state and the
epoch), or starts a new run folder under `runs/`.
"""

import os
import warnings

from dltool import callbacks as dl_callbacks
from dltool import config as config_lib
from dltool import project as project_lib
from dltool import runs, runtime
from dltool._tf import keras
from dltool.data import pipeline
from dltool.errors import ProjectError
from dltool.tasks import task_for


def prepare_runtime(config):
    """Sets the precision policy and creates the strategy for `config`.

    Returns:
        A tuple `(strategy, description)`, the description a line saying
        what was chosen and why.
    """
    strategy = runtime.choose_strategy(config["runtime"]["strategy"])
    precision = runtime.choose_precision(config["runtime"]["precision"])
    runtime.set_precision(precision.value)
    description = (f"Strategy: {strategy.value} ({strategy.reason}); "
                   f"precision: {precision.value} ({precision.reason})")
    return runtime.make_strategy(strategy.value), description


def training_datasets(task, config, data):
    """Returns batched `(train, val)` datasets; `val` is None without a split."""
    training = config["training"]
    cache = pipeline.should_cache(config["data"]["cache"], sum(data.sizes.values()),
                                  task.bytes_per_example(config))
    grouping = batching(task, config)
    train = pipeline.batched(data.splits["train"], training["batch_size"], training=True,
                             seed=training["seed"], cache=cache,
                             shuffle_buffer=data.sizes["train"], **grouping)
    val = None
    if "val" in data.splits:
        val = pipeline.batched(data.splits["val"], training["batch_size"], training=False,
                               cache=cache, **grouping)
    return train, val


def batching(task, config):
    """Extra `pipeline.batched` arguments of a task (grouping by length), or {}."""
    return task.batching(config) if hasattr(task, "batching") else {}


def make_callbacks(config, run, monitor):
    """Returns the callbacks of a training run, in the order they must run.

    The backup is written before the epoch's log lines, and `run.json` last,
    so a run killed at any moment resumes from an epoch it fully recorded.
    """
    training = config["training"]
    run_dir = run["dir"]
    budget = training["time_budget"] * 60
    seconds_done = run.get("train_seconds", 0.0)
    return [
        dl_callbacks.EpochLearningRate(training["lr_schedule"], training["epochs"],
                                       training["warmup_epochs"], budget, seconds_done),
        *([dl_callbacks.TimeBudget(budget, seconds_done)] if budget else []),
        dl_callbacks.StopOnNonFiniteLoss(),
        keras.callbacks.ModelCheckpoint(
            str(run_dir / runs.WEIGHTS_FILE), monitor=monitor, save_best_only=True,
            save_weights_only=True, initial_value_threshold=run.get("best_value")),
        keras.callbacks.BackupAndRestore(str(run_dir / "backup"), double_checkpoint=True),
        keras.callbacks.EarlyStopping(monitor=monitor,
                                      patience=training["early_stopping_patience"] or
                                      training["epochs"]),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        dl_callbacks.RunRecorder(run, monitor),
    ]


def train(project_dir, overrides=(), *, skip_bad=False, fresh=False, echo=print):
    """Trains the project's model.

    Args:
        project_dir: The project folder.
        overrides: `section.key=value` strings applied to the config.
        skip_bad: Drop unusable data files instead of failing.
        fresh: Start a new run even if an unfinished one could be resumed.
        echo: Function that prints a line for the user.

    Returns:
        The run's metadata dict.

    Raises:
        DltoolError: bad config, data or project; a non-finite loss.
    """
    config = project_lib.load_config(project_dir, overrides)
    task = task_for(config.template)
    module = project_lib.load_model_module(project_dir)
    keras.utils.set_random_seed(config["training"]["seed"])
    strategy, description = prepare_runtime(config)
    data = task.open_data(config, project_dir, skip_bad=skip_bad)
    for line in [description, *data.report]:
        echo(line)
    train_ds, val_ds = training_datasets(task, config, data)
    with strategy.scope():
        model, _ = project_lib.build_model(module, config, task.model_kwargs(data.meta))

    run = None if fresh else runs.find_resumable(project_dir, config)
    if run is None:
        run = runs.create_run(project_dir, config)
        echo(f"Run: {run['dir']}")
    else:
        echo(f"Run: {run['dir']} (resuming an unfinished run with the same config, "
             f"{run.get('epochs_done', 0)} epoch(s) done)")
    for name, content in getattr(data, "run_files", {}).items():  # e.g. the test pairs
        runs.write_text_atomic(run["dir"] / name, content)
    runs.update_run(run, status="running", pid=os.getpid(), meta=data.meta,
                    sizes=data.sizes, parameters=int(model.count_params()))
    monitor = config["training"]["monitor"]
    if val_ds is None:
        monitor = monitor.removeprefix("val_")
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed")
    # Batches grouped by length have no known count: Keras learns it in epoch 1.
    warnings.filterwarnings("ignore", message=".*Your input ran out of data")
    model.fit(train_ds, validation_data=val_ds, epochs=config["training"]["epochs"],
              callbacks=make_callbacks(config, run, monitor),
              verbose=config["training"]["verbose"])
    runs.update_run(run, status="finished", pid=None, monitor=monitor)
    echo(f"Best {monitor}: {run.get('best_value', float('nan')):.4f} at epoch "
         f"{run.get('best_epoch')} ({run['epochs_done']} epochs, "
         f"{run.get('train_seconds', 0):.0f} s of training)")
    return run


def load_trained_model(project_dir, run):
    """Rebuilds a run's model from `model.py` and its resolved config, with
    the run's best weights.

    Returns:
        A tuple `(model, config, task)`.

    Raises:
        ProjectError: if the weights do not fit the current `model.py`.
    """
    config = config_lib.load_config(run["dir"] / "config.toml")
    config.root = project_dir
    task = task_for(config.template)
    module = project_lib.load_model_module(project_dir)
    model, _ = project_lib.build_model(module, config, task.model_kwargs(run["meta"]))
    model.optimizer.build(model.trainable_variables)  # so its saved state loads too
    try:
        model.load_weights(str(run["dir"] / runs.WEIGHTS_FILE))
    except (ValueError, OSError) as e:
        raise ProjectError(f"the weights of run {run['name']} do not fit model.py as it is "
                           f"now: {str(e).splitlines()[0]}") from e
    return model, config, task
