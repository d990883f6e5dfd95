"""Evaluate a trained run on a held-out split."""

import numpy as np

from dltool import runs
from dltool._tf import keras
from dltool.data import pipeline
from dltool.errors import DataError
from dltool.training import load_trained_model


def evaluate(project_dir, run_name=None, split="test", *, skip_bad=False):
    """Evaluates the best weights of a run.

    Args:
        project_dir: The project folder.
        run_name: Run to evaluate; the newest trained one when None.
        split: `test` or `val`.
        skip_bad: Drop unusable data files instead of failing.

    Returns:
        A dict with `run`, `split`, `examples` and the task's figures
        (`loss`, `accuracy`, `per_class`, `confusion` for classifiers; `bleu`,
        `chrf` for the translator). It is also written to the run folder as
        `evaluation-SPLIT.json`.

    Raises:
        DltoolError: no trained run, no such split, bad data.
    """
    run = runs.find_trained(project_dir, run_name)
    model, config, task = load_trained_model(project_dir, run)
    data = task.open_data(config, project_dir, skip_bad=skip_bad)
    if split not in data.splits:
        raise DataError(f"the data has no {split!r} split (it has: {', '.join(data.splits)}); "
                        "add a test/ folder or use --split val")
    result = {"run": run["name"], "split": split,
              **task.evaluate_split(model, data, split, config, run)}
    runs.write_json_atomic(run["dir"] / f"evaluation-{split}.json", result)
    return result


def evaluate_classifier(model, data, split, config, run):
    """Loss, accuracy and the per-class report of a classifier on one split.

    Returns:
        A dict with `examples`, `loss`, `accuracy` and the task's report
        (`per_class`, `confusion`).
    """
    from dltool.tasks import task_for

    batches = pipeline.batched(data.splits[split], config["training"]["batch_size"],
                               training=False)
    labels, probabilities = [], []
    for x, y in batches:
        labels.append(y.numpy())
        probabilities.append(np.asarray(model(x, training=False), dtype=np.float32))
    labels = np.concatenate(labels)
    probabilities = np.concatenate(probabilities)
    loss = keras.losses.get(model.loss)(labels, probabilities)
    report = task_for(config.template).evaluation_report(labels, probabilities, run["meta"])
    return {"examples": int(len(labels)),
            "loss": float(np.mean(keras.ops.convert_to_numpy(loss))), **report}
