"""Evaluate a trained run on a held-out split."""

import time

from dltool.core import files, runs
from dltool.core.errors import DataError
from dltool.engine import reporting
from dltool.engine.experiment import Experiment


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
        `predictions-SPLIT.csv` (see `dltool.tasks.classifier`). A test
        evaluation's `Task.run_facts` go into `run.json` for `dltool runs`.

    Raises:
        DltoolError: no trained run, no such split, bad data; `StorageError`
            when the run folder cannot be written (read-only, full).
    """
    echo = echo or (lambda line: None)
    run = runs.find_trained(project_dir, run_name)
    files.check_writable(run.dir)  # before the model loads: it takes seconds
    echo(f"Loading run {run.name}")
    experiment = Experiment.for_run(project_dir, run, overrides)
    model = experiment.load_trained_model(run)
    data = experiment.open_data(skip_bad=skip_bad)
    if split not in data.splits:
        raise DataError(f"the data has no {split!r} split (it has: {', '.join(data.splits)}); "
                        "add a test/ folder or use --split val")
    echo(f"Evaluating on the {split} split: {data.sizes[split]} examples")
    started = time.perf_counter()
    with files.storage_errors(run.dir):  # a read-only or full run folder: one line
        result = {"run": run.name, "split": split,
                  **experiment.task.evaluate_split(model, data, split, experiment.config,
                                                   run, echo=echo)}
        echo(f"Evaluated in {time.perf_counter() - started:.1f} s")
        files.write_json_atomic(run.evaluation_file(split), result)
        if split == "test":  # what `dltool runs` shows, read without the task
            facts = experiment.task.run_facts(result)
            run.update(facts=facts, table_score=experiment.task.table_score(facts))
        reporting.write_run_report(project_dir, run, echo=echo)
    return result
