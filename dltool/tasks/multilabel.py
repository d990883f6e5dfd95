"""Multi-label classification: what the classifier tasks do when `data.multi_label = true`.

The model ends in one sigmoid per label, trained with binary cross-entropy
on multi-hot targets (`dltool.data.multilabel`). After training, each
label's decision threshold is chosen on the validation split
(`choose_thresholds`: the one that maximises the label's F1) and stored in
the run's `meta` (`thresholds`, `threshold_rule`), which the export copies
into `dltool.json`. The exported SavedModel applies them in its graph
(`serving_outputs`): it returns every label whose probability reaches its
threshold, most probable first, with its probability.

An evaluation reports micro and macro F1, the mean average precision (mAP),
the exact-match ratio and per-label precision, recall, F1, average precision
and support; `predictions-SPLIT.csv` has a row per example with its true and
predicted label sets and every label's probability.

`dltool.tasks.classifier.ClassifierTask` calls these functions when the run's
`meta` (or the evaluation, or the export's outputs) says multi-label; a
single-label project never reaches them.
"""

import numpy as np

from dltool._tf import keras, tf
from dltool.core import config as config_lib
from dltool.core import tables
from dltool.core.errors import ConfigError
from dltool.data import multilabel as data_lib
from dltool.data import pipeline
from dltool.report import plots
from dltool.report.reports import Section
from dltool.tasks import class_scores

# The monitor a multi-label config resolves "auto" to: the template models
# log `pr_auc` (each label's precision-recall AUC, averaged: what the
# evaluation's mAP measures) and `binary_accuracy`, not "accuracy", which
# Keras would take for categorical accuracy (argmax against argmax),
# meaningless for several labels.
MONITOR = config_lib.AUTO_METRICS[True]


def is_multi_label(meta):
    """Whether a run's or export's `meta` describes multi-label data."""
    return bool(meta.get("multi_label"))


def data_meta(settings):
    """What a multi-label run's `meta` adds to the class names, from `[data]`."""
    if not settings["multi_label"]:
        return {}
    return {"multi_label": True, "label_separator": settings["label_separator"]}


def model_kwargs(meta):
    """`{"multi_label": True}` for multi-label data, else `{}`: a project's
    single-label `model.py` need not take the argument."""
    return {"multi_label": True} if is_multi_label(meta) else {}


def check_config(config):
    """Refuses the settings a multi-label classifier cannot use, in one line.

    Raises:
        ConfigError: an empty `data.label_separator`, `training.class_weight`
            other than `"none"`, or `training.monitor` / `tune.objective` on
            accuracy (which a multi-label model does not log).
    """
    data = config["data"]
    if not data.get("multi_label"):  # a classifier template without the key: single-label
        return
    if not data["label_separator"]:
        raise ConfigError("data.label_separator must be a non-empty string (what separates "
                          "an example's labels, e.g. \";\")")
    if config["training"]["class_weight"] != "none":
        raise ConfigError('training.class_weight applies to single-label classifiers; with '
                          'data.multi_label = true it takes only "none"')
    for key, value in (("training.monitor", config["training"]["monitor"]),
                       ("tune.objective", config["tune"]["objective"])):
        if value.removeprefix("val_") == "accuracy":
            raise ConfigError(f"{key} = {value!r} is single-label accuracy, which a "
                              f"multi-label model does not log (data.multi_label = true); set "
                              f"{key} = \"auto\" ({MONITOR}: the labels' mean precision-recall "
                              "AUC) or \"val_loss\"")


# ---- thresholds and metrics (numpy) ----


def _ranked(targets, scores):
    """Cumulative true and false positives at each distinct score, highest first.

    Returns:
        A tuple `(thresholds, true_positives, false_positives)`: predicting
        positive every example scored at least `thresholds[k]` gives
        `true_positives[k]` and `false_positives[k]`.
    """
    order = np.argsort(-scores, kind="mergesort")
    scores, targets = scores[order], targets[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # end of each tie
    true_positives = np.cumsum(targets)[last]
    return scores[last], true_positives, last + 1 - true_positives


def best_f1_threshold(targets, scores, fallback=0.5):
    """The decision threshold that maximises one label's F1 on these examples.

    Every distinct score is a candidate (predict positive at or above it);
    the best one, the highest when several tie, is moved halfway down to the
    next lower score, so the examples it separates stay separated and the
    margin is the same on both sides.

    Args:
        targets: 0/1 array `(n,)`.
        scores: Probabilities `(n,)`.
        fallback: The threshold of a label without a positive example (its
            F1 is 0 at every threshold).

    Returns:
        A float in (0, 1].
    """
    targets = np.asarray(targets, dtype=np.float64)
    positives = targets.sum()
    if positives == 0:
        return float(fallback)
    thresholds, tp, fp = _ranked(targets, np.asarray(scores, dtype=np.float64))
    f1 = 2 * tp / (tp + fp + positives)
    best = int(np.argmax(f1))
    lower = thresholds[best + 1] if best + 1 < len(thresholds) else 0.0
    return float((thresholds[best] + lower) / 2)


def choose_thresholds(targets, probabilities, fallback=0.5):
    """Each label's `best_f1_threshold`, a list (index = label)."""
    return [best_f1_threshold(targets[:, i], probabilities[:, i], fallback)
            for i in range(targets.shape[1])]


def average_precision(targets, scores):
    """Average precision of one label: the mean of the precision at each
    positive example's rank, ties grouped (scikit-learn's
    `average_precision_score`); None without a positive example."""
    targets = np.asarray(targets, dtype=np.float64)
    positives = targets.sum()
    if positives == 0:
        return None
    _, tp, fp = _ranked(targets, np.asarray(scores, dtype=np.float64))
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tp / (tp + fp)))


def evaluation_report(targets, probabilities, thresholds, class_names):
    """Micro and macro F1, mAP, exact match and the per-label figures.

    Args:
        targets: Multi-hot array `(n, labels)`.
        probabilities: Model outputs `(n, labels)`.
        thresholds: Each label's threshold (a label is predicted when its
            probability is at least its threshold).
        class_names: The label names.

    Returns:
        A dict: `micro_f1` (F1 of all the label decisions pooled),
        `macro_f1` and `mean_average_precision` (means over the labels that
        have examples here), `exact_match` (examples whose predicted label
        set is exactly right), `labels_per_example` (true and predicted
        means) and `per_class` (per label: name, threshold, precision,
        recall, f1, average_precision, support).
    """
    truth = np.asarray(targets) > 0.5
    predicted = np.asarray(probabilities) >= np.asarray(thresholds, dtype=np.float32)
    tp = (truth & predicted).sum(axis=0)
    fp = (~truth & predicted).sum(axis=0)
    support = truth.sum(axis=0)
    per_class = [{**class_scores.class_figures(name, tp[i], tp[i] + fp[i], support[i]),
                  "threshold": float(thresholds[i]),
                  "average_precision": average_precision(truth[:, i], probabilities[:, i])}
                 for i, name in enumerate(class_names)]
    present = [c for c in per_class if c["support"]]
    pooled = 2 * tp.sum() + fp.sum() + (support - tp).sum()
    return {
        "micro_f1": float(2 * tp.sum() / pooled) if pooled else 0.0,
        "macro_f1": float(np.mean([c["f1"] for c in present])) if present else 0.0,
        "mean_average_precision": float(np.mean([c["average_precision"] for c in present]))
        if present else 0.0,
        "exact_match": float(np.mean(np.all(truth == predicted, axis=1))),
        "labels_per_example": {"true": float(truth.sum(axis=1).mean()),
                               "predicted": float(predicted.sum(axis=1).mean())},
        "per_class": per_class}


# ---- training and evaluating ----


def choose_run_thresholds(model, data, config, run, echo=None):
    """Chooses the run's decision thresholds and records them in its `meta`
    (`thresholds`, `threshold_rule`).

    With `data.thresholds = "best_f1"` and a validation split that training
    did not see, each label's threshold maximises its F1 there
    (`choose_thresholds`); otherwise every label takes `data.threshold`.

    Args:
        model: The trained model, with the run's best weights (`train` and
            `Experiment.load_trained_model` load them).
        data: The opened data (`data.splits["val"]`).
        config: The run's config.
        run: The `Run`.
        echo: Function that prints a line for the user, or None.

    Returns:
        The thresholds, a list (index = label).
    """
    settings, training = config["data"], config["training"]
    fallback = settings["threshold"]
    names = run.meta["class_names"]
    held_out = "val" in data.splits and not training["include_validation"]
    if settings["thresholds"] == "best_f1" and held_out:
        targets, probabilities = pipeline.predict_all(model, pipeline.batched(
            data.splits["val"], training["batch_size"], training=False))
        thresholds = choose_thresholds(targets, probabilities, fallback)
        rule = (f"per label, the threshold that maximises its F1 on the validation split "
                f"({len(targets)} examples; {fallback:g} for a label without one)")
    else:
        thresholds = [fallback] * len(names)
        rule = (f"{fallback:g} for every label (data.thresholds = \"fixed\")"
                if settings["thresholds"] == "fixed" else
                f"{fallback:g} for every label (no held-out validation split to choose on)")
    thresholds = [round(float(t), 6) for t in thresholds]
    run.update(meta={**run.meta, "thresholds": thresholds, "threshold_rule": rule})
    if echo is not None:
        echo(f"Decision thresholds: {rule}: "
             + ", ".join(f"{name} {t:.3f}" for name, t in zip(names, thresholds)))
    return thresholds


def evaluate_split(model, dataset, data, config, run, split, inputs=None, keeper=None):
    """Loss, micro/macro F1, mAP and per-label figures of the model on one split.

    Also writes `predictions-SPLIT.csv`. A run whose training stopped before
    its thresholds were chosen gets them first (`choose_run_thresholds`).

    Args:
        model: The trained model.
        dataset: The split, batched.
        data: The opened data (its validation split, for the thresholds).
        config: The run's config.
        run: The `Run`.
        split: The split's name.
        inputs: The split's readable inputs (texts), or None.
        keeper: What keeps the report's examples (`add(x, wrong, confidence)`:
            an example is wrong when its label set is), or None.

    Returns:
        `(result, probabilities)`: a dict with `examples`, `loss`,
        `multi_label` (true), `pr_curves` and `evaluation_report`'s figures;
        and the model's probabilities of every example.
    """
    thresholds = run.meta.get("thresholds")
    if thresholds is None:
        thresholds = choose_run_thresholds(model, data, config, run)

    def keep(x, targets, probabilities):
        keeper.add(x, *decisions(targets, probabilities, thresholds))

    targets, probabilities = pipeline.predict_all(model, dataset,
                                                  keep if keeper is not None else None)
    loss = keras.losses.get(model.loss)(targets, probabilities)
    names = run.meta["class_names"]
    save_predictions(run, split, targets, probabilities, thresholds, names,
                     run.meta.get("label_separator", ";"), inputs)
    return {"examples": int(len(targets)), "multi_label": True,
            "loss": float(np.mean(keras.ops.convert_to_numpy(loss))),
            "threshold_rule": run.meta.get("threshold_rule", ""),
            **evaluation_report(targets, probabilities, thresholds, names),
            "pr_curves": pr_curves(targets, probabilities)}, probabilities


def decisions(targets, probabilities, thresholds):
    """Which examples get a wrong label set, and how sure the model was.

    An example's confidence is the mean, over the labels, of the probability
    the model gave its decision (p for a predicted label, 1 - p for the
    others): the report's most confident mistakes are the wrong label sets it
    was surest of.

    Args:
        targets: 0/1 array `(n, labels)`.
        probabilities: `(n, labels)`.
        thresholds: Each label's decision threshold.

    Returns:
        `(wrong, confidence)`: boolean and float arrays `(n,)`.
    """
    predicted = probabilities >= np.asarray(thresholds, dtype=np.float32)
    confidence = np.where(predicted, probabilities, 1.0 - probabilities).mean(axis=1)
    return np.any(predicted != (targets > 0.5), axis=1), confidence


# Points kept of each label's precision-recall curve for the report's figure.
PR_CURVE_POINTS = 101


def pr_curves(targets, scores, points=PR_CURVE_POINTS):
    """Each label's precision-recall curve, at most `points` points.

    Args:
        targets: 0/1 array `(n, labels)`.
        scores: Probabilities `(n, labels)`.
        points: The most points kept per label (evenly spaced in rank).

    Returns:
        A list (index = label) of `{"recall": [...], "precision": [...]}`
        from the highest threshold down, or None for a label without
        positive examples.
    """
    curves = []
    for label in range(targets.shape[1]):
        positives = targets[:, label] > 0.5
        if not positives.any():
            curves.append(None)
            continue
        _, true_positives, false_positives = _ranked(positives.astype(np.int64),
                                                     scores[:, label])
        keep = np.unique(np.linspace(0, len(true_positives) - 1, points).round().astype(int))
        tp, fp = true_positives[keep], false_positives[keep]
        curves.append({"recall": np.round(tp / positives.sum(), 4).tolist(),
                       "precision": np.round(tp / (tp + fp), 4).tolist()})
    return curves


def save_predictions(run, split, targets, probabilities, thresholds, class_names, separator,
                     inputs=None):
    """Writes `predictions-SPLIT.csv`: per example its true and predicted label
    sets, its confidence (`decisions`) and every label's probability."""
    predicted = probabilities >= np.asarray(thresholds, dtype=np.float32)
    _, confidence = decisions(targets, probabilities, thresholds)
    true_sets = data_lib.label_strings(targets > 0.5, class_names, separator)
    predicted_sets = data_lib.label_strings(predicted, class_names, separator)
    rows = [["index", "true", "predicted", "confidence", "input",
             *(f"probability_{name}" for name in class_names)]]
    rows += [[i, true_sets[i], predicted_sets[i], f"{confidence[i]:.6f}",
              inputs[i] if inputs is not None else "",
              *(f"{p:.6f}" for p in probabilities[i])] for i in range(len(targets))]
    tables.write_rows(run.predictions_file(split), rows)


# ---- the exported model ----


def serving_outputs(probabilities, class_names, thresholds):
    """The serving outputs of a multi-label classifier, thresholds applied.

    Args:
        probabilities: Model output `(n, labels)` (sigmoids).
        class_names: The label names (a list).
        thresholds: Each label's threshold (a list).

    Returns:
        A dict of tensors, one row per input: `probabilities` (float32
        `(n, labels)`), `classes` (the label names, same order),
        `thresholds`, `selected` (bool: probability at or above the
        threshold), `labels` (the selected labels, most probable first,
        padded with "" to `(n, labels)`), `scores` (their probabilities,
        padded with 0) and `label_count` (int32 `(n,)`: how many are
        selected).
    """
    probabilities = tf.cast(probabilities, tf.float32)
    count = tf.shape(probabilities)[0]
    names = tf.constant(class_names)
    limits = tf.constant(thresholds, tf.float32)
    selected = probabilities >= limits
    # Selected labels (probability >= 0) rank before the others (< 0).
    order = tf.argsort(tf.where(selected, probabilities, probabilities - 2.0), axis=-1,
                       direction="DESCENDING", stable=True)
    chosen = tf.gather(selected, order, batch_dims=1)
    return {
        "probabilities": probabilities,
        "classes": tf.tile(names[tf.newaxis], [count, 1]),
        "thresholds": tf.tile(limits[tf.newaxis], [count, 1]),
        "selected": selected,
        "labels": tf.where(chosen, tf.gather(names, order), tf.constant("")),
        "scores": tf.where(chosen, tf.gather(probabilities, order, batch_dims=1), 0.0),
        "label_count": tf.reduce_sum(tf.cast(selected, tf.int32), axis=-1),
    }


def format_refusal(export_format, meta):
    """Why a multi-label run cannot be exported, or None.

    A run whose training stopped before its thresholds were chosen has none
    to apply (the SavedModel applies them in its graph, the LiteRT and ONNX
    clients from `dltool.json`).
    """
    if not is_multi_label(meta):
        return None
    if "thresholds" not in meta:
        return ("the run has no decision thresholds (its training stopped before they were "
                "chosen): `dltool evaluate` chooses them")
    return None


_SAVEDMODEL_CLIENT = '''"""Labels {inputs} with this multi-label export: python client.py {usage}...

The SavedModel applies each label's decision threshold (dltool.json's
meta.thresholds) itself and returns every label at or above its threshold.
Served by TensorFlow Serving (or `dltool serve`) from the folder above this one:

    docker run -p 8501:8501 -v "$(dirname $PWD):/models/NAME" -e MODEL_NAME=NAME tensorflow/serving

or loaded here with TensorFlow (`classify_local`).
"""
{imports}import json
import sys
import urllib.request

NAME = json.load(open("dltool.json", encoding="utf-8"))["name"]
URL = f"http://localhost:8501/v1/models/{{NAME}}:predict"


def classify(items):
    """Returns each input's [(label, probability), ...], from TF Serving."""
    instances = {instances}
    body = json.dumps({{"signature_name": "serving_default", "instances": instances}}).encode()
    request = urllib.request.Request(URL, body, {{"Content-Type": "application/json"}})
    with urllib.request.urlopen(request) as response:
        return [list(zip(p["labels"][:p["label_count"]], p["scores"]))
                for p in json.load(response)["predictions"]]


def classify_local(items):
    """The same with the SavedModel loaded in this process."""
    import tensorflow as tf

    serve = tf.saved_model.load(".").signatures["serving_default"]
    out = serve({input_name}=tf.constant({local}))
    return [[(label.decode(), float(score)) for label, score in zip(labels[:n], scores)]
            for labels, scores, n in zip(out["labels"].numpy(), out["scores"].numpy(),
                                         out["label_count"].numpy())]


if __name__ == "__main__":
    for item, labels in zip(sys.argv[1:], classify(sys.argv[1:])):
        print(item, ", ".join(f"{{label}} {{probability:.3f}}" for label, probability in labels))
'''


def savedmodel_client(input_name):
    """The README's client of a multi-label SavedModel.

    Args:
        input_name: The signature's input: `images` (file paths, sent as
            base64) or `texts`.
    """
    if input_name == "images":
        return _SAVEDMODEL_CLIENT.format(
            inputs="image files", usage="IMAGE", imports="import base64\n",
            instances='[{"b64": base64.b64encode(open(path, "rb").read()).decode()}\n'
                      '                 for path in items]',
            input_name="images", local='[open(path, "rb").read() for path in items]')
    return _SAVEDMODEL_CLIENT.format(inputs="texts", usage='"TEXT"', imports="",
                                     instances="list(items)", input_name="texts",
                                     local="list(items)")


_THRESHOLDED_CLIENT = '''
THRESHOLDS = json.load(open("dltool.json", encoding="utf-8"))["meta"]["thresholds"]


def classify(items):
    """Returns each input's [(label, probability), ...]: every label at or above
    its decision threshold (dltool.json's meta.thresholds), most probable first."""
    probabilities = run({features})
    return [sorted(((LABELS[i], float(p)) for i, p in enumerate(row) if p >= THRESHOLDS[i]),
                   key=lambda pair: -pair[1]) for row in probabilities]


if __name__ == "__main__":
    for item, labels in zip(sys.argv[1:], classify(sys.argv[1:])):
        print(item, ", ".join(f"{{label}} {{probability:.3f}}" for label, probability in labels))
'''


def thresholded_client(snippet, features):
    """A LiteRT or ONNX client for a multi-label export, from the single-label one.

    The model file returns the sigmoid probabilities; the single-label
    client's `classify` (the top class) and `__main__` are replaced by ones
    that keep every label at or above its threshold.

    Args:
        snippet: The template's client (its `run(...)` returns the model's
            probabilities, `LABELS` holds labels.txt).
        features: The expression of `run`'s input from `items`, e.g.
            `encode(items)`.

    Returns:
        The client's code.
    """
    head = snippet[:snippet.index("\ndef classify(")].rstrip("\n") + "\n\n"
    if "import json\n" not in head:
        head = head.replace("import sys\n", "import json\nimport sys\n", 1)
    return head + _THRESHOLDED_CLIENT.format(features=features)


# ---- dltool predict ----


class Predictions:
    """How `dltool predict` shows a multi-label export's predictions.

    Every label at or above its threshold is shown, most probable first
    (`export.top_k` does not cut them). The other methods are the task's.

    Args:
        task: The template's `ClassifierTask`.
        meta: The export's `meta` (`class_names`, `label_separator`).
    """

    def __init__(self, task, meta):
        self.task = task
        self.class_names = list(meta["class_names"])
        self.separator = meta.get("label_separator", ";")

    def __getattr__(self, name):
        return getattr(self.task, name)

    def format_prediction(self, outputs, index, top_k):
        """Returns `{"labels": [(label, probability), ...], "probabilities": [...]}`:
        the selected labels and every label's probability (class order)."""
        count = int(outputs["label_count"][index])
        labels = [label.decode() if isinstance(label, bytes) else str(label)
                  for label in np.asarray(outputs["labels"][index])[:count]]
        scores = [float(score) for score in np.asarray(outputs["scores"][index])[:count]]
        return {"labels": list(zip(labels, scores)),
                "probabilities": [float(p) for p in np.asarray(outputs["probabilities"][index])]}

    def prediction_line(self, item, prediction):
        """`ITEM: label probability, label probability` (or no label)."""
        shown = ", ".join(f"{label} {probability:.3f}"
                          for label, probability in prediction["labels"])
        return f"{item}: {shown or '(no label at or above its threshold)'}"

    def prediction_summary(self, prediction):
        """The selected labels, joined by the data's label separator."""
        return self.separator.join(label for label, _ in prediction["labels"])

    def prediction_record(self, item, prediction):
        """`{"input", "labels": [{"label", "probability"}], "probabilities": {label: p}}`."""
        return {"input": item,
                "labels": [{"label": label, "probability": probability}
                           for label, probability in prediction["labels"]],
                "probabilities": dict(zip(self.class_names, prediction["probabilities"]))}

    def prediction_columns(self, top_k):
        """`input, labels`, then `probability_LABEL` for every label."""
        return ["input", "labels", *(f"probability_{name}" for name in self.class_names)]

    def prediction_row(self, item, prediction, top_k):
        """The input, its selected labels (joined) and every label's probability."""
        return [item, self.prediction_summary(prediction),
                *(round(p, 6) for p in prediction["probabilities"])]

    def prediction_warning(self, item, prediction):
        return None


# ---- reporting and the CLI ----

_FIGURES = (("loss", "loss"), ("micro_f1", "micro F1"), ("macro_f1", "macro F1"),
            ("mean_average_precision", "mAP"), ("exact_match", "exact match"))


def evaluation_lines(result, header):
    """The lines of `dltool evaluate`: the header, the figures, one line per label."""
    lines = [*header, *(f"{label:<18} {result[key]:.4f}" for key, label in _FIGURES)]
    if result.get("threshold_rule"):
        lines.append(f"thresholds: {result['threshold_rule']}")
    labels = result["per_class"]
    width = max(len("label"), *(len(c["name"]) for c in labels))
    lines.append(f"{'label':<{width}}  threshold  precision  recall      F1      AP  support")
    lines += [f"{c['name']:<{width}}  {c['threshold']:>9.3f}  {c['precision']:>9.3f}  "
              f"{c['recall']:>6.3f}  {c['f1']:>6.3f}  " + _ap(c, 6) + f"  {c['support']:>7}"
              for c in labels]
    return lines


def _ap(figures, width):
    value = figures.get("average_precision")
    return f"{value:>{width}.3f}" if value is not None else f"{'-':>{width}}"


def evaluation_summary(result):
    """The micro F1, four decimals."""
    return f"{result['micro_f1']:.4f}"


def run_facts(evaluation):
    """The test split's micro and macro F1, mAP and loss."""
    return {"test_micro_f1": evaluation.get("micro_f1"),
            "test_macro_f1": evaluation.get("macro_f1"),
            "test_map": evaluation.get("mean_average_precision"),
            "test_loss": evaluation.get("loss")}


def report_sections(run, split, evaluation):
    """The evaluation's figures and the per-label table, for the run report."""
    text = (f"{evaluation['examples']} examples: "
            + ", ".join(f"{label} {evaluation[key]:.4f}" for key, label in _FIGURES[1:])
            + f", loss {evaluation['loss']:.4f}. Labels per example: "
            f"{evaluation['labels_per_example']['true']:.2f} true, "
            f"{evaluation['labels_per_example']['predicted']:.2f} predicted.")
    if evaluation.get("threshold_rule"):
        text += f" Decision thresholds: {evaluation['threshold_rule']}."
    table = [["label", "threshold", "precision", "recall", "F1", "AP", "support"]]
    table += [[c["name"], f"{c['threshold']:.3f}", f"{c['precision']:.3f}",
               f"{c['recall']:.3f}", f"{c['f1']:.3f}", _ap(c, 0).strip(), str(c["support"])]
              for c in evaluation["per_class"]]
    sections = [Section(f"Evaluation on the {split} split (multi-label)", text=text),
                Section(f"Per label ({split})", table=table)]
    if evaluation.get("pr_curves"):
        image = run.figure_file("precision-recall", split)
        plots.precision_recall_curves(
            evaluation["pr_curves"],
            [(c["name"], c["average_precision"]) if c["average_precision"] is not None
             else c["name"] for c in evaluation["per_class"]], image)
        sections.append(Section(
            f"Precision-recall curves ({split})", image=image.name,
            text="Each label's precision and recall as its threshold goes down from the "
                 "highest probability; AP (its area) in the legend. A label without "
                 "examples in the split has no curve."))
    return sections
