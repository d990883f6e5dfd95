"""Pretrained KerasHub backbones: what `model.backbone` names, checked early.

`model.backbone` is `"scratch"` (the template's own model, random weights)
or a KerasHub preset: a name of KerasHub's preset registry
(`keras_hub.models.ImageClassifier.presets` for images,
`keras_hub.models.TextClassifier.presets` for texts), a remote handle
(`kaggle://...`, `hf://...`) or the path of a local preset folder (one that
`save_to_preset` wrote), relative to the project folder. Presets are loaded
by KerasHub's own code (`Backbone.from_preset`, `ImageConverter.from_preset`);
this module only says, in one line and before anything is written, why a
value cannot be used: an unknown name (with the close matches), a preset of
the other kind, a folder that is not a preset, no network to download a named
one, an image size the backbone cannot take.

KerasHub deserializes a preset's `config.json` with
`keras.saving.deserialize_keras_object`, in Keras' safe mode (its default,
which dltool never turns off); only a folder whose `config.json` names a
registered KerasHub backbone class is handed to it.
"""

import contextlib
import dataclasses
import functools
import json
from pathlib import Path

from dltool._tf import keras, tf  # first: TensorFlow's environment, before keras_hub
import keras_hub  # noqa: E402

try:
    # The ops of a text preset's tokenizer (WordPiece: RegexSplitWithOffsets,
    # ...), registered before a SavedModel holding them loads: without them
    # `tf.saved_model.load` fails with "Op type not registered". KerasHub
    # depends on TensorFlow Text except on Windows.
    import tensorflow_text  # noqa: F401, E402
except ImportError:  # pragma: no cover
    tensorflow_text = None

from dltool.core import auto
from dltool.core.config import did_you_mean
from dltool.core.errors import ConfigError
from dltool.tasks import phases

SCRATCH = "scratch"
KINDS = ("image", "text")
# The task classes whose presets are each kind's: a backbone KerasHub can
# classify images (texts) with.
_TASKS = {"image": keras_hub.models.ImageClassifier, "text": keras_hub.models.TextClassifier}
# What each kind needs besides the backbone, as `save_to_preset` names it.
_PREPROCESSING_FILES = {"image": ("image_converter.json", "ImageConverter"),
                        "text": ("tokenizer.json", "Tokenizer")}
_WITH_ARTICLE = {"image": "an image", "text": "a text"}
_EXAMPLES = {"image": "resnet_18_imagenet, mobilenet_v3_small_100_imagenet",
             "text": "bert_tiny_en_uncased"}
OFFLINE_MESSAGE = ("cannot download preset {name}: no network; download it where there is "
                   "one, or give the path of a local preset folder")


BACKBONE_KEY = "model.backbone"
SEARCHED_KEY = "search.backbone"


@dataclasses.dataclass(frozen=True)
class Preset:
    """A pretrained backbone `model.backbone` names.

    Attributes:
        name: The value of `model.backbone`, as written.
        handle: What KerasHub's `from_preset` is given: the registry name or
            remote handle, or the local folder's absolute path.
        local: Whether it is a local folder.
    """

    name: str
    handle: str
    local: bool
    # The config key that names it, for the errors about it: `model.backbone`,
    # or `search.backbone` for a searched value (not part of its identity,
    # so both share what is cached of a preset).
    key: str = dataclasses.field(default=BACKBONE_KEY, compare=False)

    def about(self, text):
        """`text`, an error about the preset that names another key, saying
        which searched value it is about (nothing added for `model.backbone`)."""
        return text if self.key == BACKBONE_KEY else f"{self.key} {self.name!r}: {text}"


def preset_handle(config, backbone):
    """What `from_preset` takes for a `model.backbone` value (model.py calls it).

    Args:
        config: The run's `Config` (its `root`: relative folders start there).
        backbone: The value of `model.backbone`, not "scratch".

    Returns:
        The registry name or remote handle, or the local folder's absolute path.
    """
    if backbone in keras_hub.models.Backbone.presets or "://" in backbone:
        return backbone
    path = Path(backbone).expanduser()
    return str(path if path.is_absolute() else Path(config.root or ".") / path)


def find_preset(config, kind, key=BACKBONE_KEY):
    """Checks the preset `model.backbone` names, without loading its weights.

    Args:
        config: The project's or run's `Config`.
        kind: `image` or `text`: what the template classifies.
        key: The key the errors name: `model.backbone`, or `search.backbone`
            for a searched value (`searched_presets`).

    Returns:
        A `Preset`, or None for "scratch".

    Raises:
        ConfigError: one line naming `key`: an unknown name (with close
            matches), a preset of the other kind, a folder that is not a
            preset, no network.
    """
    backbone = config.model.get("backbone", SCRATCH)
    if backbone == SCRATCH:
        return None
    if not isinstance(backbone, str) or not backbone.strip():
        raise ConfigError(f'{key} must be "scratch" or a KerasHub preset name or '
                          f"folder; got {backbone!r}")
    handle = preset_handle(config, backbone)
    if backbone in keras_hub.models.Backbone.presets:
        _check_named_kind(key, backbone, kind)
        return Preset(backbone, handle, local=False, key=key)
    if "://" in backbone:
        return Preset(backbone, handle, local=False, key=key)
    if not _looks_like_path(backbone) and not Path(handle).exists():
        raise ConfigError(
            f"{key}: unknown preset {backbone!r}"
            f"{did_you_mean(backbone, _TASKS[kind].presets)} (KerasHub's {kind} presets: "
            f"keras_hub.models.{_TASKS[kind].__name__}.presets; or give the path of a local "
            "preset folder)")
    _check_folder(key, backbone, Path(handle), kind)
    return Preset(backbone, handle, local=True, key=key)


def _looks_like_path(value):
    return "/" in value or "\\" in value or value.startswith((".", "~"))


def _check_named_kind(key, name, kind):
    """Refuses a registry preset that is not of `kind`."""
    if name in _TASKS[kind].presets:
        return
    other = next((k for k in KINDS if k != kind and name in _TASKS[k].presets), None)
    what = f"{_WITH_ARTICLE[other]} preset" if other else \
        f"a preset KerasHub has no {kind} classifier for"
    raise ConfigError(f"{key}: {name!r} is {what}; this template takes "
                      f"{_WITH_ARTICLE[kind]} backbone preset, e.g. {_EXAMPLES[kind]}")


def _check_folder(key, name, folder, kind):
    """Refuses a local folder that is not a KerasHub preset of `kind`.

    Reads only its `config.json` (JSON) and the registered class it names.
    """
    where = f"{key}: {name!r}" + (f" ({folder})" if str(folder) != name else "")
    if not folder.is_dir():
        raise ConfigError(f"{where}: no such folder (and no KerasHub preset of that name)")
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"{where} is not a KerasHub preset folder: it has no config.json "
                          "(a backbone's save_to_preset writes one)")
    try:
        registered = json.loads(config_file.read_text(encoding="utf-8"))["registered_name"]
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{where} is not a KerasHub preset folder: its config.json is not a "
                          f"saved Keras object ({type(e).__name__})") from None
    cls = keras.saving.get_registered_object(registered) if isinstance(registered, str) else None
    if not (isinstance(cls, type) and issubclass(cls, keras_hub.models.Backbone)):
        raise ConfigError(f"{where} is not a KerasHub backbone preset: its config.json "
                          f"names {registered!r}")
    _check_class_kind(where, cls, kind)
    needed, layer = _PREPROCESSING_FILES[kind]
    if not (folder / needed).is_file():
        raise ConfigError(f"{where} has no {needed}: save the preset's {layer} into it with "
                          "save_to_preset too")


def _check_class_kind(where, cls, kind):
    """Refuses a backbone class that is not of `kind` (`where` starts the line)."""
    found = backbone_kind(cls)
    if found != kind:
        what = f"{_WITH_ARTICLE[found]} backbone" if found else \
            f"a backbone KerasHub has no {kind} classifier for"
        raise ConfigError(f"{where} holds {what} ({cls.__name__}); this template takes "
                          f"{_WITH_ARTICLE[kind]} backbone preset")


def backbone_kind(cls):
    """`image` or `text`: what KerasHub classifies with backbone class `cls`, or None."""
    for kind, task in _TASKS.items():
        if any(getattr(sub, "backbone_cls", None) is cls for sub in _subclasses(task)):
            return kind
    return None


def _subclasses(cls):
    for sub in cls.__subclasses__():
        yield sub
        yield from _subclasses(sub)


@contextlib.contextmanager
def loading_errors(preset):
    """Turns KerasHub's loading errors into one-line `ConfigError`s.

    A named preset is downloaded on first use: without network the download
    fails with a connection error (an `OSError`; `requests`' and
    `urllib3`'s are), which becomes `OFFLINE_MESSAGE`.

    Args:
        preset: The `Preset` being loaded.

    Raises:
        ConfigError: for an `OSError`, `ValueError`, `TypeError` or `KeyError`
            raised inside the block.
    """
    try:
        yield
    except OSError as e:
        if not preset.local and not isinstance(e, FileNotFoundError):
            raise ConfigError(OFFLINE_MESSAGE.format(name=preset.name)) from None
        raise ConfigError(_cannot_load(preset, e)) from None
    except (ValueError, TypeError, KeyError) as e:
        raise ConfigError(_cannot_load(preset, e)) from None


def _cannot_load(preset, error):
    first = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return f"{preset.key}: preset {preset.name!r} cannot be loaded: {first[:300]}"


def with_backbone(config, value):
    """A copy of `config` whose `model.backbone` is `value` (its `[data]`
    copied too, which a task's `check_config` may complete)."""
    sections = {**config.sections, "model": {**config.model, "backbone": value},
                "data": dict(config.sections.get("data", {}))}
    return dataclasses.replace(config, sections=sections)


def searched_presets(config, values, kind):
    """Checks each searched `model.backbone` value (`find_preset`).

    Returns:
        A dict of each pretrained value to its `Preset`, in order.

    Raises:
        ConfigError: naming `search.backbone` and the first bad value.
    """
    presets = {}
    for value in values:
        preset = find_preset(with_backbone(config, value), kind, key=SEARCHED_KEY)
        if preset is not None:
            presets[value] = preset
    return presets


def load_architecture(preset, kind):
    """The preset's backbone with random weights (KerasHub downloads only its
    config): what the checks build.

    Built once per process for each preset (and local folder's
    `config.json` as it is now): every command checks its config when it
    opens the project (`Task.check_config`), and `dltool info` describes
    the backbone after that.

    Args:
        preset: The `Preset`.
        kind: `image` or `text`: a remote handle's kind is known only now.

    Raises:
        ConfigError: see `loading_errors`; a backbone of another kind.
    """
    return _architecture(preset, kind, _version(preset))


def _version(preset):
    """What tells one state of a local preset folder from the next."""
    if not preset.local:
        return None
    with contextlib.suppress(OSError):
        return (Path(preset.handle) / "config.json").stat().st_mtime_ns
    return None


@functools.lru_cache(maxsize=8)
def _architecture(preset, kind, version):
    with loading_errors(preset):
        backbone = keras_hub.models.Backbone.from_preset(preset.handle, load_weights=False)
    _check_class_kind(f"{preset.key}: {preset.name!r}", type(backbone), kind)
    return backbone


def image_size_choice(preset):
    """`data.image_size = "auto"` with a pretrained backbone: the
    `[height, width]` the preset's ImageConverter resizes to (read once per
    process, as `load_architecture`).

    Returns:
        An `auto.Choice`.

    Raises:
        ConfigError: see `loading_errors`; the preset's converter has no size.
    """
    return _image_size_choice(preset, _version(preset))


@functools.lru_cache(maxsize=8)
def _image_size_choice(preset, version):
    with loading_errors(preset):
        size = keras_hub.layers.ImageConverter.from_preset(preset.handle).image_size
    if size is None or None in size:
        raise ConfigError(preset.about(f'data.image_size = "auto": the ImageConverter of '
                                       f"preset {preset.name!r} has no image size; give "
                                       "[height, width]"))
    return auto.Choice("data.image_size", [int(size[0]), int(size[1])],
                       f"the size the ImageConverter of preset {preset.name!r} resizes to")


def check_image_size(backbone, preset, image_size):
    """Refuses an image size the backbone cannot take (built on it, symbolically).

    Args:
        backbone: The preset's backbone (`load_architecture`).
        preset: The `Preset`.
        image_size: `[height, width]`.

    Raises:
        ConfigError: naming `data.image_size` and what the backbone takes.
    """
    fixed = tuple(backbone.input_shape[1:3]) if len(backbone.input_shape) == 4 else ()
    if fixed and None not in fixed and list(fixed) != list(image_size):
        raise ConfigError(preset.about(
            f"data.image_size {list(image_size)}: the backbone of preset {preset.name!r} "
            f'takes only {list(fixed)} images (set it to {list(fixed)} or "auto")'))
    try:
        features = backbone(keras.Input((*image_size, 3)))
    except (ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(preset.about(
            f"data.image_size {list(image_size)} is too small for the backbone of preset "
            f"{preset.name!r}: {first[:200]}")) from None
    if any(dim == 0 for dim in features.shape[1:]):
        raise ConfigError(preset.about(
            f"data.image_size {list(image_size)} is too small for the backbone of preset "
            f"{preset.name!r} (its feature map would be empty)"))


def text_preprocessor(preset, sequence_length):
    """The preset's text preprocessor (its tokenizer and packer: KerasHub's
    `TextClassifierPreprocessor.from_preset`), cutting or padding every text
    to `sequence_length` tokens.

    Raises:
        ConfigError: see `loading_errors`.
    """
    with loading_errors(preset):
        preprocessor = keras_hub.models.TextClassifierPreprocessor.from_preset(
            preset.handle, sequence_length=sequence_length)
    preprocessor.build(None)  # a built layer can be tracked by the export
    return preprocessor


def text_features(preprocessor, texts):
    """The backbone's inputs of a 1-D string tensor (`text_preprocessor`'s
    output, e.g. BERT's `token_ids`, `segment_ids` and `padding_mask`), all
    int32: the training pipeline and the exported model both use it."""
    return {name: tf.cast(value, tf.int32) for name, value in preprocessor(texts).items()}


def check_sequence_length(backbone, preset, sequence_length):
    """Refuses a `data.sequence_length` above what the backbone's position
    embedding holds (its `max_sequence_length`, when it has one).

    Raises:
        ConfigError: naming `data.sequence_length` and the most it takes.
    """
    most = getattr(backbone, "max_sequence_length", None)
    if most is not None and sequence_length > most:
        raise ConfigError(f"data.sequence_length {sequence_length}: the backbone of preset "
                          f"{preset.name!r} takes at most {most} tokens")


def info_facts(config, kind):
    """What `dltool info` says of the project's backbone and its phases.

    Args:
        config: The project's `Config`, checked (`Task.check_config`).
        kind: `image` or `text`.

    Returns:
        A dict: `backbone` (a line) and, for a pretrained one, `phases` (a
        line per phase: its epochs, what trains, the backbone's parameters
        that do; the head's size depends on the data's classes, and the run
        report gives the whole count).

    Raises:
        ConfigError: see `find_preset`.
    """
    preset = find_preset(config, kind)
    if preset is None:
        return {"backbone": "scratch (the template's own model, from random weights)"}
    backbone = load_architecture(preset, kind)
    total = backbone.count_params()
    phases.set_backbone_trainable(backbone, True)
    tuned = phases.trainable_parameters(backbone)
    where = f"local preset folder {preset.handle}" if preset.local else "KerasHub preset"
    lines = []
    if auto.is_auto(config["training"]["epochs"]):  # the data could not be read
        lines = ['epochs decided when the data can be read (training.epochs = "auto")']
    for phase in [] if lines else phases.pretrained_plan(config):
        epochs = f"phase {phase.number}, epochs {phase.first_epoch + 1}-{phase.end_epoch}"
        if phase.backbone_trainable:
            frozen = f" (its BatchNormalization's {total - tuned:,} frozen)" \
                if total != tuned else ""
            lines.append(f"{epochs}: every layer, at {phase.rate_factor:g} x the learning "
                         f"rate: the backbone's {tuned:,} trainable parameters{frozen} and "
                         "the head")
        else:
            lines.append(f"{epochs}: the head only (the backbone's {total:,} parameters "
                         "frozen)")
    return {"backbone": f"{preset.name} ({where}), {type(backbone).__name__}, {total:,} "
                        "parameters", "phases": lines}
