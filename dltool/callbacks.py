"""Keras callbacks dltool adds to every training run."""

import math
import time

import numpy as np

from dltool import runs
from dltool._tf import keras
from dltool.errors import DltoolError


class NonFiniteLossError(DltoolError):
    """The training loss became NaN or infinite."""


class StopOnNonFiniteLoss(keras.callbacks.Callback):
    """Stops training with an error when the loss is NaN or infinite.

    Unlike `keras.callbacks.TerminateOnNaN()`, which stops gracefully and so
    lets `BackupAndRestore` delete its backup, this raises, which skips
    `on_train_end`: the backup of the last good epoch is kept.
    """

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not np.isfinite(loss):
            raise NonFiniteLossError(
                f"loss became {loss} at batch {batch}; the backup of the last "
                "completed epoch is kept (try a lower model.learning_rate)")


class EpochLearningRate(keras.callbacks.Callback):
    """Sets the learning rate at the start of each epoch.

    `cosine` decays from the optimizer's initial rate to 0 over `epochs`,
    after `warmup_epochs` of linear warm-up; `constant` keeps it. It reads
    the epoch index Keras passes in, so a resumed run continues the schedule
    where it stopped.

    Args:
        schedule: `cosine` or `constant`.
        epochs: Total epochs of the run.
        warmup_epochs: Epochs of linear warm-up.
    """

    def __init__(self, schedule, epochs, warmup_epochs=0):
        super().__init__()
        self.schedule = schedule
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.base_rate = None

    def rate(self, epoch):
        if epoch < self.warmup_epochs:
            return self.base_rate * (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "constant":
            return self.base_rate
        span = max(1, self.epochs - self.warmup_epochs)
        progress = (epoch - self.warmup_epochs) / span
        return self.base_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_train_begin(self, logs=None):
        if self.base_rate is None:
            self.base_rate = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self.model.optimizer.learning_rate.assign(self.rate(epoch))


class RunRecorder(keras.callbacks.Callback):
    """Records progress in the run's `run.json` after every epoch.

    Args:
        run: The run's metadata dict (see `dltool.runs`).
        monitor: Metric whose best value is recorded.
    """

    def __init__(self, run, monitor):
        super().__init__()
        self.run = run
        self.monitor = monitor
        self.mode_max = "acc" in monitor or "auc" in monitor
        self.epoch_started = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        value = logs.get(self.monitor)
        best = self.run.get("best_value")
        if value is not None and (best is None or
                                  (value > best if self.mode_max else value < best)):
            best = float(value)
            self.run.update(best_value=best, best_epoch=epoch + 1)
        seconds = self.run.get("train_seconds", 0.0) + time.perf_counter() - self.epoch_started
        runs.update_run(self.run, epochs_done=epoch + 1, train_seconds=round(seconds, 2),
                        last_metrics={k: float(v) for k, v in logs.items()
                                      if np.isscalar(v) or np.ndim(v) == 0})
