"""Choose and set up the distribution strategy and precision policy.

`auto` picks from the devices present: MultiWorkerMirroredStrategy when
TF_CONFIG lists several workers, MirroredStrategy with more than one GPU, the
default strategy otherwise; mixed_float16 on GPUs of compute capability 7.0 or
more, mixed_bfloat16 on TPU, float32 on CPU (this CPU has no fp16/bf16
hardware: mixed precision there is about 10 times slower).

`split_cpu(n)` turns the CPU into `n` logical devices, so MirroredStrategy
can run with several replicas on a machine without GPUs (the replicas share
the same cores: this tests the multi-device code path, it is not faster).
"""

import contextlib
import dataclasses
import importlib.metadata
import os
import weakref

import numpy as np

from dltool._tf import ONEDNN_SET_BY_USER, keras, tf
from dltool.core.errors import DltoolError
from dltool.engine.cluster import find_cluster


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


def choose_strategy(requested, found=None, cluster=None):
    """Resolves the `runtime.strategy` setting.

    Args:
        requested: One of `auto`, `default`, `mirrored`, `multi-worker`, `tpu`.
        found: Output of `devices()`; read from TensorFlow when None.
        cluster: The `Cluster` this process belongs to, or None.

    Returns:
        A `Choice`.

    Raises:
        DltoolError: if the strategy needs hardware that is absent, or a
            cluster it cannot use.
    """
    found = found if found is not None else devices()
    gpus = len(found["GPU"])
    if requested == "tpu" and not found["TPU"]:
        raise DltoolError("strategy 'tpu' needs a TPU and none was found")
    if cluster is not None and requested not in ("auto", "multi-worker"):
        raise DltoolError(f"strategy {requested!r} cannot use a cluster of workers "
                          "(--worker-hosts or TF_CONFIG); use strategy 'multi-worker'")
    if requested == "multi-worker" and cluster is None:
        raise DltoolError("strategy 'multi-worker' needs the workers: pass --worker-hosts "
                          "HOST:PORT,HOST:PORT --task-index I, or set TF_CONFIG")
    if requested != "auto":
        return Choice(requested, "set in the config or on the command line")
    if cluster is not None:
        return Choice("multi-worker", f"auto: {cluster.source} lists {cluster.size} workers")
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


def split_cpu(count):
    """Splits the CPU into `count` logical devices (before TensorFlow starts).

    With `count` 1 nothing changes. A process whose CPU is already split
    into `count` devices is left as it is.

    Raises:
        DltoolError: if TensorFlow already set up a different split.
    """
    if count == 1:
        return
    (cpu,) = tf.config.list_physical_devices("CPU")[:1]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError as e:
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise DltoolError(f"runtime.cpu_devices = {count} must be set before TensorFlow "
                              f"starts; this process already has its devices") from e


def mirrored_devices():
    """Returns the devices MirroredStrategy replicates on: the GPUs, or else
    every logical CPU device (see `split_cpu`)."""
    if tf.config.list_logical_devices("GPU"):
        return None  # MirroredStrategy's default: every GPU
    return [d.name for d in tf.config.list_logical_devices("CPU")]


class MultiWorkerStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy that Keras 3's `fit` can use.

    Keras 3 calls `strategy.reduce` with a tuple of per-replica batches
    (before its first step) and with `axis=0` on scalar metrics; TensorFlow's
    multi-worker `reduce` accepts neither (keras-team/keras#20585). This one
    reduces each item of a structure, and scalars over the replicas.
    """

    def reduce(self, reduce_op, value, axis):
        def reduce_one(item):
            local = item
            if isinstance(item, tf.distribute.DistributedValues):
                local = self.experimental_local_results(item)[0]
            item_axis = axis if axis is not None and local.shape.rank else None
            return super(MultiWorkerStrategy, self).reduce(reduce_op, item, item_axis)

        return tf.nest.map_structure(reduce_one, value)


def _sum_over_replicas(strategy, array):
    """Sums a NumPy array that every replica of every worker passes.

    The all-reduce function is traced once per strategy (and array shape),
    not at every call: workers call it every few batches to agree on a stop.
    """
    all_reduce = _ALL_REDUCE.get(strategy)
    if all_reduce is None:
        @tf.function
        def all_reduce(value):
            per_replica = strategy.run(tf.identity, args=(value,))
            return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

        _ALL_REDUCE[strategy] = all_reduce
    return np.asarray(all_reduce(tf.constant(array)))


_ALL_REDUCE = weakref.WeakKeyDictionary()  # strategy -> its all-reduce function


def broadcast_text(strategy, text, is_chief, size=256):
    """Sends the chief's `text` to every worker of a multi-worker strategy.

    Every worker must call it at the same point (it is a collective op);
    the others pass any `text`.

    Returns:
        The chief's text.
    """
    data = np.zeros(size, np.int32)
    if is_chief:
        encoded = np.frombuffer(text.encode("utf-8"), np.uint8)[:size]
        data[:len(encoded)] = encoded
    total = _sum_over_replicas(strategy, data)
    # Every local replica of the chief added its copy; workers have equally many.
    data = np.asarray(total) // len(strategy.extended.worker_devices)
    return bytes(data[data > 0].astype(np.uint8)).decode("utf-8")


def all_equal(strategy, value):
    """Returns whether every worker passed the same number (a collective op)."""
    local = np.array([1.0, float(value), float(value) ** 2])
    count, total, squares = _sum_over_replicas(strategy, local)
    return abs(count * squares - total * total) < 1e-6


def any_worker(strategy, flag):
    """Returns whether any worker passed a true `flag` (a collective op)."""
    return bool(_sum_over_replicas(strategy, np.array([float(bool(flag))]))[0] > 0)


def make_strategy(name, cluster=None):
    """Returns the `tf.distribute.Strategy` called `name`.

    Args:
        name: A resolved strategy name (see `choose_strategy`).
        cluster: The `Cluster` for `multi-worker`; its TF_CONFIG is put in
            the environment, where TensorFlow reads it.

    Raises:
        DltoolError: if the strategy cannot be set up on this machine.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(mirrored_devices())
    if name == "multi-worker":
        if cluster is None:
            raise DltoolError("strategy 'multi-worker' needs TF_CONFIG describing the workers")
        cluster.check_port_free()
        os.environ["TF_CONFIG"] = cluster.tf_config()
        return MultiWorkerStrategy()
    if name == "tpu":
        try:
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver()
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as e:
            raise DltoolError(f"strategy 'tpu' could not reach a TPU: {e}") from e
        return tf.distribute.TPUStrategy(resolver)
    raise DltoolError(f"unknown strategy {name!r}")


def build_from_one_replica(model):
    """Lets `model.fit` / `evaluate` start on a batch that splits unevenly.

    Under a strategy, Keras 3's TensorFlow trainer (`_maybe_symbolic_build`,
    at the start of every `fit` and `evaluate`) reduces the first batch
    elementwise over the replicas (`strategy.reduce("MEAN", batch)`) only to
    learn the input shapes. When that batch does not split evenly, which the
    sentiment template's batches grouped by length do (119 = 60 + 59 on two
    devices), the reduction fails: `Inputs to operation AddN ... must have
    the same size and shape. Input 0: [60,12,16] != input 1: [59,12,16]`
    (seen on `runtime.cpu_devices = 2`, Keras 3.15, TensorFlow 2.21). Training itself takes uneven
    batches. This gives the model a `_maybe_symbolic_build` that reads the
    shapes from the first replica's part instead; without a strategy of
    several replicas, or on a Keras without that method, it changes nothing.
    """
    if not hasattr(model, "_maybe_symbolic_build") or not tf.distribute.has_strategy():
        return
    strategy = tf.distribute.get_strategy()
    if strategy.num_replicas_in_sync == 1:
        return

    def first_replica(value):
        if isinstance(value, tf.distribute.DistributedValues):
            return strategy.experimental_local_results(value)[0]
        return value

    def maybe_symbolic_build(iterator=None, data_batch=None):
        if iterator is not None:
            for _, _, batches in iterator:
                data_batch = tf.nest.map_structure(first_replica, next(batches))
                break
        with strategy.scope():
            model._symbolic_build(data_batch=data_batch)

    model._maybe_symbolic_build = maybe_symbolic_build


def set_precision(policy):
    """Sets Keras' global dtype policy (`float32`, `mixed_float16`, ...)."""
    keras.mixed_precision.set_global_policy(policy)


@contextlib.contextmanager
def precision_scope(policy):
    """Sets Keras' global dtype policy inside a `with` block only."""
    previous = keras.mixed_precision.global_policy().name
    set_precision(policy)
    try:
        yield
    finally:
        set_precision(previous)


def set_seed(seed, deterministic=False):
    """Seeds Python, NumPy and TensorFlow; optionally makes ops deterministic.

    With `deterministic`, TensorFlow picks deterministic kernels (and
    raises on ops that have none), so two runs with the same seed on the
    same hardware give bit-identical weights. It stays on for the process.
    """
    keras.utils.set_random_seed(seed)
    if deterministic:
        tf.config.experimental.enable_op_determinism()


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
    """Returns what `auto` picks on typical machines: a list of lines."""
    lines = []
    for label, found, capabilities in _EXAMPLE_MACHINES:
        strategy = choose_strategy("auto", found).value
        policy = choose_precision("auto", found, capabilities).value
        lines.append(f"{label}: {strategy} + {policy}")
    lines.append("several workers (--worker-hosts or TF_CONFIG): multi-worker + the "
                 "precision their devices get")
    return lines


def describe(runtime_section):
    """Resolves a config's `runtime` section for `dltool info`.

    Returns:
        A dict of printable facts: versions, devices, strategy, precision.
    """
    found = devices()
    strategy = choose_strategy(runtime_section["strategy"], found, find_cluster())
    precision = choose_precision(runtime_section["precision"], found)
    return {
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "keras-tuner": importlib.metadata.version("keras-tuner"),
        "devices": ", ".join(f"{len(v)} {k}" for k, v in found.items()),
        "strategy": f"{strategy.value} ({strategy.reason})",
        "precision": f"{precision.value} ({precision.reason})",
        "onednn": onednn_status(),
        "auto picks": auto_summary(),
    }
