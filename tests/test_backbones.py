"""Pretrained KerasHub backbones (`model.backbone`) and their two training phases.

No preset can be downloaded here, so the presets are small backbones of the
real KerasHub classes with random weights, saved with `save_to_preset` into
a temporary folder: KerasHub loads a local folder through the same code as a
named preset.
"""

import csv
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import IMAGE_SIZE, invoke, kill_after_epochs
from dltool._tf import keras, tf
from dltool.core import runs
from dltool.core.errors import ConfigError
from dltool.data import images
from dltool.engine import callbacks as dl_callbacks
from dltool.engine.experiment import Experiment
from dltool.tasks import backbones, calibration, phases

import keras_hub

pytestmark = pytest.mark.slow

AUTO_SIZE = f"[{IMAGE_SIZE}, {IMAGE_SIZE}]"  # what "auto" chooses, given where no data is opened
FAST = ("--set", "training.verbose=0", "--set", "training.freeze_backbone_epochs=1")


def _set_backbone(project, value, image_size=None):
    path = project / "config.toml"
    text = path.read_text().replace('backbone = "scratch"', f"backbone = {json.dumps(value)}")
    if image_size is not None:
        text = re.sub(r"(?m)^image_size = .*$", f"image_size = {json.dumps(image_size)}", text)
    path.write_text(text)


@pytest.fixture(scope="module")
def trained_image_project(tmp_path_factory, image_preset):
    """An image project on the tiny ResNet preset, trained 2 epochs (one per
    phase, constant rate) and exported."""
    from click.testing import CliRunner

    project = tmp_path_factory.mktemp("backbone") / "pets"
    runner = CliRunner()
    assert invoke(runner, "new", "image-classifier", project).exit_code == 0
    _set_backbone(project, str(image_preset), image_size="auto")
    result = invoke(runner, "train", "--project", project, "--epochs", 2, *FAST,
                    "--set", 'training.lr_schedule="constant"')
    assert result.exit_code == 0, result.output
    result = invoke(runner, "export", "--project", project)
    assert result.exit_code == 0, result.output
    return project


def test_image_run_records_backbone_and_phases(trained_image_project):
    run = runs.find_trained(trained_image_project)
    assert run["backbone"].endswith("tiny_resnet")
    assert run["meta"]["image_size"] == [IMAGE_SIZE, IMAGE_SIZE]  # "auto": the preset's
    assert run["auto"]["data.image_size"] == {
        "value": [IMAGE_SIZE, IMAGE_SIZE],
        "reason": "the size the ImageConverter of preset "
                  f"{run['backbone']!r} resizes to"}
    head = 16 * 10 + 10  # the ResNet's 16 features to the 10 classes
    assert run["phases"] == [
        {"phase": 1, "epochs": [1, 1], "trains": "the head (backbone frozen)",
         "learning_rate_factor": 1.0, "trainable_parameters": head},
        {"phase": 2, "epochs": [2, 2],
         "trains": "every layer (the backbone's BatchNormalization frozen)",
         "learning_rate_factor": 0.01, "trainable_parameters": 88_000 + head}]
    report = (run.dir / run.REPORT_MD).read_text()
    assert "phase 2 (epochs 2-2)" in report and f"{88_000 + head:,} trainable" in report


def test_image_saved_model_matches_in_memory_model(runner, trained_image_project,
                                                   monkeypatch):
    run = runs.find_trained(trained_image_project)
    model = Experiment.for_run(trained_image_project, run).load_trained_model(run)
    jpegs = [p.read_bytes() for p in sorted((trained_image_project / "samples").glob("*.jpg"))]
    pixels = tf.stack([images.decode_image(b, (IMAGE_SIZE, IMAGE_SIZE)) for b in jpegs])
    expected = calibration.scaled(np.asarray(model(pixels, training=False)),
                                  run["meta"]["temperature"])
    version = trained_image_project / "saved_models" / "pets" / "1"
    outputs = tf.saved_model.load(str(version)).signatures["serving_default"](
        images=tf.constant(jpegs))
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-4)
    names = run["meta"]["class_names"]
    labels = [c.decode() for c in outputs["label"].numpy()]
    assert labels == [names[i] for i in expected.argmax(-1)]

    monkeypatch.chdir(trained_image_project)
    result = invoke(runner, "predict", "samples/cat.jpg")
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith(f"samples/cat.jpg: {labels[0]} ")


@pytest.mark.parametrize("export_format", ["litert", "onnx"])
def test_image_backbone_converts_and_agrees_in_its_runtime(runner, trained_image_project,
                                                           export_format):
    """The pretrained backbone's model in LiteRT and ONNX Runtime: the same
    probabilities as the in-memory model on the same pixels. The tiny model's
    temperature is large (its probabilities near uniform), so its logits,
    temperature times the log-probabilities up to a constant a row, are
    compared too."""
    from test_export_formats import _exported_path, _run

    result = invoke(runner, "export", "--project", trained_image_project, "--format",
                    export_format)
    assert result.exit_code == 0, result.output
    folder = _exported_path(result.stdout)
    run = runs.find_trained(trained_image_project)
    model = Experiment.for_run(trained_image_project, run).load_trained_model(run)
    jpegs = [p.read_bytes() for p in sorted((trained_image_project / "samples").glob("*.jpg"))]
    pixels = np.stack([images.decode_image(b, (IMAGE_SIZE, IMAGE_SIZE)) for b in jpegs])
    temperature = run["meta"]["temperature"]
    expected = calibration.scaled(np.asarray(model(pixels, training=False)), temperature)
    probabilities = _run(export_format, folder, pixels.astype(np.float32))
    assert np.array_equal(probabilities.argmax(-1), expected.argmax(-1))
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)

    def centered_logits(p):
        logits = temperature * np.log(p)
        return logits - logits.mean(-1, keepdims=True)

    np.testing.assert_allclose(centered_logits(probabilities), centered_logits(expected),
                               atol=1e-3)


def test_info_names_backbone_and_phases(runner, trained_image_project):
    result = invoke(runner, "info", "--project", trained_image_project)
    assert result.exit_code == 0, result.output
    assert "ResNetBackbone, 88,960 parameters" in result.output
    assert "phase 1, epochs 1-5: the head only (the backbone's 88,960 parameters frozen)" \
        in result.output
    assert "phase 2, epochs 6-44: every layer, at 0.01 x the learning rate: the backbone's " \
           "88,000 trainable parameters (its BatchNormalization's 960 frozen)" in result.output


def _is_batchnorm(layer):
    return isinstance(layer, keras.layers.BatchNormalization)


def test_phases_set_trainable_layers_and_learning_rate(trained_image_project):
    # Explicit values for the "auto" ones the data would decide (no data is opened).
    experiment = Experiment.open(trained_image_project, ["training.epochs=4",
                                                         "training.freeze_backbone_epochs=3",
                                                         "model.batchnorm_momentum=0.99",
                                                         f"data.image_size={AUTO_SIZE}"])
    model, _ = experiment.build_model(runs.find_trained(trained_image_project).meta)
    compile_config = model.get_compile_config()
    first, second = phases.plan(experiment.config, model)
    assert (first.first_epoch, first.end_epoch, second.end_epoch) == (0, 3, 4)
    (backbone,) = phases.backbone_layers(model)
    inner = backbone._flatten_layers(include_self=False)
    # The new Dense (before the mirror's mean and the softmax).
    (head,) = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]

    phases.enter(model, first, compile_config)
    assert not backbone.trainable and head.trainable
    assert all(not layer.trainable for layer in inner)
    assert {id(w) for w in model.trainable_weights} == {id(w) for w in head.trainable_weights}

    phases.enter(model, second, compile_config)
    assert backbone.trainable
    layers = backbone._flatten_layers(include_self=False)
    assert all(layer.trainable != _is_batchnorm(layer) for layer in layers if layer.weights)
    assert len(model.optimizer.variables) > 2 * len(head.trainable_weights)  # a new optimizer

    rate = dl_callbacks.EpochLearningRate("constant", second.end_epoch, warmup_epochs=0,
                                          first_epoch=second.first_epoch,
                                          rate_factor=second.rate_factor)
    rate.set_model(model)
    rate.on_train_begin()
    rate.on_epoch_begin(3)
    learning_rate = experiment.config.model["learning_rate"]
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.01 * learning_rate)


def test_cosine_schedule_restarts_in_each_phase():
    rate = dl_callbacks.EpochLearningRate("cosine", 10, first_epoch=4, rate_factor=0.1)
    rate.base_rate = 0.1 * 2e-3
    assert rate.rate(4) == pytest.approx(2e-4)  # phase 2 starts at its own peak
    assert rate.rate(7) == pytest.approx(2e-4 * 0.5 * (1 + np.cos(np.pi * 3 / 6)))


def test_resume_after_kill_in_phase_two(tmp_path, image_preset):
    from click.testing import CliRunner

    project = tmp_path / "proj"
    assert invoke(CliRunner(), "new", "image-classifier", project).exit_code == 0
    _set_backbone(project, str(image_preset), image_size=[16, 16])
    command = [sys.executable, "-m", "dltool.cli", "train", "--project", str(project),
               "--epochs", "4", *FAST]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = kill_after_epochs(process, project, 2)  # phase 2 has begun
    assert 2 <= done < 4, "the first run must be killed in phase 2"
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming an unfinished run" in result.stdout
    (run,) = (project / "runs").iterdir()
    assert json.loads((run / "run.json").read_text())["epochs_done"] == 4
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2", "3"]


def test_phase_two_checkpoint_restores_its_optimizer(tmp_path, trained_image_project):
    """A checkpoint of phase 2 loads whole (optimizer state too) into a model
    entered in phase 2, as a resumed run does."""
    experiment = Experiment.open(trained_image_project, ["training.epochs=2",
                                                         "model.batchnorm_momentum=0.99",
                                                         f"data.image_size={AUTO_SIZE}"])
    meta = runs.find_trained(trained_image_project).meta
    x = np.random.default_rng(0).uniform(0, 255, (4, IMAGE_SIZE, IMAGE_SIZE, 3))
    y = np.arange(4) % 10

    def entered():
        model, _ = experiment.build_model(meta)
        plan = phases.plan(experiment.config, model)
        phases.enter(model, plan[-1], model.get_compile_config())
        return model

    model = entered()
    model.fit(x, y, epochs=1, verbose=0,
              callbacks=[dl_callbacks.TrainingBackup(tmp_path / "backup", delete_at_end=False)])
    resumed = entered()
    backup = dl_callbacks.TrainingBackup(tmp_path / "backup")
    assert backup.saved_epoch() == 1
    backup.set_model(resumed)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped optimizer state would warn
        backup.restore()
    assert int(resumed.optimizer.iterations.numpy()) == int(model.optimizer.iterations.numpy())


@pytest.mark.parametrize("value, image_size, message", [
    ("resnet_18_imagenet", None, "cannot download preset resnet_18_imagenet: no network; "
                                 "download it where there is one, or give the path of a "
                                 "local preset folder"),
    ("resnet18_imagenet", None, "unknown preset 'resnet18_imagenet'; did you mean "
                                "resnet_18_imagenet"),
    ("bert_tiny_en_uncased", None, "'bert_tiny_en_uncased' is a text preset; this template "
                                   "takes an image backbone preset"),
    ("TEXT_PRESET", None, "holds a text backbone (BertBackbone); this template takes an "
                          "image backbone preset"),
    ("NOT_A_PRESET", None, "is not a KerasHub preset folder: it has no config.json"),
    ("./missing", None, "no such folder"),
    ("IMAGE_PRESET", [16, 2], "data.image_size must be"),
])
def test_bad_backbone_is_one_line_and_writes_nothing(runner, project, image_preset,
                                                     text_preset, tmp_path, value,
                                                     image_size, message):
    folders = {"TEXT_PRESET": text_preset, "IMAGE_PRESET": image_preset,
               "NOT_A_PRESET": tmp_path}
    _set_backbone(project, str(folders.get(value, value)), image_size)
    for command in ("info", "train"):
        result = invoke(runner, command, "--project", project)
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.strip().splitlines()
        assert message in line
    assert not (project / "runs").exists()


def test_image_size_the_backbone_cannot_take(image_preset):
    preset = backbones.Preset("tiny", str(image_preset), local=True)
    fixed = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[3], stackwise_num_filters=[64],
        stackwise_num_blocks=[1], stackwise_num_strides=[1], block_type="basic_block",
        image_shape=(32, 32, 3))
    with pytest.raises(ConfigError, match=r"takes only \[32, 32\] images"):
        backbones.check_image_size(fixed, preset, [64, 64])
    backbones.check_image_size(fixed, preset, [32, 32])


def test_scratch_is_unchanged(runner, project):
    experiment = Experiment.open(project, ["training.epochs=44", "model.batchnorm_momentum=0.99",
                                           "data.image_size=[32, 32]"])
    model, hp = experiment.build_model({"class_names": list("abc")})
    assert hp.values["backbone"] == "scratch" and not phases.backbone_layers(model)
    assert phases.plan(experiment.config, model) == [phases.Phase(0, 0, 44, True, 1.0)]
    assert phases.describe(model, phases.plan(experiment.config, model)) == []


@pytest.fixture(scope="module")
def trained_text_project(tmp_path_factory, text_preset):
    """A sentiment project on the tiny BERT preset, trained 2 epochs (one per
    phase) on the embedded sentences cut to 16 tokens, and exported."""
    from click.testing import CliRunner

    project = tmp_path_factory.mktemp("backbone") / "reviews"
    runner = CliRunner()
    assert invoke(runner, "new", "sentiment", project).exit_code == 0
    _set_backbone(project, str(text_preset))
    for args in (("train", "--project", project, "--epochs", 2, *FAST,
                  "--set", "data.sequence_length=16"),
                 ("export", "--project", project)):
        result = invoke(runner, *args)
        assert result.exit_code == 0, result.output
    return project


def test_text_backbone_trains_exports_and_predicts(runner, trained_text_project,
                                                   monkeypatch):
    run = runs.find_trained(trained_text_project)
    assert [p["trains"] for p in run["phases"]] == ["the head (backbone frozen)",
                                                    "every layer"]  # BERT: no BatchNorm
    assert run["phases"][0]["trainable_parameters"] == 16 * 2 + 2  # pooled output to 2
    assert run["meta"]["backbone"].endswith("tiny_bert") and run["meta"]["vocabulary"][:2] \
        == ["[PAD]", "[UNK]"]
    texts = ["a good movie", "the film is not bad", "bad"]
    model = Experiment.for_run(trained_text_project, run).load_trained_model(run)
    preprocessor = backbones.text_preprocessor(
        backbones.Preset("tiny", run["meta"]["preset"], local=True), 16)
    expected = calibration.scaled(np.asarray(model(backbones.text_features(
        preprocessor, tf.constant(texts)), training=False)), run["meta"]["temperature"])
    version = trained_text_project / "saved_models" / "reviews" / "1"
    outputs = tf.saved_model.load(str(version)).signatures["serving_default"](
        texts=tf.constant(texts))  # raw strings in: the tokenizer is in the graph
    np.testing.assert_allclose(outputs["probabilities"].numpy(), expected, atol=1e-4)
    names = run["meta"]["class_names"]
    labels = [c.decode() for c in outputs["label"].numpy()]
    assert labels == [names[i] for i in expected.argmax(-1)]

    monkeypatch.chdir(trained_text_project)
    result = invoke(runner, "predict", texts[0])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1].startswith(f"{texts[0]}: {labels[0]} ")
    result = invoke(runner, "export", "--format", "onnx")
    assert result.exit_code == 1 and "no onnx export yet" in result.output


@pytest.mark.parametrize("value, overrides, message", [
    ("bert_tiny_en_uncased", (), "cannot download preset bert_tiny_en_uncased: no network"),
    ("bert_tiny_en_uncase", (), "unknown preset 'bert_tiny_en_uncase'; did you mean "
                                "bert_tiny_en_uncased"),
    ("resnet_18_imagenet", (), "'resnet_18_imagenet' is an image preset; this template takes "
                               "a text backbone"),
    ("IMAGE_PRESET", (), "holds an image backbone (ResNetBackbone); this template takes a text"),
    ("TEXT_PRESET", (), "data.sequence_length 48: the backbone of preset"),
    ("TEXT_PRESET", ("data.sequence_length=16", "data.multi_label=true",
                     'training.monitor="val_loss"', 'tune.objective="val_loss"'),
     "data.multi_label: the sentiment template takes multi-label data with "
     'model.backbone = "scratch" only'),
])
def test_bad_text_backbone_is_one_line_and_writes_nothing(runner, tmp_path, image_preset,
                                                          text_preset, value, overrides,
                                                          message):
    project = tmp_path / "reviews"
    assert invoke(runner, "new", "sentiment", project).exit_code == 0
    folders = {"TEXT_PRESET": text_preset, "IMAGE_PRESET": image_preset}
    _set_backbone(project, str(folders.get(value, value)))
    sets = [arg for override in overrides for arg in ("--set", override)]
    for command in ("info", "train"):
        result = invoke(runner, command, "--project", project, *sets)
        assert result.exit_code == 1, result.output
        (line,) = result.stderr.strip().splitlines()
        assert message in line
    assert not (project / "runs").exists()


def test_mirrored_strategy_on_two_cpu_devices(tmp_path, image_preset):
    """The backbone is checked (built) when the project opens: the CPU must be
    split into its devices before that, in a fresh process."""
    from click.testing import CliRunner

    project = tmp_path / "proj"
    assert invoke(CliRunner(), "new", "image-classifier", project).exit_code == 0
    _set_backbone(project, str(image_preset), image_size=[16, 16])
    result = subprocess.run(
        [sys.executable, "-m", "dltool.cli", "train", "--project", str(project), "--epochs",
         "2", "--strategy", "mirrored", "--set", "runtime.cpu_devices=2", *FAST],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Strategy: mirrored (set in the config or on the command line), 2 replica(s)" \
        in result.stdout
    assert "Phase 2 (epochs 2-2): every layer" in result.stdout
