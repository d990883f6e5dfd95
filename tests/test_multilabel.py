"""Multi-label classification (`data.multi_label = true`): label lists in image
manifests and text label columns, sigmoid models, per-label thresholds chosen
on the validation split, micro/macro F1 and mAP, and a SavedModel that returns
every label above its threshold; bad input stops in one line, writing nothing.

The metrics and the threshold rule are checked on numpy arrays (against
scikit-learn); one tiny project per template goes new -> train -> evaluate ->
export -> predict, its labels made by a rule from the embedded samples.
"""

import csv
import importlib.util
import json
import runpy
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, TEXT_MODEL, TINY_MODEL, invoke
from dltool.core import config as config_lib
from dltool.core.errors import ConfigError, DataError
from dltool.data import splits
from dltool.tasks import multilabel

SAMPLES = REPO / "dltool" / "data" / "samples"
# Labels by a rule: an image's class and its group, so every image has two.
GROUPS = {"airplane": "vehicle", "automobile": "vehicle", "cat": "animal", "dog": "animal"}
# Alone: training.monitor and tune.objective default to "auto" (val_pr_auc).
MULTI_LABEL = ("--set", "data.multi_label=true")


# ---- the metrics and the threshold rule (numpy) ----


def test_best_f1_threshold_sits_between_the_scores_it_separates():
    targets = np.array([1, 1, 0, 1, 0, 0])
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.2, 0.1])
    # F1 at each cut: 0.5, 0.8, 0.67, 0.86 (>= 0.6), 0.75, 0.67 -> between 0.6 and 0.2
    assert multilabel.best_f1_threshold(targets, scores) == pytest.approx(0.4)
    # ties: the highest threshold of equal F1; the lowest score's cut goes halfway to 0
    assert multilabel.best_f1_threshold(np.array([1, 0]), np.array([0.3, 0.3])) == \
        pytest.approx(0.15)
    assert multilabel.best_f1_threshold(np.array([0, 0]), np.array([0.9, 0.1]), 0.7) == 0.7


def test_thresholds_maximise_each_labels_f1():
    f1_score = pytest.importorskip("sklearn.metrics").f1_score

    rng = np.random.default_rng(0)
    targets = rng.random((100, 3)) < 0.3
    probabilities = np.round(targets * 0.3 + rng.random((100, 3)) * 0.7, 2)  # ties
    chosen = multilabel.choose_thresholds(targets, probabilities)
    for i, threshold in enumerate(chosen):
        best = max(f1_score(targets[:, i], probabilities[:, i] >= t)
                   for t in np.unique(probabilities[:, i]))
        assert f1_score(targets[:, i], probabilities[:, i] >= threshold) == pytest.approx(best)


def test_report_agrees_with_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    average_precision_score, f1_score = metrics.average_precision_score, metrics.f1_score

    rng = np.random.default_rng(1)
    targets = (rng.random((120, 4)) < 0.35).astype(np.float32)
    targets[:, 3] = 0  # a label without examples: out of the macro means
    probabilities = np.round(rng.random((120, 4)), 2).astype(np.float32)  # ties
    thresholds = [0.5, 0.4, 0.6, 0.5]
    report = multilabel.evaluation_report(targets, probabilities, thresholds, list("abcd"))
    predicted = probabilities >= np.float32(thresholds)
    assert report["micro_f1"] == pytest.approx(f1_score(targets, predicted, average="micro"))
    assert report["macro_f1"] == pytest.approx(
        f1_score(targets[:, :3], predicted[:, :3], average="macro"))
    expected_ap = [average_precision_score(targets[:, i], probabilities[:, i]) for i in range(3)]
    assert [c["average_precision"] for c in report["per_class"][:3]] == \
        pytest.approx(expected_ap)
    assert report["mean_average_precision"] == pytest.approx(np.mean(expected_ap))
    assert report["per_class"][3]["average_precision"] is None
    assert report["exact_match"] == pytest.approx(np.mean(np.all(predicted == targets, 1)))


def test_pr_curves_end_where_every_positive_is_found():
    targets = np.array([[1, 0], [0, 0], [1, 0], [0, 0]], dtype=np.float32)
    scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.3], [0.1, 0.4]], dtype=np.float32)
    first, second = multilabel.pr_curves(targets, scores)
    # Ranked 0.9 (hit), 0.8 (miss), 0.3 (hit), 0.1 (miss).
    assert first == {"recall": [0.5, 0.5, 1.0, 1.0], "precision": [1.0, 0.5, 0.6667, 0.5]}
    assert second is None  # no positive example
    many = multilabel.pr_curves((np.arange(1000) % 3 == 0)[:, None].astype(np.float32),
                                np.linspace(1, 0, 1000)[:, None], points=11)[0]
    assert len(many["recall"]) == 11 and many["recall"][-1] == 1.0


def test_serving_outputs_list_the_labels_above_their_thresholds():
    outputs = multilabel.serving_outputs(
        np.array([[0.9, 0.2, 0.6], [0.1, 0.2, 0.3]], np.float32), ["a", "b", "c"],
        [0.5, 0.1, 0.7])
    outputs = {name: value.numpy() for name, value in outputs.items()}
    assert outputs["labels"].tolist() == [[b"a", b"b", b""], [b"b", b"", b""]]
    np.testing.assert_allclose(outputs["scores"], [[0.9, 0.2, 0], [0.2, 0, 0]])
    assert outputs["label_count"].tolist() == [2, 1]
    assert outputs["selected"].tolist() == [[True, True, False], [False, True, False]]


# ---- bad input: one line, nothing written ----


def test_label_cells_and_config_are_refused_in_one_line():
    assert splits.parse_labels(" cat; dog ;cat", ";", "m.csv:2") == ("cat", "dog")
    with pytest.raises(DataError) as error:
        splits.parse_labels(" ; ", ";", "m.csv:3")
    assert str(error.value) == ("m.csv:3: empty label list (data.multi_label = true needs at "
                                "least one label per example, separated by ';')")
    for raw, message in [
        ({"project": {"template": "image-classifier"}, "data": {"threshold": 1.5}},
         "data.threshold must be a number from 0.01 to 0.99; got 1.5"),
        ({"project": {"template": "translator"}, "data": {"multi_label": True}},
         "unknown config key 'data.multi_label' for the translator template (a key of the "
         "image-classifier and sentiment templates)")]:
        with pytest.raises(ConfigError) as error:
            config_lib.validate(raw)
        assert str(error.value) == message


def _config(template, **changes):
    raw = {"project": {"template": template}}
    for key, value in changes.items():
        section, name = key.split("__")
        raw.setdefault(section, {})[name] = value
    return config_lib.Config(config_lib.validate(raw))


def test_auto_monitor_and_objective_follow_multi_label():
    for template in ("image-classifier", "sentiment"):
        multi = _config(template, data__multi_label=True)
        assert (multi["training"]["monitor"], multi["tune"]["objective"]) == \
            ("val_pr_auc", "val_pr_auc")
        single = _config(template)
        assert (single["training"]["monitor"], single["tune"]["objective"]) == \
            ("val_accuracy", "val_accuracy")
        # An explicit metric is kept.
        assert _config(template, data__multi_label=True,
                       training__monitor="val_loss")["training"]["monitor"] == "val_loss"
    translator = _config("translator", training__monitor="auto")
    assert translator["training"]["monitor"] == "val_accuracy"
    assert _config("translator")["training"]["monitor"] == "val_loss"  # its own default


def test_settings_multi_label_cannot_use_are_refused():
    from dltool.tasks import task_for

    task = task_for("sentiment")
    with pytest.raises(ConfigError, match="^training.monitor = 'val_accuracy' is single-label "
                                          "accuracy.*set training.monitor = \"auto\" "
                                          "\\(val_pr_auc"):
        task.check_config(_config("sentiment", data__multi_label=True,
                                  training__monitor="val_accuracy"))
    with pytest.raises(ConfigError, match="^tune.objective = 'accuracy' is single-label"):
        task.check_config(_config("sentiment", data__multi_label=True,
                                  tune__objective="accuracy"))
    with pytest.raises(ConfigError, match='^training.class_weight applies to single-label'):
        task.check_config(_config("sentiment", data__multi_label=True,
                                  training__class_weight="balanced"))
    task.check_config(_config("sentiment", data__multi_label=True))  # the defaults
    task.check_config(_config("sentiment"))  # single-label: the defaults


def _manifest(path, rows):
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows([["path", "label", "split"], *rows])


def _sample_rows(per_class=None):
    rows = []
    for split in ("train", "test"):
        for name, group in GROUPS.items():
            for image in sorted((SAMPLES / "cifar10" / split / name).glob("*.jpg"))[:per_class]:
                rows.append([str(image), f"{name};{group}", "test" if split == "test" else ""])
    return rows


@pytest.mark.parametrize("row, labels, message", [
    (["{img}", "cat;zebra", "test"], "", "labels.csv:4: label 'zebra' of a test row has no "
                                         "training rows (labels: animal, cat, dog)"),
    (["{img}", "bird", ""], "cat,dog,animal", "labels.csv:4: label 'bird' is not one of "
                                              "data.labels (cat, dog, animal)"),
    (["{img}", " ; ", ""], "", "labels.csv:4: empty label list (data.multi_label = true needs "
                               "at least one label per example, separated by ';')"),
])
def test_bad_manifest_rows_stop_training_writing_nothing(runner, project, row, labels,
                                                         message):
    image = next((SAMPLES / "cifar10" / "train" / "cat").glob("*.jpg"))
    rows = [[str(image), "cat;animal", ""], [str(image), "dog;animal", ""]]
    _manifest(project / "labels.csv", [*rows, [c.format(img=image) for c in row]])
    result = invoke(runner, "train", "--project", project, "--set", "data.source=labels.csv",
                    "--set", f"data.labels={labels}", *MULTI_LABEL, *TINY_MODEL)
    assert result.exit_code != 0
    assert result.output.strip().splitlines()[-1] == f"Error: {project / message}"
    assert not (project / "runs").exists() or not any((project / "runs").iterdir())


def test_a_text_label_outside_data_labels_names_file_and_line(tmp_path):
    from dltool.data import multilabel as data_lib

    (tmp_path / "train.tsv").write_text("sentence\tlabel\nfine\ta;b\nbad\ta;c\n")
    data = config_lib.defaults(config_lib.schema_for("sentiment"))["data"]
    with pytest.raises(DataError) as error:
        data_lib.open_text_data({**data, "source": "train.tsv", "multi_label": True,
                                 "labels": "a,b"}, tmp_path, seed=1)
    assert str(error.value) == f"{tmp_path / 'train.tsv'}:3: label 'c' is not one of " \
                               "data.labels (a, b)"


# ---- end to end: one project per template ----


def _check_predictions(records, meta):
    """Every label shown reaches its threshold, and every other one does not."""
    thresholds = dict(zip(meta["class_names"], meta["thresholds"]))
    for record in records:
        shown = {entry["label"] for entry in record["labels"]}
        probabilities = [entry["probability"] for entry in record["labels"]]
        assert probabilities == sorted(probabilities, reverse=True)
        for label, probability in record["probabilities"].items():
            assert (label in shown) == (probability >= thresholds[label] - 1e-6), label


def _run_client(export, inputs):
    """The README's SavedModel client, run locally (`classify_local`)."""
    readme = (export / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    (export / "client.py").write_text(code)
    import os

    cwd = os.getcwd()
    os.chdir(export)
    try:
        return runpy.run_path(str(export / "client.py"))["classify_local"](inputs)
    finally:
        os.chdir(cwd)


def test_image_classifier_end_to_end(runner, tmp_path):
    project = tmp_path / "tags"
    assert invoke(runner, "new", "image-classifier", project).exit_code == 0
    _manifest(project / "labels.csv", _sample_rows(per_class=25))
    result = invoke(runner, "train", "--project", project, "--epochs", 2,
                    "--set", "data.source=labels.csv", *MULTI_LABEL, *TINY_MODEL)
    assert result.exit_code == 0, result.output
    assert "labels per training example: 2.00 on average, 2 at most" in result.output
    assert "Decision thresholds: per label, the threshold that maximises its F1" in result.output
    (run_file,) = project.glob("runs/*/run.json")
    meta = json.loads(run_file.read_text())["meta"]
    assert meta["multi_label"] and len(meta["thresholds"]) == 6

    result = invoke(runner, "evaluate", "--project", project, "--json")
    assert result.exit_code == 0, result.output
    evaluation = json.loads(result.stdout)
    assert evaluation["examples"] == 80 and evaluation["multi_label"]
    assert {"micro_f1", "macro_f1", "mean_average_precision"} <= set(evaluation)
    assert [c["name"] for c in evaluation["per_class"]] == sorted({*GROUPS, *GROUPS.values()})
    curves = evaluation["pr_curves"]
    assert len(curves) == 6 and all(len(c["recall"]) == len(c["precision"]) for c in curves)
    report = next(project.glob("runs/*/report.html")).read_text()
    for title in ("Per label (test)", "Precision-recall curves (test)",
                  "Sample predictions (test)", "Most confident mistakes (test)",
                  "What the model looked at: sample predictions (test)"):
        assert title in report
    assert "true labels / predicted labels" in report
    (run_dir,) = project.glob("runs/*/")
    for figure in ("precision-recall-test.png", "samples-test.png", "gradcam-samples-test.png"):
        assert (run_dir / figure).stat().st_size > 1000, figure
    result = invoke(runner, "runs", "--project", project)
    assert f"micro F1 {evaluation['micro_f1']:.4f}" in result.output, result.output

    assert invoke(runner, "export", "--project", project).exit_code == 0
    export = project / "saved_models" / "tags" / "1"
    result = invoke(runner, "predict", "--project", project, "--json", project / "samples")
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert len(records) == 3
    _check_predictions(records, meta)

    # `dltool serve` returns the signature's outputs: the labels and their scores
    from dltool.serving import models

    version = models.load_version(project, 1, export)
    assert {"labels", "scores", "label_count", "selected"} <= set(version.outputs)
    images = [p.read_bytes() for p in sorted((project / "samples").glob("*.jpg"))]
    served = version.serve(images)
    labels = _run_client(export, [str(p) for p in sorted((project / "samples").glob("*.jpg"))])
    for i, record in enumerate(records):
        count = int(served["label_count"][i])
        assert [label.decode() for label in served["labels"][i][:count]] == \
            [entry["label"] for entry in record["labels"]] == [label for label, _ in labels[i]]

    # ONNX: the model's sigmoids, thresholded by the README's client from dltool.json
    if all(importlib.util.find_spec(name) for name in ("tf2onnx", "onnxruntime")):
        assert invoke(runner, "export", "--project", project, "--format", "onnx").exit_code == 0
        onnx = project / "exports" / "tags" / "onnx" / "1"
        code = (onnx / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
        (onnx / "client.py").write_text(code)
        paths = [str(p) for p in sorted((project / "samples").glob("*.jpg"))]
        printed = subprocess.run([sys.executable, "client.py", *paths], cwd=onnx, check=True,
                                 capture_output=True, text=True).stdout.splitlines()
        shown = [[pair.split(" ")[0] for pair in line.split(" ", 1)[1].split(", ")]
                 if " " in line else [] for line in printed]
        assert shown == [[entry["label"] for entry in r["labels"]] for r in records]


def _text_rows(split, lines):
    """SST-2 lines labelled by rule: their sentiment, plus `film` when they name one."""
    rows = ["sentence\tlabel"]
    for line in (SAMPLES / "sst2" / f"{split}.tsv").read_text().splitlines()[1:lines + 1]:
        text, label = line.rsplit("\t", 1)
        tags = ["positive" if label == "1" else "negative"]
        tags += ["film"] if {"film", "movie", "films", "movies"} & set(text.split()) else []
        rows.append(f"{text}\t{'|'.join(tags)}")
    return "\n".join(rows) + "\n"


def test_sentiment_end_to_end(runner, tmp_path):
    data = tmp_path / "reviews"
    data.mkdir()
    (data / "train.tsv").write_text(_text_rows("train", 600))
    (data / "test.tsv").write_text(_text_rows("test", 100))
    project = tmp_path / "tagger"
    assert invoke(runner, "new", "sentiment", project, "--data", data).exit_code == 0
    settings = ("--set", "data.label_separator=|", *MULTI_LABEL, *TEXT_MODEL)
    result = invoke(runner, "train", "--project", project, "--epochs", 2, *settings)
    assert result.exit_code == 0, result.output
    result = invoke(runner, "evaluate", "--project", project)
    assert result.exit_code == 0, result.output
    assert any(line.startswith("mAP ") for line in result.output.splitlines())
    with open(next(project.glob("runs/*/predictions-test.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 100 and set(rows[0]) >= {"true", "predicted", "probability_film"}
    assert invoke(runner, "export", "--project", project).exit_code == 0
    texts = ["a fine film , full of life", "dull and tired"]
    result = invoke(runner, "predict", "--project", project, "--json", *texts)
    assert result.exit_code == 0, result.output
    meta = json.loads((project / "saved_models" / "tagger" / "1" / "dltool.json")
                      .read_text())["meta"]
    _check_predictions(json.loads(result.stdout), meta)
    result = invoke(runner, "predict", "--project", project, "--quiet", *texts)
    assert result.exit_code == 0, result.output
    assert len(result.output.splitlines()) == 2
