"""Load model files safely.

`.keras` archives load with Keras' safe mode on (never
`enable_unsafe_deserialization`), so a file holding a Lambda layer (arbitrary
Python bytecode) is refused. Legacy `.h5` files, remote paths and anything
that is not a local `.keras` archive are refused before Keras sees them.
SavedModels are programs: dltool loads the ones it exported itself
(`saved_models/NAME/VERSION`); load others only from sources you trust.
"""

import re
import zipfile
from pathlib import Path

from dltool._tf import keras, tf
from dltool.core.errors import ModelFileError

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def load_keras_file(path):
    """Loads a `.keras` archive with safe mode on.

    Args:
        path: Local path of a `.keras` file.

    Returns:
        The Keras model.

    Raises:
        ModelFileError: remote path, wrong format, corrupt archive, or
            content that safe mode refuses (such as a Lambda layer).
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


def load_saved_model(path):
    """Loads a SavedModel directory and returns its serving function.

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
