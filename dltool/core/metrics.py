"""Whether a metric should go up or down: the one rule every consumer uses.

The best-weights callback, early stopping, the run record's best value, the
tuner's objective and the reports all take a metric's direction from
`direction`, so they can never disagree (with Keras' own `auto` mode, a
`val_precision` monitor kept the lowest precision while the tuner maximised
it).

This module never imports TensorFlow.
"""

from dltool.core.errors import ConfigError

DIRECTIONS = ("max", "min")
_DOWN_WORDS = ("loss", "error", "mse", "mae", "perplexity")
_UP_WORDS = ("acc", "auc", "precision", "recall", "f1", "bleu", "chrf", "iou", "top_k")


def direction(metric, requested="auto", setting="tune.direction (--direction max or min)"):
    """Resolves whether `metric` should go up (`max`) or down (`min`).

    Args:
        metric: A metric name as Keras logs it, e.g. `val_accuracy`,
            `val_loss`, `precision`.
        requested: `max` or `min` to decide it, or `auto` to tell it from
            the name: losses and errors go down; accuracy, AUC, precision,
            recall, F1 and the like go up.
        setting: What the error message tells the user to set.

    Returns:
        `max` or `min`.

    Raises:
        ConfigError: if `requested` is `auto` and the name does not tell.
    """
    if requested in DIRECTIONS:
        return requested
    name = metric.removeprefix("val_").lower()
    if any(word in name for word in _DOWN_WORDS):
        return "min"
    if any(word in name for word in _UP_WORDS):
        return "max"
    raise ConfigError(f"cannot tell whether {metric} should go up or down: set {setting}")


def is_better(value, best, mode):
    """Whether `value` improves on `best` (None: nothing yet) in `mode`."""
    if best is None:
        return True
    return value > best if mode == "max" else value < best
