"""Evaluate a trained run on a held-out split."""

import heapq
import time

import numpy as np

from dltool.report import reports
from dltool.core import runs
from dltool._tf import keras
from dltool.data import pipeline
from dltool.core.errors import DataError
from dltool.engine.train import load_trained_model

SAMPLES_KEPT = 16
MISTAKES_KEPT = 8


def evaluate(project_dir, run_name=None, split="test", *, skip_bad=False, overrides=(),
             echo=None):
    """Evaluates the best weights of a run, then writes the run's report.

    Args:
        project_dir: The project folder.
        run_name: Run to evaluate; the newest trained one when None.
        split: `test` or `val`.
        skip_bad: Drop unusable data files instead of failing.
        overrides: `section.key=value` strings applied to the run's config.
        echo: Function that prints a progress line for the user, or None.

    Returns:
        A dict with `run`, `split`, `examples` and the task's figures
        (`loss`, `accuracy`, `per_class`, `confusion` for classifiers; `bleu`,
        `chrf` for the translator). It is also written to the run folder as
        `evaluation-SPLIT.json`; classifiers add one row per example in
        `predictions-SPLIT.csv` (see `dltool.report.reports`).

    Raises:
        DltoolError: no trained run, no such split, bad data.
    """
    echo = echo or (lambda line: None)
    run = runs.find_trained(project_dir, run_name)
    echo(f"Loading run {run['name']}")
    model, config, task = load_trained_model(project_dir, run, overrides)
    data = task.open_data(config, project_dir, skip_bad=skip_bad)
    if split not in data.splits:
        raise DataError(f"the data has no {split!r} split (it has: {', '.join(data.splits)}); "
                        "add a test/ folder or use --split val")
    echo(f"Evaluating on the {split} split: {data.sizes[split]} examples")
    started = time.perf_counter()
    result = {"run": run["name"], "split": split,
              **task.evaluate_split(model, data, split, config, run, echo=echo)}
    echo(f"Evaluated in {time.perf_counter() - started:.1f} s")
    runs.write_json_atomic(run["dir"] / reports.evaluation_file(split), result)
    reports.write_report(project_dir, run, echo=echo)
    return result


def evaluate_classifier(model, data, split, config, run):
    """Loss, accuracy and the per-class report of a classifier on one split.

    Also writes `predictions-SPLIT.csv` and, for tasks that keep them, the
    example inputs the report shows.

    Returns:
        A dict with `examples`, `loss`, `accuracy` and the task's report
        (`per_class`, `confusion`).
    """
    from dltool.tasks import task_for

    task = task_for(config.template)
    batch_size = config["training"]["batch_size"]
    keeper = _ExampleKeeper(data.sizes[split], config["training"]["seed"]) \
        if hasattr(task, "save_examples") else None
    labels, probabilities = [], []
    for x, y in pipeline.batched(data.splits[split], batch_size, training=False):
        labels.append(y.numpy())
        probabilities.append(np.asarray(model(x, training=False), dtype=np.float32))
        if keeper is not None:
            keeper.add(x, labels[-1], probabilities[-1])
    labels = np.concatenate(labels)
    probabilities = np.concatenate(probabilities)
    loss = keras.losses.get(model.loss)(labels, probabilities)
    report = task.evaluation_report(labels, probabilities, run["meta"])
    reports.save_predictions(run["dir"], split, labels, probabilities,
                             run["meta"]["class_names"], task.readable_inputs(data, split))
    if keeper is not None:
        task.save_examples(run["dir"], split, keeper.examples())
    return {"examples": int(len(labels)),
            "loss": float(np.mean(keras.ops.convert_to_numpy(loss))), **report}


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

    def add(self, x, labels, probabilities):
        predicted = np.argmax(probabilities, axis=-1)
        x = np.asarray(x)
        for i, (label, guess) in enumerate(zip(labels, predicted)):
            index = self.seen + i
            if index in self.sample:
                self.inputs[index] = x[i]
            if guess != label:
                entry = (float(probabilities[i, guess]), index)
                if len(self.mistakes) < MISTAKES_KEPT:
                    heapq.heappush(self.mistakes, entry)
                elif entry > self.mistakes[0]:
                    _, dropped = heapq.heapreplace(self.mistakes, entry)
                    if dropped not in self.sample:
                        self.inputs.pop(dropped, None)
                else:
                    continue
                self.inputs[index] = x[i]
        self.seen += len(labels)

    def examples(self):
        """Returns `(indices, inputs, in_sample)`, indices in split order."""
        indices = sorted(self.inputs)
        return (np.asarray(indices, dtype=np.int64),
                np.stack([self.inputs[i] for i in indices]) if indices else None,
                np.asarray([i in self.sample for i in indices], dtype=bool))
