"""Choose and set up the distribution strategy and precision policy.

`auto` picks from the devices present: MirroredStrategy with more than one
GPU, the default strategy otherwise; mixed_float16 on GPUs of compute
capability 7.0 or more, mixed_bfloat16 on TPU, float32 on CPU (this CPU has no
fp16/bf16 hardware: mixed precision there is about 10 times slower).
"""

import dataclasses
import os

from dltool._tf import ONEDNN_SET_BY_USER, keras, tf
from dltool.errors import DltoolError


@dataclasses.dataclass(frozen=True)
class Choice:
    """A resolved setting and the reason it was chosen."""

    value: str
    reason: str


def devices():
    """Returns a dict of device kind ('GPU', 'TPU', 'CPU') to physical devices."""
    return {kind: tf.config.list_physical_devices(kind) for kind in ("GPU", "TPU", "CPU")}


def gpu_compute_capabilities():
    """Returns the (major, minor) compute capability of each GPU."""
    capabilities = []
    for gpu in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(gpu)
        capabilities.append(tuple(details.get("compute_capability", (0, 0))))
    return capabilities


def choose_strategy(requested, found=None):
    """Resolves the `runtime.strategy` setting.

    Args:
        requested: One of `auto`, `default`, `mirrored`, `multi-worker`, `tpu`.
        found: Output of `devices()`; read from TensorFlow when None.

    Returns:
        A `Choice`.

    Raises:
        DltoolError: if the strategy needs hardware that is absent.
    """
    found = found if found is not None else devices()
    gpus = len(found["GPU"])
    if requested == "tpu" and not found["TPU"]:
        raise DltoolError("strategy 'tpu' needs a TPU and none was found")
    if requested != "auto":
        return Choice(requested, "set in the config or on the command line")
    if gpus > 1:
        return Choice("mirrored", f"auto: {gpus} GPUs found")
    where = "1 GPU" if gpus == 1 else "no GPU"
    return Choice("default", f"auto: {where}, so one device")


def choose_precision(requested, found=None, capabilities=None):
    """Resolves the `runtime.precision` setting.

    Args:
        requested: One of `auto`, `float32`, `mixed_float16`, `mixed_bfloat16`.
        found: Output of `devices()`; read from TensorFlow when None.
        capabilities: Output of `gpu_compute_capabilities()`; read when None.

    Returns:
        A `Choice`.
    """
    if requested != "auto":
        return Choice(requested, "set in the config or on the command line")
    found = found if found is not None else devices()
    if found["TPU"]:
        return Choice("mixed_bfloat16", "auto: TPU found")
    if found["GPU"]:
        capabilities = capabilities if capabilities is not None else gpu_compute_capabilities()
        if capabilities and min(capabilities) >= (7, 0):
            return Choice("mixed_float16", f"auto: GPU compute capability {min(capabilities)}")
        return Choice("float32", "auto: GPU older than compute capability 7.0")
    return Choice("float32", "auto: CPU only (no fast float16/bfloat16 there)")


def make_strategy(name):
    """Returns the `tf.distribute.Strategy` called `name`.

    Raises:
        DltoolError: if the strategy cannot be set up on this machine.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi-worker":
        if "TF_CONFIG" not in os.environ:
            raise DltoolError("strategy 'multi-worker' needs TF_CONFIG describing the workers")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as e:
            raise DltoolError(f"strategy 'tpu' could not reach a TPU: {e}") from e
        return tf.distribute.TPUStrategy(resolver)
    raise DltoolError(f"unknown strategy {name!r}")


def set_precision(policy):
    """Sets Keras' global dtype policy (`float32`, `mixed_float16`, ...)."""
    keras.mixed_precision.set_global_policy(policy)


def onednn_status():
    """Returns a one-line description of the oneDNN setting."""
    value = os.environ.get("TF_ENABLE_ONEDNN_OPTS", "")
    state = "on" if value not in ("0", "false", "False") else "off"
    source = "set by you" if ONEDNN_SET_BY_USER else "set by dltool"
    return f"{state} (TF_ENABLE_ONEDNN_OPTS={value}, {source})"


_EXAMPLE_MACHINES = (
    ("CPU only", {"GPU": [], "TPU": []}, []),
    ("1 GPU, compute capability 8.0", {"GPU": [0], "TPU": []}, [(8, 0)]),
    ("2 GPUs, compute capability 7.0", {"GPU": [0, 1], "TPU": []}, [(7, 0), (7, 0)]),
    ("1 GPU, compute capability 6.1", {"GPU": [0], "TPU": []}, [(6, 1)]),
    ("TPU (set strategy = tpu)", {"GPU": [], "TPU": [0]}, []),
)


def auto_summary():
    """Returns what `auto` picks on typical machines, one line each."""
    lines = []
    for label, found, capabilities in _EXAMPLE_MACHINES:
        strategy = choose_strategy("auto", found).value
        precision = choose_precision("auto", found, capabilities).value
        lines.append(f"{label}: {strategy} + {precision}")
    return "; ".join(lines)


def describe(runtime_section):
    """Resolves a config's `runtime` section for `dltool info`.

    Returns:
        A dict of printable facts: versions, devices, strategy, precision.
    """
    found = devices()
    strategy = choose_strategy(runtime_section["strategy"], found)
    precision = choose_precision(runtime_section["precision"], found)
    import keras_tuner

    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras-tuner": keras_tuner.__version__,
        "devices": ", ".join(f"{len(v)} {k}" for k, v in found.items()),
        "strategy": f"{strategy.value} ({strategy.reason})",
        "precision": f"{precision.value} ({precision.reason})",
        "onednn": onednn_status(),
        "auto picks": auto_summary(),
    }
