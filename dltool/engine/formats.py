"""The export formats besides the SavedModel: LiteRT (TFLite) and ONNX.

A SavedModel takes raw input (image bytes, strings) because TensorFlow
Serving runs every TensorFlow op. LiteRT and ONNX have no image decoder and
no text tokenizer among their builtin ops, so their exports take what the
Keras model takes (float pixels, token ids): the task's `inference_model`,
with the preprocessing described in `dltool.json` and given as a small
function in the README's client snippet.

One function per format writes the model file into a (staging) folder:
`write_litert` with Keras' `model.export(format="litert")` (TensorFlow's
LiteRT converter) and its quantizations, `write_onnx` with
`model.export(format="onnx")` (tf2onnx). `check_request` refuses a format or
quantization that cannot be written, before anything is.
"""

import importlib.util

import numpy as np

from dltool._tf import keras, tf
from dltool.core.errors import ConfigError, ProjectError

# Format name to the quantizations it takes ("none" first: the default).
QUANTIZATIONS = {
    "savedmodel": ("none",),
    "litert": ("none", "float16", "dynamic", "int8"),
    "onnx": ("none", "dynamic"),
}
FORMATS = tuple(QUANTIZATIONS)
MODEL_FILES = {"litert": "model.tflite", "onnx": "model.onnx"}
# Modules a format's converter needs (and its quantizer), installed by the
# extra of the format's name.
_EXTRAS = {"onnx": ("tf2onnx", "onnx")}
_QUANTIZER_EXTRAS = {"onnx": ("onnxruntime",)}
# int8 calibration: examples of the training split, drawn with the run's seed.
# 300 is within the few hundred TensorFlow's post-training quantization guide
# suggests; on the 450 embedded images calibration takes about a second.
CALIBRATION_EXAMPLES = 300


def check_request(task, export_format, quantize, meta):
    """Refuses, before anything is written, an export that cannot be made.

    Args:
        task: The run's `Task`.
        export_format: One of `FORMATS`.
        quantize: One of the format's `QUANTIZATIONS`.
        meta: The run's `meta`.

    Raises:
        ConfigError: an unknown format, a quantization the format does not
            take, or a model the task cannot put into the format (its
            `format_refusal`, which says what works instead).
        ProjectError: the optional packages the format needs are missing
            (the line says what to install).
    """
    if export_format not in QUANTIZATIONS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}; got {export_format!r}")
    allowed = QUANTIZATIONS[export_format]
    if quantize not in allowed:
        others = [f for f, q in QUANTIZATIONS.items() if quantize in q]
        raise ConfigError(
            f"--quantize {quantize} does not apply to --format {export_format} "
            f"(it takes {', '.join(allowed)}); {quantize} works with --format "
            f"{', '.join(others) or 'none'}")
    reason = task.format_refusal(export_format, quantize, meta)
    if reason is not None:
        raise ConfigError(f"cannot export a {task.name} model as {export_format}: {reason}")
    check_extra(export_format, quantize)


def check_extra(export_format, quantize="none"):
    """Raises `ProjectError` naming the extra to install when a converter is missing."""
    needed = _EXTRAS.get(export_format, ())
    if quantize != "none":
        needed += _QUANTIZER_EXTRAS.get(export_format, ())
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ProjectError(
            f"--format {export_format} needs {', '.join(missing)}: "
            f"pip install 'dltool-keras[{export_format}]'")


def write_litert(model, path, quantize="none", calibration=None):
    """Writes `model` as a LiteRT flatbuffer with TensorFlow's LiteRT converter.

    Only LiteRT's builtin ops are allowed (no Select TF ops): a model that
    needs TensorFlow kernels fails here rather than in the user's
    interpreter (on this machine a bidirectional GRU converted with Select
    TF ops did not run in `tf.lite.Interpreter`; unrolled, as the sentiment
    task's `inference_model` gives it, it converts to builtin ops).

    Args:
        model: A Keras model taking numeric input (`Task.inference_model`).
        path: The `.tflite` file to write.
        quantize: `none` (float32), `float16` (float16 weights),
            `dynamic` (int8 weights; activations quantized at run time by
            the ops that can) or `int8` (int8
            weights and activations calibrated on `calibration`; the input
            and output stay float32, quantized and dequantized inside).
        calibration: For `int8`, a list of input batches (arrays, or dicts
            of arrays for a model with several inputs) of one example each.

    Returns:
        `path`.
    """
    settings = {"target_spec": {"supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]}}
    if quantize != "none":
        settings["optimizations"] = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        settings["target_spec"]["supported_types"] = [tf.float16]
    elif quantize == "int8":
        settings["target_spec"]["supported_ops"] = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # A dict (several inputs) goes by the signature's input names, an
        # array as the one input.
        settings["representative_dataset"] = lambda: (
            x if isinstance(x, dict) else [x] for x in calibration)
    if any(t.shape[0] is not None for t in tf.nest.flatten(model.input)):
        # A fixed batch size (the translator's decoding loop): LiteRT's
        # tensor lists need static element shapes.
        settings["input_signature"] = [tf.nest.map_structure(
            lambda t: tf.TensorSpec(t.shape, t.dtype, t.name.split(":")[0]), model.input)]
    model.export(str(path), format="litert", verbose=False, **settings)
    return path


def write_onnx(model, path, quantize="none"):
    """Writes `model` as an ONNX graph with tf2onnx (Keras' ONNX export).

    Args:
        model: A Keras model taking numeric input (`Task.inference_model`).
        path: The `.onnx` file to write.
        quantize: `none` (float32) or `dynamic`: int8 weights, activations
            quantized at run time (ONNX Runtime's `quantize_dynamic`:
            `ConvInteger`, `MatMulInteger`).

    Returns:
        `path`.
    """
    model = inference_only(model)
    model(_zeros_like_inputs(model), training=False)  # Keras' ONNX export needs a called model
    if quantize == "none":
        model.export(str(path), format="onnx", verbose=False)
        return path
    from onnxruntime.quantization import QuantType, quantize_dynamic

    float_path = path.with_name(f"float-{path.name}")
    model.export(str(float_path), format="onnx", verbose=False)
    quantize_dynamic(float_path, path, weight_type=QuantType.QInt8)
    float_path.unlink()
    return path


def inference_only(model):
    """Wraps `model` in a model that always runs it with `training=False`.

    Keras' ONNX export traces `model.__call__` without `training`; measured
    on this machine (Keras 3.15.1, tf2onnx 1.17.0), the image classifier's
    BatchNormalization was then traced with the batch's moments (a
    `ReduceMean` in the ONNX graph, probabilities 0.19 away from Keras' and
    changing with the batch). Its LiteRT export passes `training=False`
    itself.

    Args:
        model: A functional Keras model.

    Returns:
        A functional model with the same inputs and weights.
    """
    inputs = tf.nest.map_structure(
        lambda t: keras.Input(shape=t.shape[1:], dtype=t.dtype, name=t.name.split(":")[0]),
        model.input)
    return keras.Model(inputs, model(inputs, training=False), name=model.name)


def calibration_batches(dataset, size, count, seed):
    """Draws int8 calibration inputs from an unbatched `(inputs, target)` dataset.

    Args:
        dataset: The run's training split (unbatched).
        size: Its number of examples. The draw is uniform over all of them
            (a folder's split comes ordered by class, so its first examples
            are a few classes), in one pass that keeps only the drawn ones,
            not a shuffle buffer of the whole split.
        count: Examples to draw.
        seed: Seed of the draw (the run's `training.seed`).

    Returns:
        A list of `min(count, size)` inputs, each a batch of one example
        (numpy arrays, or dicts of them), as `write_litert` takes them.
    """
    rng = np.random.default_rng(seed)
    chosen = tf.constant(rng.choice(size, min(count, size), replace=False), tf.int64)
    drawn = (dataset.enumerate()
             .filter(lambda index, example: tf.reduce_any(tf.equal(index, chosen)))
             .map(lambda index, example: example))
    return [tf.nest.map_structure(lambda t: np.asarray(t)[np.newaxis], x)
            for x, _ in drawn.as_numpy_iterator()]


def _zeros_like_inputs(model):
    """A batch of one all-zero input of each of `model`'s inputs."""
    return tf.nest.map_structure(
        lambda t: np.zeros((1, *t.shape[1:]), dtype=t.dtype), model.input)
