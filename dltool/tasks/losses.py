"""Losses of the templates' models that Keras does not have, registered with
Keras so that a model compiled with one clones (the LiteRT and ONNX exports'
`inference_model`) and its `model.keras` loads wherever dltool is imported.
"""

from dltool._tf import keras


@keras.saving.register_keras_serializable(package="dltool")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """The cross-entropy of integer labels against probabilities, the labels
    smoothed: each target is 1 - smoothing on the example's class plus
    smoothing spread evenly over every class (Keras' sparse cross-entropy
    takes no `label_smoothing`).

    Args:
        smoothing: From 0 (the labels as they are) to 1.
    """

    def __init__(self, smoothing, name="smoothed_sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        self.smoothing = float(smoothing)

    def call(self, y_true, y_pred):
        classes = keras.ops.shape(y_pred)[-1]
        labels = keras.ops.cast(keras.ops.reshape(y_true, [-1]), "int32")
        return keras.losses.categorical_crossentropy(
            keras.ops.one_hot(labels, classes), y_pred, label_smoothing=self.smoothing)

    def get_config(self):
        return {**super().get_config(), "smoothing": self.smoothing}
