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
import math
import os
import re
import shutil
import signal
import tempfile
import threading
import warnings
from pathlib import Path

from dltool._tf import keras, tf
from dltool.core import config as config_lib
from dltool.core import files, metrics, runs
from dltool.core.errors import ConfigError, DltoolError, StorageError
from dltool.engine import callbacks as dl_callbacks
from dltool.engine import initfrom, reporting, runtime
from dltool.engine.experiment import Experiment
from dltool.tasks import phases as phases_lib


def monitored_metric(config, has_validation, logged=None):
    """The metric that picks the best epoch, and whether it should go up or down.

    Without a validation split `val_accuracy` becomes `accuracy`.

    Args:
        config: The run's `Config`.
        has_validation: Whether training has a validation split.
        logged: The metric names training logs (`logged_metrics`), to check
            `training.monitor` against; None to skip that check.

    Returns:
        A tuple `(monitor, mode)`, mode `max` or `min`.

    Raises:
        ConfigError: if training does not log `training.monitor`, or its
            direction cannot be told.
    """
    monitor = config["training"]["monitor"]
    if not has_validation:
        monitor = monitor.removeprefix("val_")
    if logged is not None and monitor not in logged:
        # Keras would only warn, at every epoch, and no epoch would ever be best.
        raise ConfigError(
            f"training.monitor must be a metric training logs; got {monitor!r}"
            f"{config_lib.did_you_mean(monitor, logged)} (logged: {', '.join(logged)})")
    return monitor, metrics.direction(monitor, setting="training.monitor to a metric "
                                                       "such as val_loss or val_accuracy")


def logged_metrics(model, train_ds, has_validation):
    """Returns the names of the metrics `model.fit` logs, before it runs.

    Keras builds the compiled metrics, and so learns their names, on the
    shapes of the first batch; this builds them on the dataset's element
    spec instead, reading no data. `fit` then finds them built. Call it in
    the strategy's scope, where `fit` would build them.

    Args:
        model: The compiled model.
        train_ds: The batched training dataset.
        has_validation: Whether `fit` gets validation data (`val_` names).

    Returns:
        A sorted list of names, e.g. `accuracy, loss, val_accuracy, val_loss`.
    """
    model._symbolic_build(data_batch=train_ds.element_spec)  # what fit would call first
    names = list(model.get_metrics_result())
    if has_validation:
        names += [f"val_{name}" for name in names]
    return sorted(names)


def check_optimizer(optimizer):
    """Checks the learning rate and weight decay `build_model` gave the optimizer.

    `[model]` holds whatever hyperparameters `model.py` reads, so their
    ranges are not in the config's schema; these two are checked where
    training reads them. Keras takes a negative learning rate (training then
    climbs the loss) or weight decay without a word.

    Args:
        optimizer: The compiled model's optimizer.

    Raises:
        ConfigError: if either is negative, zero (the learning rate) or not
            finite.
    """
    rate = float(keras.ops.convert_to_numpy(optimizer.learning_rate))
    if not (math.isfinite(rate) and rate > 0):
        raise ConfigError(f"the optimizer's learning rate (model.learning_rate in "
                          f"{config_lib.CONFIG_FILE}, as build_model reads it) must be a "
                          f"finite number > 0; got {rate:.6g}")
    decay = getattr(optimizer, "weight_decay", None) or 0.0
    if not (math.isfinite(decay) and decay >= 0):
        raise ConfigError(f"the optimizer's weight decay (model.weight_decay in "
                          f"{config_lib.CONFIG_FILE}, as build_model reads it) must be a "
                          f"finite number >= 0; got {decay:.6g}")


def time_budget_seconds(config):
    """`training.time_budget` in seconds (0: no budget)."""
    return config_lib.parse_duration(config["training"]["time_budget"],
                                     "training.time_budget") or 0


def make_callbacks(config, run, monitor, mode, backup=None, phase=None):
    """Returns the callbacks of a training run, in the order they must run.

    The backup is written before the epoch's log lines, and `run.json` last,
    so a run killed at any moment resumes from an epoch it fully recorded.

    Args:
        config: The run's `Config`.
        run: The `Run`.
        monitor: Metric that picks the best epoch.
        mode: Whether it should go up (`max`) or down (`min`).
        backup: A `callbacks.TrainingBackup`; by default one in the run's
            backup folder.
        phase: The `dltool.tasks.phases.Phase` the callbacks are for (its
            learning-rate schedule; early stopping only in the last phase,
            so phase 1 always runs its epochs and the phase of a resumed run
            follows from its epoch); None for the whole run.
    """
    training = config["training"]
    if backup is None:
        backup = dl_callbacks.TrainingBackup(run.backup_dir)
    if phase is None:
        phase = phases_lib.whole_run(training["epochs"])
    budget = time_budget_seconds(config)
    seconds_done = run.get("train_seconds", 0.0)
    return [
        dl_callbacks.EpochLearningRate(training["lr_schedule"], phase.end_epoch,
                                       training["warmup_epochs"] if not phase.first_epoch else 0,
                                       budget, seconds_done, first_epoch=phase.first_epoch,
                                       rate_factor=phase.rate_factor),
        *([dl_callbacks.TimeBudget(budget, seconds_done)] if budget else []),
        dl_callbacks.StopOnNonFiniteLoss(),
        dl_callbacks.BestWeights(run.weights_file, monitor, mode, run.get("best_value")),
        backup,
        *([keras.callbacks.EarlyStopping(monitor=monitor, mode=mode,
                                         patience=training["early_stopping_patience"] or
                                         training["epochs"])] if phase.last else []),
        keras.callbacks.TensorBoard(log_dir=str(run.tensorboard_dir)),
        keras.callbacks.CSVLogger(str(run.history_file), append=True),
        dl_callbacks.RunRecorder(run, monitor, mode),
    ]


def check_runs_folder(project_dir):
    """Checks that `runs/` takes new files, and deletes what killed runs left there.

    It runs before TensorFlow writes anything: its C++ writers (TensorBoard,
    checkpoints) fail on a read-only or full folder with errors of their own.

    Raises:
        StorageError: naming `runs/` and the operating system's reason.
    """
    root = Path(project_dir) / runs.RUNS_DIR
    files.check_writable(root)
    files.remove_leftovers(root, recursive=False)  # e.g. a run folder being created


def check_room_for_epoch(project_dir, model):
    """Checks that `runs/` has room for the files a run's first epoch writes:
    the best weights and two backups (the new one is staged beside the
    last). Each later save checks again (`dl_callbacks.check_room_for_weights`).

    Raises:
        StorageError: naming `runs/`, the room free and the room needed.
    """
    dl_callbacks.check_room_for_weights(Path(project_dir) / runs.RUNS_DIR, model, copies=3,
                                        what="the files of a training epoch")


@contextlib.contextmanager
def open_run(project_dir, config, strategy, *, fresh, cluster, echo, init_from=None):
    """Picks the run to train and the folder this process writes to.

    The chief (or a single process) resumes the newest unfinished run with
    the same config and the same `init_from` record (`source`), or creates
    one that records it. In a multi-worker run the chief sends
    the run's name to the other workers, which write into a temporary
    folder, deleted when the block ends.

    A write the run folder refuses inside the block (read-only, full)
    becomes a `StorageError`; a run created here that recorded no epoch is
    then deleted, so none is left looking as if it were still running.

    Yields:
        A tuple `(run, backup_dir)`: the `Run` (its folder is the one this
        process writes to) and the backup folder to restore from.

    Raises:
        StorageError: naming the folder and the operating system's reason.
    """
    if cluster is None or cluster.is_chief:
        source = (init_from or {}).get("source")
        run = None if fresh else runs.find_resumable(project_dir, config, source)
        created = run is None
        if created:
            with files.storage_errors(Path(project_dir) / runs.RUNS_DIR):
                run = runs.Run.create(project_dir, config, init_from=init_from)
            echo(f"Run: {run.dir}")
        else:
            echo(f"Run: {run.dir} (resuming an unfinished run with the same config, "
                 f"{run.get('epochs_done', 0)} epoch(s) done)")
            run.remove_leftovers()
        if cluster is not None:
            runtime.broadcast_text(strategy, run.name, cluster.is_chief)
        try:
            with files.storage_errors(run.dir):
                yield run, run.backup_dir
        except StorageError as e:
            if created and not run.get("epochs_done") and not run.backup_dir.exists():
                # Nothing to resume from: a run folder that never recorded an
                # epoch would only be listed as a run that is still running.
                shutil.rmtree(run.dir, ignore_errors=True)
                raise
            raise StorageError(f"{e} (run {run.name} is kept: `dltool train` resumes it "
                               "once the folder can be written)") from e
        return
    name = runtime.broadcast_text(strategy, "", cluster.is_chief)
    scratch = Path(tempfile.mkdtemp(prefix=f"dltool-{cluster.task_type}{cluster.task_index}-"))
    echo(f"Run: {name} (the chief writes it; this worker writes to {scratch})")
    chief_run = runs.Run(Path(project_dir) / runs.RUNS_DIR / name, {"name": name})
    try:
        yield runs.Run(scratch, {"name": name}), chief_run.backup_dir
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
def failed_on(run, errors):
    """Marks `run` failed, with the error's message, when one of `errors` is raised.

    A run that failed this way cannot be resumed (`find_resumable` skips it):
    resuming it would fail again the same way.
    """
    try:
        yield
    except errors as e:
        run.update(status="failed", pid=None, error=str(e))
        raise


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
    """The first line of a TensorFlow error that says something, without its
    graph-node prefixes.

    An error raised inside a `tf.function` starts `Graph execution error:`
    and a traceback of where the op was defined (`Detected at node ...`,
    `File ...` lines); the reason (`Socket closed`, ...) comes after them.
    """
    for line in str(error).splitlines():
        line = re.sub(r"\{\{[^}]*\}\}\s*", "", line)
        line = line.replace("Collective ops is aborted by:", "").strip()
        if line and not line.startswith(_NOT_A_REASON) and not line.startswith("[["):
            return line
    return type(error).__name__


# Lines of a TensorFlow error message that are not its reason.
_NOT_A_REASON = ("Graph execution error:", "Detected at node", "File ", "Traceback",
                 "Stack trace", "^")


def train(project_dir, overrides=(), *, skip_bad=False, fresh=False, cluster=None,
          init_from=None, echo=print):
    """Trains the project's model.

    Args:
        project_dir: The project folder.
        overrides: `section.key=value` strings applied to the config.
        skip_bad: Drop unusable data files instead of failing.
        fresh: Start a new run even if an unfinished one could be resumed.
        cluster: The `dltool.engine.cluster.Cluster` of a multi-worker run, or None.
        init_from: A run name, run folder, exported version folder or
            `.keras` file whose weights training starts from
            (`dltool.engine.initfrom`); None to start from scratch.
        echo: Function that prints a line for the user.

    Returns:
        The `Run`.

    Raises:
        DltoolError: bad config, data or project; a non-finite loss;
            `TrainingInterrupted` after SIGTERM; `StorageError` when `runs/`
            cannot be written (read-only, full).
    """
    experiment = Experiment.open(project_dir, overrides)
    config = experiment.config
    chief = cluster is None or cluster.is_chief
    if chief:  # the other workers write to temporary folders
        check_runs_folder(project_dir)
    with runtime.precision_scope(keras.mixed_precision.global_policy().name):
        strategy, description = experiment.prepare_runtime(cluster)
        runtime.set_seed(config["training"]["seed"], config["training"]["deterministic"])
        source = None if init_from is None else \
            initfrom.open_source(project_dir, init_from, config.template)
        data = experiment.open_data(skip_bad=skip_bad, run_meta=initfrom.data_meta(source))
        config = experiment.config  # its "auto" values decided by the data
        for line in [description, *data.report]:
            echo(line)
        train_ds, val_ds = experiment.datasets(data)
        fit_options = experiment.task.fit_options(config, data)  # e.g. class weights
        with strategy.scope():
            model, _ = experiment.build_model(data.meta)
            # Before a run folder exists, so a misspelt monitor leaves none.
            monitored_metric(config, val_ds is not None,
                             logged_metrics(model, train_ds, val_ds is not None))
            check_optimizer(model.optimizer)
        # Before a run folder exists, so a source that does not fit leaves none.
        start = None if source is None else initfrom.match(source, model, data.meta)
        if chief:
            check_room_for_epoch(project_dir, model)
        with worker_failures(cluster), open_run(
                project_dir, config, strategy, fresh=fresh, cluster=cluster, echo=echo,
                init_from=start.record if start else None) as (run, backup_dir):
            if start is not None:
                initfrom.apply(start, backup_dir, echo)
            run = fit(model, config, run, data, train_ds, val_ds, strategy=strategy,
                      backup_dir=backup_dir, cluster=cluster, echo=echo,
                      auto_choices=experiment.auto_choices, **fit_options)
            if chief:  # the other workers' runs are deleted
                if run.has_weights():  # `fit` leaves the last epoch's weights
                    phases_lib.load_best_weights(model, run.weights_file)
                experiment.task.after_fit(model, data, config, run, echo=echo)  # e.g. thresholds
                calibrate(experiment.task, model, config, run, val_ds, echo)
    if chief:
        reporting.write_run_report(project_dir, run, echo=echo)
    return run


def fit_phases(model, config, run, backup, strategy, echo, callbacks_for, *fit_args,
               epochs=None, initial_epoch=0, **fit_kwargs):
    """Fits `model` phase by phase (`dltool.tasks.phases`): the one loop
    `dltool train` and every `dltool tune` trial run.

    Each phase left is entered (its trainable layers set, the model compiled
    afresh) and fitted with its own callbacks up to its last epoch. The
    phases follow from `config` (`training.epochs`, `freeze_backbone_epochs`,
    `fine_tune_lr_factor`), so a fit that starts late (a resumed checkpoint,
    or keras-tuner's Hyperband continuing a trial of the previous round at
    `initial_epoch`) enters the phase of its first epoch, and one that stops
    early (Hyperband's shorter rounds: `epochs`) ends inside the phase of its
    last.

    Args:
        model: The compiled model (`model.py`'s compile).
        config: The run's (trial's) `Config`.
        run: The `Run` (`run.json` records the phases of a pretrained backbone).
        backup: The run's `callbacks.TrainingBackup`, shared by the phases
            (it deletes its checkpoints at the end of the last one run).
        strategy: The distribution strategy (its scope compiles), or None.
        echo: Function that prints a line for the user.
        callbacks_for: Function of a `Phase` returning that phase's
            callbacks (with `backup` among them).
        *fit_args: `model.fit`'s data arguments.
        epochs: The epoch to stop before; `training.epochs` when None.
        initial_epoch: The epoch the fit starts at (a restored backup's
            epoch, when later, wins).
        **fit_kwargs: Other `model.fit` arguments (validation data, class
            weights, verbosity).
    """
    stop = config["training"]["epochs"] if epochs is None else epochs
    for phase in _phases_to_run(model, config, run, backup, strategy, echo,
                                start=initial_epoch, stop=stop):
        last = phase.last or phase.end_epoch >= stop
        backup.delete_at_end = last  # phase 2 resumes from phase 1's last epoch
        callbacks = callbacks_for(phase)
        # Phase 2 starts from phase 1's weights, whose optimizer state it skips.
        with phases_lib.optimizer_state_skipped() if phase.number == 2 else \
                contextlib.nullcontext():
            model.fit(*fit_args, epochs=min(phase.end_epoch, stop),
                      initial_epoch=max(phase.first_epoch, initial_epoch),
                      callbacks=callbacks, **fit_kwargs)
        if last or any(getattr(c, "stopped", False) for c in callbacks):
            break  # the time budget is spent: no next phase


def _phases_to_run(model, config, run, backup, strategy, echo, start=0, stop=None):
    """Yields the phases (`dltool.tasks.phases`) left to train, each entered:
    its trainable layers set and the model compiled afresh for it.

    A resumed run starts in the phase of its checkpoint's epoch
    (`TrainingBackup.saved_epoch`), or of `start` when later, entered before
    `fit` restores it, so the checkpoint's optimizer state fits. Phase 2's
    first `fit` restores phase 1's last checkpoint: the weights are the
    model's own, and its optimizer state (of the head alone) is rightly not
    loaded into phase 2's new optimizer (`fit` silences Keras' warning about
    it). A phase that starts at or after `stop` is not run.
    """
    phases = phases_lib.plan(config, model)
    described = phases_lib.describe(model, phases)
    if described:
        run.update(backbone=config.model.get("backbone"), phases=described)
        for line in phases_lib.phase_lines(described):
            echo(line)
    compile_config = model.get_compile_config()
    start = max(start, backup.saved_epoch())
    for phase in phases:
        if phase.end_epoch <= start and not phase.last:
            continue
        if stop is not None and phase.first_epoch >= stop:
            return
        if phase.number:
            with strategy.scope() if strategy is not None else contextlib.nullcontext():
                phases_lib.enter(model, phase, compile_config)
        yield phase


def record_fit_options(run, fit_options, meta):
    """Records in `run.json` what the task's `fit_options` change: the class
    weights (`class_weights`, by class name), when there are any."""
    if "class_weight" in fit_options:
        run.update(class_weights={meta["class_names"][label]: round(weight, 6)
                                  for label, weight in fit_options["class_weight"].items()})


def calibrate(task, model, config, run, val_ds, echo):
    """Calibrates the run's best model on the validation split, if it is asked.

    After `fit`: the run is finished, so a process killed here leaves a run
    that exports uncalibrated scores, as with `training.calibrate = false`.
    `model` holds the best epoch's weights (`train` loads them), the task
    fits its calibration (`Task.calibrate`: for a
    classifier one prediction pass over the split and a temperature) and
    it is recorded in `run.json` as `calibration`, and its `temperature` in
    the run's `meta`, which the export applies and `dltool evaluate` reports.

    Args:
        task: The run's `Task`.
        model: The trained model, with the run's best weights.
        config: The run's `Config`.
        run: The finished `Run`.
        val_ds: The batched validation split, or None.
        echo: Function that prints a line for the user.
    """
    if not config["training"]["calibrate"]:
        return
    if val_ds is None:
        why = ("training.include_validation trains on it" if
               config["training"]["include_validation"] else "the data has none")
        echo(f"Calibration: skipped, no validation split ({why})")
        return
    if not run.has_weights():
        echo("Calibration: skipped, no epoch was best (no best weights saved)")
        return
    calibration = task.calibrate(model, val_ds, echo, meta=run.meta)
    if calibration is not None:
        run.update(calibration=calibration,
                   meta={**run.meta, "temperature": calibration["temperature"]})


def fit(model, config, run, data, train_ds, val_ds, *, strategy, backup_dir, cluster, echo,
        auto_choices=(), **fit_options):
    """Fits `model`, resuming from `backup_dir`, and records the run.

    `fit_options` (the task's `fit_options`, e.g. `class_weight`) go to
    `model.fit`; `auto_choices` (the experiment's) are recorded in
    `run.json` as `auto`: each `auto` key's value and reason.

    Returns:
        The `Run`.
    """
    for name, content in data.run_files.items():  # e.g. the test pairs
        run.write_text(name, content)
    run.update(status="running", pid=os.getpid(), meta=data.meta, sizes=data.sizes,
               auto={c.key: c.record() for c in auto_choices},
               parameters=int(model.count_params()),
               precision=keras.mixed_precision.global_policy().name,
               replicas=strategy.num_replicas_in_sync)
    record_fit_options(run, fit_options, data.meta)
    monitor, mode = monitored_metric(config, val_ds is not None)
    backup = dl_callbacks.TrainingBackup(
        backup_dir, write_dir=run.backup_dir,
        warn=lambda line: echo(f"Warning: {line}"),
        on_restore=None if cluster is None else
        functools.partial(check_same_epoch, strategy, cluster, backup_dir),
        agree_on_stop=None if cluster is None else functools.partial(runtime.any_worker,
                                                                     strategy))
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed")
    # Batches grouped by length have no known count: Keras learns it in epoch 1.
    warnings.filterwarnings("ignore", message=".*Your input ran out of data")
    with stop_on_sigterm(backup), failed_on(run, (dl_callbacks.NonFiniteLossError,
                                                  dl_callbacks.NonFiniteModelError)):
        fit_phases(model, config, run, backup, strategy, echo,
                   lambda phase: make_callbacks(config, run, monitor, mode, backup, phase),
                   train_ds, validation_data=val_ds, verbose=config["training"]["verbose"],
                   **fit_options)
    run.update(status="finished", pid=None, monitor=monitor)
    echo(f"Best {monitor}: {run.get('best_value', float('nan')):.4f} at epoch "
         f"{run.get('best_epoch')} ({run['epochs_done']} epochs, "
         f"{run.get('train_seconds', 0):.0f} s of training)")
    return run
