"""`dltool tune`: search space, tuners, resume, budget, results, distributed.

Searches use the tiny CNN on the embedded 700-image CIFAR-10 sample, a
one-or-two-value space and 1-3 epochs per trial, so a trial takes seconds.
"""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import TINY_MODEL, invoke
from dltool.core import config as config_lib
from dltool.core.errors import ConfigError

# A small space over cheap hyperparameters of the tiny model; every trial in
# the `dltool tune` process (a fresh process per trial, the default, costs a
# TensorFlow start each: the tests adding CHILDREN keep the default).
TINY_SEARCH = (*TINY_MODEL, "--set", "search.filters=[8]", "--set", "search.blocks=[1]",
               "--set", "search.augment=[false]", "--set", "search.weight_decay=[0.0]",
               "--set", "search.dropout=[0.0, 0.3]",
               "--set", "search.learning_rate={min=0.001, max=0.01, sampling=\"log\"}",
               "--set", "tune.trials_per_process=0")
CHILDREN = ("--set", "tune.trials_per_process=1")


def _cli(*args):
    return [sys.executable, "-m", "dltool.cli", *map(str, args)]


def _rows(folder):
    with open(folder / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _state(folder):
    """Names, sizes and modification times of every file of a search."""
    return sorted((str(p.relative_to(folder)), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in folder.rglob("*") if p.is_file())


# ---- the search space in the config (no TensorFlow) ----

@pytest.mark.parametrize("entry, message", [
    ([], "search.x: the list of choices is empty"),
    ({"min": 5, "max": 2}, "search.x: min (5) is greater than max (2)"),
    ({"min": 1}, "search.x needs both min and max"),
    ({"min": 0.0, "max": 1.0, "sampling": "exp"}, "search.x.sampling must be one of"),
    ({"min": 0.0, "max": 1.0, "sampling": "log"}, "log sampling needs min > 0"),
    ({"min": 1, "max": 4, "stepp": 1}, "unknown config key 'search.x.stepp'"),
    ([1, "a"], "the choices must be all strings"),
    ("big", "must be a list of choices or a table"),
])
def test_bad_search_space_names_the_key(entry, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_lib.parse_search_space({"x": entry})


def test_search_space_kinds():
    space = config_lib.parse_search_space({
        "a": {"min": 1, "max": 4}, "b": {"min": 0.0, "max": 0.5, "step": 0.1},
        "c": {"min": 1e-4, "max": 1e-2, "sampling": "log"}, "d": ["x", "y"]})
    assert [space[k]["kind"] for k in "abcd"] == ["int", "float", "float", "choice"]


# A plain number is minutes, for both time budgets (issue 13; it was seconds here).
@pytest.mark.parametrize("text, seconds", [("90s", 90), ("30m", 1800), ("1.5h", 5400),
                                           ("45", 2700), ("", None)])
def test_parse_duration(text, seconds):
    assert config_lib.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["30x", "-5m", "m", "0s"])
def test_bad_duration(text):
    with pytest.raises(ConfigError, match="must be a duration such as"):
        config_lib.parse_duration(text)


def test_templates_ship_a_search_space(tmp_path, runner):
    for template in ("image-classifier", "sentiment", "translator"):
        result = invoke(runner, "new", template, tmp_path / template)
        assert result.exit_code == 0, result.output
        config = config_lib.load_config(tmp_path / template / "config.toml")
        space = config_lib.parse_search_space(config["search"])
        assert len(space) >= 4 and set(space) <= set(config.model)
        assert config["tune"]["tuner"] == "random"
        assert config["tune"]["trials_per_process"] == 1


# ---- bad input: one line, non-zero exit, the search untouched ----

_OUTPUT = {}

@pytest.fixture(scope="module")
def tuned_project(tmp_path_factory):
    """An image project with a finished 3-trial random search (2 epochs each)."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("tuned")
    runner = CliRunner()
    assert invoke(runner, "new", "image-classifier", root / "proj").exit_code == 0
    project = root / "proj"
    result = invoke(runner, "tune", "--project", project, "--max-trials", 3, "--epochs", 2,
                    *TINY_SEARCH)
    assert result.exit_code == 0, result.output
    _OUTPUT["tuned_project"] = result.output
    return project


@pytest.mark.slow
@pytest.mark.parametrize("args, message", [
    (("--tuner", "simulated-annealing"), "tune.tuner must be one of random, grid, "
                                         "hyperband, bayesian; got 'simulated-annealing'"),
    (("--objective", "val_auc"), "tune.objective 'val_auc' is not a metric the model reports "
                                 "(it reports: accuracy, loss, val_accuracy, val_loss)"),
    (("--objective", "val_speed"), "cannot tell whether val_speed should go up or down"),
    (("--set", "search.dropout=[]"), "search.dropout: the list of choices is empty"),
    (("--set", "search.blocks={min=4, max=1}"), "search.blocks: min (4) is greater than max"),
    (("--set", "search.depth=[1, 2]"), "search.depth: build_model does not read 'depth'"),
    (("--set", "search.filters=[8.5]"), "search.filters: model.py reads it with hp.Int"),
    (("--tuner", "grid"), "search.learning_rate: the grid tuner needs a step"),
    (("--time-budget", "soon"), "tune.time_budget must be a duration"),
    (("--worker", "127.0.0.1:1", "--connect-timeout", "1"),
     "cannot reach the chief at 127.0.0.1:1 within 1 s"),
    (("--chief", "nowhere"), "--chief must be HOST:PORT"),
])
def test_bad_input_is_one_line_and_keeps_the_search(runner, tuned_project, args, message):
    folder = tuned_project / "tuning" / "random"
    before = _state(folder)
    # As a new search (so the changed settings are not what stops it) ...
    result = invoke(runner, "tune", "--project", tuned_project, "--max-trials", 5,
                    "--epochs", 2, "--name", "other", *TINY_SEARCH, *args)
    assert result.exit_code == 1, result.output
    error = result.output.strip().splitlines()[-1]
    assert error.startswith("Error: ") and message in error, result.output
    assert "Traceback" not in result.output
    assert not (tuned_project / "tuning" / "other").exists()
    # ... and as the existing one, which stays as it was.
    result = invoke(runner, "tune", "--project", tuned_project, "--max-trials", 5,
                    "--epochs", 2, *TINY_SEARCH, *args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    assert len(result.output.strip().splitlines()[-1:]) == 1
    assert _state(folder) == before


@pytest.mark.slow
def test_child_process_error_is_one_line(runner, tuned_project):
    result = invoke(runner, "tune", "--project", tuned_project, "--max-trials", 5,
                    "--epochs", 2, "--name", "child", *TINY_SEARCH, *CHILDREN,
                    "--objective", "val_auc")
    assert result.exit_code == 1, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert errors == ["Error: tune.objective 'val_auc' is not a metric the model reports "
                      "(it reports: accuracy, loss, val_accuracy, val_loss)"], result.output
    assert "Traceback" not in result.output
    assert not (tuned_project / "tuning" / "child").exists()


def test_tuning_help_and_top_help_stay_tensorflow_free():
    code = ("import sys; from dltool.cli import cli; from click.testing import CliRunner; "
            "r = CliRunner().invoke(cli, ['tune', '--help']); assert r.exit_code == 0; "
            # The parent of a search's child processes stays light too.
            "import dltool.tuning.children; "
            "assert 'tensorflow' not in sys.modules and 'keras_tuner' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- a search and its results ----

@pytest.mark.slow
def test_search_writes_table_summary_and_hparams_logs(tuned_project):
    folder = tuned_project / "tuning" / "random"
    rows = _rows(folder)
    assert [r["trial"] for r in rows] == ["0", "1", "2"]
    assert all(r["status"] == "completed" and r["epochs"] == "2" for r in rows)
    assert all(0.0 <= float(r["val_accuracy"]) <= 1.0 and float(r["seconds"]) > 0
               for r in rows)
    assert {r["dropout"] for r in rows} <= {"0", "0.3"}
    assert all(0.001 <= float(r["learning_rate"]) <= 0.01 for r in rows)
    assert (folder / "trials.md").read_text().startswith("| trial | status | val_accuracy |")
    summary = json.loads((folder / "summary.json").read_text())
    best_score = max(float(r["val_accuracy"]) for r in rows)
    assert summary["best"]["score"] == pytest.approx(best_score, abs=1e-4)
    assert summary["stopped_by"] == "done" and summary["trials"] == {"completed": 3}
    assert "trial  status     val_accuracy" in _OUTPUT["tuned_project"]
    # TensorBoard: one log folder per trial with the HParams plugin's data.
    from dltool._tf import tf

    plugins = set()
    for events in (folder / "tensorboard").rglob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(events)):
            plugins |= {v.metadata.plugin_data.plugin_name for v in event.summary.value}
    assert "hparams" in plugins
    assert sorted(p.name for p in (folder / "tensorboard").iterdir()) == ["0", "1", "2"]


@pytest.mark.slow
def test_rerun_continues_the_search(runner, tuned_project, copy_project):
    project = copy_project(tuned_project)
    result = invoke(runner, "tune", "--project", project, "--max-trials", 4, "--epochs", 2,
                    *TINY_SEARCH)
    assert result.exit_code == 0, result.output
    assert "Reloading Tuner" in result.output
    rows = _rows(project / "tuning" / "random")
    assert [r["trial"] for r in rows] == ["0", "1", "2", "3"]
    # Trials 0-2 were kept, not rerun.
    before = {r["trial"]: r["seconds"] for r in _rows(tuned_project / "tuning" / "random")}
    assert all(before[r["trial"]] == r["seconds"] for r in rows[:3])


@pytest.mark.slow
def test_train_with_best_hparams(runner, tuned_project, copy_project):
    project = copy_project(tuned_project)
    summary = json.loads((project / "tuning" / "random" / "summary.json").read_text())
    best = summary["best"]["hyperparameters"]
    result = invoke(runner, "train", "--project", project, "--epochs", 1, "--hparams", "best",
                    *TINY_MODEL)
    assert result.exit_code == 0, result.output
    assert "Hyperparameters of search random's best trial" in result.output
    (run,) = (project / "runs").iterdir()
    model = config_lib.load_config(run / "config.toml").model
    assert model["dropout"] == best["dropout"]
    assert model["learning_rate"] == pytest.approx(best["learning_rate"])
    result = invoke(runner, "train", "--project", project, "--hparams", "nosuch")
    assert result.exit_code == 1 and "no search named 'nosuch'" in result.output


@pytest.mark.slow
def test_export_best_retrains_on_train_and_validation(runner, tuned_project, copy_project):
    project = copy_project(tuned_project)
    result = invoke(runner, "tune", "--project", project, "--max-trials", 3, "--epochs", 2,
                    "--export-best", "--set", "training.epochs=1", *TINY_SEARCH)
    assert result.exit_code == 0, result.output
    (run,) = (project / "runs").iterdir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["monitor"] == "accuracy"  # no validation data left
    assert config_lib.load_config(run / "config.toml")["training"]["include_validation"]
    version = project / "saved_models" / "proj" / "1"
    assert (version / "saved_model.pb").is_file() and (version / "model.keras").is_file()
    assert json.loads((version / "dltool.json").read_text())["run"] == run.name
    result = invoke(runner, "predict", "--project", project, *sorted(
        (project / "samples").glob("*.jpg")))
    assert result.exit_code == 0, result.output


@pytest.mark.slow
def test_fresh_moves_the_old_search_aside(runner, tuned_project, copy_project):
    project = copy_project(tuned_project)
    result = invoke(runner, "tune", "--project", project, "--max-trials", 1, "--epochs", 1,
                    "--fresh", *TINY_SEARCH)
    assert result.exit_code == 0, result.output
    (old,) = (project / "tuning").glob("random.old-*")
    assert len(_rows(old)) == 3 and len(_rows(project / "tuning" / "random")) == 1


@pytest.mark.slow
def test_changed_settings_need_fresh_or_a_new_name(runner, tuned_project):
    result = invoke(runner, "tune", "--project", tuned_project, "--max-trials", 3,
                    "--epochs", 3, *TINY_SEARCH)
    assert result.exit_code == 1
    assert "search 'random' was started with other settings (tune.epochs changed)" \
        in result.output


@pytest.mark.slow
def test_damaged_trial_file_is_set_aside(runner, tuned_project, copy_project):
    project = copy_project(tuned_project)
    folder = project / "tuning" / "random"
    (folder / "trial_1" / "trial.json").write_text('{"trial_id": "1", "hyperpa')
    result = invoke(runner, "tune", "--project", project, "--max-trials", 4, "--epochs", 2,
                    *TINY_SEARCH)
    assert result.exit_code == 0, result.output
    assert "trial_1/trial.json was damaged; set aside as trial.json.damaged-" in result.output
    assert list((folder / "trial_1").glob("trial.json.damaged-*"))
    statuses = [r["status"] for r in _rows(folder)]
    assert statuses == ["completed", "failed", "completed", "completed"]


@pytest.mark.slow
def test_time_budget_stops_cleanly_and_resumes(runner, project):
    # 60 epochs without early stopping outlast a 4 s budget even on an idle
    # machine: it ends mid-trial.
    args = ("--project", project, "--epochs", 60, *TINY_SEARCH,
            "--set", "tune.early_stopping_patience=0")
    # The budget counts from the start of `dltool tune`: in child processes, a
    # second is over before the first can start a trial.
    result = invoke(runner, "tune", "--max-trials", 50, "--time-budget", "1s", *args,
                    *CHILDREN)
    assert result.exit_code == 0, result.output
    assert "Time budget 1s used up: stopped" in result.output
    assert "No completed trial yet" in result.output
    result = invoke(runner, "tune", "--max-trials", 50, "--time-budget", "4s", *args)
    assert result.exit_code == 0, result.output
    assert "Time budget 4s used up: stopped" in result.output
    folder = project / "tuning" / "random"
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["stopped_by"] == "time budget"
    rows = _rows(folder)
    assert len(rows) == 1 and rows[0]["status"] == "interrupted", rows
    assert int(rows[0]["epochs"]) < 60 and (folder / "trials.md").is_file()
    result = invoke(runner, "tune", "--max-trials", 1, *args)
    assert result.exit_code == 0, result.output
    assert [(r["status"], r["epochs"]) for r in _rows(folder)] == [("completed", "60")]
    (history,) = folder.glob("trial_*/execution0/history.csv")
    with open(history) as f:  # continued, not restarted
        assert [int(row["epoch"]) for row in csv.DictReader(f)] == list(range(60))


@pytest.mark.slow
@pytest.mark.parametrize("tuner", ["grid", "hyperband", "bayesian"])
def test_other_tuners(runner, project, tuner):
    result = invoke(runner, "tune", "--project", project, "--tuner", tuner, "--max-trials", 2,
                    "--epochs", 2, *TINY_SEARCH, "--set", "search.learning_rate=[0.003]")
    assert result.exit_code == 0, result.output
    rows = _rows(project / "tuning" / tuner)
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows)
    if tuner == "grid":
        assert sorted(r["dropout"] for r in rows) == ["0", "0.3"]


@pytest.mark.slow
def test_sentiment_search(runner, tmp_path):
    project = tmp_path / "reviews"
    assert invoke(runner, "new", "sentiment", project).exit_code == 0
    result = invoke(runner, "tune", "--project", project, "--max-trials", 2, "--epochs", 1,
                    "--set", "training.verbose=0", "--set", "model.embedding_dim=16",
                    "--set", "search.units=[8]", "--set", "search.cell=[\"gru\", \"lstm\"]",
                    "--set", "search.bidirectional=[false]",
                    "--set", "training.class_weight={negative = 2.0}")
    assert result.exit_code == 0, result.output
    rows = _rows(project / "tuning" / "random")
    assert sorted(r["cell"] for r in rows) == ["gru", "lstm"] or len(
        {r["cell"] for r in rows}) == 1
    assert all(r["status"] == "completed" and r["bidirectional"] == "False" for r in rows)
    # every trial's fit weighed the classes as training.class_weight says
    executions = sorted((project / "tuning" / "random").glob("trial_*/execution0/run.json"))
    assert len(executions) == 2
    assert all(json.loads(e.read_text())["class_weights"] == {"negative": 2.0, "positive": 1.0}
               for e in executions)


@pytest.mark.slow
def test_translator_search(runner, tmp_path):
    project = tmp_path / "fr"
    assert invoke(runner, "new", "translator", project).exit_code == 0
    sample = Path(__file__).parents[1] / "dltool" / "data" / "samples" / "fra-eng" / "fra.txt"
    pairs = project / "pairs.tsv"
    pairs.write_text("".join(sample.read_text().splitlines(keepends=True)[:600]))
    result = invoke(runner, "tune", "--project", project, "--max-trials", 2, "--epochs", 1,
                    "--set", "data.source=\"pairs.tsv\"",
                    "--set", "data.source_vocabulary_size=300",
                    "--set", "data.target_vocabulary_size=300", "--set", "training.verbose=0",
                    "--set", "search.embedding_dim=[16]", "--set", "search.units=[16]",
                    "--set", "tune.trials_per_process=0")
    assert result.exit_code == 0, result.output
    rows = _rows(project / "tuning" / "random")
    assert len(rows) == 2 and all(r["status"] == "completed" for r in rows), rows
    assert all(float(r["val_loss"]) > 0 for r in rows)


# ---- kill -9 and distributed search (subprocesses) ----

@pytest.mark.slow
def test_search_survives_kill_9_mid_trial(project):
    # Each trial runs in a child process (the default): killing `dltool tune`
    # takes the child training trial 0 with it.
    command = _cli("tune", "--project", project, "--max-trials", 2, "--epochs", 5,
                   *TINY_SEARCH, *CHILDREN)
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    folder = project / "tuning" / "random"
    deadline, done, child = time.monotonic() + 300, 0, None
    while time.monotonic() < deadline and process.poll() is None:
        meta = (folder / "trial_0" / "execution0" / "run.json")
        if meta.exists():
            run = json.loads(meta.read_text())
            done, child = run.get("epochs_done", 0), run.get("pid")
            if done >= 2:
                os.kill(process.pid, signal.SIGKILL)
                break
        time.sleep(0.02)
    process.wait()
    assert 2 <= done < 5, "the search must be killed inside trial 0"
    assert child and child != process.pid, "the trial ran in a child process"
    for _ in range(100):
        stat = Path(f"/proc/{child}/stat")
        if not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
            break
        time.sleep(0.05)
    else:
        pytest.fail("the trial's process outlived `dltool tune`")
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    rows = _rows(folder)
    assert [(r["trial"], r["status"], r["epochs"]) for r in rows] == [
        ("0", "completed", "5"), ("1", "completed", "5")]
    # Trial 0 continued from its last completed epoch: each epoch logged once.
    with open(folder / "trial_0" / "execution0" / "history.csv") as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2", "3", "4"]
    for path in folder.rglob("*.json"):
        json.loads(path.read_text())  # every state file parses


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_chief_and_two_workers(project):
    address = f"127.0.0.1:{_free_port()}"
    common = ("--project", project, "--max-trials", 4, "--epochs", 1, *TINY_SEARCH)
    env = {**os.environ, "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}
    chief = subprocess.Popen(_cli("tune", "--chief", address, *common), env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    workers = [subprocess.Popen(_cli("tune", "--worker", address, *common), env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    outputs = []
    try:
        for process in [*workers, chief]:
            outputs.append(process.communicate(timeout=240)[0])
    finally:
        for process in [chief, *workers]:
            if process.poll() is None:
                process.kill()
    for process, output in zip([*workers, chief], outputs):
        assert process.returncode == 0, output
    assert "is not encrypted" in outputs[-1] and "chief.token" in outputs[-1]
    rows = _rows(project / "tuning" / "random")
    assert len(rows) == 4 and all(r["status"] == "completed" for r in rows)
    ran = [line for out in outputs[:2] for line in out.splitlines() if " ran " in line]
    assert len(ran) == 2 and all("ran 0 trial" not in line for line in ran), ran
    ids = {r["worker"] for r in rows}
    assert len(ids) == 2 and all(i.startswith("worker-") and i.endswith(("-0", "-1"))
                                 for i in ids)


# ---- pretrained backbones: searched like other hyperparameters, trained in phases ----

# Both backbones of a search, the phases' keys, and the tiny CNN for "scratch".
BACKBONE_SEARCH = (*TINY_SEARCH, "--set", "search.dropout=[0.0]",
                   "--set", "search.learning_rate=[0.003]",
                   "--set", 'search.backbone=["scratch", "presets/tiny_resnet"]',
                   "--set", "search.training.freeze_backbone_epochs=[1]",
                   "--set", "search.training.fine_tune_lr_factor=[0.1]")


@pytest.mark.parametrize("entry, message", [
    ({"training.epochs": [1, 2]}, "search.training.epochs: [search] takes these [training] "
                                  "keys only: training.freeze_backbone_epochs"),
    ({"training": {"fine_tune_lr_factor": [0.5, 2.0]}},
     "search.training.fine_tune_lr_factor must be a number from 1e-06 to 1.0; got 2.0"),
    ({"training": {"freeze_backbone_epochs": {"min": 0.5, "max": 2}}},
     "search.training.freeze_backbone_epochs: give integers"),
])
def test_bad_searched_training_key_names_it(entry, message):
    with pytest.raises(ConfigError) as error:
        config_lib.parse_search_space(entry)
    assert str(error.value).startswith(message)


def test_searched_training_keys_become_training_overrides():
    from dltool.tuning import trials

    space = config_lib.parse_search_space({"training": {"freeze_backbone_epochs": [0, 2]},
                                           "backbone": ["scratch", "presets/r"]})
    assert list(space) == ["training.freeze_backbone_epochs", "backbone"]
    assert trials.hyperparameter_overrides({"training.freeze_backbone_epochs": 2,
                                            "backbone": "presets/r"}) == [
        "training.freeze_backbone_epochs=2", 'model.backbone="presets/r"']


def test_phases_keys_are_inactive_in_scratch_trials():
    from dltool.tuning import space

    config = config_lib.Config(sections={
        "model": {"backbone": "scratch", "dropout": 0.1},
        "training": {"freeze_backbone_epochs": 5, "fine_tune_lr_factor": 0.01},
        "search": {"dropout": [0.1], "training": {"freeze_backbone_epochs": [1, 2]},
                   "backbone": ["scratch", "presets/r"]}})
    hp = space.search_hyperparameters(config)
    assert [h.name for h in hp.space] == ["backbone", "dropout",
                                         "training.freeze_backbone_epochs"]
    freeze = hp.space[-1]
    assert [(c.name, list(c.values)) for c in freeze.conditions] == [
        ("backbone", ["presets/r"])]
    assert space.trial_config(config, {"backbone": "scratch", "dropout": 0.1})[
        "training"]["freeze_backbone_epochs"] == 5  # the config's, unused


def test_train_decides_its_own_auto_momentum(tmp_path):
    """`--hparams` leaves out the trial's "auto" momentum (from tune.epochs)
    unless it was searched: the run decides it for its own epochs."""
    from dltool.core import files
    from dltool.tuning import trials

    files.write_json_atomic(tmp_path / trials.SEARCH_FILE, {"fingerprint": {
        "model": {"batchnorm_momentum": "auto", "dropout": 0.1},
        "search": {"dropout": [0.1, 0.2]}}})
    values = {"batchnorm_momentum": 0.9, "dropout": 0.2}
    assert trials.for_training(tmp_path, values) == {"dropout": 0.2}
    files.write_json_atomic(tmp_path / trials.SEARCH_FILE, {"fingerprint": {
        "model": {"batchnorm_momentum": "auto"}, "search": {"batchnorm_momentum": [0.9]}}})
    assert trials.for_training(tmp_path, values) == values


@pytest.fixture
def preset_project(project, image_preset):
    """A new image project with the tiny ResNet preset in presets/tiny_resnet."""
    import shutil

    shutil.copytree(image_preset, project / "presets" / "tiny_resnet")
    return project


@pytest.mark.slow
def test_search_over_backbones_runs_the_phases(runner, preset_project, monkeypatch):
    from dltool.tasks import phases

    entered = []  # (phase, trainable parameters) as each trial's fit enters it
    enter = phases.enter

    def recording_enter(model, phase, compile_config):
        enter(model, phase, compile_config)
        entered.append((phase.number, phases.trainable_parameters(model)))

    monkeypatch.setattr(phases, "enter", recording_enter)
    result = invoke(runner, "tune", "--project", preset_project, "--tuner", "grid",
                    "--max-trials", 2, "--epochs", 2, *BACKBONE_SEARCH)
    assert result.exit_code == 0, result.output
    rows = {r["backbone"]: r for r in _rows(preset_project / "tuning" / "grid")}
    assert set(rows) == {"scratch", "presets/tiny_resnet"}
    assert all(r["status"] == "completed" and r["epochs"] == "2" for r in rows.values())
    head = 16 * 10 + 10  # the ResNet's 16 features to the 10 classes
    assert entered == [(1, head), (2, 88_000 + head)]  # the scratch trial has no phases
    for trial_dir in (preset_project / "tuning" / "grid").glob("trial_*"):
        run = json.loads((trial_dir / "execution0" / "run.json").read_text())
        if run.get("backbone") == "presets/tiny_resnet":
            assert [(p["phase"], p["epochs"], p["learning_rate_factor"])
                    for p in run["phases"]] == [(1, [1, 1], 1.0), (2, [2, 2], 0.1)]
        else:
            assert "phases" not in run
    # One image size for both (the preset's), the momentum from tune.epochs.
    assert "data.image_size = [24, 24] (auto: the size the ImageConverters of the searched " \
           "backbones' presets (presets/tiny_resnet) resize to)" in result.output
    assert "model.batchnorm_momentum = 0.9 (auto: 16 training steps (8 an epoch x 2 " \
           "epochs)" in result.output
    assert "Phase 2 (epochs 2-2)" in result.output


@pytest.mark.slow
def test_bad_searched_backbone_is_one_line_before_any_trial(runner, preset_project):
    from conftest import save_image_preset

    save_image_preset(preset_project / "presets" / "resnet_32", image_size=32)
    for backbones, message in [
            ('["scratch", "presets/nope"]',
             "Error: search.backbone: 'presets/nope' (" f"{preset_project}/presets/nope): "
             "no such folder"),
            ('["presets/tiny_resnet", "presets/resnet_32"]',
             'Error: data.image_size = "auto": the searched backbones\' presets take different '
             "sizes (presets/tiny_resnet [24, 24], presets/resnet_32 [32, 32])")]:
        result = invoke(runner, "tune", "--project", preset_project, "--max-trials", 2,
                        "--epochs", 2, *BACKBONE_SEARCH, "--set", f"search.backbone={backbones}")
        assert result.exit_code == 1, result.output
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(message), result.output
        assert not (preset_project / "tuning").exists()


@pytest.mark.slow
@pytest.mark.parametrize("initial_epoch, epochs, trains", [
    (0, 1, ["head"]),                  # Hyperband's short round: stops inside phase 1
    (1, 3, ["head", "all"]),           # continues a trial: phase 1's last epoch, then 2
    (2, 4, ["all", "all"]),            # continues one in phase 2
])
def test_a_trial_enters_the_phase_of_its_epochs(tmp_path, image_preset, initial_epoch, epochs,
                                                trains):
    """`fit_phases` (the one loop of train and tune) with keras-tuner's
    `epochs` and `initial_epoch`: phase 1 is epochs 0-1 of 4."""
    import numpy as np

    import keras_hub
    from dltool._tf import keras
    from dltool.core import runs
    from dltool.engine import callbacks as dl_callbacks
    from dltool.engine import train
    from dltool.tasks import phases

    backbone = keras_hub.models.Backbone.from_preset(str(image_preset))
    inputs = keras.Input((24, 24, 3))
    outputs = keras.layers.Dense(2, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(backbone(inputs)))
    model = keras.Model(inputs, outputs)
    model.compile("adam", "sparse_categorical_crossentropy")
    config = config_lib.Config(sections={
        "model": {"backbone": "tiny"},
        "training": {"epochs": 4, "freeze_backbone_epochs": 2, "fine_tune_lr_factor": 0.1}})
    (tmp_path / "run").mkdir()
    run = runs.Run(tmp_path / "run", {"name": "run", "epochs_done": 0})
    backup = dl_callbacks.TrainingBackup(run.backup_dir)
    seen = []

    class Record(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            seen.append((epoch, phases.trainable_parameters(self.model)))

    x = np.random.default_rng(0).uniform(0, 255, (4, 24, 24, 3)).astype("float32")
    train.fit_phases(model, config, run, backup, None, lambda line: None,
                     lambda phase: [backup, Record()], x, np.array([0, 1, 0, 1]),
                     epochs=epochs, initial_epoch=initial_epoch, batch_size=4, verbose=0)
    size = {34: "head", 88_034: "all"}  # the head: 16 features to 2 classes
    assert seen == [(initial_epoch + i, n) for i, n in enumerate(
        [next(k for k, v in size.items() if v == t) for t in trains])]
    assert not backup.checkpoints()  # the execution ended: its backup is deleted
