"""The image classifier's model: yours to edit.

`build_model(hp, config, num_classes, multi_label=False)` returns a compiled
Keras model.
keras-tuner calls it directly (`dltool tune`); `dltool train` calls it with a
fresh `keras_tuner.HyperParameters()`, so every `hp.*` call returns its
default, read from the `[model]` section of config.toml. Read each
hyperparameter through `hp` under the same name as its config key. The
config's "auto" values (`data.image_size`, `model.batchnorm_momentum`) are
decided from the data before `build_model` is called, so `config` holds
numbers here.

Images arrive as float32 pixels in [0, 255], shape (height, width, 3); the
model rescales them itself, so the exported SavedModel takes raw image bytes.

With `model.test_time_flip`, the model also looks at each image's horizontal
mirror at inference and averages the two (their logits), inside the model:
the validation, `dltool evaluate`, the calibration and every export see the
same predictions; training sees each image once, as the augmentation gives it.

With `model.backbone` naming a KerasHub preset instead of "scratch", the CNN
is replaced by the preset's pretrained backbone, after the preset's own
preprocessing (its ImageConverter's scale and mean/std, inside the model),
under a new classification head. dltool then trains in two phases (the head,
then every layer: `training.freeze_backbone_epochs`).

With `data.multi_label = true` an image may have several labels: the targets
are 0/1 vectors, one entry per label, and the model ends in a sigmoid per
label trained with binary cross-entropy instead of a softmax over the classes.
"""

import keras
import keras_hub
from keras import layers

from dltool.tasks.backbones import SCRATCH, preset_handle
from dltool.tasks.losses import SmoothedSparseCrossentropy
from dltool.tasks.mirror import MeanOfMirrors, MirrorBatch


def build_model(hp, config, num_classes, multi_label=False):
    """Builds and compiles a batch-normalized CNN.

    Args:
        hp: A `keras_tuner.HyperParameters`.
        config: The project's config (`config["data"]`, `config.model`, ...).
        num_classes: Number of classes (labels) in the data.
        multi_label: Whether an image may have several labels
            (`data.multi_label`).

    Returns:
        A compiled `keras.Model` mapping images to class probabilities (with
        `multi_label`, one independent probability per label).
    """
    defaults = config.model
    filters = hp.Int("filters", 16, 128, step=8, default=defaults["filters"])
    blocks = hp.Int("blocks", 1, 4, default=defaults["blocks"])
    dropout = hp.Float("dropout", 0.0, 0.6, default=defaults["dropout"])
    augment = hp.Boolean("augment", default=defaults["augment"])
    test_time_flip = hp.Boolean("test_time_flip", default=defaults["test_time_flip"])
    optimizer = hp.Choice("optimizer", ["adamw", "sgd"], default=defaults["optimizer"])
    learning_rate = hp.Float("learning_rate", 1e-4, 1e-1, sampling="log",
                             default=defaults["learning_rate"])
    weight_decay = hp.Float("weight_decay", 0.0, 0.2, default=defaults["weight_decay"])
    label_smoothing = hp.Float("label_smoothing", 0.0, 0.5,
                               default=defaults["label_smoothing"])
    batchnorm_momentum = hp.Float("batchnorm_momentum", 0.0, 0.999,
                                  default=defaults["batchnorm_momentum"])
    # "scratch" or a KerasHub preset (a name, or a local folder's path).
    backbone = hp.Choice("backbone", sorted({SCRATCH, defaults["backbone"]}),
                         default=defaults["backbone"])

    height, width = config["data"]["image_size"]
    inputs = keras.Input(shape=(height, width, 3), name="image")
    x = inputs
    if augment:
        # Active only while training; the exported model skips them.
        x = layers.RandomFlip("horizontal")(x)
        x = layers.RandomTranslation(0.1, 0.1, fill_mode="reflect")(x)
    if test_time_flip:
        # At inference only: each image and its horizontal mirror, whose
        # logits are averaged below (dltool/tasks/mirror.py).
        x = MirrorBatch(name="mirror_batch")(x)
    if backbone == SCRATCH:
        x = cnn_features(x, filters, blocks, batchnorm_momentum)
    else:
        x = pretrained_features(x, preset_handle(config, backbone))
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(dropout)(x)
    x = layers.Dense(num_classes)(x)
    if test_time_flip:
        x = MeanOfMirrors(name="mean_of_mirrors")(x)
    # float32 output even under a mixed precision policy.
    activation = "sigmoid" if multi_label else "softmax"
    outputs = layers.Activation(activation, dtype="float32", name="probabilities")(x)
    model = keras.Model(inputs, outputs, name="image_classifier")

    if optimizer == "sgd":
        optimizer = keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True,
                                         weight_decay=weight_decay)
    else:
        optimizer = keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay)
    if multi_label:
        # "accuracy" would compare argmaxes; the precision-recall AUC per label
        # (averaged) is what the evaluation's mean average precision measures.
        loss = keras.losses.BinaryCrossentropy(label_smoothing=label_smoothing) \
            if label_smoothing else "binary_crossentropy"
        metrics = [keras.metrics.BinaryAccuracy(name="binary_accuracy"),
                   keras.metrics.AUC(curve="PR", multi_label=True, name="pr_auc")]
    else:
        loss = SmoothedSparseCrossentropy(label_smoothing) if label_smoothing else \
            "sparse_categorical_crossentropy"
        metrics = ["accuracy"]
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics)
    return model


def cnn_features(x, filters, blocks, batchnorm_momentum):
    """The CNN trained from scratch: `blocks` convolution blocks, each halving
    the resolution and doubling the filters."""
    x = layers.Rescaling(1.0 / 255)(x)
    for block in range(blocks):
        width = filters * 2**block
        # One BatchNormalization per block, after its second convolution: on
        # a CPU each BatchNormalization costs about as much as a convolution,
        # and one per block trains nearly twice as fast as one per convolution.
        x = layers.Conv2D(width, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
        x = layers.BatchNormalization(momentum=batchnorm_momentum)(x)
        x = layers.ReLU()(x)
        x = layers.MaxPooling2D()(x)
    return x


def pretrained_features(x, preset):
    """A KerasHub preset's backbone, with its pretrained weights.

    The preset's ImageConverter scales the pixels as the backbone was trained
    to see them (e.g. ImageNet's mean and standard deviation). It is loaded
    with `image_size=None`: dltool has already resized the image to
    `data.image_size`, in training and in the exported model alike.
    """
    converter = keras_hub.layers.ImageConverter.from_preset(preset, image_size=None)
    backbone = keras_hub.models.Backbone.from_preset(preset)
    return backbone(converter(x))
