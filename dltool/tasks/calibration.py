"""Temperature scaling: a classifier's probabilities made to mean what they say.

A network trained on cross-entropy is often over-confident: of the test
images it gives 0.9, far fewer than 90% are right. Temperature scaling (Guo
et al., "On Calibration of Modern Neural Networks", 2017) divides the logits
by one scalar `T > 0` fitted after training to minimise the negative
log-likelihood (NLL) on the validation split. Dividing every logit of a row
by the same `T` keeps their order, so the predicted class never changes;
only the confidence does (`T > 1` softens it, `T < 1` sharpens it).

The classifier templates' models end in a softmax, so their logits are the
log of their probabilities, up to a constant per row that the softmax
ignores: calibrated = softmax(log(p) / T). `FLOOR` stands in for a
probability that underflowed to 0 in float32.

The numpy functions fit `T` and measure calibration: the NLL and the
expected calibration error (ECE), the mean gap between confidence and
accuracy over `BINS` equal-width confidence bins. `scale` applies `T` in a
graph (the exported model), `TemperatureScaling` is it as a Keras layer.
"""

import numpy as np

from dltool._tf import keras

BINS = 15  # the ECE's confidence bins, as in Guo et al.
# The smallest normal float32: the log of a probability that underflowed to
# 0 (a float32 softmax does below about e^-87) is taken as log(FLOOR), -87.3.
FLOOR = float(np.finfo(np.float32).tiny)
# The temperatures the fit may return. Beyond them a fit only says that the
# validation split is degenerate: every example right with probability ~1
# drives T to 0, a model that predicts the same row for every input drives
# it to infinity.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 100.0
_NEWTON_STEPS = 50


def log_probabilities(probabilities):
    """Returns `log(max(p, FLOOR))` in float64, the logits temperature scaling
    divides."""
    return np.log(np.maximum(np.asarray(probabilities, dtype=np.float64), FLOOR))


def scaled(probabilities, temperature):
    """Calibrated probabilities, in numpy: softmax(log(p) / T).

    Args:
        probabilities: `(n, classes)` probabilities (a softmax's output).
        temperature: `T > 0`.

    Returns:
        `(n, classes)` float64 probabilities, each row's argmax unchanged.
    """
    logits = log_probabilities(probabilities) / temperature
    logits -= logits.max(axis=-1, keepdims=True)
    exp = np.exp(logits)
    return exp / exp.sum(axis=-1, keepdims=True)


def negative_log_likelihood(labels, probabilities):
    """The mean of -log p(true class), each p at least `FLOOR`.

    Args:
        labels: Integer labels, `(n,)`.
        probabilities: `(n, classes)`.
    """
    rows = np.arange(len(labels))
    return float(-np.mean(log_probabilities(probabilities)[rows, np.asarray(labels)]))


def reliability(labels, probabilities, bins=BINS):
    """The reliability diagram's bins of top-1 confidence.

    Bin `b` holds the examples whose confidence is in `(b / bins, (b + 1) /
    bins]` (the first bin also 0).

    Args:
        labels: Integer labels, `(n,)`.
        probabilities: `(n, classes)`.
        bins: The number of equal-width bins.

    Returns:
        A JSON-able dict of lists, one entry per bin: `count`, `accuracy`
        and `confidence` (the bin's mean; 0 for an empty bin).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    confidence = probabilities.max(axis=-1)
    correct = probabilities.argmax(axis=-1) == np.asarray(labels)
    index = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    count = np.bincount(index, minlength=bins)
    total = np.maximum(count, 1)
    return {"count": count.tolist(),
            "accuracy": (np.bincount(index, correct, minlength=bins) / total).tolist(),
            "confidence": (np.bincount(index, confidence, minlength=bins) / total).tolist()}


def expected_calibration_error(labels, probabilities, bins=BINS):
    """The ECE: sum over the confidence bins of (share of the examples) x
    |accuracy - mean confidence| (see `reliability`)."""
    return _ece_of(reliability(labels, probabilities, bins))


def _ece_of(table):
    """The ECE of a `reliability` table."""
    count = np.asarray(table["count"])
    gaps = np.abs(np.asarray(table["accuracy"]) - np.asarray(table["confidence"]))
    return float(np.sum(count * gaps) / max(1, count.sum()))


def fit_temperature(labels, probabilities):
    """The temperature that minimises the NLL of `scaled(probabilities, T)`.

    The NLL is convex in `1 / T` (a log-sum-exp of lines minus a line), so
    Newton's method on `1 / T`, from 1 (no change) and halving a step that
    does not lower the NLL, finds the minimum in a few steps; it draws no
    random number, so the same predictions always give the same `T`. (On
    synthetic over-confident predictions, `tests/test_calibration.py`, it
    stops within 10 steps.)

    Args:
        labels: Integer labels, `(n,)`, n > 0.
        probabilities: `(n, classes)`.

    Returns:
        `T`, clipped to `[MIN_TEMPERATURE, MAX_TEMPERATURE]`.
    """
    logits = log_probabilities(probabilities)
    true = logits[np.arange(len(labels)), np.asarray(labels)]
    low, high = 1 / MAX_TEMPERATURE, 1 / MIN_TEMPERATURE

    def nll(inverse):
        z = logits * inverse
        top = z.max(axis=-1)
        return np.mean(top + np.log(np.exp(z - top[:, None]).sum(axis=-1)) - true * inverse)

    inverse, value = 1.0, nll(1.0)
    for _ in range(_NEWTON_STEPS):
        z = logits * inverse
        q = np.exp(z - z.max(axis=-1, keepdims=True))
        q /= q.sum(axis=-1, keepdims=True)
        mean = (q * logits).sum(axis=-1)
        gradient = np.mean(mean - true)
        curvature = np.mean((q * logits ** 2).sum(axis=-1) - mean ** 2)
        step = gradient / curvature if curvature > 1e-12 else np.sign(gradient) * inverse
        for _ in range(60):  # halve the step until the NLL goes down
            candidate = float(np.clip(inverse - step, low, high))
            candidate_value = nll(candidate)
            if candidate_value <= value or abs(candidate - inverse) < 1e-12:
                break
            step /= 2
        done = abs(candidate - inverse) <= 1e-9 * inverse
        if candidate_value <= value:
            inverse, value = candidate, candidate_value
        if done:
            break
    return float(1 / inverse)


def summary(labels, probabilities, temperature, bins=BINS):
    """NLL and ECE before and after temperature scaling.

    Args:
        labels: Integer labels, `(n,)`.
        probabilities: The model's `(n, classes)` probabilities.
        temperature: `T`, or None for a model that is not calibrated (only
            the `_before` figures are given then).
        bins: The ECE's bins.

    Returns:
        A JSON-able dict: `temperature`, `bins`, `nll_before`, `ece_before`,
        `reliability_before` (`reliability`) and, with a temperature, the
        same three `_after`.
    """
    result = {"temperature": temperature, "bins": bins}
    stages = [("before", probabilities)]
    if temperature is not None:
        stages.append(("after", scaled(probabilities, temperature)))
    for stage, p in stages:
        result[f"nll_{stage}"] = negative_log_likelihood(labels, p)
        table = result[f"reliability_{stage}"] = reliability(labels, p, bins)
        result[f"ece_{stage}"] = _ece_of(table)
    return result


def scale(probabilities, temperature):
    """Calibrated probabilities in a graph (Keras ops): softmax(log(p) / T).

    Args:
        probabilities: A `(n, classes)` float32 tensor.
        temperature: `T`, a Python number.

    Returns:
        A float32 tensor of the same shape, computed as `scaled` computes it.
    """
    logits = keras.ops.log(keras.ops.maximum(probabilities, FLOOR))
    return keras.ops.softmax(logits / temperature, axis=-1)


class TemperatureScaling(keras.layers.Layer):
    """`scale` as a layer: probabilities in, calibrated probabilities out.

    Args:
        temperature: `T > 0`.
    """

    def __init__(self, temperature, **kwargs):
        kwargs.setdefault("dtype", "float32")  # a softmax's output, under any policy
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, probabilities):
        return scale(keras.ops.cast(probabilities, "float32"), self.temperature)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
