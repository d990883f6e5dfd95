"""Keras callbacks dltool adds to every training run."""

import hashlib
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from dltool.core import files
from dltool.core.metrics import is_better
from dltool._tf import keras
from dltool.core.errors import DltoolError


class NonFiniteLossError(DltoolError):
    """The training loss became NaN or infinite."""


class NonFiniteModelError(DltoolError):
    """The model's weights, or what it computes, hold NaN or infinite values."""


def non_finite_weights(model):
    """Returns the paths of the model's floating-point weights that are not all finite.

    Args:
        model: A built Keras model.

    Returns:
        A list of weight paths such as `conv2d/kernel`, empty when every
        value is finite.
    """
    return [weight.path for weight in model.weights
            if "float" in str(weight.dtype)
            and not np.isfinite(keras.ops.convert_to_numpy(weight)).all()]


def describe_weights(paths):
    """`conv2d/kernel and 3 more`: the first of `paths` and how many others."""
    return paths[0] + (f" and {len(paths) - 1} more" if len(paths) > 1 else "")


class TrainingInterrupted(DltoolError):
    """Training stopped on a signal after saving a checkpoint."""

    exit_code = 143  # 128 + SIGTERM, what schedulers expect


class DamagedBackupError(DltoolError):
    """No backup of a run can be loaded."""


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class TrainingBackup(keras.callbacks.Callback):
    """Backs up the training state after every epoch; restores it on resume.

    Like `keras.callbacks.BackupAndRestore`, it saves the weights with the
    optimizer state and the epoch, and a resumed `fit` starts at the epoch
    after the last one saved. Unlike it:

    - each checkpoint is a folder `ckpt-NNNNNN/` (`state.weights.h5` and
      `state.json` with the epoch and the weights' SHA-256) written under a
      temporary name, flushed to disk and renamed, so it is complete or
      absent; the newest `keep` are kept;
    - on resume a checkpoint whose file is damaged (wrong checksum, unreadable)
      is skipped with a warning and the previous one is used;
    - `request_stop()` (called by a SIGTERM handler) saves a checkpoint
      after the current batch and raises `TrainingInterrupted`. That epoch is
      then run again from its first batch, starting from the saved weights
      (as in Keras' `BackupAndRestore` with `save_freq` in batches);
    - in multi-worker training every worker saves (the save reads the
      replicated variables), but only the chief into `backup_dir`: the others
      pass their own temporary `write_dir`, and all restore from `backup_dir`.
      A stop requested on any worker stops them all at the same batch: with
      `agree_on_stop`, the workers share their requests every
      `stop_check_batches` batches and before each epoch (a collective op),
      and all save and stop when one asked.

    Args:
        backup_dir: Folder of the checkpoints restored from (and written to,
            without `write_dir`).
        write_dir: Folder written to instead, for non-chief workers.
        keep: Checkpoints kept (at least 2, so a damaged one has a fallback).
        delete_at_end: Delete the written checkpoints when training ends
            normally.
        warn: Function called with a warning line.
        on_restore: Function called with the epoch training resumes at (0
            when it starts), e.g. to check that all workers agree.
        agree_on_stop: In multi-worker training, a function every worker
            calls with its own stop request (a bool) at the same batches,
            returning whether any worker asked (`runtime.any_worker`).
        stop_check_batches: Batches between two calls of `agree_on_stop`.
    """

    STATE_FILE = "state.json"
    WEIGHTS_FILE = "state.weights.h5"

    def __init__(self, backup_dir, write_dir=None, keep=2, delete_at_end=True, warn=print,
                 on_restore=None, agree_on_stop=None, stop_check_batches=10):
        super().__init__()
        self.on_restore = on_restore
        self.agree_on_stop = agree_on_stop
        self.stop_check_batches = stop_check_batches
        self.backup_dir = Path(backup_dir)
        self.write_dir = Path(write_dir or backup_dir)
        self.keep = max(2, keep)
        self.delete_at_end = delete_at_end
        self.warn = warn
        self.restored = None
        self._epoch = 0
        self._stop_requested = None

    def checkpoints(self, folder=None):
        """Returns the checkpoint folders in `folder`, newest first."""
        folder = Path(folder or self.backup_dir)
        if not folder.is_dir():
            return []
        return sorted((p for p in folder.glob("ckpt-*") if p.is_dir()), reverse=True)

    def request_stop(self, reason="SIGTERM"):
        """Asks training to save and stop after the current batch."""
        self._stop_requested = reason

    def on_train_begin(self, logs=None):
        # After the callbacks before it read their starting state (the
        # learning-rate schedule reads the initial rate), before any step.
        self.restore()
        epoch = self.restored["epoch"] if self.restored else 0
        if self.on_restore is not None:
            self.on_restore(epoch)
        self.model._initial_epoch = epoch

    def restore(self):
        """Loads the newest checkpoint that is intact.

        Returns:
            Its `state.json` dict (with `path` added), or None if there is
            no checkpoint.

        Raises:
            DamagedBackupError: if there are checkpoints and none loads.
        """
        self.restored = None
        found = self.checkpoints()
        for i, folder in enumerate(found):
            try:
                state = self._load(folder)
            except (OSError, ValueError, KeyError) as e:
                reason = str(e).splitlines()[0] if str(e) else type(e).__name__
                fallback = (f"falling back to {found[i + 1].name}" if i + 1 < len(found)
                            else "no older checkpoint left")
                self.warn(f"checkpoint {folder} is damaged ({reason}); {fallback}")
                continue
            self.restored = {**state, "path": str(folder)}
            return self.restored
        if found:
            raise DamagedBackupError(f"every checkpoint in {self.backup_dir} is damaged; "
                                     "start a new run with --fresh")
        return None

    def saved_epoch(self):
        """The epoch a resumed `fit` would start at, read without loading any
        weights: that of the newest checkpoint whose weights match their
        checksum (the one `restore` loads), or 0 without one.

        A run with phases (`dltool.tasks.phases`) enters the phase of this
        epoch before `fit` restores the checkpoint, so the optimizer state
        saved with it fits the optimizer it loads into.
        """
        for folder in self.checkpoints():
            try:
                state = json.loads((folder / self.STATE_FILE).read_text(encoding="utf-8"))
                if _sha256(folder / self.WEIGHTS_FILE) == state["sha256"]:
                    return int(state["epoch"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return 0

    def _load(self, folder):
        state = json.loads((folder / self.STATE_FILE).read_text(encoding="utf-8"))
        weights = folder / self.WEIGHTS_FILE
        if _sha256(weights) != state["sha256"]:
            raise ValueError("checksum mismatch")
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(weights))
        return {"epoch": int(state["epoch"]), "batch": int(state["batch"])}

    def save(self, epoch, batch=0):
        """Writes a checkpoint of the current state.

        Args:
            epoch: Index of the epoch a resumed `fit` starts at.
            batch: Batches of that epoch already trained (0 at an epoch end).

        Returns:
            The checkpoint folder.
        """
        self.write_dir.mkdir(parents=True, exist_ok=True)
        newest = self.checkpoints(self.write_dir)
        number = int(newest[0].name.split("-")[1]) + 1 if newest else 1
        target = self.write_dir / f"ckpt-{number:06d}"
        check_room_for_weights(self.write_dir, self.model, what="a training checkpoint")
        with files.staging_folder(target) as staging:
            weights = staging / self.WEIGHTS_FILE
            self.model.save_weights(str(weights))
            state = {"epoch": epoch, "batch": batch, "sha256": _sha256(weights)}
            (staging / self.STATE_FILE).write_text(json.dumps(state) + "\n", encoding="utf-8")
        for old in self.checkpoints(self.write_dir)[self.keep:]:
            shutil.rmtree(old, ignore_errors=True)
        return target

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch
        if epoch > self.model._initial_epoch and self._stop_agreed():
            # The previous epoch's checkpoint is the state to resume from.
            raise TrainingInterrupted(
                f"stopped by {self._stop_reason()} before epoch {epoch + 1}, its checkpoint "
                "saved; run the same command to resume")

    def on_epoch_end(self, epoch, logs=None):
        self.save(epoch + 1)

    def on_train_batch_end(self, batch, logs=None):
        if self.agree_on_stop is not None and (batch + 1) % self.stop_check_batches:
            return
        if self._stop_agreed():
            folder = self.save(self._epoch, batch + 1)
            raise TrainingInterrupted(
                f"stopped by {self._stop_reason()} at epoch {self._epoch + 1}, batch "
                f"{batch + 1}, after saving checkpoint {folder}; run the same command "
                "to resume (that epoch restarts from its first batch)")

    def _stop_agreed(self):
        if self.agree_on_stop is None:
            return bool(self._stop_requested)
        return bool(self.agree_on_stop(bool(self._stop_requested)))

    def _stop_reason(self):
        return self._stop_requested or "a stop request of another worker"

    def on_train_end(self, logs=None):
        if self.delete_at_end:
            shutil.rmtree(self.write_dir, ignore_errors=True)


# Room a `.weights.h5` file needs: float32 weights and, when compiled, the
# optimizer's state saved with them (Adam's two slots), plus HDF5's own.
_WEIGHTS_FILE_COPIES = 3
_WEIGHTS_MARGIN_BYTES = 2**20


def check_room_for_weights(folder, model, copies=1, what="the weights"):
    """Checks that `folder` has room for `copies` weights files of `model`.

    HDF5 crashes the process (a segfault, no Python error) when the disk
    fills while it writes or closes a file, so every `save_weights` of a
    training run is preceded by this check, which stops the run with one
    line instead.

    Raises:
        StorageError: naming `folder`, the room free and the room needed.
    """
    needed = copies * (_WEIGHTS_FILE_COPIES * 4 * model.count_params() + _WEIGHTS_MARGIN_BYTES)
    files.check_free_space(folder, needed, what)


class BestWeights(keras.callbacks.Callback):
    """Saves the weights of the best epoch so far, atomically.

    Like `keras.callbacks.ModelCheckpoint(save_best_only=True,
    save_weights_only=True)`, but the file is written under a temporary name
    and renamed, so a kill never leaves a truncated file.

    Args:
        path: The weights file (`*.weights.h5`).
        monitor: Metric that decides which epoch is best.
        mode: `max` or `min` (`dltool.core.metrics.direction` of `monitor`).
        best: Best value of an earlier part of the run, or None.
    """

    def __init__(self, path, monitor, mode, best=None):
        super().__init__()
        self.path = Path(path)
        self.monitor = monitor
        self.mode = mode
        self.best = best

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get(self.monitor)
        if value is None or not is_better(value, self.best, self.mode):
            return
        self.best = float(value)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        check_room_for_weights(self.path.parent, self.model, what="the best weights")
        with files.replacing(self.path) as tmp:
            self.model.save_weights(str(tmp))


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training with an error when the loss or the weights are not finite.

    Unlike `keras.callbacks.TerminateOnNaN()`, which stops gracefully and so
    lets `BackupAndRestore` delete its backup, this raises, which skips
    `on_train_end`: the backup of the last good epoch is kept.

    The loss Keras logs at a batch is computed before that batch's update,
    so the loss never shows what the last update did: with one step per
    epoch, a NaN learning rate makes every weight NaN while the only loss
    logged is finite. So at each epoch end the weights are checked too, and
    the epoch's logged values (a learning rate of 1e38 leaves the weights
    finite but so large that the validation loss is NaN). Placed before
    `BestWeights`, `TrainingBackup` and `RunRecorder`, it stops before any
    of them saves or records the epoch.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss} at batch {batch}; the backup of the last "
                "completed epoch is kept (try a lower model.learning_rate)")

    def on_epoch_end(self, epoch, logs=None):
        bad = non_finite_weights(self.model)
        if bad:
            raise NonFiniteModelError(
                f"the weights became NaN or infinite in epoch {epoch + 1} "
                f"({describe_weights(bad)}); stopped before saving them "
                "(try a lower model.learning_rate)")
        for name, value in (logs or {}).items():
            if np.ndim(value) == 0 and not np.isfinite(value):
                raise NonFiniteModelError(
                    f"{name} became {float(value)} in epoch {epoch + 1}: the model computes "
                    "NaN or infinite values; stopped before saving it "
                    "(try a lower model.learning_rate)")


class EpochLearningRate(keras.callbacks.Callback):
    """Sets the learning rate at the start of each epoch.

    `cosine` decays from the optimizer's initial rate to 0 over `epochs`,
    after `warmup_epochs` of linear warm-up, updated every few batches (so
    a run of a few epochs ends near 0 too); `constant` keeps it. It reads
    the epoch index Keras passes in, so a resumed run continues the schedule
    where it stopped.

    With a time budget, the cosine runs over the budget instead of the
    epochs: the rate is set every few batches from the share of the budget
    spent (after a linear warm-up over its first 2%), so it reaches 0 when
    `TimeBudget` stops training, however many epochs that takes.

    A phase of a run (`dltool.tasks.phases`: epochs `first_epoch` to
    `epochs`) has a schedule of its own over its epochs, from `rate_factor`
    times the optimizer's rate; with a time budget its rate is that fraction
    of the rate the budget's cosine gives.

    Args:
        schedule: `cosine` or `constant`.
        epochs: Total epochs of the run (of the phase: the epoch after its last).
        warmup_epochs: Epochs of linear warm-up.
        time_budget: Seconds of training the schedule spans (0: the epochs).
        seconds_done: Training seconds already spent (a resumed run).
        first_epoch: The phase's first epoch (0: the run's).
        rate_factor: The phase's rate as a fraction of the optimizer's.
    """

    _EVERY_BATCHES = 10
    _WARMUP_SHARE = 0.02

    def __init__(self, schedule, epochs, warmup_epochs=0, time_budget=0.0, seconds_done=0.0,
                 first_epoch=0, rate_factor=1.0):
        super().__init__()
        self.schedule = schedule
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.time_budget = time_budget
        self.seconds_done = seconds_done
        self.first_epoch = first_epoch
        self.rate_factor = rate_factor
        self.base_rate = None
        self.started = None
        self.epoch = 0

    def rate(self, epoch):
        epoch -= self.first_epoch
        if epoch < self.warmup_epochs:
            return self.base_rate * (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "constant":
            return self.base_rate
        span = max(1, self.epochs - self.first_epoch - self.warmup_epochs)
        progress = (epoch - self.warmup_epochs) / span
        return self.base_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()
        if self.base_rate is None:
            self.base_rate = self.rate_factor * float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.model.optimizer.learning_rate.assign(self.rate(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        warming_up = self.epoch - self.first_epoch < self.warmup_epochs
        if self.schedule == "constant" or warming_up or batch % self._EVERY_BATCHES:
            return
        if not self.time_budget:
            steps = self.params.get("steps")
            if steps:
                self.model.optimizer.learning_rate.assign(
                    self.rate(self.epoch + batch / steps))
            return
        spent = self.seconds_done + time.perf_counter() - self.started
        progress = min(1.0, spent / self.time_budget)
        rate = self.base_rate * 0.5 * (1.0 + math.cos(math.pi * progress))
        if progress < self._WARMUP_SHARE:
            rate = self.base_rate * max(progress / self._WARMUP_SHARE, 0.01)
        self.model.optimizer.learning_rate.assign(rate)


class TimeBudget(keras.callbacks.Callback):
    """Stops training once a number of seconds of training has been spent.

    The epoch it stops in ends early, is validated and checkpointed as usual.

    Args:
        seconds: The budget.
        seconds_done: Training seconds already spent (a resumed run).
    """

    def __init__(self, seconds, seconds_done=0.0):
        super().__init__()
        self.seconds = seconds
        self.seconds_done = seconds_done
        self.started = None
        self.stopped = False

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()
        if self.seconds_done >= self.seconds:
            self.model.stop_training = self.stopped = True

    def on_train_batch_end(self, batch, logs=None):
        if self.seconds_done + time.perf_counter() - self.started >= self.seconds:
            self.model.stop_training = self.stopped = True


class RunRecorder(keras.callbacks.Callback):
    """Records progress in the run's `run.json` after every epoch.

    Args:
        run: The `dltool.core.runs.Run`.
        monitor: Metric whose best value is recorded.
        mode: `max` or `min` (`dltool.core.metrics.direction` of `monitor`).
    """

    def __init__(self, run, monitor, mode):
        super().__init__()
        self.run = run
        self.monitor = monitor
        self.mode = mode
        self.epoch_started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        best = self.run.get("best_value")
        if value is not None and is_better(value, best, self.mode):
            best = float(value)
            self.run.update(best_value=best, best_epoch=epoch + 1)
        epoch_seconds = round(time.perf_counter() - self.epoch_started, 2)
        seconds = self.run.get("train_seconds", 0.0) + epoch_seconds
        self.run.update(epochs_done=epoch + 1, train_seconds=round(seconds, 2),
                        epoch_seconds=[*self.run.get("epoch_seconds", []), epoch_seconds],
                        last_metrics={k: float(v) for k, v in logs.items()
                                      if np.isscalar(v) or np.ndim(v) == 0})
