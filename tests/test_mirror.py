"""Test-time mirroring (`model.test_time_flip`, `dltool.tasks.mirror`) and
label smoothing (`model.label_smoothing`) of the image classifier: the
mirrored model gives an image and its mirror the same prediction, the
average of the two, only at inference; it survives `model.keras`, the
LiteRT and ONNX converters and Grad-CAM; the smoothed loss is the formula.
"""

import numpy as np
import pytest

from conftest import TINY_MODEL, invoke


def _models(size=16, classes=3):
    """A small CNN without and with the mirroring layers, sharing its layers:
    `(plain, mirrored)`; the plain one returns logits."""
    import keras
    from keras import layers

    from dltool.tasks.mirror import MeanOfMirrors, MirrorBatch

    keras.utils.set_random_seed(1)
    conv = layers.Conv2D(4, 3, padding="same", activation="relu", name="features")
    norm = layers.BatchNormalization(name="norm")
    dense = layers.Dense(classes, name="logits")

    def body(x):
        return dense(layers.GlobalAveragePooling2D()(norm(conv(x))))

    inputs = keras.Input((size, size, 3), name="image")
    plain = keras.Model(inputs, body(inputs))
    mirrored = keras.Model(inputs, layers.Activation("softmax", name="probabilities")(
        MeanOfMirrors()(body(MirrorBatch()(inputs)))))
    return plain, mirrored


def _images(count=5, size=16):
    return np.random.default_rng(0).uniform(0, 1, (count, size, size, 3)).astype(np.float32)


def _softmax(logits):
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


def test_an_image_and_its_mirror_get_the_mean_of_their_logits():
    plain, mirrored = _models()
    images = _images()
    mirrors = images[:, :, ::-1]
    got = np.asarray(mirrored(images, training=False))
    expected = _softmax((np.asarray(plain(images)) + np.asarray(plain(mirrors))) / 2)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(np.asarray(mirrored(mirrors, training=False)), got, atol=1e-6)
    # Not the same without mirroring: the model is not symmetric by itself.
    assert np.max(np.abs(np.asarray(plain(images)) - np.asarray(plain(mirrors)))) > 1e-3
    # Training sees the batch as given: n rows, the images alone.
    trained = np.asarray(mirrored(images, training=True))
    np.testing.assert_allclose(trained, _softmax(np.asarray(plain(images, training=True))),
                               atol=1e-6)


def test_the_mirrored_model_survives_the_keras_file_and_the_converters(tmp_path):
    from dltool.engine import formats, modelfiles

    _, mirrored = _models()
    images = _images()
    expected = np.asarray(mirrored(images, training=False))
    mirrored.save(tmp_path / "model.keras")
    loaded = modelfiles.load_keras_file(tmp_path / "model.keras")  # safe mode, checked
    np.testing.assert_allclose(np.asarray(loaded(images, training=False)), expected, atol=1e-6)

    from dltool._tf import tf

    formats.write_litert(mirrored, tmp_path / "model.tflite")
    interpreter = tf.lite.Interpreter(model_path=str(tmp_path / "model.tflite"))
    (given,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(given["index"], images.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], images)
    interpreter.invoke()
    np.testing.assert_allclose(interpreter.get_tensor(output["index"]), expected, atol=1e-5)

    pytest.importorskip("tf2onnx")
    import onnxruntime

    formats.write_onnx(mirrored, tmp_path / "model.onnx")
    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"),
                                           providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: images})[0]
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_grad_cam_explains_the_image_as_given():
    """The red quadrant is top-left in the image, top-right in its mirror:
    the heatmap is of the image as given, one per image."""
    import keras
    from keras import layers

    from dltool.tasks import gradcam
    from dltool.tasks.mirror import MeanOfMirrors, MirrorBatch

    inputs = keras.Input((16, 16, 3), name="image")
    features = layers.Conv2D(2, 1, activation="relu", name="features")(MirrorBatch()(inputs))
    logits = layers.Dense(2, name="logits")(layers.GlobalAveragePooling2D()(features))
    model = keras.Model(inputs, layers.Activation("softmax")(MeanOfMirrors()(logits)))
    model.get_layer("features").set_weights(
        [np.eye(3, 2, dtype=np.float32).reshape(1, 1, 3, 2), np.zeros(2, np.float32)])
    model.get_layer("logits").set_weights([np.eye(2, dtype=np.float32) * 10,
                                           np.zeros(2, np.float32)])
    image = np.zeros((2, 16, 16, 3), np.float32)
    image[:, :8, :8, 0] = 1.0  # red top-left: class 0
    heatmaps, classes = gradcam.GradCam(model)(image)
    assert heatmaps.shape == (2, 16, 16) and classes.tolist() == [0, 0]
    assert heatmaps[0][:8, :8].sum() == pytest.approx(heatmaps[0].sum())


def test_smoothed_crossentropy_is_the_formula(tmp_path):
    import keras

    from dltool.engine import modelfiles
    from dltool.tasks.losses import SmoothedSparseCrossentropy

    probabilities = np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]], np.float32)
    labels = np.array([0, 1])
    loss = SmoothedSparseCrossentropy(0.3, reduction=None)
    # Targets: 1 - 0.3 + 0.3 / 3 on the label, 0.3 / 3 elsewhere.
    targets = np.full((2, 3), 0.1, np.float32)
    targets[[0, 1], labels] = 0.8
    expected = -(targets * np.log(probabilities)).sum(-1)
    np.testing.assert_allclose(np.asarray(loss(labels, probabilities)), expected, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(loss(labels[:, None], probabilities)), expected,
                               rtol=1e-5)  # labels as a column (n, 1) too
    # A model compiled with it clones (the LiteRT / ONNX exports) and loads.
    _, mirrored = _models()
    mirrored.compile(loss=SmoothedSparseCrossentropy(0.1))
    keras.models.clone_model(mirrored)
    mirrored.save(tmp_path / "model.keras")
    modelfiles.load_keras_file(tmp_path / "model.keras")


@pytest.mark.slow
def test_a_mirrored_smoothed_project_trains_evaluates_and_exports(project, runner):
    """One epoch of the tiny model with both options on: the evaluation,
    the SavedModel (image bytes in) and predict --explain run, and the
    exported model gives an image and its mirror the same probabilities."""
    import json

    from PIL import Image

    from dltool._tf import tf

    options = (*TINY_MODEL, "--set", "model.test_time_flip=true",
               "--set", "model.label_smoothing=0.1")
    result = invoke(runner, "train", "--project", project, "--epochs", 1, *options)
    assert result.exit_code == 0, result.output
    for args in (("evaluate", "--project", project, "--json"),
                 ("export", "--project", project)):
        result = invoke(runner, *args)
        assert result.exit_code == 0, result.output
    (run,) = (project / "runs").iterdir()
    assert "test_time_flip = true" in (run / "config.toml").read_text()
    assert json.loads((run / "run.json").read_text())["status"] == "finished"
    sample = project / "samples" / "cat.jpg"
    mirror = project / "cat-mirror.png"
    Image.open(sample).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(mirror)
    Image.open(sample).save(project / "cat.png")  # the same pixels, losslessly
    serve = tf.saved_model.load(str(project / "saved_models" / "proj" / "1")) \
        .signatures["serving_default"]
    out = serve(images=tf.constant([(project / "cat.png").read_bytes(), mirror.read_bytes()]))
    probabilities = out["probabilities"].numpy()
    np.testing.assert_allclose(probabilities[0], probabilities[1], atol=1e-5)
    result = invoke(runner, "predict", "--project", project, "--explain", sample)
    assert result.exit_code == 0, result.output
