"""Train a project's model: data → strategy → model → fit with callbacks.

`train` resumes the newest unfinished run with the same resolved config
(`callbacks.TrainingBackup` restores the weights, the optimizer state and the
epoch), or starts a new run folder under `runs/`. In multi-worker training
the chief picks the run and tells the other workers its name; they restore
from its backup (so the project folder must be shared storage to resume) and
write their own files into temporary folders they delete at the end.
"""

import contextlib
import functools
import os
import re
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path

from dltool.engine import callbacks as dl_callbacks
from dltool.core import config as config_lib
from dltool.core import project as project_lib
from dltool.report import reports
from dltool.core import runs
from dltool.engine import runtime
from dltool._tf import keras, tf
from dltool.data import pipeline
from dltool.core.errors import DltoolError, ProjectError
from dltool.tasks import task_for


def prepare_runtime(config, cluster=None):
    """Sets the precision policy and creates the strategy for `config`.

    Args:
        config: The run's `Config`.
        cluster: The `dltool.engine.cluster.Cluster` of a multi-worker run, or None.

    Returns:
        A tuple `(strategy, description)`, the description a line saying
        what was chosen and why.
    """
    runtime.split_cpu(config["runtime"]["cpu_devices"])
    strategy = runtime.choose_strategy(config["runtime"]["strategy"], cluster=cluster)
    precision = runtime.choose_precision(config["runtime"]["precision"])
    runtime.set_precision(precision.value)
    made = runtime.make_strategy(strategy.value, cluster)
    description = (f"Strategy: {strategy.value} ({strategy.reason}), "
                   f"{made.num_replicas_in_sync} replica(s); "
                   f"precision: {precision.value} ({precision.reason})")
    if cluster is not None:
        role = "chief" if cluster.is_chief else "not chief: writes to a temporary folder"
        description += f"\nWorker: {cluster.name} of {cluster.size} at {cluster.address} ({role})"
    return made, description


def training_datasets(task, config, data):
    """Returns batched `(train, val)` datasets; `val` is None without a split.

    With `training.include_validation` the validation examples are trained
    on too (the final fit of a tuned configuration) and `val` is None.
    """
    training = config["training"]
    cache = pipeline.should_cache(config["data"]["cache"], sum(data.sizes.values()),
                                  task.bytes_per_example(config))
    grouping = batching(task, config)
    train, train_size = data.splits["train"], data.sizes["train"]
    if training["include_validation"] and "val" in data.splits:
        train = train.concatenate(data.splits["val"])
        train_size += data.sizes["val"]
    train = pipeline.batched(train, training["batch_size"], training=True,
                             seed=training["seed"], cache=cache, shuffle_buffer=train_size,
                             **grouping)
    val = None
    if "val" in data.splits and not training["include_validation"]:
        val = pipeline.batched(data.splits["val"], training["batch_size"], training=False,
                               cache=cache, **grouping)
    return train, val


def batching(task, config):
    """Extra `pipeline.batched` arguments of a task (grouping by length), or {}."""
    return task.batching(config) if hasattr(task, "batching") else {}


def make_callbacks(config, run, monitor, backup=None):
    """Returns the callbacks of a training run, in the order they must run.

    The backup is written before the epoch's log lines, and `run.json` last,
    so a run killed at any moment resumes from an epoch it fully recorded.

    Args:
        config: The run's `Config`.
        run: The run's metadata dict.
        monitor: Metric that picks the best epoch.
        backup: A `callbacks.TrainingBackup`; by default one in the run's
            `backup/` folder.
    """
    training = config["training"]
    run_dir = run["dir"]
    if backup is None:
        backup = dl_callbacks.TrainingBackup(run_dir / "backup")
    budget = training["time_budget"] * 60
    seconds_done = run.get("train_seconds", 0.0)
    return [
        dl_callbacks.EpochLearningRate(training["lr_schedule"], training["epochs"],
                                       training["warmup_epochs"], budget, seconds_done),
        *([dl_callbacks.TimeBudget(budget, seconds_done)] if budget else []),
        dl_callbacks.StopOnNonFiniteLoss(),
        dl_callbacks.BestWeights(run_dir / runs.WEIGHTS_FILE, monitor, run.get("best_value")),
        backup,
        keras.callbacks.EarlyStopping(monitor=monitor,
                                      patience=training["early_stopping_patience"] or
                                      training["epochs"]),
        keras.callbacks.TensorBoard(log_dir=str(run_dir / "tensorboard")),
        keras.callbacks.CSVLogger(str(run_dir / "history.csv"), append=True),
        dl_callbacks.RunRecorder(run, monitor),
    ]


@contextlib.contextmanager
def open_run(project_dir, config, strategy, *, fresh, cluster, echo):
    """Picks the run to train and the folder this process writes to.

    The chief (or a single process) resumes the newest unfinished run with
    the same config, or creates one. In a multi-worker run the chief sends
    the run's name to the other workers, which write into a temporary
    folder, deleted when the block ends.

    Yields:
        A tuple `(run, backup_dir)`: the run's metadata dict (its `dir` is
        the folder this process writes to) and the backup folder to
        restore from.
    """
    if cluster is None or cluster.is_chief:
        run = None if fresh else runs.find_resumable(project_dir, config)
        if run is None:
            run = runs.create_run(project_dir, config)
            echo(f"Run: {run['dir']}")
        else:
            echo(f"Run: {run['dir']} (resuming an unfinished run with the same config, "
                 f"{run.get('epochs_done', 0)} epoch(s) done)")
            runs.remove_leftovers(run["dir"])
        if cluster is not None:
            runtime.broadcast_text(strategy, run["name"], cluster.is_chief)
        yield run, run["dir"] / "backup"
        return
    name = runtime.broadcast_text(strategy, "", cluster.is_chief)
    scratch = Path(tempfile.mkdtemp(prefix=f"dltool-{cluster.task_type}{cluster.task_index}-"))
    echo(f"Run: {name} (the chief writes it; this worker writes to {scratch})")
    try:
        yield {"name": name, "dir": scratch}, Path(project_dir) / runs.RUNS_DIR / name / "backup"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_same_epoch(strategy, cluster, backup_dir, epoch):
    """Checks that every worker restored the same epoch (a collective op).

    Raises:
        DltoolError: if they did not (their project folders are not shared).
    """
    if not runtime.all_equal(strategy, epoch):
        raise DltoolError(
            f"{cluster.name} restored epoch {epoch} from {backup_dir}, other workers "
            "a different one: to resume, every worker needs the chief's project folder "
            "(shared storage)")


@contextlib.contextmanager
def stop_on_sigterm(backup):
    """Makes SIGTERM save a checkpoint and stop, inside the `with` block."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: backup.request_stop())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def worker_failures(cluster):
    """Turns the error a worker gets when another one died into one line."""
    if cluster is None:
        yield
        return
    try:
        yield
    except (tf.errors.UnavailableError, tf.errors.AbortedError,
            tf.errors.DeadlineExceededError) as e:
        lost = sorted(set(re.findall(r"^/job:(\w+)/replica:\d+/task:(\d+)$", str(e), re.M)))
        what = (", ".join(f"{kind} {index}" for kind, index in lost) + " stopped responding"
                if lost else _first_reason(e))
        raise DltoolError(
            f"{cluster.name}: the cluster lost a worker ({what}); the completed epochs "
            "are saved: start every worker again with the same command to resume") from None


def _first_reason(error):
    """The first line of a TensorFlow error without its graph-node prefixes."""
    line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    line = re.sub(r"\{\{[^}]*\}\}\s*", "", line)
    return line.replace("Collective ops is aborted by:", "").strip()


def train(project_dir, overrides=(), *, skip_bad=False, fresh=False, cluster=None,
          echo=print):
    """Trains the project's model.

    Args:
        project_dir: The project folder.
        overrides: `section.key=value` strings applied to the config.
        skip_bad: Drop unusable data files instead of failing.
        fresh: Start a new run even if an unfinished one could be resumed.
        cluster: The `dltool.engine.cluster.Cluster` of a multi-worker run, or None.
        echo: Function that prints a line for the user.

    Returns:
        The run's metadata dict.

    Raises:
        DltoolError: bad config, data or project; a non-finite loss;
            `TrainingInterrupted` after SIGTERM.
    """
    config = project_lib.load_config(project_dir, overrides)
    task = task_for(config.template)
    module = project_lib.load_model_module(project_dir)
    with runtime.precision_scope(keras.mixed_precision.global_policy().name):
        strategy, description = prepare_runtime(config, cluster)
        runtime.set_seed(config["training"]["seed"], config["training"]["deterministic"])
        data = task.open_data(config, project_dir, skip_bad=skip_bad)
        for line in [description, *data.report]:
            echo(line)
        train_ds, val_ds = training_datasets(task, config, data)
        with strategy.scope():
            model, _ = project_lib.build_model(module, config, task.model_kwargs(data.meta))
        with worker_failures(cluster), open_run(project_dir, config, strategy, fresh=fresh,
                                                cluster=cluster, echo=echo) as (run, backup_dir):
            run = fit(model, config, run, data, train_ds, val_ds, strategy=strategy,
                      backup_dir=backup_dir, cluster=cluster, echo=echo)
    if cluster is None or cluster.is_chief:
        reports.write_report(project_dir, run, echo=echo)
    return run



def fit(model, config, run, data, train_ds, val_ds, *, strategy, backup_dir, cluster, echo):
    """Fits `model`, resuming from `backup_dir`, and records the run.

    Returns:
        The run's metadata dict.
    """
    for name, content in getattr(data, "run_files", {}).items():  # e.g. the test pairs
        runs.write_text_atomic(run["dir"] / name, content)
    runs.update_run(run, status="running", pid=os.getpid(), meta=data.meta,
                    sizes=data.sizes, parameters=int(model.count_params()),
                    precision=keras.mixed_precision.global_policy().name,
                    replicas=strategy.num_replicas_in_sync)
    monitor = config["training"]["monitor"]
    if val_ds is None:
        monitor = monitor.removeprefix("val_")
    backup = dl_callbacks.TrainingBackup(
        backup_dir, write_dir=run["dir"] / "backup",
        warn=lambda line: echo(f"Warning: {line}"),
        on_restore=None if cluster is None else
        functools.partial(check_same_epoch, strategy, cluster, backup_dir),
        agree_on_stop=None if cluster is None else functools.partial(runtime.any_worker,
                                                                     strategy))
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed")
    # Batches grouped by length have no known count: Keras learns it in epoch 1.
    warnings.filterwarnings("ignore", message=".*Your input ran out of data")
    with stop_on_sigterm(backup):
        model.fit(train_ds, validation_data=val_ds, epochs=config["training"]["epochs"],
                  callbacks=make_callbacks(config, run, monitor, backup),
                  verbose=config["training"]["verbose"])
    runs.update_run(run, status="finished", pid=None, monitor=monitor)
    echo(f"Best {monitor}: {run.get('best_value', float('nan')):.4f} at epoch "
         f"{run.get('best_epoch')} ({run['epochs_done']} epochs, "
         f"{run.get('train_seconds', 0):.0f} s of training)")
    return run


def load_trained_model(project_dir, run, overrides=()):
    """Rebuilds a run's model from `model.py` and its resolved config, under
    the run's precision policy, with the run's best weights.

    Args:
        project_dir: The project folder.
        run: The run's metadata dict.
        overrides: `section.key=value` strings applied to the run's config
            (e.g. `data.source` to evaluate on other data).

    Returns:
        A tuple `(model, config, task)`.

    Raises:
        ProjectError: if the weights do not fit the current `model.py`.
    """
    config = config_lib.load_config(run["dir"] / "config.toml", overrides)
    config.root = project_dir
    task = task_for(config.template)
    module = project_lib.load_model_module(project_dir)
    # The precision policy it was trained with (its variables are float32 in
    # every policy, so the weights load either way).
    with runtime.precision_scope(run.get("precision", "float32")):
        model, _ = project_lib.build_model(module, config, task.model_kwargs(run["meta"]))
    model.optimizer.build(model.trainable_variables)  # so its saved state loads too
    try:
        model.load_weights(str(run["dir"] / runs.WEIGHTS_FILE))
    except (ValueError, OSError) as e:
        raise ProjectError(f"the weights of run {run['name']} do not fit model.py as it is "
                           f"now: {str(e).splitlines()[0]}") from e
    return model, config, task
