"""Train → evaluate → export → predict, resume, and the errors on the way."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import TINY_MODEL, invoke, kill_after_epochs
from dltool.engine import modelfiles
from dltool._tf import keras, tf
from dltool.data import images
from dltool.core.errors import ModelFileError

pytestmark = pytest.mark.slow


def _only_run(project):
    (run,) = (project / "runs").iterdir()
    return run, json.loads((run / "run.json").read_text())


def test_train_fills_the_run_folder(trained_project):
    run, meta = _only_run(trained_project)
    for name in ("config.toml", "best.weights.h5", "history.csv"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (run / "backup").exists()  # deleted once training finished
    assert meta["status"] == "finished" and meta["epochs_done"] == 2
    assert meta["meta"]["class_names"][0] == "airplane"
    assert meta["sizes"] == {"train": 450, "val": 50, "test": 200}
    assert "filters = 8" in (run / "config.toml").read_text()
    with open(run / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1"]


def test_evaluate_prints_loss_accuracy_and_per_class(runner, trained_project):
    result = invoke(runner, "evaluate", "--project", trained_project)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # progress lines go to stderr
    assert lines[0].endswith("test split, 200 examples")
    assert lines[1].startswith("loss") and lines[2].startswith("accuracy")
    assert lines[3].startswith("balanced accuracy") and lines[4].startswith("macro F1")
    assert lines[5].startswith("NLL ") and "(temperature " in lines[5]  # before → after
    assert lines[6].startswith("ECE (15 bins) ") and " → " in lines[6]
    assert lines[7].split() == ["class", "precision", "recall", "F1", "support"]
    assert len(lines) == 8 + 10 and lines[8].split()[0] == "airplane"
    saved = json.loads(next((trained_project / "runs").glob("*/evaluation-test.json"))
                       .read_text())
    assert saved["examples"] == 200 and len(saved["confusion"]) == 10
    assert sum(map(sum, saved["confusion"])) == 200
    assert 0.0 <= saved["accuracy"] <= 1.0
    figures = saved["calibration"]  # on the test split, before and after the temperature
    assert figures["bins"] == 15 and sum(figures["reliability_after"]["count"]) == 200
    assert {"nll_before", "nll_after", "ece_before", "ece_after"} <= set(figures)


def test_export_layout_and_version_increment(runner, trained_project, copy_project):
    project = copy_project(trained_project)
    version_1 = project / "saved_models" / "proj" / "1"
    for name in ("saved_model.pb", "variables", "model.keras", "dltool.json"):
        assert (version_1 / name).exists(), name
    result = invoke(runner, "export", "--project", project)
    assert result.exit_code == 0, result.output
    assert "saved_models/proj/2" in result.output
    assert sorted(p.name for p in (project / "saved_models" / "proj").iterdir()) == ["1", "2"]
    _, meta = _only_run(project)
    assert meta["exported_version"] == "proj/2"


def _sample_bytes(project):
    return [p.read_bytes() for p in sorted((project / "samples").glob("*.jpg"))]


def test_saved_model_matches_in_memory_model(trained_project):
    from dltool.core import runs
    from dltool.engine.experiment import Experiment
    from dltool.tasks import calibration

    run = runs.find_trained(trained_project)
    model = Experiment.for_run(trained_project, run).load_trained_model(run)
    jpegs = _sample_bytes(trained_project)
    pngs = [tf.io.encode_png(tf.io.decode_jpeg(b)).numpy() for b in jpegs]
    pixels = tf.stack([images.decode_image(b, (32, 32)) for b in jpegs])
    # The export applies the temperature fitted after training (on by default).
    temperature = run["meta"]["temperature"]
    assert temperature == run["calibration"]["temperature"] != 1.0
    expected = calibration.scaled(np.asarray(model(pixels, training=False)), temperature)

    loaded = tf.saved_model.load(str(trained_project / "saved_models" / "proj" / "1"))
    serve = loaded.signatures["serving_default"]
    outputs = serve(images=tf.constant(jpegs + pngs))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (6, 10)
    np.testing.assert_allclose(probabilities[:3], expected, atol=1e-5)
    np.testing.assert_allclose(probabilities[3:], expected, atol=1e-5)  # PNG = same pixels
    names = run["meta"]["class_names"]
    assert [c.decode() for c in outputs["label"].numpy()[:3]] == \
        [names[i] for i in expected.argmax(-1)]
    assert [c.decode() for c in outputs["classes"].numpy()[0]] == names
    np.testing.assert_allclose(outputs["score"].numpy()[:3], expected.max(-1), atol=1e-5)


def test_predict_prints_top_k(runner, trained_project, monkeypatch):
    monkeypatch.chdir(trained_project)
    result = invoke(runner, "predict", "samples/cat.jpg", "samples/ship.jpg")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("Model: ") and lines[0].endswith("saved_models/proj/1")
    assert lines[1].startswith("samples/cat.jpg: ") and lines[1].count(",") == 2
    result = invoke(runner, "predict", "samples/cat.jpg", "--top-k", "1", "--json")
    (item,) = json.loads(result.output)
    assert item["input"] == "samples/cat.jpg" and len(item["top"]) == 1
    assert 0.0 < item["top"][0]["probability"] <= 1.0


def test_predict_with_keras_file_in_safe_mode(runner, trained_project):
    keras_file = trained_project / "saved_models" / "proj" / "1" / "model.keras"
    result = invoke(runner, "predict", trained_project / "samples" / "cat.jpg",
                    "--model", keras_file)
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"Model: {keras_file}")


@pytest.mark.parametrize("content, message", [
    (b"just some text", "not a JPEG, PNG, GIF or BMP image"),
    (b"", "empty file"),
    (None, "unreadable: No such file or directory"),
])
def test_predict_bad_input_is_one_line(runner, trained_project, tmp_path, content, message):
    path = tmp_path / "input.jpg"
    if content is not None:
        path.write_bytes(content)
    result = invoke(runner, "predict", path, "--project", trained_project)
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {path}: {message}"


def test_export_name_is_validated(runner, trained_project):
    result = invoke(runner, "export", "--project", trained_project, "--name", "../escape")
    assert result.exit_code == 1
    assert "invalid model name '../escape'" in result.output
    assert not (trained_project.parent / "escape").exists()


def test_export_and_predict_before_training(runner, project):
    result = invoke(runner, "export", "--project", project)
    assert result.exit_code == 1
    assert result.output.strip() == "Error: no trained model yet: run `dltool train` first"
    result = invoke(runner, "predict", project / "samples" / "cat.jpg", "--project", project)
    assert result.exit_code == 1
    assert result.output.strip() == "Error: nothing exported yet: run `dltool export` first"
    result = invoke(runner, "evaluate", "--project", project)
    assert result.exit_code == 1


def test_missing_data_folder_writes_nothing(runner, project):
    result = invoke(runner, "train", "--project", project, "--set", "data.source=nowhere")
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: data folder {project / 'nowhere'} does not exist"
    assert not (project / "runs").exists()


def test_corrupt_image_stops_training_then_skip_bad_trains(runner, project, tmp_path):
    import shutil
    data = tmp_path / "data"
    shutil.copytree(images.SAMPLES_ROOT / "cifar10", data)
    bad = data / "train" / "cat" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    args = ("train", "--project", project, "--epochs", 1, "--set", f"data.source={data}",
            *TINY_MODEL)
    result = invoke(runner, *args)
    assert result.exit_code == 1
    assert f"1 unusable image(s): {bad} (cannot be decoded" in result.output
    assert "function_node" not in result.output and "[Op:" not in result.output  # the op's words
    assert not (project / "runs").exists()
    result = invoke(runner, *args, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 1 unusable image(s) (--skip-bad)" in result.output


def test_lambda_keras_file_is_refused(tmp_path):
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda x: x * 2)(inputs)
    path = tmp_path / "evil.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelFileError, match="refused: layer 'lambda' is a Lambda layer"):
        modelfiles.load_keras_file(path)


@pytest.mark.parametrize("name, content, message", [
    ("model.h5", b"x", "legacy HDF5 models are refused"),
    ("model.keras", b"not a zip", "corrupt .keras file"),
    ("gs://bucket/model.keras", None, "remote model paths are refused"),
])
def test_unsafe_or_corrupt_model_files_are_refused(tmp_path, name, content, message):
    path = name if content is None else tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        modelfiles.load_keras_file(path)


def test_nan_guard_raises_and_keeps_the_backup(tmp_path):
    from dltool.engine.callbacks import NonFiniteLossError, StopOnNonFiniteLoss

    class PoisonWeightsAtSecondEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                kernel = self.model.layers[0].kernel
                kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))

    x = np.ones((8, 2), dtype="float32")
    y = np.ones((8, 1), dtype="float32")
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    backup = tmp_path / "backup"
    callbacks = [StopOnNonFiniteLoss(), keras.callbacks.BackupAndRestore(str(backup)),
                 PoisonWeightsAtSecondEpoch()]
    with pytest.raises(NonFiniteLossError, match="backup of the last completed epoch is kept"):
        model.fit(x, y, epochs=3, batch_size=4, callbacks=callbacks, verbose=0)
    # Keras records the number of completed epochs: the first one, before the NaN.
    assert json.loads((backup / "training_metadata.json").read_text())["epoch"] == 1


def test_resume_after_kill_continues_from_last_epoch(project):
    command = [sys.executable, "-m", "dltool.cli", "train", "--project", str(project),
               "--epochs", "4", "--set", "training.verbose=0"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    done = kill_after_epochs(process, project, 1)
    assert 1 <= done < 4, "the first run must be killed between epochs 1 and 4"
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming an unfinished run with the same config" in result.stdout
    run, meta = _only_run(project)
    assert meta["status"] == "finished" and meta["epochs_done"] == 4
    with open(run / "history.csv") as f:
        epochs = [row["epoch"] for row in csv.DictReader(f)]
    assert epochs == ["0", "1", "2", "3"]


def test_mirrored_strategy_trains(runner, project):
    result = invoke(runner, "train", "--project", project, "--epochs", 1, "--strategy",
                    "mirrored", *TINY_MODEL)
    assert result.exit_code == 0, result.output
    assert "Strategy: mirrored (set in the config or on the command line)" in result.output
    _, meta = _only_run(project)
    assert meta["status"] == "finished" and meta["epochs_done"] == 1


def test_tpu_strategy_without_tpu_is_one_line(runner, project):
    result = invoke(runner, "train", "--project", project, "--strategy", "tpu")
    assert result.exit_code == 1
    assert result.output.strip() == "Error: strategy 'tpu' needs a TPU and none was found"
    assert not (project / "runs").exists()
