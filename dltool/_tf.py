"""Import TensorFlow and Keras with dltool's defaults.

Every dltool module that needs TensorFlow imports it from here, so the
environment is set before TensorFlow first loads:

- `TF_ENABLE_ONEDNN_OPTS=1` unless the user set it (oneDNN trains a small CNN
  about 20% faster on the 2-core CPU dltool is benchmarked on);
- `KERAS_BACKEND=tensorflow` unless set (dltool's strategies and SavedModel
  export are TensorFlow's);
- TensorFlow's C++ info logs hidden unless `TF_CPP_MIN_LOG_LEVEL` is set,
  and with them the lines its libraries print before that setting applies
  (`quiet_native_logs`).
"""

import contextlib
import os
import re
import sys
import tempfile

ONEDNN_SET_BY_USER = "TF_ENABLE_ONEDNN_OPTS" in os.environ
LOGS_SET_BY_USER = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# What TensorFlow's C++ libraries write to stderr while they load and find
# the devices, before absl's logging is set up, so TF_CPP_MIN_LOG_LEVEL
# does not hide it (tensorflow#79029, abseil-cpp#1957): on a CPU machine,
# "oneDNN custom operations are on", "Could not find cuda drivers" (twice,
# once per library) and "failed call to cuInit" (an E line, no error: there
# is no GPU). Measured on `import dltool._tf` here: 8 such lines, nothing else.
NATIVE_NOISE = re.compile(
    r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to "
    r"STDERR|[IWE]\d{4} [\d:.]+ +\d+ (?:port|cudart_stub|cuda_platform|cuda_executor|"
    r"cuda_dnn|cuda_fft|cuda_blas|cpu_feature_guard)\.cc:\d+\] .*")


@contextlib.contextmanager
def quiet_native_logs():
    """Runs the block with file descriptor 2 captured, then writes back to it
    every line but `NATIVE_NOISE`'s (all of them when the user set
    `TF_CPP_MIN_LOG_LEVEL`: then they asked for TensorFlow's logs).

    An error raised in the block comes after the lines it wrote.
    """
    if LOGS_SET_BY_USER:
        yield
        return
    try:
        saved = os.dup(2)
    except OSError:  # no stderr to filter
        yield
        return
    with tempfile.TemporaryFile() as captured:
        sys.stderr.flush()
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not NATIVE_NOISE.fullmatch(line.rstrip("\n"))]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


with quiet_native_logs():
    import tensorflow as tf  # noqa: E402
    import keras  # noqa: E402

    # Finding the devices first here: the CUDA platform's "failed call to
    # cuInit" line comes from it. Physical devices only: the logical ones
    # (`runtime.split_cpu`) can still be configured after this.
    tf.config.list_physical_devices()

if keras.backend.backend() != "tensorflow":
    raise ImportError(
        f"dltool needs Keras' TensorFlow backend; KERAS_BACKEND is "
        f"{keras.backend.backend()!r}")

__all__ = ["tf", "keras", "ONEDNN_SET_BY_USER", "quiet_native_logs"]
