"""Grad-CAM: which parts of an image a classifier's prediction rests on.

Grad-CAM (Selvaraju et al., 2017) weighs each channel of a convolutional
feature map by the mean gradient of a class score over it, sums the
weighted channels, keeps the positive part and scales it to [0, 1]: a
coarse heatmap, one value per cell of the feature map, of the places that
raise that class's score. The image classifier draws it over its report's
sample predictions and most confident mistakes, and `dltool predict
--explain` over its inputs.

The feature map (`feature_tensor`) is the output nearest the model's output
that is 4-D, `(batch, height, width, channels)`, and made by a layer other
than a pooling layer, after at least one convolution: in the template's
CNN the last block's ReLU (before its `MaxPooling2D` and the global
pooling); for a model built on a KerasHub image backbone (its own nested
model, whose output is its last stage's feature map) the backbone's
output. A nested model counts as one layer: one that pools inside itself
hides its feature map, and the model is refused.

The class score is the input of the model's final softmax (`Activation`
softmax or a `Softmax` layer, as the template ends; for multi-label data
its final `Activation` sigmoid), the logit: a probability near 1 has
gradients near 0. A model whose last layer applies its softmax itself
(`Dense(activation="softmax")`) is explained on the probability.

The heatmaps need the trained Keras model and the pixels it takes; this
module is the image classifier's helper (not a task) and imports no dltool
engine module.
"""

import collections

import numpy as np

from dltool._tf import keras, tf
from dltool.core.errors import ConfigError

# How much of the overlay is the heatmap's colour (the rest is the image),
# and matplotlib's colormap for it (blue: no contribution, red: most).
OVERLAY_ALPHA = 0.45
COLORMAP = "jet"
# `dltool predict --explain` enlarges an image whose longer side is shorter
# than this, so that its picture can be seen (a 32x32 image 8 times).
PICTURE_MIN_SIDE = 256

_POOLING = (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)


class GradCam:
    """Computes Grad-CAM heatmaps of an image classifier.

    Args:
        model: A Keras model with one input, images `(n, h, w, 3)`, and one
            output, class probabilities `(n, classes)`.

    Attributes:
        layer_name: The name of the layer whose output is the feature map.
        map_size: The feature map's `(height, width)`.

    Raises:
        ConfigError: the model has no feature map to explain (see the module
            docstring), no graph (a subclassed model), or more than one input
            or output.
    """

    def __init__(self, model):
        # A subclassed model has no graph to take the feature map from.
        if len(getattr(model, "inputs", None) or ()) != 1 or \
                len(getattr(model, "outputs", None) or ()) != 1:
            raise ConfigError(f"cannot compute Grad-CAM heatmaps of model {model.name!r}: "
                              "it needs a Functional or Sequential model with one input and "
                              "one output")
        features, self.layer_name = feature_tensor(model)
        self.map_size = tuple(int(d) for d in features.shape[1:3])
        self._model = keras.Model(model.inputs, [features, class_scores(model)])

    def __call__(self, pixels, classes=None):
        """Returns the heatmaps of a batch of images.

        Args:
            pixels: Float images `(n, h, w, 3)` as the model takes them.
            classes: The class to explain of each image, integers `(n,)`;
                None for the class the model predicts.

        Returns:
            A tuple `(heatmaps, classes)`: float32 `(n, map height, map
            width)` in [0, 1] (all 0 where nothing raises the score), and
            the classes explained, int64 `(n,)`.
        """
        pixels = tf.convert_to_tensor(pixels, tf.float32)
        with tf.GradientTape() as tape:
            features, scores = self._model(pixels, training=False)
            features = tf.cast(features, tf.float32)
            scores = tf.cast(scores, tf.float32)
            if classes is None:
                classes = tf.argmax(scores, axis=-1)
            classes = tf.cast(classes, tf.int64)
            chosen = tf.gather(scores, classes, batch_dims=1)
        # The examples of a batch are independent (training=False): the
        # gradient of the sum is each example's own gradient.
        gradients = tape.gradient(chosen, features)
        # A model that also looks at each image's mirror (dltool.tasks.mirror)
        # has a feature map of 2n rows: the first n are the images as given.
        count = tf.shape(pixels)[0]
        features, gradients = features[:count], gradients[:count]
        weights = tf.reduce_mean(gradients, axis=(1, 2), keepdims=True)
        heatmaps = tf.nn.relu(tf.reduce_sum(features * weights, axis=-1))
        peak = tf.reduce_max(heatmaps, axis=(1, 2), keepdims=True)
        heatmaps = tf.math.divide_no_nan(heatmaps, peak)
        return heatmaps.numpy(), classes.numpy()


def feature_tensor(model):
    """Finds the feature map Grad-CAM weighs (the rule: the module docstring).

    The model's graph is walked back from its output, nearest layers first;
    the first 4-D output of a layer that is not a pooling layer is taken if
    a convolution comes at or before it.

    Args:
        model: A Functional or Sequential Keras model.

    Returns:
        A tuple `(tensor, layer name)`: the symbolic feature map in the
        model's graph and the name of the layer that makes it.

    Raises:
        ConfigError: no such output.
    """
    for tensor, layer in _walk_back(model.outputs[0]):
        if len(tensor.shape) == 4 and not isinstance(layer, (*_POOLING, keras.layers.InputLayer)):
            if any(_holds_convolution(before) for _, before in _walk_back(tensor)):
                return tensor, layer.name
            break
    raise ConfigError(
        f"cannot compute Grad-CAM heatmaps of model {model.name!r}: no 4-D (batch, height, "
        "width, channels) output of a convolutional layer or block before its output "
        "(a nested model that pools inside itself hides its feature map)")


def class_scores(model):
    """The tensor whose class entries Grad-CAM differentiates: the input of
    the model's final softmax (or sigmoid), or the model's output when it
    ends otherwise."""
    output = model.outputs[0]
    layer, node = _producer(output)
    squashing = isinstance(layer, keras.layers.Softmax) or (
        isinstance(layer, keras.layers.Activation)
        and layer.activation in (keras.activations.softmax, keras.activations.sigmoid))
    if squashing and node is not None and len(node.input_tensors) == 1:
        return node.input_tensors[0]
    return output


def _producer(tensor):
    """The layer that made a symbolic tensor and the node of that call."""
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        return None, None
    layer, node_index = history[0], history[1]
    nodes = getattr(layer, "_inbound_nodes", [])
    return layer, nodes[node_index] if node_index < len(nodes) else None


def _walk_back(output):
    """Yields `(tensor, layer)` of the graph behind `output`, breadth first."""
    queue, seen = collections.deque([output]), set()
    while queue:
        tensor = queue.popleft()
        if id(tensor) in seen:
            continue
        seen.add(id(tensor))
        layer, node = _producer(tensor)
        if layer is None:
            continue
        yield tensor, layer
        if node is not None:
            queue.extend(node.input_tensors)


def _holds_convolution(layer):
    """Whether a layer is a convolution (`Conv2D`, `DepthwiseConv2D`,
    `SeparableConv2D`, ...), or a nested model with one."""
    if isinstance(layer, keras.Model):
        return any(_holds_convolution(inner) for inner in layer.layers)
    return "Conv" in type(layer).__name__


def overlay(image, heatmap, alpha=OVERLAY_ALPHA, min_side=0):
    """Draws a heatmap over an image.

    Args:
        image: uint8 RGB `(height, width, 3)`.
        heatmap: Float `(h, w)` in [0, 1], any size: resized (bilinear) to
            the image's.
        alpha: How much of each pixel is the heatmap's colour.
        min_side: An image whose longer side is shorter is first enlarged
            by the smallest whole factor that reaches it (each pixel
            repeated), so that a small image's picture can be seen.

    Returns:
        uint8 RGB `(height * f, width * f, 3)`, `f` that factor (1 by
        default): the image blended with the heatmap in `COLORMAP` (blue 0,
        red 1).
    """
    import matplotlib
    from PIL import Image

    factor = max(1, -(-min_side // max(image.shape[:2])))
    if factor > 1:
        image = np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)
    height, width = image.shape[:2]
    resized = Image.fromarray(np.asarray(heatmap, np.float32)).resize(
        (width, height), Image.Resampling.BILINEAR)
    colors = matplotlib.colormaps[COLORMAP](np.clip(np.asarray(resized), 0.0, 1.0))[..., :3]
    blended = (1.0 - alpha) * np.asarray(image, np.float32) + alpha * 255.0 * colors
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)
