"""Load and validate a project's `config.toml`.

A config has the sections every template shares, `project`, `training`,
`tune`, `runtime` and `export` (declared here, in `COMMON_SECTIONS`), the
template's own sections (`data`, and e.g. the translator's `decoding`), and
`model` and `search`. Every key except those of `model` and `search` is
declared with its default and allowed values, so a typo or a wrong value is
reported with the key's name and what it accepts. A template declares its own
sections, and its own defaults of shared keys, in the `[config]` table of its
`template.toml` (see `schema_for`); `dltool new` renders those defaults into
the project's `config.toml`, so each default is stated once. The `model`
section holds the defaults of the hyperparameters that `build_model(hp,
config)` reads through `hp`; which keys it may hold is checked against the
model itself (`check_model_keys`, called by `dltool.engine.experiment`).
The `search` section holds the space `dltool tune` searches: per
hyperparameter a list of choices or a range (see `parse_search_space`).

This module never imports TensorFlow.
"""

import copy
import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
from pathlib import Path

import tomli_w

from dltool.core import templates
from dltool.core.errors import ConfigError, DltoolError, ProjectError, TemplateError

CONFIG_FILE = "config.toml"


@dataclasses.dataclass(frozen=True)
class Field:
    """One config key: its default and what it accepts.

    Args:
        default: Value used when the key is absent; its type is the key's type.
        choices: If set, the only values allowed.
        minimum: If set, the smallest number allowed (of a list: of each item).
        maximum: If set, the largest number allowed (of a list: of each item).
        length: For list values, the required number of items.
        duration: The value is a duration (see `parse_duration`): a number of
            minutes or a string such as "90s", "30m", "2h"; 0 or "" for none.
        weights: Besides its choices, the key takes a table of names to
            weights: numbers above 0, at most `MAX_WEIGHT` (e.g.
            `training.class_weight = {cat = 2.0}`).
        auto: Besides values of its kind, the key takes "auto": derived
            from the data when it is read (`dltool.core.auto`).
        kind: The type of its values other than "auto": the type of the
            default unless that is "auto" (then a list when `length` is
            set).
    """

    default: object
    choices: tuple = None
    minimum: float = None
    maximum: float = None
    length: int = None
    duration: bool = False
    weights: bool = False
    auto: bool = False
    kind: type = None

    def __post_init__(self):
        if self.kind is None:  # frozen: set once, here
            auto_list = self.default == "auto" and self.length is not None
            object.__setattr__(self, "kind", list if auto_list else type(self.default))

    def describe(self):
        if self.auto:
            return '"auto" or ' + dataclasses.replace(self, auto=False).describe()
        if self.duration:
            return _DURATION_FORMS
        if self.weights:
            return ("one of " + ", ".join(str(c) for c in self.choices) +
                    f", or a table of class names to weights above 0 (at most {MAX_WEIGHT:g})")
        if self.choices:
            return "one of " + ", ".join(str(c) for c in self.choices)
        kind = _KIND_NAMES[self.kind]
        if self.kind is list:
            kind = f"a list of {self.length} integers"
            if self.minimum is None:
                kind = f"a list of {self.length} positive integers"
        if self.minimum is not None and self.maximum is not None:
            kind += f" from {self.minimum} to {self.maximum}"
        elif self.minimum is not None:
            kind += f" >= {self.minimum}"
        elif self.maximum is not None:
            kind += f" <= {self.maximum}"
        return kind


_KIND_NAMES = {str: "a string", int: "an integer", float: "a number",
               bool: "true or false", list: "a list"}

STRATEGIES = ("auto", "default", "mirrored", "multi-worker", "tpu")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
TUNERS = ("random", "grid", "hyperband", "bayesian")
SAMPLINGS = ("linear", "log", "reverse_log")

# Upper bounds of the shared counts. They are far above any real use; they
# are there so that a slip such as epochs = 10^20 (which TOML reads as a
# Python integer of any size) is reported when the config is read rather than
# accepted and then run for ever or overflowing a 64-bit integer later.
MAX_EPOCHS = 1_000_000
MAX_BATCH_SIZE = 1 << 20
MAX_COUNT = 100_000
MAX_SEED = 2**32 - 1  # NumPy's seeds are 32-bit, and Keras seeds NumPy too
MAX_WEIGHT = 1e6  # a class weight: far above any ratio of class sizes
CLASS_WEIGHTS = ("none", "balanced")
# What `training.monitor = "auto"` and `tune.objective = "auto"` stand for,
# by `data.multi_label`: a multi-label model logs no single-label accuracy but
# its labels' mean precision-recall AUC (dltool.tasks.multilabel). Resolved
# when the config is read: `dltool tune` reads its objective before anything
# is built, and runs record the metric itself.
AUTO_METRICS = {False: "val_accuracy", True: "val_pr_auc"}

COMMON_SECTIONS = {
    "project": {
        "name": Field(""),
        "template": Field(""),
    },
    "training": {
        "epochs": Field(10, minimum=1, maximum=MAX_EPOCHS),
        "batch_size": Field(64, minimum=1, maximum=MAX_BATCH_SIZE),
        "lr_schedule": Field("cosine", choices=("cosine", "constant")),
        "warmup_epochs": Field(0, minimum=0, maximum=MAX_EPOCHS),
        "monitor": Field("auto"),
        "time_budget": Field(0.0, duration=True),
        "early_stopping_patience": Field(10, minimum=0, maximum=MAX_EPOCHS),
        "seed": Field(42, minimum=0, maximum=MAX_SEED),
        "deterministic": Field(False),
        "verbose": Field(2, choices=(0, 1, 2)),
        "include_validation": Field(False),
        "class_weight": Field("none", choices=CLASS_WEIGHTS, weights=True),
        # Temperature scaling of a classifier's probabilities after training
        # (dltool.tasks.calibration): the classifier templates' default is
        # true; a template without classes refuses true (`Task.fit_options`).
        "calibrate": Field(False),
        # The two phases of a model with a pretrained backbone
        # (`model.backbone` a KerasHub preset; dltool.engine.phases): the
        # head alone for these epochs, then every layer at this fraction of
        # the learning rate. Without a pretrained backbone both are unused.
        "freeze_backbone_epochs": Field(5, minimum=0, maximum=MAX_EPOCHS),
        "fine_tune_lr_factor": Field(0.01, minimum=1e-6, maximum=1.0),
    },
    "tune": {
        "tuner": Field("random", choices=TUNERS),
        "objective": Field("auto"),
        "direction": Field("auto", choices=("auto", "max", "min")),
        "max_trials": Field(20, minimum=1, maximum=MAX_COUNT),
        "epochs": Field(10, minimum=1, maximum=MAX_EPOCHS),
        "executions_per_trial": Field(1, minimum=1, maximum=MAX_COUNT),
        "early_stopping_patience": Field(3, minimum=0, maximum=MAX_EPOCHS),
        "time_budget": Field("", duration=True),
        "hyperband_factor": Field(3, minimum=2, maximum=100),
        "max_retries_per_trial": Field(0, minimum=0, maximum=MAX_COUNT),
        "max_consecutive_failed_trials": Field(3, minimum=1, maximum=MAX_COUNT),
        "trials_per_process": Field(1, minimum=0, maximum=MAX_COUNT),
    },
    "runtime": {
        "strategy": Field("auto", choices=STRATEGIES),
        "precision": Field("auto", choices=PRECISIONS),
        "cpu_devices": Field(1, minimum=1, maximum=1024),
    },
    "export": {
        "name": Field(""),
        "top_k": Field(3, minimum=1, maximum=MAX_COUNT),
    },
}

# What a template's `template.toml` may say about a key of its `[config]`
# table: a `Field`'s attributes.
_TEMPLATE_FIELD_KEYS = ("default", "choices", "minimum", "maximum", "length", "auto")


@dataclasses.dataclass
class Config:
    """A validated project config.

    Attributes:
        sections: Dict of section name to dict of key to value, with every
            declared key present (defaults filled in).
        path: The file it was read from, or None.
        root: The project folder relative paths in the config refer to.
    """

    sections: dict
    path: Path = None
    root: Path = None

    def __getitem__(self, section):
        return self.sections[section]

    @property
    def template(self):
        return self.sections["project"]["template"]

    @property
    def model(self):
        return self.sections["model"]

    def to_toml(self):
        """Returns the config as TOML text."""
        return tomli_w.dumps(self.sections)

    def digest(self):
        """Returns a short hash of the config, stable across key order."""
        text = json.dumps(self.sections, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def load_config(path, overrides=()):
    """Reads, overrides and validates a config file.

    Args:
        path: Path of a `config.toml`.
        overrides: Strings `section.key=value`; `value` is read as a TOML
            value when it parses as one, otherwise as a string.

    Returns:
        A `Config`.

    Raises:
        ProjectError: if the file does not exist.
        ConfigError: if the file is not valid TOML, or a key or value is
            unknown or invalid.
    """
    path = Path(path)
    if not path.is_file():
        raise ProjectError(f"no {path.name} at {path.parent}: not a dltool project")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: invalid TOML: {e}") from e
    written_model = copy.deepcopy(raw.get("model"))  # before the overrides change it
    for override in overrides:
        section, key, value = parse_override(override)
        if section == "model":
            value = _override_model_key(written_model, key, value)
        raw.setdefault(section, {})[key] = value
    return Config(sections=validate(raw), path=path, root=path.parent)


def parse_override(text):
    """Splits `section.key=value` into its parts.

    Returns:
        A tuple `(section, key, value)` with `value` parsed as TOML if it can
        be, else kept as a string.

    Raises:
        ConfigError: if `text` is not of the form `section.key=value`.
    """
    target, sep, value_text = text.partition("=")
    section, dot, key = target.strip().partition(".")
    if not (sep and dot and section and key):
        raise ConfigError(f"override {text!r} is not of the form section.key=value"
                          + _section_hint(target.strip(), value_text))
    try:
        value = tomllib.loads(f"v = {value_text}")["v"]
    except tomllib.TOMLDecodeError:
        value = value_text.strip()
    return section, key.strip(), value


def _section_hint(name, value_text):
    """`; did you mean training.epochs=...?` for an override without a section."""
    try:
        schemas = [template_schema(meta) for meta in _templates().values()]
    except DltoolError:  # a broken installation: hint from the shared keys only
        schemas = [COMMON_SECTIONS]
    keys = {f"{section}.{key}" for schema in schemas
            for section, fields in schema.items() for key in fields}
    by_leaf = {}
    for full in sorted(keys):
        by_leaf.setdefault(full.rsplit(".", 1)[1], []).append(full)
    close = [name] if name in by_leaf else difflib.get_close_matches(name, list(by_leaf), n=2)
    matches = [f"{full}={value_text}" for leaf in close for full in by_leaf[leaf]]
    return f"; did you mean {' or '.join(matches)}?" if matches else ""


def validate(raw):
    """Validates a raw config dict and fills in defaults.

    Args:
        raw: Dict of section to dict of key to value, as read from TOML.

    Returns:
        A new dict with every declared section and key.

    Raises:
        ConfigError: naming the first unknown or invalid key.
    """
    template = raw.get("project", {}).get("template", "")
    schema = schema_for(template)
    unknown = set(raw) - set(schema) - {"model", "search"}
    if unknown:
        section = sorted(unknown)[0]
        raise ConfigError(_unknown_message(section, schema.keys() | {"model", "search"},
                                           "section"))
    sections = {}
    for section, fields in schema.items():
        given = raw.get(section, {})
        if not isinstance(given, dict):
            raise ConfigError(f"[{section}] must be a table of keys")
        for key in given:
            if key not in fields:
                raise ConfigError(_templates_with(template, section, key) or _unknown_message(
                    f"{section}.{key}", fields, "key", prefix=f"{section}."))
        sections[section] = {k: _check(f"{section}.{k}", f, given.get(k, f.default))
                             for k, f in fields.items()}
    _resolve_auto_metrics(sections)
    sections["model"] = _check_model(raw.get("model", {}))
    sections["search"] = raw.get("search", {})
    parse_search_space(sections["search"])
    return sections


def _resolve_auto_metrics(sections):
    """Replaces an `"auto"` monitor or objective by its metric (`AUTO_METRICS`)."""
    metric = AUTO_METRICS[bool(sections.get("data", {}).get("multi_label"))]
    for section, key in (("training", "monitor"), ("tune", "objective")):
        if sections[section][key] == "auto":
            sections[section][key] = metric


def schema_for(template):
    """Returns the schema (section to key to Field) of a template's config.

    The shared sections come from `COMMON_SECTIONS`; the template's own
    sections, and its own defaults of shared keys, from the `[config]` table
    of its `template.toml`, one inline table of `Field` attributes per key:

        [config.data]
        image_size = {default = [32, 32], length = 2}
        validation_split = {default = 0.1, minimum = 0.0, maximum = 0.9}

        [config.training]
        epochs = {default = 44}    # a shared key: only its default

    Raises:
        ConfigError: if the template is not known.
        TemplateError: if the template's `[config]` table is invalid.
    """
    templates = _templates()
    if not isinstance(template, str) or template not in templates:
        allowed = ", ".join(sorted(templates))
        raise ConfigError(f"project.template must be one of {allowed}; got {template!r}")
    return template_schema(templates[template])


def defaults(schema):
    """Returns the defaults of a schema (see `schema_for`) as plain values.

    Returns:
        A dict of section to dict of key to default (lists copied).
    """
    return {section: {key: copy.deepcopy(field.default) for key, field in fields.items()}
            for section, fields in schema.items()}


def _templates():
    """Returns the template metadata (see `templates.list_templates`) by name."""
    return {meta["name"]: meta for meta in templates.list_templates()}


def template_schema(meta):
    """Returns the schema of a template (see `schema_for`).

    Args:
        meta: The template, an entry of `templates.list_templates()`.

    Raises:
        TemplateError: if its `[config]` table is invalid.
    """
    where = meta["path"] / templates.TEMPLATE_META_FILE
    declared = meta.get("config", {})
    if not isinstance(declared, dict):
        raise TemplateError(f"{where}: [config] must be a table of sections")
    schema = {section: dict(fields) for section, fields in COMMON_SECTIONS.items()}
    for section, keys in declared.items():
        if section in ("model", "search") or not isinstance(keys, dict):
            raise TemplateError(f"{where}: config.{section} must be a table of keys, and "
                                "neither model nor search (model.py's hyperparameters)")
        shared = COMMON_SECTIONS.get(section)
        fields = schema.setdefault(section, {})
        for key, attributes in keys.items():
            fields[key] = _template_field(where, f"{section}.{key}", attributes, shared)
    return schema


def _template_field(where, name, attributes, shared):
    """The `Field` a template declares for `name` (`section.key`).

    Args:
        where: The `template.toml`, for messages.
        name: `section.key`.
        attributes: Its inline table in `template.toml`.
        shared: The shared section's fields when the section is shared (the
            template may only set a default), else None.

    Raises:
        TemplateError: naming the file and the key.
    """
    if not isinstance(attributes, dict) or "default" not in attributes:
        raise TemplateError(f"{where}: config.{name} must be a table with a default")
    section, key = name.split(".", 1)
    if shared is not None:
        if key not in shared or not {"default"} <= set(attributes) <= {"default", "auto"}:
            raise TemplateError(
                f"{where}: config.{name}: [{section}] is shared by every template "
                "(dltool/core/config.py); a template may only set the default of "
                f"one of its keys ({', '.join(shared)}), and whether it takes \"auto\"")
        # The template's default is checked against it; `auto = true` lets
        # this template's config say "auto" (its rule: dltool.core.auto).
        field = dataclasses.replace(shared[key], auto=attributes.get("auto", False))
    else:
        unknown = sorted(set(attributes) - set(_TEMPLATE_FIELD_KEYS))
        if unknown or type(attributes["default"]) not in _KIND_NAMES or \
                not isinstance(attributes.get("choices", []), list):
            raise TemplateError(
                f"{where}: config.{name} may hold only "
                f"{', '.join(_TEMPLATE_FIELD_KEYS)}, and its default must be a "
                f"string, number, true/false or list (choices: a list); "
                f"got {attributes!r}")
        if "choices" in attributes:
            attributes = {**attributes, "choices": tuple(attributes["choices"])}
        field = Field(**attributes)
    try:
        default = _check(name, field, attributes["default"])
    except ConfigError as e:
        raise TemplateError(f"{where}: the default of config.{name}: {e}") from e
    return dataclasses.replace(field, default=default)


def _templates_with(template, section, key):
    """The one line for a key this template lacks and others have, or None.

    E.g. `data.multi_label` in a translator project: `unknown config key
    'data.multi_label' for the translator template (a key of the
    image-classifier and sentiment templates)`.
    """
    others = [name for name, meta in sorted(_templates().items())
              if name != template and key in template_schema(meta).get(section, {})]
    if not others:
        return None
    names = " and ".join([", ".join(others[:-1]), others[-1]] if len(others) > 1 else others)
    return (f"unknown config key '{section}.{key}' for the {template} template (a key of the "
            f"{names} template{'s' if len(others) > 1 else ''})")


def _unknown_message(name, allowed, what, prefix=""):
    hint = did_you_mean(name.rsplit(".", 1)[-1], allowed, prefix)
    listed = ", ".join(sorted(allowed))
    return f"unknown config {what} {name!r}{hint} (allowed: {listed})"


def did_you_mean(name, allowed, prefix=""):
    """`; did you mean a, b?` naming the close matches of `name`, or "".

    Args:
        name: What was given.
        allowed: The names accepted.
        prefix: Put before each match, e.g. `"model."`.
    """
    close = difflib.get_close_matches(name, list(allowed), n=3)
    return f"; did you mean {', '.join(prefix + c for c in close)}?" if close else ""


def _check(name, field, value):
    if field.weights and isinstance(value, dict):
        return _check_weights(name, field, value)
    if field.auto and value == "auto":
        return value
    expected = field.kind
    if field.duration:
        parse_duration(value, name)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if field.duration:
        return value  # as written (a number of minutes, or e.g. "30m"): digests stay
    ok = isinstance(value, expected) and not (expected is not bool and isinstance(value, bool))
    if ok and field.choices:
        ok = value in field.choices
    if ok and _is_number(value):
        ok = _in_range(field, value)
    if ok and expected is list:
        ok = len(value) == field.length and all(
            isinstance(v, int) and not isinstance(v, bool) and v > 0 and _in_range(field, v)
            for v in value)
    if not ok:
        raise ConfigError(f"{name} must be {field.describe()}; got {value!r}")
    return value


def _check_weights(name, field, weights):
    """A table of names to weights: each a number above 0, at most `MAX_WEIGHT`."""
    for key, weight in weights.items():
        if not _is_number(weight) or not _is_finite(weight) or not 0 < weight <= MAX_WEIGHT:
            raise ConfigError(f"{name}.{key} must be a number above 0 and at most "
                              f"{MAX_WEIGHT:g}; got {weight!r}")
    if not weights:
        raise ConfigError(f"{name} must be {field.describe()}; got an empty table")
    return {key: float(weight) for key, weight in weights.items()}


def _in_range(field, number):
    """Whether `number` is finite and within the field's minimum and maximum."""
    # TOML reads `nan` and `inf`; neither is a usable setting, and a NaN
    # compares false with every bound, so it is refused explicitly.
    return _is_finite(number) and \
        (field.minimum is None or number >= field.minimum) and \
        (field.maximum is None or number <= field.maximum)


def _check_model(model):
    if not isinstance(model, dict):
        raise ConfigError("[model] must be a table of keys")
    for key, value in model.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(
                f"model.{key} must be a string, number or true/false; got {value!r}")
        if _is_number(value) and not _is_finite(value):
            # A NaN learning rate trains a model of NaN weights without a
            # single NaN loss when there is one step per epoch.
            raise ConfigError(f"model.{key} must be a finite number; got {value!r}")
    return dict(model)


def _override_model_key(model, key, value):
    """Checks an override of a `[model]` key against the value the file gives it.

    `[model]` keys are the hyperparameters `model.py` reads, so there is no
    schema for them here: the value the config file holds (the project's
    default for the key) gives its type. An integer replaces a number as that
    number (`learning_rate=1` is 1.0).

    Args:
        model: The file's `[model]` table (not yet validated: anything).
        key: The key overridden.
        value: The override's value.

    Returns:
        The value to use.

    Raises:
        ConfigError: if the value is not of the type of the file's value.
    """
    if not isinstance(model, dict) or key not in model:
        return value  # a new key: check_model_keys tells whether the model reads it
    default = model[key]
    if default == "auto":
        return value  # its rule checks what it takes (dltool.core.auto.check)
    kind = bool if isinstance(default, bool) else type(default)
    if kind is float and _is_number(value):
        return float(value)
    if kind in _KIND_NAMES and not (isinstance(value, kind) and
                                    isinstance(value, bool) == (kind is bool)):
        raise ConfigError(f"model.{key} must be {_KIND_NAMES[kind]} like its value in "
                          f"{CONFIG_FILE} ({default!r}); got {value!r}")
    return value


def check_model_keys(model_section, read_names):
    """Checks that every `[model]` key is a hyperparameter the model reads.

    Args:
        model_section: The config's `model` dict.
        read_names: Names the model read through `hp`.

    Raises:
        ConfigError: naming the first key the model does not read.
    """
    for key in sorted(model_section):
        if key not in read_names:
            raise ConfigError(_unknown_message(
                f"model.{key}", read_names, "key", prefix="model.")
                .replace("(allowed:", "(build_model reads:"))


def parse_search_space(search):
    """Validates the `[search]` section: the space `dltool tune` searches.

    Each key names a hyperparameter `build_model` reads through `hp`, and its
    value is either a list (a choice between its items, all of one type) or
    a table `{min = ..., max = ...}` with an optional `step` and `sampling`
    (`"linear"`, `"log"` or `"reverse_log"`): an integer range when `min`,
    `max` and `step` are integers, a float range otherwise.

    Args:
        search: The `[search]` dict.

    Returns:
        A dict of name to spec: `{"kind": "choice", "values": [...]}` or
        `{"kind": "int" | "float", "min", "max", "step", "sampling"}`.

    Raises:
        ConfigError: naming the first invalid entry and what it must be.
    """
    if not isinstance(search, dict):
        raise ConfigError("[search] must be a table of hyperparameter = choices or range")
    parsed = {}
    for name, value in flatten_search(search).items():
        parsed[name] = entry = _search_entry(f"search.{name}", value)
        key = searched_training_key(name)
        if key is not None:
            _check_training_entry(name, key, entry)
    return parsed


# The `[training]` keys `[search]` may hold (as `training.KEY`): dltool, not
# model.py, reads them, for each trial (the phases of a pretrained backbone).
SEARCHED_TRAINING_PREFIX = "training."
SEARCHED_TRAINING_KEYS = ("freeze_backbone_epochs", "fine_tune_lr_factor")


def searched_training_key(name):
    """The `[training]` key a `[search]` name stands for (`training.KEY`),
    or None for a name of `[model]` (model.py's hyperparameters)."""
    return name[len(SEARCHED_TRAINING_PREFIX):] if name.startswith(SEARCHED_TRAINING_PREFIX) \
        else None


def flatten_search(search):
    """The `[search]` table with its `training` sub-table as `training.KEY` names.

    In a TOML file `training.freeze_backbone_epochs = [0, 2]` under
    `[search]` is a sub-table `training`; an override
    (`--set search.training.freeze_backbone_epochs=[0,2]`) gives the dotted
    name itself. Both become `training.freeze_backbone_epochs`.
    """
    flat = {}
    for name, value in search.items():
        if name == "training" and isinstance(value, dict) and not set(value) & set(_RANGE_KEYS):
            for key, entry in value.items():
                flat.setdefault(f"{SEARCHED_TRAINING_PREFIX}{key}", entry)
        else:
            flat[name] = value
    return flat


def _check_training_entry(name, key, entry):
    """Refuses a searched `training.*` key dltool does not search, or a
    choice or bound its `Field` refuses (e.g. `fine_tune_lr_factor` above 1)."""
    if key not in SEARCHED_TRAINING_KEYS:
        allowed = ", ".join(f"training.{k}" for k in SEARCHED_TRAINING_KEYS)
        raise ConfigError(f"search.{name}: [search] takes these [training] keys only: "
                          f"{allowed} (and model.py's hyperparameters)")
    field = COMMON_SECTIONS["training"][key]
    values = entry["values"] if entry["kind"] == "choice" else [entry["min"], entry["max"]]
    if field.kind is int and (entry["kind"] == "float" or
                              not all(type(v) is int for v in values)):
        raise ConfigError(f"search.{name}: give integers (a list, or min and max)")
    for value in values:
        _check(f"search.{name}", field, value)


_RANGE_KEYS = ("min", "max", "step", "sampling")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_finite(number):
    # An integer is always finite (and may be too large for `math.isfinite`).
    return isinstance(number, int) or math.isfinite(number)


def _search_entry(name, value):
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{name}: the list of choices is empty")
        kinds = {bool if isinstance(v, bool) else float if _is_number(v) else type(v)
                 for v in value}
        if len(kinds) != 1 or kinds.pop() not in (bool, float, str):
            raise ConfigError(f"{name}: the choices must be all strings, all numbers or "
                              f"all true/false; got {value!r}")
        if not all(_is_finite(v) for v in value if _is_number(v)):
            raise ConfigError(f"{name}: the choices must be finite numbers; got {value!r}")
        if len(set(value)) != len(value):
            raise ConfigError(f"{name}: a choice is listed twice in {value!r}")
        return {"kind": "choice", "values": value}
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a list of choices or a table "
                          f"{{min = ..., max = ...[, step = ...][, sampling = ...]}}; "
                          f"got {value!r}")
    for key in value:
        if key not in _RANGE_KEYS:
            raise ConfigError(_unknown_message(f"{name}.{key}", _RANGE_KEYS, "key",
                                               prefix=f"{name}."))
    if "min" not in value or "max" not in value:
        raise ConfigError(f"{name} needs both min and max; got {value!r}")
    low, high, step = value["min"], value["max"], value.get("step")
    for key in ("min", "max", "step"):
        if key in value and not (_is_number(value[key]) and _is_finite(value[key])):
            raise ConfigError(f"{name}.{key} must be a finite number; got {value[key]!r}")
    if low > high:
        raise ConfigError(f"{name}: min ({low}) is greater than max ({high})")
    if step is not None and step <= 0:
        raise ConfigError(f"{name}.step must be > 0; got {step!r}")
    sampling = value.get("sampling", "linear")
    if sampling not in SAMPLINGS:
        raise ConfigError(f"{name}.sampling must be one of {', '.join(SAMPLINGS)}; "
                          f"got {sampling!r}")
    if sampling != "linear" and low <= 0:
        raise ConfigError(f"{name}: {sampling} sampling needs min > 0; got {low}")
    kind = "int" if all(isinstance(v, int) for v in (low, high, step or 1)) else "float"
    return {"kind": kind, "min": low, "max": high, "step": step, "sampling": sampling}


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600}
_DURATION_FORMS = "a duration such as 90s, 30m or 2h, or a number of minutes"


def parse_duration(value, name="time budget"):
    """Parses a duration: `90s`, `30m`, `2h`, `1.5h` or a number of minutes.

    `training.time_budget` and `tune.time_budget` both take these forms; the
    config keeps the value as written and consumers call this to get seconds.

    Args:
        value: A string with a unit (`s`, `m` or `h`), or a number of minutes
            (an int, a float or a numeric string). 0, "0" and "" mean none.
        name: What to call it in the error message.

    Returns:
        The duration in seconds (a float), or None for none.

    Raises:
        ConfigError: if `value` is not a duration, is negative, or is zero
            with a unit ("0s": write 0 or "" for none).
    """
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        has_unit = text[-1] in _DURATION_UNITS
        number, unit = (text[:-1], text[-1]) if has_unit else (text, "m")
        try:
            amount = float(number)
        except ValueError:
            amount = None
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        amount, unit, has_unit = float(value), "m", False
    else:
        amount, has_unit = None, False
    if amount == 0 and not has_unit:
        return None
    if amount is None or not 0 < amount < float("inf"):
        raise ConfigError(f"{name} must be {_DURATION_FORMS}; got {value!r}")
    return amount * _DURATION_UNITS[unit]
