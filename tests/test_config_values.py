"""Out-of-range, non-finite and wrongly typed config values, through the CLI.

Each case is run as a user would (`dltool train --set ...`) and must stop with
exit code 1, one `Error:` line on stderr naming the key, and no run folder.
"""

import json
import re
import subprocess
import sys

import pytest

from conftest import TINY_MODEL, invoke


def _assert_refused(result, project, *expected):
    """Exit 1, one stderr line holding every `expected` text, no run folder."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for text in expected:
        assert text in lines[0]
    assert not (project / "runs").exists() or not any((project / "runs").iterdir())


# Refused when the config is read: nothing is loaded or built.
@pytest.mark.parametrize("override, expected", [
    ("training.epochs=100000000000000000000",
     'training.epochs must be "auto" or an integer from 1 to 1000000; '
     "got 100000000000000000000"),
    ("training.batch_size=10000000000", "training.batch_size must be an integer from 1 to"),
    ("training.seed=-1", "training.seed must be an integer from 0 to 4294967295; got -1"),
    ("training.calibrate=yes", "training.calibrate must be true or false; got 'yes'"),
    ("tune.max_trials=100000000000000000000", "tune.max_trials must be an integer from 1 to"),
    ("data.validation_split=nan",
     "data.validation_split must be a number from 0.0 to 0.9; got nan"),
    ("data.image_size=[1, 1]",
     'data.image_size must be "auto" or a list of 2 integers from 16 to 4096; got [1, 1]'),
    ("data.image_size=[15, 32]",
     'data.image_size must be "auto" or a list of 2 integers from 16'),
    ("data.image_size=[100000, 100000]",
     'data.image_size must be "auto" or a list of 2 integers'),
    ("model.learning_rate=nan", "model.learning_rate must be a finite number; got nan"),
    ("model.learning_rate=inf", "model.learning_rate must be a finite number; got inf"),
    ("model.dropout=-inf", "model.dropout must be a finite number; got -inf"),
    ("model.learning_rate=\"fast\"",
     "model.learning_rate must be a number like its value in config.toml (0.002); got 'fast'"),
    ("model.blocks=2.5",
     "model.blocks must be an integer like its value in config.toml (4); got 2.5"),
    ("model.augment=1", "model.augment must be true or false like its value in config.toml"),
    ("model.label_smoothing=0.7",
     "model.label_smoothing must be a number from 0.0 to 0.5; got 0.7"),
    ("model.label_smoothing=-0.1",
     "model.label_smoothing must be a number from 0.0 to 0.5; got -0.1"),
    ("model.test_time_flip=1",
     "model.test_time_flip must be true or false like its value in config.toml"),
    ("training.time_budget=inf", "training.time_budget must be a duration"),
    ("tune.time_budget=nan", "tune.time_budget must be a duration"),
    ("search.learning_rate={min = 0.0001, max = inf}",
     "search.learning_rate.max must be a finite number; got inf"),
    ("search.dropout={min = nan, max = 0.5}", "search.dropout.min must be a finite number"),
    ("search.dropout=[0.1, nan]", "search.dropout: the choices must be finite numbers"),
    ("search.dropout={min = 0.5, max = 0.1}", "search.dropout: min (0.5) is greater than max"),
])
def test_bad_value_refused_at_config_read(runner, project, override, expected):
    result = invoke(runner, "train", "--project", project, *TINY_MODEL, "--set", override)
    _assert_refused(result, project, expected)


def test_tune_refuses_non_finite_search_bound(runner, project):
    result = invoke(runner, "tune", "--project", project,
                    "--set", "search.learning_rate={min = 0.0001, max = inf}")
    _assert_refused(result, project, "search.learning_rate.max must be a finite number")


def test_wrong_type_in_the_file_refused(runner, project):
    path = project / "config.toml"
    path.write_text(path.read_text().replace("learning_rate = 0.002", "learning_rate = nan"))
    result = invoke(runner, "train", "--project", project, *TINY_MODEL)
    _assert_refused(result, project, "model.learning_rate must be a finite number; got nan")


def test_label_smoothing_given_as_text_in_the_file_refused(runner, project):
    path = project / "config.toml"
    text, replaced = re.subn(r"(?m)^label_smoothing = [0-9.]+", 'label_smoothing = "some"',
                             path.read_text())
    assert replaced == 1  # the template's line, whatever its default
    path.write_text(text)
    result = invoke(runner, "train", "--project", project, *TINY_MODEL)
    _assert_refused(result, project,
                    "model.label_smoothing must be a number from 0.0 to 0.5; got 'some'")


def test_integer_override_of_a_number_is_that_number(runner, project):
    from dltool.core import project as project_lib

    config = project_lib.load_config(project, ["model.learning_rate=1"])
    assert config.model["learning_rate"] == 1.0
    assert isinstance(config.model["learning_rate"], float)


# Refused after the model is built (the data is read, nothing is trained),
# before a run folder exists.
@pytest.mark.parametrize("override, expected", [
    ("model.learning_rate=-0.01", ("the optimizer's learning rate (model.learning_rate in "
                                   "config.toml, as build_model reads it) must be a finite "
                                   "number > 0; got -0.01")),
    ("model.learning_rate=0", "must be a finite number > 0; got 0"),
    ("model.weight_decay=-0.5", ("the optimizer's weight decay (model.weight_decay in "
                                 "config.toml, as build_model reads it) must be a finite "
                                 "number >= 0; got -0.5")),
    ("training.monitor=val_acc", ("training.monitor must be a metric training logs; got "
                                  "'val_acc'; did you mean val_accuracy? (logged: accuracy, "
                                  "loss, val_accuracy, val_loss)")),
    ("training.monitor=val_precision",
     "training.monitor must be a metric training logs; got 'val_precision'"),
    # A value a Keras layer refuses: the line of model.py and Keras' reason.
    ("model.dropout=1.5", ("build_model failed: ValueError: Invalid value received for "
                           "argument `rate`")),
])
def test_bad_value_refused_before_a_run_folder(runner, project, override, expected):
    result = invoke(runner, "train", "--project", project, *TINY_MODEL, "--set", override)
    _assert_refused(result, project, expected)


def test_monitor_without_validation_is_checked_without_val(runner, project):
    result = invoke(runner, "train", "--project", project, *TINY_MODEL,
                    "--set", "training.include_validation=true",
                    "--set", "training.monitor=val_acuracy")
    _assert_refused(result, project, "got 'acuracy'; did you mean accuracy? "
                                     "(logged: accuracy, loss)")


@pytest.mark.slow
def test_run_whose_process_is_gone_is_not_running(runner, trained_project, copy_project):
    project = copy_project(trained_project)
    run_dir = next((project / "runs").iterdir())
    record_file = run_dir / "run.json"
    record = json.loads(record_file.read_text())
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # a pid that was a dltool process and is gone
    record.update(status="running", pid=child.pid)
    record_file.write_text(json.dumps(record))

    result = invoke(runner, "runs", "--project", project)

    assert result.exit_code == 0, result.output
    row = next(line for line in result.stdout.splitlines() if line.startswith(run_dir.name))
    assert row.split()[4] == "interrupted"
    assert "running" not in row
