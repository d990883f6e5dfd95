"""Non-finite models: refused when configured, stopped in training, never exported.

With one step per epoch, the loss Keras logs is computed before the only
update, so a training whose update ruins the model logs no NaN loss. These
tests train that case (450 embedded images in one batch of 512) and check
that the run stops with one line and is marked failed, that a non-finite
model is not exported, and so that `dltool predict` never picks one.
"""

import json

import h5py
import numpy as np
import pytest

from conftest import TINY_MODEL, invoke

ONE_STEP = ("--epochs", 1, "--set", "training.batch_size=512",
            "--set", "training.warmup_epochs=0")

# Appended to the project's model.py: the same model with a loss whose value
# is finite and whose gradient is NaN (sqrt(x) at x = 0 adds 0 to the loss and
# 0 * inf to its gradient), as a model.py with a bug in its loss would have.
NAN_GRADIENT_MODEL = '''

_build_model = build_model


def build_model(hp, config, num_classes):
    model = _build_model(hp, config, num_classes)
    model.compile(optimizer=model.optimizer, loss=_nan_gradient_loss, metrics=["accuracy"])
    return model


def _nan_gradient_loss(y_true, y_pred):
    crossentropy = keras.losses.sparse_categorical_crossentropy(y_true, y_pred)
    return crossentropy + keras.ops.sqrt(keras.ops.sum(y_pred * 0.0))
'''


def _one_error_line(result):
    """The one `Error:` line of a failed command, its last line on stderr.

    Progress lines (`Loading run ...`) may come before it; a traceback may not.
    """
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("Error: ")]
    assert errors == lines[-1:] and "Traceback" not in result.stderr, result.stderr
    return lines[-1]


def _only_run(project):
    runs = list((project / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0], json.loads((runs[0] / "run.json").read_text())


def test_nan_learning_rate_refused_at_config_read(runner, project):
    result = invoke(runner, "train", "--project", project, *TINY_MODEL, *ONE_STEP,
                    "--set", "model.learning_rate=nan")
    line = _one_error_line(result)
    assert line == "Error: model.learning_rate must be a finite number; got nan"
    assert not (project / "runs").exists()


@pytest.mark.slow
def test_weights_becoming_nan_stop_the_run_and_mark_it_failed(runner, project):
    model_file = project / "model.py"
    model_file.write_text(model_file.read_text() + NAN_GRADIENT_MODEL)

    result = invoke(runner, "train", "--project", project, *TINY_MODEL, *ONE_STEP)

    line = _one_error_line(result)
    assert line.startswith("Error: the weights became NaN or infinite in epoch 1 (")
    run_dir, record = _only_run(project)
    assert record["status"] == "failed" and record["pid"] is None
    assert record["error"] == line.removeprefix("Error: ")
    assert not (run_dir / "best.weights.h5").exists()  # stopped before saving them
    runs = invoke(runner, "runs", "--project", project)
    assert runs.stdout.splitlines()[1].split()[4] == "failed"


@pytest.mark.slow
def test_huge_learning_rate_stops_the_run_and_leaves_nothing_to_export(runner, project):
    # 1e38 keeps the weights finite but so large that the model computes NaN.
    result = invoke(runner, "train", "--project", project, *TINY_MODEL, *ONE_STEP,
                    "--set", "model.learning_rate=1e38")

    line = _one_error_line(result)
    assert line.startswith("Error: val_loss became nan in epoch 1: the model computes NaN")
    run_dir, record = _only_run(project)
    assert record["status"] == "failed"
    assert not (run_dir / "best.weights.h5").exists()
    result = invoke(runner, "export", "--project", project)
    assert _one_error_line(result) == "Error: no trained model yet: run `dltool train` first"
    assert not (project / "saved_models").exists()


def _poison_weights(weights_file):
    """Puts a NaN into the first kernel of a `.weights.h5` file."""
    with h5py.File(weights_file, "r+") as f:
        kernels = []
        f.visititems(lambda name, obj: kernels.append(name)
                     if isinstance(obj, h5py.Dataset) and name.startswith("layers/conv2d/")
                     else None)
        data = f[kernels[0]][()]
        data.flat[0] = np.nan
        f[kernels[0]][...] = data


@pytest.mark.slow
def test_export_refuses_non_finite_weights_and_predict_keeps_the_good_export(
        runner, trained_project, copy_project):
    # A run trained before the guard existed: its best weights hold a NaN.
    project = copy_project(trained_project)
    run_dir = next((project / "runs").iterdir())
    _poison_weights(run_dir / "best.weights.h5")
    record_before = (run_dir / "run.json").read_text()
    exports_before = sorted(p.relative_to(project) for p in (project / "saved_models").rglob("*"))

    result = invoke(runner, "export", "--project", project)

    line = _one_error_line(result)
    assert line.startswith(f"Error: run {run_dir.name}: its weights hold NaN or infinite "
                           "values (conv2d")
    assert line.endswith("nothing exported (train again, e.g. with a lower "
                         "model.learning_rate)")
    assert sorted(p.relative_to(project)
                  for p in (project / "saved_models").rglob("*")) == exports_before
    assert (run_dir / "run.json").read_text() == record_before

    result = invoke(runner, "predict", project / "samples" / "cat.jpg", "--project", project,
                    "--json")
    assert result.exit_code == 0, result.output
    [prediction] = json.loads(result.stdout)
    assert prediction["top"] and all(np.isfinite(item["probability"])
                                     for item in prediction["top"])
