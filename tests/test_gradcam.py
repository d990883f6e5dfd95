"""Grad-CAM: the heatmaps' math on planted features, the layer rule, and
`dltool predict --explain` on the trained image project (the report's
"What the model looked at" figures are checked in test_reports.py)."""

import json
import shutil

import numpy as np
import pytest

from conftest import invoke

SAMPLES = ("cat.jpg", "ship.jpg")


def _planted_model():
    """Class 0's score is the mean red of the image, class 1's the mean green:
    a 1x1 convolution copies the two channels, global pooling averages them."""
    import keras
    from keras import layers

    inputs = keras.Input((16, 16, 3), name="image")
    features = layers.Conv2D(2, 1, activation="relu", name="features")(inputs)
    pooled = layers.GlobalAveragePooling2D()(features)
    logits = layers.Dense(2, name="logits")(pooled)
    model = keras.Model(inputs, layers.Activation("softmax")(logits))
    model.get_layer("features").set_weights(
        [np.eye(3, 2, dtype=np.float32).reshape(1, 1, 3, 2), np.zeros(2, np.float32)])
    model.get_layer("logits").set_weights([np.eye(2, dtype=np.float32) * 10,
                                           np.zeros(2, np.float32)])
    return model


def test_heatmap_is_where_the_class_feature_is():
    from dltool.tasks import gradcam

    image = np.zeros((1, 16, 16, 3), np.float32)
    image[0, :8, :8, 0] = 1.0  # red top-left: class 0
    image[0, 12:, 12:, 1] = 1.0  # less green bottom-right: class 1
    explain = gradcam.GradCam(_planted_model())
    assert explain.layer_name == "features" and explain.map_size == (16, 16)

    heatmaps, classes = explain(image)
    assert classes.tolist() == [0]  # the predicted class by default
    heatmap = heatmaps[0]
    assert heatmap.shape == (16, 16) and heatmap.min() >= 0.0 and heatmap.max() == 1.0
    assert heatmap[:8, :8].sum() == pytest.approx(heatmap.sum())  # all in the red quadrant

    heatmaps, classes = explain(image, classes=[1])
    assert classes.tolist() == [1]
    assert heatmaps[0].max() == 1.0
    assert heatmaps[0][12:, 12:].sum() == pytest.approx(heatmaps[0].sum())
    assert not np.any(gradcam.GradCam(_planted_model())(np.zeros_like(image))[0])  # nothing


def test_the_feature_map_rule():
    import keras
    from keras import layers

    from dltool.core.errors import ConfigError
    from dltool.tasks import gradcam

    # The template's blocks: the last block's ReLU, before its pooling.
    inputs = keras.Input((16, 16, 3))
    x = layers.Rescaling(1 / 255)(inputs)
    for width in (4, 8):
        x = layers.Conv2D(width, 3, padding="same")(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU(name=f"relu_{width}")(x)
        x = layers.MaxPooling2D()(x)
    x = layers.Dense(3)(layers.GlobalAveragePooling2D()(x))
    template_like = keras.Model(inputs, layers.Activation("softmax")(x))
    explain = gradcam.GradCam(template_like)
    assert (explain.layer_name, explain.map_size) == ("relu_8", (8, 8))
    # The score is the softmax's input: a softmax near 1 has no gradient.
    assert gradcam.class_scores(template_like).shape == (None, 3)
    assert gradcam.class_scores(template_like) is not template_like.outputs[0]
    # Multi-label: the sigmoid's input, likewise.
    sigmoid_head = keras.Model(inputs, layers.Activation("sigmoid")(x))
    assert gradcam.class_scores(sigmoid_head) is gradcam.class_scores(template_like)

    # A nested model counts as one layer: its 4-D output is the feature map.
    backbone = keras.Sequential([keras.Input((16, 16, 3)), layers.Conv2D(4, 3, strides=2)],
                                name="backbone")
    outer = keras.Input((16, 16, 3))
    y = layers.Dense(2, activation="softmax")(layers.GlobalAveragePooling2D()(backbone(outer)))
    assert gradcam.GradCam(keras.Model(outer, y)).layer_name == "backbone"

    dense_only = keras.Sequential([keras.Input((16, 16, 3)), layers.Rescaling(1.0),
                                   layers.Flatten(), layers.Dense(2, activation="softmax")])
    with pytest.raises(ConfigError, match="no 4-D .* output of a convolutional layer"):
        gradcam.GradCam(dense_only)


def test_a_keras_hub_backbone_is_explained_on_its_output():
    keras_hub = pytest.importorskip("keras_hub")
    from dltool.tasks import gradcam

    # The smallest ResNet KerasHub builds (no preset, nothing downloaded).
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64, 8],
        stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block",
        use_pre_activation=False, image_shape=(32, 32, 3))
    classifier = keras_hub.models.ImageClassifier(backbone=backbone, num_classes=3,
                                                  activation="softmax")
    explain = gradcam.GradCam(classifier)
    assert explain.layer_name == backbone.name and explain.map_size == (4, 4)
    heatmaps, classes = explain(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)))
    assert heatmaps.shape == (2, 4, 4) and heatmaps.max() <= 1.0 and classes.shape == (2,)


def test_overlay_blends_the_heatmap_at_the_image_size():
    from dltool.tasks import gradcam

    image = np.full((20, 30, 3), 128, np.uint8)
    heatmap = np.zeros((2, 3), np.float32)
    heatmap[0, 0] = 1.0
    drawn = gradcam.overlay(image, heatmap)
    assert drawn.shape == (20, 30, 3) and drawn.dtype == np.uint8
    assert drawn[0, 0, 0] > drawn[0, 0, 2]  # red where the heatmap is 1
    assert drawn[-1, -1, 2] > drawn[-1, -1, 0]  # blue where it is 0
    assert gradcam.overlay(image, heatmap, min_side=256).shape == (20 * 9, 30 * 9, 3)


# `dltool predict --explain` --------------------------------------------------


def _samples(trained_project, folder):
    folder.mkdir()
    for name in SAMPLES:
        shutil.copy(trained_project / "samples" / name, folder / name)
    return [folder / name for name in SAMPLES]


@pytest.mark.slow
def test_predict_explain_writes_a_picture_beside_each_image(runner, trained_project, tmp_path):
    from PIL import Image

    inputs = _samples(trained_project, tmp_path / "in")
    plain = invoke(runner, "predict", "--project", trained_project, *inputs)
    result = invoke(runner, "predict", "--project", trained_project, "--explain", *inputs)
    assert result.exit_code == 0, result.output
    assert result.stdout == plain.stdout  # the predictions are the same
    pictures = [path.with_name(path.stem + ".gradcam.png") for path in inputs]
    assert f"Wrote 2 Grad-CAM picture(s) beside the inputs: {pictures[0]}, ..." in result.stderr
    for path, picture in zip(inputs, pictures):
        with Image.open(picture) as drawn, Image.open(path) as original:
            assert drawn.format == "PNG" and drawn.mode == "RGB"
            assert drawn.size == (256, 256) and original.size == (32, 32)  # 8 times larger
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == \
        sorted([*SAMPLES, *(p.name for p in pictures)])
    # A folder's pictures are not inputs: predicting the folder again sees 2 images.
    again = invoke(runner, "predict", "--project", trained_project, "--json", tmp_path / "in")
    assert len(json.loads(again.stdout)) == 2


def test_predict_explain_with_a_keras_file_loads_it_once(runner, trained_project, tmp_path,
                                                        monkeypatch):
    from dltool.engine import modelfiles

    (keras_file,) = trained_project.glob("saved_models/*/*/model.keras")
    inputs = _samples(trained_project, tmp_path / "in")
    loaded = []
    real = modelfiles.load_keras_file
    monkeypatch.setattr(modelfiles, "load_keras_file",
                        lambda path, *a, **k: loaded.append(path) or real(path, *a, **k))
    result = invoke(runner, "predict", "--model", keras_file, "--explain", *inputs)
    assert result.exit_code == 0, result.output
    assert len(result.stdout.splitlines()) == 3  # "Model: ...", then one line per image
    assert "Wrote 2 Grad-CAM picture(s)" in result.stderr
    assert loaded == [keras_file]


@pytest.mark.slow
def test_predict_explain_refuses_in_one_line_and_writes_nothing(runner, trained_project,
                                                               tmp_path):
    inputs = _samples(trained_project, tmp_path / "in")
    out = tmp_path / "out"

    def refused(*args):
        result = invoke(runner, "predict", "--project", trained_project, *args)
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        return result.output.strip()

    broken = tmp_path / "in" / "broken.jpg"
    broken.write_bytes(b"not an image")
    assert refused("--explain-dir", out, *inputs, broken).startswith(f"Error: {broken}: ")
    assert not out.exists() and not list((tmp_path / "in").glob("*.gradcam.png"))

    shutil.copy(inputs[0], tmp_path / "in" / "cat.png")
    assert refused("--explain", inputs[0], tmp_path / "in" / "cat.png") == (
        f"Error: {inputs[0]} and {tmp_path / 'in' / 'cat.png'} would both be explained in "
        f"{tmp_path / 'in' / 'cat.gradcam.png'}; explain them in separate commands or "
        "rename one")
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    assert refused("--explain-dir", a_file / "sub", *inputs).startswith(
        f"Error: cannot write {a_file / 'sub'}: ")
    assert not list(tmp_path.rglob("*.gradcam.png"))


def test_predict_explain_refuses_other_templates(runner, tmp_path):
    export = tmp_path / "export"  # a sentiment export, as far as --explain reads it
    export.mkdir()
    (export / "saved_model.pb").write_bytes(b"")
    (export / "dltool.json").write_text(json.dumps({"template": "sentiment", "meta": {}}))
    result = invoke(runner, "predict", "--model", export, "--trusted", "--explain", "good film")
    assert result.exit_code == 1
    assert result.output == ("Error: --explain applies to the image classifier, not to a "
                             "sentiment model\n")
