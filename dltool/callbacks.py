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

    With a time budget, the cosine runs over the budget instead of the
    epochs: the rate is set every few batches from the share of the budget
    spent (after a linear warm-up over its first 2%), so it reaches 0 when
    `TimeBudget` stops training, however many epochs that takes.

    Args:
        schedule: `cosine` or `constant`.
        epochs: Total epochs of the run.
        warmup_epochs: Epochs of linear warm-up.
        time_budget: Seconds of training the schedule spans (0: the epochs).
        seconds_done: Training seconds already spent (a resumed run).
    """

    _EVERY_BATCHES = 10
    _WARMUP_SHARE = 0.02

    def __init__(self, schedule, epochs, warmup_epochs=0, time_budget=0.0, seconds_done=0.0):
        super().__init__()
        self.schedule = schedule
        self.epochs = epochs
        self.warmup_epochs = warmup_epochs
        self.time_budget = time_budget
        self.seconds_done = seconds_done
        self.base_rate = None
        self.started = None
        self.epoch = 0

    def rate(self, epoch):
        if epoch < self.warmup_epochs:
            return self.base_rate * (epoch + 1) / (self.warmup_epochs + 1)
        if self.schedule == "constant":
            return self.base_rate
        span = max(1, self.epochs - self.warmup_epochs)
        progress = (epoch - self.warmup_epochs) / span
        return self.base_rate * 0.5 * (1.0 + math.cos(math.pi * progress))

    def on_train_begin(self, logs=None):
        self.started = time.perf_counter()
        if self.base_rate is None:
            self.base_rate = float(keras.ops.convert_to_numpy(
                self.model.optimizer.learning_rate))

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch
        self.model.optimizer.learning_rate.assign(self.rate(epoch))

    def on_train_batch_begin(self, batch, logs=None):
        if not self.time_budget or self.schedule == "constant" or \
                self.epoch < self.warmup_epochs or batch % self._EVERY_BATCHES:
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
