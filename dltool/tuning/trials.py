"""A search's folder on disk: `tuning/<name>/` inside a project.

It holds keras-tuner's state (`oracle.json`, `trial_<id>/trial.json`, each
trial's best weights and executions; `dltool.tuning.adapter` repairs them),
dltool's `search.json` (the settings the search was started with),
`summary.json` (best trial and its hyperparameters, what stopped the
search), `trials.csv` and `trials.md`, and TensorBoard logs with HParams
(`tensorboard/`).

This module reads and writes those files without TensorFlow.
"""

import json
import math
import os
import time
from pathlib import Path

from dltool.core import auto, files, runs, tables
from dltool.core import config as config_lib
from dltool.core.errors import ConfigError, ProjectError

TUNING_DIR = runs.TUNING_DIR
SEARCH_FILE = "search.json"
SUMMARY_FILE = "summary.json"
ORACLE_FILE = "oracle.json"
TRIAL_FILE = "trial.json"
# keras-tuner's hyperparameters of its own (Hyperband's bookkeeping).
_TUNER_KEYS = "tuner/"
_STATUS = {"COMPLETED": "completed", "FAILED": "failed", "INVALID": "failed",
           "RUNNING": "interrupted", "IDLE": "waiting", "STOPPED": "stopped"}


def search_dir(project_dir, name):
    """Returns the folder of the search called `name`."""
    return Path(project_dir) / TUNING_DIR / name


def set_aside(path):
    """Renames `path` to `<path>.old-<time>` and returns the new path."""
    path = Path(path)
    target = path.with_name(f"{path.name}.old-{time.strftime('%Y%m%d-%H%M%S')}")
    suffix = 1
    while target.exists():
        suffix += 1
        target = target.with_name(f"{target.name.split('~')[0]}~{suffix}")
    os.rename(path, target)
    return target


def read_trials(folder):
    """Returns the trials of a search, in trial id order.

    Returns:
        A list of dicts: `trial`, `status` (completed, failed, interrupted,
        ...), `score`, `hyperparameters` (the searched values), `epochs`
        (epochs trained, all executions), `seconds` (training time),
        `workers` (tuner ids that ran it).
    """
    oracle = files.read_json(Path(folder) / ORACLE_FILE) or {}
    order = {t: i for i, t in enumerate(oracle.get("start_order", []))}
    trials = []
    for trial_dir in sorted(Path(folder).glob("trial_*"),
                            key=lambda d: (order.get(d.name[6:], len(order)), d.name)):
        state = files.read_json(trial_dir / TRIAL_FILE)
        if not isinstance(state, dict) or "trial_id" not in state:
            continue
        executions = [r for r in (runs.Run.open(d) for d in
                                  sorted(trial_dir.glob("execution*"))) if r]
        values = state.get("hyperparameters", {}).get("values", {})
        trials.append({
            "trial": state["trial_id"],
            "status": _STATUS.get(state.get("status"), str(state.get("status")).lower()),
            "score": state.get("score"),
            "hyperparameters": {k: v for k, v in values.items()
                                if not k.startswith(_TUNER_KEYS)},
            "epochs": sum(r.get("epochs_done", 0) for r in executions),
            "seconds": round(sum(r.get("train_seconds", 0.0) for r in executions), 1),
            "workers": sorted({r.get("tuner_id") for r in executions if r.get("tuner_id")}),
        })
    return trials


def best_trial(trials, direction):
    """Returns the completed trial with the best score, or None."""
    scored = [t for t in trials if t["status"] == "completed" and t["score"] is not None
              and not math.isnan(t["score"])]
    if not scored:
        return None
    pick = max if direction == "max" else min
    return pick(scored, key=lambda t: t["score"])


def _cell(value):
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def table_rows(trials, objective, hp_names):
    """Returns the trials table: a header row and one row per trial."""
    header = ["trial", "status", objective, "epochs", "seconds", *hp_names, "worker"]
    rows = [[t["trial"], t["status"], t["score"], t["epochs"], t["seconds"],
             *[t["hyperparameters"].get(n) for n in hp_names], t["workers"]]
            for t in trials]
    return [header, *[[_cell(v) for v in row] for row in rows]]


def format_table(rows):
    """Formats table rows as aligned plain text."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def write_tables(folder, rows):
    """Writes the trials table as `trials.csv` and `trials.md` in `folder`."""
    tables.write_rows(Path(folder) / "trials.csv", rows)
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    files.write_text_atomic(Path(folder) / "trials.md", "\n".join(lines) + "\n")


def write_summary(folder, summary):
    """Writes `summary.json` (atomically)."""
    files.write_json_atomic(Path(folder) / SUMMARY_FILE, summary)


def find_best_hyperparameters(project_dir, which="best"):
    """Returns the best hyperparameters a search found.

    Args:
        project_dir: The project folder.
        which: `best` for the most recently finished search, or a search
            name.

    Returns:
        A tuple `(hyperparameters dict, search name)`.

    Raises:
        ProjectError: if there is no such search or it has no completed trial.
    """
    root = Path(project_dir) / TUNING_DIR
    if which == "best":
        summaries = [(p.stat().st_mtime, p) for p in root.glob(f"*/{SUMMARY_FILE}")]
        if not summaries:
            raise ProjectError("no search has finished a trial yet: run `dltool tune` first")
        path = max(summaries)[1]
    else:
        path = root / which / SUMMARY_FILE
        if not path.is_file():
            names = ", ".join(sorted(p.parent.name for p in root.glob(f"*/{SUMMARY_FILE}")))
            raise ProjectError(f"no search named {which!r} with results in {root}"
                               + (f" (searches: {names})" if names else ""))
    summary = files.read_json(path)
    if not isinstance(summary, dict):
        raise ProjectError(f"{path} is damaged")
    if not summary.get("best"):
        raise ProjectError(f"search {path.parent.name} has no completed trial yet")
    return for_training(path.parent, summary["best"]["hyperparameters"]), path.parent.name


def for_training(folder, hyperparameters):
    """A trial's hyperparameters as a training run takes them: without the
    `"auto"` `[model]` values the trial's epochs decided and the search did
    not search (`model.batchnorm_momentum`, from the steps of `tune.epochs`),
    which the run decides again for its own epochs.

    Args:
        folder: The search folder (its `search.json` holds the `[model]` and
            `[search]` sections the search started with).
        hyperparameters: The trial's values.
    """
    fingerprint = (files.read_json(Path(folder) / SEARCH_FILE) or {}).get("fingerprint", {})
    searched = set(config_lib.flatten_search(fingerprint.get("search", {})))
    written = fingerprint.get("model", {})
    return {name: value for name, value in hyperparameters.items()
            if name in searched or not auto.is_auto(written.get(name))}


def hyperparameter_overrides(hyperparameters):
    """Returns the overrides that make them the config's values: `model.KEY=VALUE`,
    and `training.KEY=VALUE` for a searched `[training]` key (named `training.KEY`)."""
    for name, value in hyperparameters.items():
        if not isinstance(value, (str, int, float, bool)):
            raise ConfigError(f"hyperparameter {name} has a value a config cannot hold: "
                              f"{value!r}")
    def key(name):
        return name if config_lib.searched_training_key(name) is not None else f"model.{name}"
    return [f"{key(name)}={json.dumps(value)}" for name, value in hyperparameters.items()]
