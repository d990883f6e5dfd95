"""Load model files safely.

A `.keras` archive is checked before Keras reads any of it
(`check_keras_file`): its members must not expand like a zip bomb, and every
object its `config.json` names (layers, activations, initializers,
regularizers, constraints, dtype policies, losses, metrics, optimizers) must
be one Keras would load from its modeling code or from KerasHub's layers,
models and tokenizers: what dltool's templates produce. A `Lambda` layer is
always refused, even one wrapping a public Keras function: safe mode refuses
only Python lambdas, and a public function with chosen arguments (e.g.
`keras.visualization.plot_image_gallery(path=...)`) writes files when the
model runs. The archive then loads with Keras' safe mode on (never
`enable_unsafe_deserialization`). Legacy `.h5` files, remote paths and
anything that is not a local `.keras` archive are refused before Keras sees
them.

SavedModels are programs that no check can vet: dltool loads the ones it
exported itself (`saved_models/NAME/VERSION`); load others only from sources
you trust (`dltool.engine.predict.untrusted_model_warning`).
"""

import builtins
import json
import re
import sys
import zipfile
from pathlib import Path

from dltool._tf import keras, tf
from dltool.core.errors import ModelFileError
from dltool.tasks import losses, mirror  # noqa: F401  (register what models may hold)

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_CONFIG_FILE = "config.json"

# Members Keras reads whole into memory (the templates' config.json is 10-20
# KB).
_JSON_MEMBERS = (_CONFIG_FILE, "metadata.json")
_MAX_JSON_BYTES = 64 << 20
# Keras stores a `.keras` archive's members uncompressed (ratio 1) and
# DEFLATE cannot pass about 1032:1, so a member that declares more than 64 MiB
# and 20 times what it stores is a zip bomb. Keras' own guard only starts at
# 256 MiB (extracting) or 4 GiB (reading), with a ratio of 100.
_BOMB_FLOOR_BYTES = 64 << 20
_MAX_EXPANSION = 20

# Where the code of an allowed object lives: the `__module__` of the class or
# function Keras would load for it. Derived from the `config.json` of each
# template's `model.keras` (image classifier, sentiment with every cell,
# translator RNN and Transformer): Keras layers, models (`Functional`),
# operations (`ops.cast` in a functional graph), initializers, dtype
# policies, optimizers, losses and metrics; plus the rest of Keras' modeling
# code and KerasHub's layers, models and tokenizers (the translator's
# TransformerEncoder, and KerasHub backbones). Everything else is refused,
# notably keras.src.utils (JaxLayer, TorchModuleWrapper, get_file),
# keras.src.export (TFSMLayer, which loads a SavedModel), keras.src.saving,
# keras.src.visualization, keras.src.backend and every non-Keras module but
# dltool's own layers and losses (the image classifier's test-time mirroring,
# `dltool.tasks.mirror`, and smoothed loss, `dltool.tasks.losses`, registered
# with Keras when this module imports them).
_MODELING_MODULES = (
    "keras.src.layers", "keras.src.models", "keras.src.ops", "keras.src.activations",
    "keras.src.initializers", "keras.src.regularizers", "keras.src.constraints",
    "keras.src.dtype_policies", "keras.src.quantizers", "keras.src.losses",
    "keras.src.metrics", "keras.src.optimizers",
    "keras_hub.src.layers", "keras_hub.src.models", "keras_hub.src.tokenizers",
    "dltool.tasks.mirror", "dltool.tasks.losses",
)
# Functions are allowed from fewer modules: those of tensor math (an
# activation, loss or metric is called with tensors). The class modules
# above also hold functions that are not modeling (`model_from_json`,
# `clone_model`), and KerasHub registers functions that upload presets or
# write vocabulary files; its one modeling function is the activation its
# backbones use (ALBERT, ELECTRA...).
_FUNCTION_MODULES = ("keras.src.activations", "keras.src.losses", "keras.src.metrics",
                     "keras.src.ops")
_MODELING_FUNCTIONS = {"keras_hub.src.utils.keras_utils.gelu_approximate"}
# Packages whose modules Keras resolves a config's `module` in.
_KERAS_PACKAGES = ("keras", "keras_hub")
# Plain data in a config, not code.
_DATA_CLASS_NAMES = {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__",
                     "__ellipsis__", "__slice__"}


def load_keras_file(path):
    """Loads a `.keras` archive after `check_keras_file`, with safe mode on.

    Args:
        path: Local path of a `.keras` file.

    Returns:
        The Keras model.

    Raises:
        ModelFileError: remote path, wrong format, corrupt archive, or
            content that dltool or safe mode refuses (such as a Lambda layer).
    """
    path = check_keras_file(path)
    try:
        return keras.saving.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # Keras raises ValueError, TypeError, KeyError, OSError...
        message = str(e)
        if "Lambda" in message or "unsafe" in message.lower():
            raise ModelFileError(
                f"{path}: refused: it holds a Lambda layer or other code that could run "
                "arbitrary Python when loaded (dltool loads .keras files in safe mode)") from e
        first = message.strip().splitlines()[0] if message.strip() else type(e).__name__
        raise ModelFileError(f"{path}: cannot be loaded: {first[:200]}") from e


def check_keras_file(path):
    """Refuses a `.keras` file that dltool would not load, without loading it.

    Call it before anything else reads a `.keras` file a user gives (such as
    weights to start training from): Keras deserializes objects as it reads
    them.

    Args:
        path: Local path of a `.keras` file.

    Returns:
        The path, as a `Path`.

    Raises:
        ModelFileError: remote path, legacy HDF5 or other format, corrupt
            archive, a member that expands like a zip bomb, or a
            `config.json` naming a Lambda layer or an object outside the
            allow-list (the message names the layer and the object).
    """
    text = str(path)
    if _URI.match(text):
        raise ModelFileError(f"{text}: remote model paths are refused; download it first")
    path = Path(text)
    if path.suffix in (".h5", ".hdf5"):
        raise ModelFileError(f"{path}: legacy HDF5 models are refused (they bypass safe "
                             "mode in older Keras); use a .keras file")
    if path.suffix != ".keras" or not path.is_file():
        raise ModelFileError(f"{path}: not a .keras file")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"{path}: corrupt .keras file (not a zip archive)")
    check_model_config(path, _read_config(path))
    return path


def _read_config(path):
    """Checks the archive's member sizes, then returns its parsed config.json."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                _check_member_size(path, info)
            text = archive.read(_CONFIG_FILE)
    except KeyError as e:
        raise ModelFileError(f"{path}: not a Keras model archive (no {_CONFIG_FILE})") from e
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ModelFileError(f"{path}: corrupt .keras file ({e})") from e
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: absurdly deep nesting
        raise ModelFileError(f"{path}: corrupt .keras file ({_CONFIG_FILE} is not "
                             "valid JSON)") from e


def _check_member_size(path, info):
    """Refuses a member Keras would read whole that is too big, or a zip bomb."""
    if info.filename in _JSON_MEMBERS and info.file_size > _MAX_JSON_BYTES:
        raise ModelFileError(f"{path}: refused: {info.filename} declares {info.file_size} "
                             f"bytes; dltool reads at most {_MAX_JSON_BYTES}")
    if info.file_size > _BOMB_FLOOR_BYTES and \
            info.file_size > _MAX_EXPANSION * info.compress_size:
        raise ModelFileError(
            f"{path}: refused: member {info.filename} expands from {info.compress_size} "
            f"to {info.file_size} bytes (a zip bomb); dltool accepts at most "
            f"{_MAX_EXPANSION} times the stored size")


def check_model_config(path, config):
    """Refuses a Keras model config naming code dltool's templates never produce.

    Walks every object in the config (layers inside sub-models and wrappers,
    their activations, initializers, regularizers, constraints and dtype
    policies, the compile config's loss, metrics and optimizer, and strings
    naming registered objects), finds the class or function Keras would load
    for it, the way Keras does (registered name first, then module and name),
    and refuses it unless that code lives in Keras' or KerasHub's modeling
    modules. Every `Lambda` layer and Python lambda is refused.

    Args:
        path: The file the config comes from, for the message.
        config: The parsed `config.json`.

    Raises:
        ModelFileError: naming the first layer (or the model) that holds a
            refused object, and the object.
    """
    stack = [(config, None)]
    while stack:
        value, owner = stack.pop()
        if isinstance(value, dict):
            if isinstance(value.get("class_name"), str):
                owner = _owner(value, owner)
                _check_object(path, value, owner)
            children = value.values()
        elif isinstance(value, list):
            children = value
        else:
            if isinstance(value, str) and ">" in value:  # e.g. "activation": "pkg>name"
                _check_registered_string(path, value, owner)
            continue
        stack.extend((child, owner) for child in reversed(list(children)))


def _owner(obj, owner):
    """The layer, or the model at the root, that `obj` belongs to, for messages."""
    inner = obj.get("config")
    if isinstance(inner, dict) and "trainable" in inner and isinstance(inner.get("name"), str):
        return ("model" if owner is None else "layer", inner["name"])
    return owner or ("model", "?")


def _check_object(path, obj, owner):
    """Refuses one serialized object (a dict with a `class_name`) of `owner`."""
    class_name = obj["class_name"]
    where = f"{owner[0]} '{owner[1]}'"
    if class_name == "__lambda__":
        raise ModelFileError(f"{path}: refused: {where} holds a Python lambda (code that "
                             "runs when loaded); dltool loads only the layers its templates "
                             "produce")
    if class_name in _DATA_CLASS_NAMES:
        return
    module = obj.get("module")
    if class_name == "function":
        name = key = obj.get("config")
    else:
        name = obj.get("spec_name") if class_name == "__typespec__" else class_name
        key = obj.get("registered_name", class_name)
    target = _resolve(module, name, key)
    if class_name == "Lambda" or (isinstance(target, type)
                                  and issubclass(target, keras.layers.Lambda)):
        raise ModelFileError(f"{path}: refused: {where} is a Lambda layer (code that runs "
                             "when loaded); dltool loads only the layers its templates "
                             "produce")
    if class_name == "function" and target is None and module == "builtins":
        # Keras looks a "builtins" function up among its own built-in
        # activations, losses, metrics... by name (the translator's
        # masked_loss is saved so), never in Python's builtins; refuse the
        # names that would mean one.
        if isinstance(name, str) and _IDENTIFIER.match(name) and not hasattr(builtins, name):
            return
    elif _is_modeling_code(target):
        return
    shown = key if _registered(key) is not None else \
        ".".join(str(part) for part in (module, name) if part is not None)
    raise ModelFileError(f"{path}: refused: {where} uses {shown}, which dltool's templates "
                         "never produce")


def _check_registered_string(path, value, owner):
    """Refuses a plain string that names a registered non-modeling object."""
    target = _registered(value)
    if target is not None and not _is_modeling_code(target):
        where = f"{owner[0]} '{owner[1]}'" if owner else "the model"
        raise ModelFileError(f"{path}: refused: {where} uses {value}, which dltool's "
                             "templates never produce")


def _resolve(module, name, key):
    """Returns the class or function Keras would load for an object, or None.

    Like Keras: an object registered under `key` first; then `name` in
    `module`, which must be a module of Keras or KerasHub that is already
    imported (no module the config names is imported or even touched outside
    those packages).
    """
    target = _registered(key)
    if target is not None:
        return target
    if not (isinstance(module, str) and isinstance(name, str) and _IDENTIFIER.match(name)):
        return None
    if module.split(".")[0] not in _KERAS_PACKAGES:
        return None
    if module.split(".")[0] == "keras_hub":
        _import_keras_hub()
    loaded = sys.modules.get(module)
    return vars(loaded).get(name) if loaded is not None else None


def _registered(key):
    """The object registered with Keras under `key` (`package>name`), or None."""
    if not isinstance(key, str) or not key:
        return None
    if key.split(">")[0] in ("keras_hub", "keras_nlp"):
        _import_keras_hub()  # as Keras would, on meeting a KerasHub module
    return keras.saving.get_registered_object(key)


def _import_keras_hub():
    """Imports KerasHub, which registers its classes with Keras."""
    if "keras_hub" not in sys.modules:
        import keras_hub  # noqa: F401  (deferred: 1-2 s, and only models using it need it)


def _is_modeling_code(target):
    """Whether `target` is a class or function of the allow-list above."""
    module = getattr(target, "__module__", None)
    if not isinstance(module, str):
        return False
    if isinstance(target, type):
        prefixes = _MODELING_MODULES
    elif f"{module}.{getattr(target, '__qualname__', '')}" in _MODELING_FUNCTIONS:
        return True
    else:
        prefixes = _FUNCTION_MODULES
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def load_saved_model(path):
    """Loads a SavedModel directory and returns its serving function.

    A SavedModel is a program (its graph runs with the user's permissions):
    callers warn first about one that the project did not export
    (`dltool.engine.predict.untrusted_model_warning`).

    Args:
        path: The SavedModel folder.

    Returns:
        Its `serving_default` concrete function.

    Raises:
        ModelFileError: if `path` is not a SavedModel with a `serving_default`
            signature.
    """
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise ModelFileError(f"{path}: not a SavedModel (no saved_model.pb)")
    try:
        loaded = tf.saved_model.load(str(path))
    except (tf.errors.OpError, ValueError, OSError) as e:
        raise ModelFileError(f"{path}: corrupt SavedModel: {str(e).splitlines()[0]}") from e
    if "serving_default" not in loaded.signatures:
        raise ModelFileError(f"{path}: SavedModel has no serving_default signature")
    return loaded.signatures["serving_default"]
