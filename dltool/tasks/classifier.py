"""`ClassifierTask`: what the classifier templates (images, sentiment) share.

An evaluation is loss, accuracy and a per-class report (precision, recall,
support, confusion matrix), with one row per example in
`predictions-SPLIT.csv`; the exported model returns probabilities, class
names, the top label and its score; `dltool predict` shows the top-k labels.
The report shows the metrics, the confusion matrix and the per-class table;
a subclass adds its own figures after them.

With `training.calibrate` the probabilities are temperature-scaled
(`dltool.tasks.calibration`): the temperature is fitted after training on
the validation split (`calibrate`), kept in the run's `meta` and applied by
the exported model; the evaluation and the report give the NLL and the
expected calibration error before and after, and a reliability diagram.

Multi-label data (`data.multi_label = true`) is evaluated, exported and
shown by `dltool.tasks.multilabel`, which the methods below hand over to;
its probabilities are not temperature-scaled (its per-label thresholds are
chosen on the validation split instead).
"""

import csv
import heapq

import numpy as np

from dltool._tf import keras, tf
from dltool.core import tables
from dltool.core.errors import DataError
from dltool.data import pipeline, splits
from dltool.report import plots
from dltool.report.reports import Section
from dltool.tasks import calibration, class_scores, multilabel
from dltool.tasks.base import Task

SAMPLES_KEPT = 16
MISTAKES_KEPT = 8
MISTAKES_SHOWN = 10


class ClassifierTask(Task):
    """A template whose model maps an input to class probabilities.

    The data's `meta` has `class_names` (index = label); the model's output
    is `(n, classes)` probabilities.

    Attributes:
        keeps_examples: Whether an evaluation keeps the inputs of a seeded
            sample and of the most confident mistakes and hands them to
            `save_examples` (the image classifier shows them).
    """

    keeps_examples = False

    def fit_options(self, config, data):
        """`class_weight` for `model.fit` from `training.class_weight`.

        Keras weighs each example's loss by its class's weight (under every
        strategy: the weights are applied in the input pipeline).

        Returns:
            `{}` for `"none"`; else `{"class_weight": {label: weight}}`
            (`splits.class_weights`).

        Raises:
            ConfigError: an unknown class name, or `"balanced"` for a data
                source without class counts.
        """
        setting = config["training"]["class_weight"]
        if setting == "none":  # the only setting multi-label data takes (`check_config`)
            return {}
        weights = splits.class_weights(setting, data.class_names, data.class_counts)
        return {"class_weight": dict(enumerate(weights))}

    def check_config(self, config):
        """Refuses what multi-label data cannot use (`multilabel.check_config`)."""
        multilabel.check_config(config)

    def after_fit(self, model, data, config, run, echo=None):
        """Chooses a multi-label run's decision thresholds on the validation
        split (`multilabel.choose_run_thresholds`); nothing for one label."""
        if multilabel.is_multi_label(run.meta):
            multilabel.choose_run_thresholds(model, data, config, run, echo)

    def serving_outputs(self, probabilities, meta):
        """The serving outputs: `classifier_outputs`, or for multi-label data
        every label above its threshold (`multilabel.serving_outputs`)."""
        if multilabel.is_multi_label(meta):
            return multilabel.serving_outputs(probabilities, meta["class_names"],
                                              meta["thresholds"])
        return self.classifier_outputs(probabilities, tf.constant(meta["class_names"]),
                                       self.temperature(meta))

    def format_refusal(self, export_format, quantize, meta):
        """None: every format takes both classifiers (LiteRT and ONNX take
        pixels or token ids, the SavedModel raw input); a multi-label run
        none until its thresholds are chosen (`multilabel.format_refusal`)."""
        return multilabel.format_refusal(export_format, meta)

    def for_export(self, meta):
        """The task, or for a multi-label export what shows its predictions
        (`multilabel.Predictions`)."""
        return multilabel.Predictions(self, meta) if multilabel.is_multi_label(meta) else self

    def calibrate(self, model, dataset, echo, meta=None):
        """Fits the temperature of the model's probabilities on a split.

        One prediction pass over the split, then the 1-D fit of
        `calibration.fit_temperature` on the numpy probabilities (a few
        milliseconds for thousands of examples).

        Args:
            model: The trained model, with its best weights.
            dataset: The batched validation split.
            echo: Prints `Calibration: temperature T on the validation split
                (NLL a → b, ECE c → d)`, or why it was skipped.
            meta: The run's `meta`: multi-label data is not calibrated.

        Returns:
            A dict: `temperature`, `split`, `examples`, and `val_nll_before`,
            `val_nll_after`, `val_ece_before`, `val_ece_after`; None (not
            calibrated) for multi-label data or when the model's
            probabilities are not finite.
        """
        if meta is not None and multilabel.is_multi_label(meta):
            echo("Calibration: skipped for multi-label data (its per-label thresholds are "
                 "chosen on the validation split instead)")
            return None
        labels, probabilities = pipeline.predict_all(model, dataset)
        if not np.all(np.isfinite(probabilities)):
            echo("Calibration: skipped, the model's validation probabilities are not finite")
            return None
        temperature = calibration.fit_temperature(labels, probabilities)
        figures = calibration.summary(labels, probabilities, temperature)
        result = {"temperature": temperature, "split": "val", "examples": int(len(labels)),
                  **{f"val_{name}_{stage}": figures[f"{name}_{stage}"]
                     for name in ("nll", "ece") for stage in ("before", "after")}}
        echo(f"Calibration: temperature {temperature:.3g} on the validation split "
             f"(NLL {result['val_nll_before']:.3f} → {result['val_nll_after']:.3f}, "
             f"ECE {result['val_ece_before']:.3f} → {result['val_ece_after']:.3f})")
        return result

    def temperature(self, meta):
        """The temperature a run's or export's `meta` calibrates with, or None
        (not calibrated: `training.calibrate = false`, or trained before it)."""
        return meta.get("temperature")

    def calibrated_model(self, model, meta):
        """`model` followed by its temperature scaling, for the LiteRT and
        ONNX exports (`inference_model`); `model` itself when not calibrated.

        Args:
            model: A functional Keras model (probabilities out).
            meta: The run's `meta`.

        Returns:
            A Keras model with the same inputs and layers (shared, not
            copied) that returns the calibrated probabilities.
        """
        temperature = self.temperature(meta)
        if temperature is None:
            return model
        return keras.Model(model.input,
                           calibration.TemperatureScaling(temperature)(model.output),
                           name=model.name)

    def classifier_outputs(self, probabilities, class_names, temperature=None):
        """The serving outputs of a classifier.

        Args:
            probabilities: Model output, `(n, classes)`.
            class_names: String tensor of the class names, `(classes,)`.
            temperature: The run's temperature (`temperature(meta)`), applied
                to the probabilities in the graph; None for none.

        Returns:
            A dict: `probabilities` (float32, calibrated), `classes` (the
            class names, `(n, classes)`, in the same order), `label` (top
            class name, `(n,)`) and `score` (its probability).
        """
        probabilities = tf.cast(probabilities, tf.float32)
        if temperature is not None:
            probabilities = calibration.scale(probabilities, temperature)
        count = tf.shape(probabilities)[0]
        return {
            "probabilities": probabilities,
            "classes": tf.tile(class_names[tf.newaxis], [count, 1]),
            "label": tf.gather(class_names, tf.argmax(probabilities, axis=-1)),
            "score": tf.reduce_max(probabilities, axis=-1),
        }

    def output_labels(self, meta):
        """The class names, index = position in the model's probabilities."""
        return list(meta["class_names"])

    def format_prediction(self, outputs, index, top_k):
        """Returns the top-k `(class name, probability)` pairs of one input."""
        probabilities = np.asarray(outputs["probabilities"][index])
        classes = [c.decode() if isinstance(c, bytes) else str(c)
                   for c in np.asarray(outputs["classes"][index])]
        order = np.argsort(-probabilities)[:top_k]
        return [(classes[i], float(probabilities[i])) for i in order]

    # ---- evaluating ----

    def evaluate_split(self, model, data, split, config, run, echo=None):
        """Loss, accuracy and the per-class report of the model on one split.

        Also writes `predictions-SPLIT.csv` (the probabilities the export
        returns: calibrated when the run is) and, when the task
        `keeps_examples`, the inputs the report shows (`save_examples`). A
        classifier evaluates in seconds: `echo` is not used.

        Returns:
            A dict with `examples`, `loss` (the model's own loss, before
            calibration), `accuracy` and the rest of `evaluation_report`
            (`per_class`, `confusion`), and `calibration`
            (`calibration.summary`: NLL and ECE before and after).
        """
        training = config["training"]
        keeper = _ExampleKeeper(data.sizes[split], training["seed"]) \
            if self.keeps_examples else None
        dataset = pipeline.batched(data.splits[split], training["batch_size"], training=False)
        inputs = self.readable_inputs(data, split)
        if multilabel.is_multi_label(run.meta):
            result, probabilities = multilabel.evaluate_split(model, dataset, data, config, run,
                                                              split, inputs, keeper)
        else:
            result, probabilities = self._evaluate_single_label(model, dataset, run, split,
                                                                inputs, keeper)
        if keeper is not None:
            self.save_examples(run, split, keeper.examples(), model=model,
                               predicted=np.argmax(probabilities, axis=-1), echo=echo)
        return result

    def _evaluate_single_label(self, model, dataset, run, split, inputs, keeper):
        """`evaluate_split` of single-label data.

        Returns:
            `(result, probabilities)`: the evaluation and the model's own
            probabilities of every example.
        """
        temperature = self.temperature(run.meta)

        def keep(x, labels, probabilities):
            if temperature is not None:
                probabilities = calibration.scaled(probabilities, temperature)
            keeper.add(x, *decisions(labels, probabilities))

        labels, probabilities = pipeline.predict_all(model, dataset,
                                                     keep if keeper is not None else None)
        loss = keras.losses.get(model.loss)(labels, probabilities)
        report = self.evaluation_report(labels, probabilities, run.meta)
        served = probabilities if temperature is None else \
            calibration.scaled(probabilities, temperature)
        save_predictions(run, split, labels, served, run.meta["class_names"], inputs)
        return {"examples": int(len(labels)),
                "loss": float(np.mean(keras.ops.convert_to_numpy(loss))), **report,
                "calibration": calibration.summary(labels, probabilities, temperature)}, \
            probabilities

    def evaluation_report(self, y_true, probabilities, meta):
        """Accuracy, balanced accuracy, macro F1, per-class figures, confusion matrix.

        Args:
            y_true: Integer labels, shape `(n,)`.
            probabilities: Model outputs, shape `(n, classes)`.
            meta: Run metadata with `class_names`.

        Returns:
            A dict with `accuracy`, `balanced_accuracy` (the mean recall of
            the classes present), `macro_f1` (the mean F1 of the classes
            present), `per_class` (list of dicts: name, precision, recall,
            f1, support) and `confusion` (list of lists, rows = true class).
        """
        names = meta["class_names"]
        predicted = np.argmax(probabilities, axis=-1)
        confusion = np.zeros((len(names), len(names)), dtype=np.int64)
        np.add.at(confusion, (np.asarray(y_true), predicted), 1)
        per_class = [class_scores.class_figures(name, confusion[i, i], confusion[:, i].sum(),
                                                confusion[i].sum())
                     for i, name in enumerate(names)]
        present = [c for c in per_class if c["support"]]
        return {"accuracy": float(np.trace(confusion) / max(1, confusion.sum())),
                "balanced_accuracy": float(np.mean([c["recall"] for c in present]))
                if present else 0.0,
                "macro_f1": float(np.mean([c["f1"] for c in present])) if present else 0.0,
                "per_class": per_class, "confusion": confusion.tolist()}

    def readable_inputs(self, data, split):
        """The split's inputs as one-line text for `predictions-SPLIT.csv`
        (texts), or None (the default: inputs with no readable form)."""
        return None

    def save_examples(self, run, split, examples, model=None, predicted=None, echo=None):
        """Keeps the evaluation inputs the report shows; does nothing by default.

        Called only when the task `keeps_examples`.

        Args:
            run: The `Run`.
            split: The split evaluated.
            examples: `(indices, inputs, in_sample)`: example indices in the
                split, their inputs (None when there are none) and whether
                each is in the random sample (the others are confident
                mistakes).
            model: The evaluated model (the image classifier explains its
                predictions on the examples).
            predicted: The predicted class of every example of the split.
            echo: Function that prints a line for the user, or None.
        """

    # ---- reporting ----

    def report_sections(self, run, split, evaluation):
        """The classifier's evaluation: metrics, confusion matrix, per-class table.

        Args:
            run: The `Run`.
            split: The split evaluated.
            evaluation: The `evaluation-SPLIT.json` contents.

        Returns:
            A list of `Section`s.
        """
        if evaluation.get("multi_label"):
            return multilabel.report_sections(run, split, evaluation)
        text = (f"{evaluation['examples']} examples: accuracy {evaluation['accuracy']:.4f}"
                + "".join(f", {label} {evaluation[key]:.4f}" for key, label in _BALANCED
                          if key in evaluation)
                + f", loss {evaluation['loss']:.4f}.")
        sections = [Section(f"Evaluation on the {split} split", text=text)]
        if "confusion" in evaluation:
            image = run.figure_file("confusion", split)
            plots.confusion_matrix(evaluation["confusion"], run.meta["class_names"], image)
            sections.append(Section(f"Confusion matrix ({split})", image=image.name,
                                    text="Rows: true class; columns: predicted class."))
        if "per_class" in evaluation:
            table = [["class", "precision", "recall", "F1", "support"]]
            table += [[c["name"], f"{c['precision']:.3f}", f"{c['recall']:.3f}",
                       f"{c['f1']:.3f}" if "f1" in c else "", str(c["support"])]
                      for c in evaluation["per_class"]]
            sections.append(Section(f"Per class ({split})", table=table))
        if "calibration" in evaluation:
            sections.append(self.calibration_section(run, split, evaluation["calibration"]))
        return sections

    def calibration_section(self, run, split, figures):
        """The report's reliability diagram, before and after calibration.

        Args:
            run: The `Run`.
            split: The split evaluated.
            figures: The evaluation's `calibration` (`calibration.summary`).

        Returns:
            A `Section` with the figure and the NLL and ECE.
        """
        image = run.figure_file("reliability", split)
        stages = [("before", figures["reliability_before"])]
        if figures["temperature"] is not None:
            stages.append((f"after (T = {figures['temperature']:.3g})",
                           figures["reliability_after"]))
        plots.reliability_diagram(stages, image)
        nll, ece = _calibration_figures(figures)
        if figures["temperature"] is None:
            text = ("Not calibrated (training.calibrate = false, or no validation split): "
                    f"NLL {nll}, expected calibration error ({figures['bins']} bins) {ece}.")
        else:
            text = (f"Temperature {figures['temperature']:.3g}, fitted on the validation "
                    "split after training and applied by the exported model: NLL "
                    f"{nll}, expected calibration error ({figures['bins']} bins) {ece}. "
                    "Bars: accuracy of the examples in each bin of top-class probability; "
                    "the diagonal is perfect calibration.")
        return Section(f"Calibration ({split})", text=text, image=image.name)

    def run_facts(self, evaluation):
        """The test split's `test_accuracy` and `test_loss` (multi-label:
        `multilabel.run_facts`)."""
        if evaluation.get("multi_label"):
            return multilabel.run_facts(evaluation)
        return {"test_accuracy": evaluation.get("accuracy"),
                "test_loss": evaluation.get("loss")}

    def table_score(self, facts):
        """`["accuracy", test accuracy]` (multi-label: `["micro F1", ...]`),
        when the run was evaluated."""
        for key, name in (("test_micro_f1", "micro F1"), ("test_accuracy", "accuracy")):
            if facts.get(key) is not None:
                return [name, facts[key]]
        return None

    # ---- what the CLI prints ----

    def evaluation_lines(self, result):
        """The header, loss, accuracy, balanced accuracy and macro F1, then one
        line per class (precision, recall, F1, support)."""
        if result.get("multi_label"):
            return multilabel.evaluation_lines(result, super().evaluation_lines(result))
        figures = [("loss", "loss"), ("accuracy", "accuracy"), *_BALANCED]
        lines = [*super().evaluation_lines(result)]
        lines += [f"{label:<18} {result[key]:.4f}" for key, label in figures if key in result]
        if "calibration" in result:
            nll, ece = _calibration_figures(result["calibration"])
            temperature = result["calibration"]["temperature"]
            lines.append(f"{'NLL':<18} {nll} " + ("(not calibrated)" if temperature is None
                                                   else f"(temperature {temperature:.3g})"))
            bins = result["calibration"]["bins"]
            lines.append(f"{f'ECE ({bins} bins)':<18} {ece}")
        if "per_class" in result:
            width = max(len("class"), *(len(c["name"]) for c in result["per_class"]))
            lines.append(f"{'class':<{width}}  precision  recall      F1  support")
            lines += [f"{c['name']:<{width}}  {c['precision']:>9.3f}  {c['recall']:>6.3f}  "
                      + (f"{c['f1']:>6.3f}" if "f1" in c else " " * 6) + f"  {c['support']:>7}"
                      for c in result["per_class"]]
        return lines

    def evaluation_summary(self, result):
        """The accuracy (multi-label: the micro F1), four decimals."""
        if result.get("multi_label"):
            return multilabel.evaluation_summary(result)
        return f"{result['accuracy']:.4f}"

    def prediction_line(self, item, prediction):
        """`ITEM: label probability, label probability, ...`."""
        shown = ", ".join(f"{label} {probability:.3f}" for label, probability in prediction)
        return f"{item}: {shown}"

    def prediction_summary(self, prediction):
        """The top label."""
        return prediction[0][0]

    def prediction_record(self, item, prediction):
        """`{"input": item, "top": [{"label": ..., "probability": ...}, ...]}`."""
        return {"input": item, "top": [{"label": label, "probability": probability}
                                       for label, probability in prediction]}

    def prediction_columns(self, top_k):
        """`input, label, probability`, then a label and probability column
        pair for each further rank up to `top_k` (`label_2, probability_2,
        ...`), so that every probability is a number a spreadsheet sorts."""
        return ["input", "label", "probability",
                *(name for rank in range(2, top_k + 1)
                  for name in (f"label_{rank}", f"probability_{rank}"))]

    def prediction_row(self, item, prediction, top_k):
        """The input, then each `(label, probability)` of the top k in rank
        order (empty cells for ranks beyond the model's classes)."""
        ranked = [cell for label, probability in prediction
                  for cell in (label, round(probability, 6))]
        return [item, *ranked, *[""] * (2 * top_k - len(ranked))]


# The evaluation's figures beside accuracy that a starved class moves.
_BALANCED = (("balanced_accuracy", "balanced accuracy"), ("macro_f1", "macro F1"))


def _calibration_figures(figures):
    """The NLL and the ECE of an evaluation's `calibration` as text:
    `before → after`, or `before` alone when the run is not calibrated."""
    return tuple(f"{figures[f'{name}_before']:.4f}" + (
        f" → {figures[f'{name}_after']:.4f}" if figures["temperature"] is not None else "")
        for name in ("nll", "ece"))


def decisions(labels, probabilities):
    """Which examples are predicted wrong, and the probability of each
    prediction.

    Args:
        labels: True labels, integers `(n,)`.
        probabilities: Probabilities `(n, classes)`.

    Returns:
        `(wrong, confidence)`: boolean and float arrays `(n,)`.
    """
    predicted = np.argmax(probabilities, axis=-1)
    return predicted != labels, probabilities[np.arange(len(predicted)), predicted]


def save_predictions(run, split, labels, probabilities, class_names, inputs=None):
    """Writes `predictions-SPLIT.csv`: one row per evaluated example, text
    cells safe to open in a spreadsheet (`dltool.core.tables`).

    Args:
        run: The `Run`.
        split: The split evaluated.
        labels: True labels, integers `(n,)`.
        probabilities: Model outputs `(n, classes)`.
        class_names: Names of the classes, index = label.
        inputs: Readable inputs (texts) in the same order, or None.
    """
    predicted = np.argmax(probabilities, axis=-1)
    rows = [["index", "true", "predicted", "confidence", "true_probability", "input"]]
    rows += [[i, class_names[label], class_names[guess], f"{probabilities[i, guess]:.6f}",
              f"{probabilities[i, label]:.6f}", inputs[i] if inputs is not None else ""]
             for i, (label, guess) in enumerate(zip(labels, predicted))]
    tables.write_rows(run.predictions_file(split), rows)


def read_predictions(run, split):
    """Reads `predictions-SPLIT.csv`.

    Returns:
        A list of row dicts (`index` an int, `confidence` a float), or []
        when the file is missing.

    Raises:
        DataError: naming the file if it cannot be parsed.
    """
    path = run.predictions_file(split)
    if not path.is_file():
        return []
    try:
        rows = tables.read_rows(path)
        for row in rows:
            row["index"] = int(row["index"])
            row["confidence"] = float(row["confidence"])
        return rows
    except (KeyError, ValueError, csv.Error) as e:
        raise DataError(f"{path}: not a readable predictions file ({e})") from e


def confident_mistakes(rows, count=MISTAKES_SHOWN):
    """The wrong predictions with the highest confidence, highest first."""
    wrong = [r for r in rows if r["true"] != r["predicted"]]
    return sorted(wrong, key=lambda r: -r["confidence"])[:count]


class _ExampleKeeper:
    """Keeps the inputs of a seeded sample of examples and of the most
    confident mistakes seen so far, for the report's figures.

    Args:
        size: Examples in the split.
        seed: Seed of the sample.
    """

    def __init__(self, size, seed):
        rng = np.random.default_rng(seed)
        self.sample = set(rng.choice(size, min(size, SAMPLES_KEPT), replace=False).tolist())
        self.mistakes = []  # min-heap of (confidence, index)
        self.inputs = {}
        self.seen = 0

    def add(self, x, wrong, confidence):
        """Shows the keeper one batch.

        Args:
            x: The batch's inputs.
            wrong: Whether each example is predicted wrong, `(n,)`.
            confidence: How sure the model was of each prediction, `(n,)`:
                the most confident mistakes are kept.
        """
        x = np.asarray(x)
        for i, (is_wrong, sureness) in enumerate(zip(wrong, confidence)):
            index = self.seen + i
            if index in self.sample:
                self.inputs[index] = x[i]
            if is_wrong:
                entry = (float(sureness), index)
                if len(self.mistakes) < MISTAKES_KEPT:
                    heapq.heappush(self.mistakes, entry)
                elif entry > self.mistakes[0]:
                    _, dropped = heapq.heapreplace(self.mistakes, entry)
                    if dropped not in self.sample:
                        self.inputs.pop(dropped, None)
                else:
                    continue
                self.inputs[index] = x[i]
        self.seen += len(wrong)

    def examples(self):
        """Returns `(indices, inputs, in_sample)`, indices in split order."""
        indices = sorted(self.inputs)
        return (np.asarray(indices, dtype=np.int64),
                np.stack([self.inputs[i] for i in indices]) if indices else None,
                np.asarray([i in self.sample for i in indices], dtype=bool))
