"""`dltool train --init-from`: start from an earlier run's or export's weights.

Sources: a run of the project (by name), a run folder of another project, an
exported version folder and a `.keras` file, all from the shared tiny trained
image project (`trained_project`); the head rebuilt for other classes (3 of
the embedded sample's 10) and for multi-label data; the sentiment template
taking its source's vocabulary; the record in `run.json`, the report and
`dltool runs --compare`; a resumed run not loaded again over its own
checkpoint (SIGKILL); the mirrored strategy; and every bad source refused in
one line, leaving no run folder.
"""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import REPO, TEXT_MODEL, TINY_MODEL, invoke, rewrite_keras_config
from dltool.core import runs
from dltool.engine import initfrom
from dltool.engine.experiment import Experiment

SAMPLES = REPO / "dltool" / "data" / "samples"
TINY = ["model.filters=8", "model.blocks=1"]
BODY = ["conv2d", "conv2d_1", "batch_normalization"]


def _source_run(project):
    (run,) = runs.list_runs(project)
    return run


def _run_names(project):
    return sorted(p.name for p in (project / "runs").iterdir()) if (project / "runs").is_dir() \
        else []


def _new_record(project, before):
    (name,) = set(_run_names(project)) - set(before)
    return json.loads((project / "runs" / name / "run.json").read_text())


def _three_class_data(root):
    """3 classes of the embedded sample (cat, dog, ship), train and test."""
    for split in ("train", "test"):
        for name in ("cat", "dog", "ship"):
            shutil.copytree(SAMPLES / "cifar10" / split / name, root / split / name)
    return root


def _started(project, text, overrides=TINY):
    """What `train` does before fitting: the source matched into a new model,
    its weights set. Returns `(source, model, start)`."""
    experiment = Experiment.open(project, overrides)
    source = initfrom.open_source(project, text, experiment.config.template)
    data = experiment.open_data(run_meta=initfrom.data_meta(source))
    model, _ = experiment.build_model(data.meta)
    start = initfrom.match(source, model, data.meta)
    initfrom.apply(start, project / "no-backup", echo=lambda line: None)
    return source, model, start


def _weights_by_key(model):
    return {key: arrays for key, _, arrays in initfrom.layer_weights(model)}


@pytest.mark.parametrize("kind", ["run name", "run folder", "export folder", "keras file"])
def test_every_source_kind_loads_every_layer(trained_project, copy_project, kind):
    import keras

    project = copy_project(trained_project)
    run = _source_run(project)
    export = project / "saved_models" / "proj" / "1"
    text = {"run name": run.name, "run folder": str(trained_project / "runs" / run.name),
            "export folder": str(export), "keras file": str(export / "model.keras")}[kind]
    source, model, start = _started(project, text)
    assert start.record["loaded"] == [*BODY, "dense"] and start.record["new"] == []
    # A .keras file of an export is read with the dltool.json beside it.
    assert start.record["class_names"] == run.meta["class_names"]
    # The weights loaded are the source's, read independently of dltool.
    if kind.startswith("run"):
        reference = Experiment.for_run(project, run).load_trained_model(run)
    else:
        reference = keras.saving.load_model(export / "model.keras", compile=False)
    expected, got = _weights_by_key(reference), _weights_by_key(model)
    for key in start.record["loaded"]:
        for a, b in zip(expected[key], got[key]):
            np.testing.assert_array_equal(a, b)


def test_other_classes_rebuild_the_head_and_load_the_rest(runner, trained_project, tmp_path):
    project = tmp_path / "three"
    assert invoke(runner, "new", "image-classifier", project, "--data",
                  _three_class_data(tmp_path / "data")).exit_code == 0
    run = _source_run(trained_project)
    source, model, start = _started(project, str(run.dir))
    assert start.record["loaded"] == BODY and start.record["new"] == ["dense"]
    assert start.record["head"] == "the classes differ"
    got, theirs = _weights_by_key(model), {k: a for k, _, a in source.layers}
    assert got["dense"][0].shape == (8, 3) and theirs["dense"][0].shape == (8, 10)
    for key in BODY:
        for a, b in zip(theirs[key], got[key]):
            np.testing.assert_array_equal(a, b)

    before = _run_names(project)
    result = invoke(runner, "train", "--project", project, "--epochs", 1, *TINY_MODEL,
                    "--init-from", run.dir)
    assert result.exit_code == 0, result.output
    line = (f"Init from run {run.name} (image-classifier, 10 classes): 3 layers loaded, "
            "1 new (dense: the classes differ)")
    assert line in result.output
    record = _new_record(project, before)
    assert record["status"] == "finished"
    assert record["init_from"] == {
        "source": str(run.dir.resolve()), "kind": "run", "name": run.name,
        "template": "image-classifier", "class_names": run.meta["class_names"],
        "multi_label": False, "loaded": BODY, "new": ["dense"],
        "head": "the classes differ", "vocabulary": None}
    report = (project / "runs" / record["name"] / "report.md").read_text()
    assert f"initial weights | {line.removeprefix('Init from ')}" in report

    # A second run from scratch, compared with it.
    assert invoke(runner, "train", "--project", project, "--epochs", 1, "--fresh",
                  *TINY_MODEL).exit_code == 0
    scratch = (set(_run_names(project)) - {record["name"]}).pop()
    result = invoke(runner, "runs", "--project", project, "--compare", record["name"], scratch,
                    "--json")
    rows = {name: (a, b) for name, a, b in json.loads(result.stdout)["metrics"]}
    assert rows["init from"] == (line.removeprefix("Init from "), None)


def test_multi_label_head_is_rebuilt(runner, trained_project, tmp_path):
    project = tmp_path / "tags"
    assert invoke(runner, "new", "image-classifier", project).exit_code == 0
    with open(project / "labels.csv", "w", newline="") as f:
        rows = [[str(image), f"{name};{'animal' if name == 'cat' else 'vehicle'}", split]
                for split in ("train", "test") for name in ("cat", "ship")
                for image in sorted((SAMPLES / "cifar10" / split / name).glob("*.jpg"))[:20]]
        csv.writer(f).writerows([["path", "label", "split"],
                                 *[[p, l, "test" if s == "test" else ""] for p, l, s in rows]])
    result = invoke(runner, "train", "--project", project, "--epochs", 1, *TINY_MODEL,
                    "--set", "data.source=labels.csv", "--set", "data.multi_label=true",
                    "--set", "training.monitor=val_pr_auc",
                    "--set", "tune.objective=val_pr_auc",
                    "--init-from", _source_run(trained_project).dir)
    assert result.exit_code == 0, result.output
    (run,) = runs.list_runs(project)
    assert run["init_from"]["loaded"] == BODY and run["init_from"]["new"] == ["dense"]
    assert run.meta["multi_label"]


def test_same_classes_other_head_kind_is_rebuilt():
    classes = {"class_names": ["cat", "dog"]}
    assert initfrom._head_reason(classes, dict(classes)) is None
    assert initfrom._head_reason(classes, {**classes, "multi_label": True}) == \
        "multi-label (sigmoid) and single-label (softmax) heads differ"
    assert initfrom._head_reason(None, classes) == "the source's classes are unknown"
    assert initfrom._head_reason(classes, {"source_vocabulary": []}) is None  # translator


def test_sentiment_takes_the_source_vocabulary(runner, trained_text_project, copy_project):
    project = copy_project(trained_text_project)
    (source,) = runs.list_runs(project)
    result = invoke(runner, "train", "--project", project, "--epochs", 1, *TEXT_MODEL,
                    "--set", "data.vocabulary_size=50", "--init-from", source.name)
    assert result.exit_code == 0, result.output
    (run,) = [r for r in runs.list_runs(project) if r.name != source.name]
    assert run.meta["vocabulary"] == source.meta["vocabulary"]
    assert len(source.meta["vocabulary"]) > 50
    assert run["init_from"]["new"] == [] and len(run["init_from"]["loaded"]) >= 3
    assert "vocabulary: the source's" in result.output


def test_mirrored_strategy_starts_from_the_source(trained_project, copy_project):
    project = copy_project(trained_project)
    source = _source_run(project)
    # Its own process: the 2 CPU devices must be made before TensorFlow starts.
    result = subprocess.run(
        [sys.executable, "-m", "dltool.cli", "train", "--project", str(project), "--epochs",
         "1", *TINY_MODEL, "--strategy", "mirrored", "--set", "runtime.cpu_devices=2",
         "--init-from", source.name], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 replica(s)" in result.stdout and "4 layers loaded, 0 new" in result.stdout


def test_resumed_run_is_not_loaded_again(trained_project, copy_project):
    project = copy_project(trained_project)
    source = _source_run(project)
    command = [sys.executable, "-m", "dltool.cli", "train", "--project", str(project),
               "--epochs", "4", *TINY_MODEL, "--init-from", source.name]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline, done = time.monotonic() + 300, 0
    while time.monotonic() < deadline and process.poll() is None:
        records = [p for p in (project / "runs").glob("*/run.json")
                   if p.parent.name != source.name]
        done = json.loads(records[0].read_text()).get("epochs_done", 0) if records else 0
        if done >= 1:
            os.kill(process.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    first = process.communicate()[0]
    assert 1 <= done < 4, first
    assert "4 layers loaded, 0 new" in first
    result = subprocess.run(command, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "resuming an unfinished run with the same config" in result.stdout
    assert (f"Init from run {source.name}: not loaded again, the run resumes from its own "
            "checkpoint") in result.stdout
    (run,) = [r for r in runs.list_runs(project) if r.name != source.name]
    assert run["status"] == "finished" and run["epochs_done"] == 4
    assert run["init_from"]["name"] == source.name
    with open(run.history_file) as f:
        assert [row["epoch"] for row in csv.DictReader(f)] == ["0", "1", "2", "3"]


def test_only_the_same_start_resumes_a_run(project):
    from dltool.core.project import load_config

    config = load_config(project)
    started = runs.Run.create(project, config, init_from={"source": "/elsewhere/run"})
    assert runs.find_resumable(project, config) is None  # from scratch: a new run
    assert runs.find_resumable(project, config, "/other/run") is None
    assert runs.find_resumable(project, config, "/elsewhere/run").name == started.name


def _refuse_keras(config):
    """Makes the first Conv2D a class of a module dltool's templates never use."""
    layer = next(layer for layer in config["config"]["layers"]
                 if layer["class_name"] == "Conv2D")
    layer.update(module="os", class_name="system", registered_name=None)


@pytest.mark.parametrize("case", [
    "other template", "no such run", "not a model", "not a zip", "refused layer",
    "other filters", "other blocks", "model folder", "remote", "missing path",
    "text without vocabulary", "run without meta"])
def test_bad_sources_are_one_line_and_write_nothing(runner, trained_project,
                                                    trained_text_project, copy_project,
                                                    tmp_path, case):
    project = copy_project(trained_project)
    run = _source_run(project)
    export = project / "saved_models" / "proj" / "1"
    (text_run,) = runs.list_runs(trained_text_project)
    args = TINY_MODEL
    if case == "text without vocabulary":
        project = copy_project(trained_text_project)
        args = TEXT_MODEL
        source = shutil.copy(project / "saved_models" / "reviews" / "1" / "model.keras",
                             tmp_path / "reviews.keras")
        message = (f"--init-from: keras file reviews.keras has no vocabulary (a .keras file "
                   "without its dltool.json): give the run or the exported version folder")
    elif case == "run without meta":
        source = shutil.copytree(run.dir, tmp_path / "copied-run")
        record = json.loads((source / "run.json").read_text())
        del record["meta"]
        (source / "run.json").write_text(json.dumps(record))
        message = (f"--init-from: run {run.name}: its run.json does not describe its data "
                   "(meta: 'class_names')")
    elif case == "other template":
        source = text_run.dir
        message = (f"--init-from: run {text_run.name} was trained with the sentiment "
                   "template; this project's is image-classifier: start from a run or "
                   "export of the same template")
    elif case == "no such run":
        source = run.name[:-1]
        message = (f"--init-from: no run named '{run.name[:-1]}' in {project / 'runs'}; "
                   f"did you mean {run.name}?")
    elif case == "not a model":
        source = project / "config.toml"
        message = (f"--init-from: {source}: not a model (give a run, a run folder, an "
                   "exported version folder or a .keras file)")
    elif case == "not a zip":
        source = tmp_path / "fake.keras"
        source.write_text("not a model")
        message = f"{source}: corrupt .keras file (not a zip archive)"
    elif case == "refused layer":
        source = rewrite_keras_config(export / "model.keras", tmp_path / "evil.keras",
                                 _refuse_keras)
        message = "uses os.system, which dltool's templates never produce"
    elif case == "other filters":
        source, args = run.name, ("--set", "model.filters=16", "--set", "model.blocks=1")
        message = (f"--init-from: run {run.name} does not fit this project's model: layer "
                   "conv2d (Conv2D) has weights (3, 3, 3, 8), (8,) there and (3, 3, 3, 16), "
                   "(16,) here (compare its [model] settings with these)")
    elif case == "other blocks":
        source, args = run.name, ("--set", "model.filters=8", "--set", "model.blocks=2")
        message = (f"--init-from: run {run.name} does not fit this project's model: it has "
                   "no layer conv2d_2 (Conv2D)")
    elif case == "model folder":
        source = export.parent
        message = (f"--init-from: {source} holds exported versions: give one of them, e.g. "
                   f"{export}")
    elif case == "remote":
        source = "gs://bucket/run"
        message = "--init-from: gs://bucket/run: remote sources are refused; download it first"
    else:
        source = tmp_path / "gone" / "model.keras"
        message = f"--init-from: {source}: no such file or folder"
    before = _run_names(project)
    result = invoke(runner, "train", "--project", project, "--epochs", 1, *args,
                    "--init-from", source)
    assert result.exit_code == 1
    # Errors found once the data is open (the model must fit its classes)
    # follow the data's report: the error is the last line, and the only one.
    lines = result.output.strip().splitlines()
    assert [line for line in lines if "Error" in line or "Traceback" in line] == [lines[-1]]
    assert lines[-1].startswith("Error: ") and message in lines[-1], result.output
    assert _run_names(project) == before


def test_translator_takes_the_source_vocabularies_and_loads_every_layer(runner, tmp_path):
    small = ("--set", "model.embedding_dim=16", "--set", "model.units=16",
             "--set", "decoding.beam_width=2", "--set", "training.verbose=0")
    first, second = tmp_path / "first.tsv", tmp_path / "second.tsv"
    first.write_text("".join(f"I see {i} cats.\tJe vois {i} chats.\n" for i in range(40)))
    second.write_text("".join(f"You have {i} dogs.\tTu as {i} chiens.\n" for i in range(40)))
    project = tmp_path / "fr"
    assert invoke(runner, "new", "translator", project).exit_code == 0
    assert invoke(runner, "train", "--project", project, "--epochs", 1,
                  "--set", f"data.source={first}", *small).exit_code == 0
    (source,) = runs.list_runs(project)
    result = invoke(runner, "train", "--project", project, "--epochs", 1,
                    "--set", f"data.source={second}", *small, "--init-from", source.name)
    assert result.exit_code == 0, result.output
    (run,) = [r for r in runs.list_runs(project) if r.name != source.name]
    for key in ("source_vocabulary", "target_vocabulary"):
        assert run.meta[key] == source.meta[key]
    assert "chiens" not in run.meta["target_vocabulary"]  # the source's, not adapted again
    assert run["init_from"]["new"] == [] and run["init_from"]["head"] is None
    assert len(run["init_from"]["loaded"]) >= 4
