"""Test-time mirroring: an image classifier that also looks at each image's
horizontal mirror, and averages the two, at inference only.

Two layers, placed in the model itself (the image template's `model.py`,
`model.test_time_flip`), so every use of the trained model sees the same
predictions: the validation of each epoch, the calibration, `dltool
evaluate`, the SavedModel (image bytes in) and the LiteRT and ONNX
conversions.

- `MirrorBatch`, after the input: at inference the batch of `n` images
  becomes `2n`, the images then their mirrors (left and right swapped);
  while training it passes the batch unchanged (the random flips of the
  augmentation do the mirroring there).
- `MeanOfMirrors`, on the logits (before the softmax): at inference the
  mean of each image's and its mirror's rows, `n` rows again; while
  training unchanged.

Averaging the logits (rather than the probabilities) keeps the softmax the
model's last layer, so Grad-CAM differentiates the logit as before; the
model's feature map then has `2n` rows, the first `n` the images as given
(`dltool.tasks.gradcam`). Training costs nothing more; inference costs
twice the convolutions.

Both layers are registered with Keras, so a `model.keras` holding them
loads in safe mode wherever dltool is imported.
"""

from dltool._tf import keras

ops = keras.ops


@keras.saving.register_keras_serializable(package="dltool")
class MirrorBatch(keras.layers.Layer):
    """At inference, appends the horizontal mirror of each image to the batch.

    Input and output: `(n, height, width, channels)` images; at inference
    the output has `2n` of them, the `n` given then their mirrors.
    """

    def call(self, images, training=False):
        if training:
            return images
        return ops.concatenate([images, ops.flip(images, axis=2)], axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])


@keras.saving.register_keras_serializable(package="dltool")
class MeanOfMirrors(keras.layers.Layer):
    """At inference, averages the rows of the images and of their mirrors
    (`MirrorBatch`'s `2n` rows: the first half and the second).

    Input: `(2n, ...)` at inference, `(n, ...)` while training; output
    `(n, ...)`.
    """

    def call(self, values, training=False):
        if training:
            return values
        return ops.mean(ops.reshape(values, (2, -1, *values.shape[1:])), axis=0)

    def compute_output_shape(self, input_shape):
        return (None, *input_shape[1:])
