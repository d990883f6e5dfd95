"""`auto` config values: settings derived from the data, with the reason.

A key whose value is `"auto"` is decided once the data is known
(`dltool.engine.experiment.Experiment.open_data`), before the model is
built: `data.image_size` from the images' own sizes (the image data's
preflight reads every header, `dltool.data.images`), `training.epochs` from
the number of training steps an epoch has, and a `[model]` key named
`batchnorm_momentum` from the number of training steps of the run. The run
folder's `config.toml` holds the values chosen (so `dltool evaluate` and
`dltool export` rebuild the same model) and `run.json` what was chosen and
why (`auto`).

Each rule returns a `Choice`: the value and a one-line reason, which the
data report and `dltool info` print. A number or list given instead of
`"auto"` is used as given.

This module never imports TensorFlow.
"""

import dataclasses
import json
import math
import statistics

from dltool.core.errors import ConfigError

AUTO = "auto"

# data.image_size: the median short side of the training images, to a
# multiple of 16 (each of model.py's up to 4 blocks halves the size), at
# least 16 (the smallest size every allowed model takes) and at most
# IMAGE_SIZE_CAP. A side of 28 (MNIST) gives 32; CIFAR-10's 32 stays 32.
IMAGE_SIZE_STEP = 16
IMAGE_SIZE_MIN = 16
# The cap is the CPU's training cost, which grows with the pixels: one epoch
# (forward and backward, batch 64) of the template's model took 7.3 s per
# 1,000 images at 32x32, 41.8 s at 64x64, 86.4 s at 96x96 and 183.7 s at
# 128x128 (`bench/defaults.py --image-cost 32 64 96 128`, 2 AMD EPYC cores
# shared with other jobs, so the ratios count: 1 : 5.7 : 12 : 25; an earlier
# run gave 1 : 7.7 : 14 : 29). At the cap, an epoch of 1,000 images costs
# about one of CIFAR-10's 7,200 at 32x32 (0.8 and 1.07 times in the two runs).
IMAGE_SIZE_CAP = 64

# training.epochs: as many epochs as make TARGET_STEPS optimizer steps,
# between MIN_EPOCHS and MAX_EPOCHS. MAX_EPOCHS is the image template's
# former default (44), which CIFAR-10's 7,200 training images (113 steps
# of 64 an epoch, 4,972 steps in all) were measured with: test accuracy 0.772
# in 489 s. A smaller set keeps the 44 epochs (their steps are short); a
# larger one gets fewer, so that its training time stays near CIFAR-10's
# instead of growing with the data (a 50,000-image set: 782 steps an epoch,
# 10 epochs).
TARGET_STEPS = 5_000
MIN_EPOCHS = 10
MAX_EPOCHS = 44

# model.batchnorm_momentum: the moving statistics BatchNormalization uses at
# inference average about 1 / (1 - momentum) steps, and start from mean 0,
# variance 1, which still weigh momentum ** steps at the end of a run. A run
# of `steps` gets 1 - MOMENTUM_RUN_FRACTION / steps, between MOMENTUM_MIN
# and MOMENTUM_MAX: its statistics average about the last sixth of the run.
# Measured on the embedded 450 training images (8 steps an epoch, 15 epochs:
# 120 steps), test accuracy: 0.16 with 0.99 (nearly one class predicted; its
# start still weighs 0.99 ** 120 = 0.30), 0.335 with 0.9, 0.35 with 0.8 and
# 0.375 with 0.95, which this rule gives (200 test images: +-0.03 is noise).
# On 450 CIFAR-10 images for 44 epochs (352 steps) this rule's 0.983 gave
# 0.3925 against 0.2010 with 0.99; on CIFAR-10's 7,200 (4,972 steps) 0.99
# gave 0.772 against 0.760 with 0.9 (bench/defaults.py, README). The rule
# gives 0.99 from 600 steps on, which is not the best everywhere: at 1,800
# images (1,276 steps) 0.99 gave 0.5835, 0.96 gave 0.6100 and 0.9 0.6165.
MOMENTUM_RUN_FRACTION = 6
MOMENTUM_MIN = 0.9
MOMENTUM_MAX = 0.99
MOMENTUM_RANGE = (0.0, 0.999)  # what model.py's hp.Float accepts

# The `[model]` keys with an `auto` rule, and the numbers they accept.
MODEL_KEYS = {"batchnorm_momentum": MOMENTUM_RANGE}


@dataclasses.dataclass(frozen=True)
class Choice:
    """What an `auto` key was set to, and why.

    Attributes:
        key: `section.key`.
        value: The value chosen (JSON-able).
        reason: One line saying what it was derived from.
    """

    key: str
    value: object
    reason: str

    def line(self):
        """`KEY = VALUE (auto: REASON)`: the line the data report prints."""
        return f"{self.key} = {json.dumps(self.value)} (auto: {self.reason})"

    def record(self):
        """The JSON-able entry of `run.json`'s `auto`."""
        return {"value": self.value, "reason": self.reason}


def is_auto(value):
    return isinstance(value, str) and value == AUTO


def choose_image_size(sizes):
    """`data.image_size` from the images' own sizes.

    Args:
        sizes: `(width, height)` of each training image, as their headers
            state them.

    Returns:
        A `Choice` of `[side, side]`.

    Raises:
        ConfigError: if there are no sizes.
    """
    if not sizes:
        raise ConfigError('data.image_size = "auto" needs the images\' sizes; none were read: '
                          "set data.image_size = [height, width]")
    median = statistics.median(min(width, height) for width, height in sizes)
    side = IMAGE_SIZE_STEP * round(median / IMAGE_SIZE_STEP)
    side = max(IMAGE_SIZE_MIN, min(IMAGE_SIZE_CAP, side))
    capped = " (the CPU's training cost)" if median > IMAGE_SIZE_CAP else ""
    reason = (f"the median short side of the {len(sizes)} training images is {median:g} px; "
              f"to a multiple of {IMAGE_SIZE_STEP}, at most {IMAGE_SIZE_CAP}{capped}")
    return Choice("data.image_size", [side, side], reason)


def choose_epochs(train_examples, batch_size):
    """`training.epochs` from the steps an epoch has.

    Returns:
        A `Choice` of the number of epochs.
    """
    steps = steps_per_epoch(train_examples, batch_size)
    epochs = max(MIN_EPOCHS, min(MAX_EPOCHS, round(TARGET_STEPS / steps)))
    return Choice("training.epochs", epochs,
                  f"{train_examples} training examples make {steps} steps of {batch_size} an "
                  f"epoch; epochs for about {TARGET_STEPS} steps, from {MIN_EPOCHS} to "
                  f"{MAX_EPOCHS}")


def choose_batchnorm_momentum(steps_per_epoch, epochs):
    """`model.batchnorm_momentum` from the training steps of the run.

    Returns:
        A `Choice` of the momentum, rounded to 3 decimals.
    """
    steps = steps_per_epoch * epochs
    momentum = 1 - MOMENTUM_RUN_FRACTION / steps
    momentum = round(max(MOMENTUM_MIN, min(MOMENTUM_MAX, momentum)), 3)
    horizon = round(1 / (1 - momentum))
    return Choice("model.batchnorm_momentum", momentum,
                  f"{steps} training steps ({steps_per_epoch} an epoch x {epochs} epochs); "
                  f"the statistics average about the last {horizon}")


def steps_per_epoch(examples, batch_size):
    return max(1, math.ceil(examples / batch_size))


def check(config):
    """Checks the `[model]` keys that take `"auto"`: each must be `"auto"`
    or a number in its range (the other keys are checked by their `Field`).

    Args:
        config: A `Config`.

    Raises:
        ConfigError: naming the key and what it accepts.
    """
    for key, (low, high) in MODEL_KEYS.items():
        if key not in config.model:
            continue
        value = config.model[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (is_auto(value) or (number and math.isfinite(value) and low <= value <= high)):
            raise ConfigError(f'model.{key} must be "auto" or a number from {low} to {high}; '
                              f"got {value!r}")


def unresolved(config):
    """The `section.key` names still `"auto"` in a config, in order."""
    return [f"{section}.{key}" for section, table in config.sections.items()
            if isinstance(table, dict) for key, value in table.items() if is_auto(value)
            and (section, key) in _RESOLVED]


# The keys `resolve` decides; other keys' "auto" (runtime.strategy, ...) are
# their consumers'.
_RESOLVED = {("data", "image_size"), ("training", "epochs"),
             *(("model", key) for key in MODEL_KEYS)}


def resolve(config, train_examples, chosen=()):
    """Replaces the `auto` values of a config by what the data decides.

    Args:
        config: A `Config` (not changed).
        train_examples: The examples an epoch trains on.
        chosen: `Choice`s the data already made (`data.image_size`, from
            the preflight).

    Returns:
        A tuple `(config, choices)`: a new `Config` without `auto` in the
        keys this module decides, and the `Choice`s made, in order.

    Raises:
        ConfigError: an `auto` key the data did not decide (the image size
            of a source whose sizes are unknown).
    """
    choices = _applicable(config, chosen)
    sections = json.loads(json.dumps(apply(config, choices).sections))  # a deep copy
    training = sections["training"]
    if is_auto(training.get("epochs")):
        choice = choose_epochs(train_examples, training["batch_size"])
        _set(sections, choice.key, choice.value)
        choices.append(choice)
    steps = steps_per_epoch(train_examples, training["batch_size"])
    for key in MODEL_KEYS:
        if is_auto(sections["model"].get(key)):
            choice = dataclasses.replace(choose_batchnorm_momentum(steps, training["epochs"]),
                                         key=f"model.{key}")
            _set(sections, choice.key, choice.value)
            choices.append(choice)
    resolved = dataclasses.replace(config, sections=sections)
    left = unresolved(resolved)
    if left:
        raise ConfigError(f'{left[0]} = "auto" cannot be decided for this data: give it a value')
    return resolved, choices


def apply(config, chosen):
    """`config` with the `Choice`s made for its `auto` keys set (a search's
    image size, decided before the data is opened); `config` itself when
    none applies."""
    choices = _applicable(config, chosen)
    if not choices:
        return config
    sections = json.loads(json.dumps(config.sections))  # a deep copy of plain values
    for choice in choices:
        _set(sections, choice.key, choice.value)
    return dataclasses.replace(config, sections=sections)


def _applicable(config, chosen):
    """The `Choice`s among `chosen` whose key is still `auto` in `config`."""
    return [c for c in chosen if is_auto(_get(config.sections, c.key))]


def _get(sections, name):
    section, key = name.split(".", 1)
    return sections.get(section, {}).get(key)


def _set(sections, name, value):
    section, key = name.split(".", 1)
    sections[section][key] = value
