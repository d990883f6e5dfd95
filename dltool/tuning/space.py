"""Turn the config's `[search]` section into keras-tuner hyperparameters.

The space is registered on a `keras_tuner.HyperParameters` before
`build_model(hp, ...)` runs, so the `hp.Int(...)`, `hp.Choice(...)` calls in
`model.py` return values from the config's space instead of declaring their
own. Hyperparameters `model.py` reads that are not in `[search]` keep their
`[model]` defaults.

Two kinds of `[search]` key are dltool's rather than `model.py`'s own:

- `training.freeze_backbone_epochs` and `training.fine_tune_lr_factor`
  (`config.SEARCHED_TRAINING_KEYS`): hyperparameters of those names, which
  dltool reads for each trial (`trial_config`: the phases of a pretrained
  backbone), not `model.py`;
- `backbone` (`model.backbone`): `model.py` reads it through `hp.Choice`,
  declaring only "scratch" and its default; a search may list any value
  `model.backbone` takes, which the task checks before any trial runs
  (`Task.check_searched_backbones`).
"""

import contextlib
import dataclasses
import math

import dltool._tf  # noqa: F401  (environment before TensorFlow loads)
import keras_tuner

from dltool.core import config as config_lib
from dltool.core.errors import ConfigError


def search_hyperparameters(config):
    """Returns a `keras_tuner.HyperParameters` holding the config's space.

    Each hyperparameter's default is its `[model]` value when that value
    lies in the space (the grid tuner's first trial), else keras-tuner's.

    Args:
        config: A validated `Config`.

    Returns:
        A `keras_tuner.HyperParameters`.
    """
    hp = keras_tuner.HyperParameters()
    space = config_lib.parse_search_space(config["search"])
    backbones = space.get(BACKBONE, {}).get("values", [])
    pretrained = [value for value in backbones if value != "scratch"]
    # The phases' keys count only with a pretrained backbone: when "scratch"
    # is searched too they are active in the other trials only, so scratch
    # trials are not repeated for values they do not use.
    conditional = "scratch" in backbones and bool(pretrained)
    for name in sorted(space, key=lambda name: name != BACKBONE):  # the backbone first
        phases_key = config_lib.searched_training_key(name) is not None
        with (hp.conditional_scope(BACKBONE, pretrained) if phases_key and conditional
              else contextlib.nullcontext()):
            _register(hp, name, space[name], _config_value(config, name))
    return hp


def _register(hp, name, spec, default):
    """Registers one `[search]` entry (`config.parse_search_space`'s spec) on
    `hp`, with `default` (its config value) when it lies in the space."""
    if spec["kind"] == "choice":
        values = spec["values"]
        if all(isinstance(v, bool) for v in values):
            # keras-tuner's Choice would turn true/false into 1/0.
            if len(values) == 2:
                hp.Boolean(name, default=default if isinstance(default, bool) else False)
            else:
                hp.Fixed(name, values[0])
            return
        if any(isinstance(v, float) for v in values):  # keras-tuner wants one type
            values = [float(v) for v in values]
        default = default if default in values and not isinstance(default, bool) else None
        hp.Choice(name, values, default=default)
    else:
        in_range = (isinstance(default, (int, float)) and not isinstance(default, bool)
                    and spec["min"] <= default <= spec["max"])
        kind = hp.Int if spec["kind"] == "int" else hp.Float
        kind(name, spec["min"], spec["max"], step=spec["step"],
             sampling=spec["sampling"], default=default if in_range else None)


def _config_value(config, name):
    """The config's value of hyperparameter `name`: `[model]`'s, or
    `[training]`'s for a `training.KEY` name."""
    key = config_lib.searched_training_key(name)
    return config.model.get(name) if key is None else config["training"].get(key)


def training_values(values):
    """The searched `[training]` values among a trial's hyperparameter values
    (`training.KEY` names), by key."""
    keys = {name: config_lib.searched_training_key(name) for name in values}
    return {key: values[name] for name, key in keys.items() if key is not None}


def trial_config(config, values):
    """A trial's config: `config` with the trial's hyperparameter values, its
    searched `[training]` keys' and its `[model]` keys' (e.g. `backbone`,
    which the run records).

    Args:
        config: The search's trial config (`training.epochs` = `tune.epochs`).
        values: The trial's hyperparameter values.

    Returns:
        A `Config`.
    """
    model = {name: value for name, value in values.items() if name in config.model}
    sections = {**config.sections, "model": {**config.model, **model},
                "training": {**config.sections["training"], **training_values(values)}}
    return dataclasses.replace(config, sections=sections)


def searched_backbones(config):
    """The `model.backbone` values a search's trials use: `[search]`'s
    `backbone` choices, else `[]` (the `[model]` value only)."""
    spec = config_lib.parse_search_space(config["search"]).get(BACKBONE)
    if spec is None:
        return []
    if spec["kind"] != "choice" or not all(isinstance(v, str) for v in spec["values"]):
        raise ConfigError('search.backbone must be a list of "scratch" and KerasHub preset '
                          f"names or folders; got {config['search'].get(BACKBONE)!r}")
    return list(spec["values"])


BACKBONE = "backbone"


def check_against_model(space, declared, tuner):
    """Checks the space against the hyperparameters `model.py` declares.

    Args:
        space: The `HyperParameters` from `search_hyperparameters`.
        declared: The `HyperParameters` a default `build_model` call
            recorded (what `model.py` reads, with its own types).
        tuner: The tuner's name; `grid` needs every range to have a step.

    Raises:
        ConfigError: if the space is empty, names a hyperparameter the model
            does not read, or gives one a type or value the model does not
            take.
    """
    if not space.space:
        raise ConfigError("the config's [search] section is empty: add the hyperparameters "
                          "to search, e.g. dropout = {min = 0.0, max = 0.5}")
    read = {hp.name: hp for hp in declared.space}
    for hp in space.space:
        name = f"search.{hp.name}"
        if config_lib.searched_training_key(hp.name) is not None:
            continue  # dltool reads it (checked with the config)
        if hp.name == BACKBONE and isinstance(read.get(hp.name),
                                              keras_tuner.engine.hyperparameters.Choice):
            continue  # any model.backbone value: the task checks each one
        if hp.name not in read:
            raise ConfigError(f"{name}: build_model does not read {hp.name!r} through hp "
                              f"(it reads: {', '.join(sorted(read))})")
        problem = _mismatch(hp, read[hp.name])
        if problem:
            raise ConfigError(f"{name}: {problem}")
        if tuner == "grid" and isinstance(hp, keras_tuner.engine.hyperparameters.Float) \
                and not hp.step:
            raise ConfigError(f"{name}: the grid tuner needs a step for a float range "
                              "(or a list of values)")


def _mismatch(searched, declared):
    """Returns why `searched` does not fit the model's `declared` one, or None."""
    hps = keras_tuner.engine.hyperparameters
    values = None
    if isinstance(searched, hps.Choice):
        values = list(searched.values)
    elif isinstance(searched, hps.Boolean):
        values = [True, False]
    elif isinstance(searched, hps.Fixed):
        values = [searched.value]
    if isinstance(declared, hps.Boolean):
        if values is None or not all(isinstance(v, bool) for v in values):
            return "model.py reads it with hp.Boolean: give a list of true/false"
    elif isinstance(declared, hps.Choice):
        allowed = list(declared.values)
        bad = [v for v in (values or [None]) if v not in allowed]
        if values is None or bad:
            shown = ", ".join(str(v) for v in allowed)
            return f"model.py takes one of {shown}; give a list of those"
    elif isinstance(declared, hps.Int):
        if isinstance(searched, hps.Float) or (
                values is not None and not all(type(v) is int for v in values)):
            return "model.py reads it with hp.Int: give integers"
    elif isinstance(declared, hps.Float):
        if values is not None and not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            return "model.py reads it with hp.Float: give numbers"
    return None


def value_problem(hp, value):
    """Returns why `value` lies outside the hyperparameter `hp`, or None.

    What a trial's value must be to lie in the space: the type of the
    hyperparameter, inside its range and on its step, or one of its choices.
    The chief checks what workers report with it (`dltool.tuning.adapter`).

    Args:
        hp: A `keras_tuner` hyperparameter of the search space.
        value: The value a trial reports for it.

    Returns:
        A short reason, e.g. "not in 0.001..0.01", or None if it lies inside.
    """
    hps = keras_tuner.engine.hyperparameters
    if isinstance(hp, hps.Boolean):
        return None if isinstance(value, bool) else "not true or false"
    if isinstance(hp, (hps.Fixed, hps.Choice)):
        allowed = [hp.value] if isinstance(hp, hps.Fixed) else list(hp.values)
        # Types must match too: 1 == True == 1.0 in Python, not in a config.
        if any(type(value) is type(v) and value == v for v in allowed):
            return None
        return f"not one of {', '.join(map(str, allowed))}"
    if isinstance(hp, hps.Int):
        if type(value) is not int:
            return "not an integer"
        if not hp.min_value <= value <= hp.max_value:
            return f"not in {hp.min_value}..{hp.max_value}"
        if hp.sampling == "linear" and hp.step and (value - hp.min_value) % hp.step:
            return f"not on the step {hp.step} from {hp.min_value}"
        return None
    if isinstance(hp, hps.Float):
        if type(value) not in (int, float) or not math.isfinite(value):
            return "not a finite number"
        # keras-tuner's log sampling may land an ulp past a bound.
        slack = 1e-9 * max(abs(hp.min_value), abs(hp.max_value))
        if not hp.min_value - slack <= value <= hp.max_value + slack:
            return f"not in {hp.min_value:g}..{hp.max_value:g}"
        if hp.sampling == "linear" and hp.step:
            steps = (value - hp.min_value) / hp.step
            if abs(steps - round(steps)) > 1e-6:
                return f"not on the step {hp.step:g} from {hp.min_value:g}"
        return None
    return f"a {type(hp).__name__} hyperparameter, which dltool does not search"
