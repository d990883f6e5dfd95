"""Runs: `runs/<name>/` inside a project, and the `Run` object that owns one.

A run folder holds the resolved config (`config.toml`), its record
(`run.json`: status, pid, config digest, data metadata, epochs, metrics), the
best weights (`best.weights.h5`), the resume backup (`backup/`), the epoch log
(`history.csv`), TensorBoard logs (`tensorboard/`), and what `dltool
evaluate` and the report write. Every file name of a run is a member of
`Run`; the record is written atomically (`dltool.core.files`).

This module never imports TensorFlow.
"""

import csv
import difflib
import json
import time
import tomllib
from pathlib import Path

from dltool.core import files
from dltool.core.errors import DataError, ProjectError

RUNS_DIR = "runs"
TUNING_DIR = "tuning"


class Run:
    """One run folder and its record, `run.json`.

    The record's fields read like a dict's (`run["meta"]`,
    `run.get("best_value")`); `update` changes them in memory and on disk.

    Args:
        folder: The folder this process writes the run's files to (a worker
            of a multi-worker run writes to a temporary one).
        record: The contents of `run.json`; at least `name`.
    """

    RECORD_FILE = "run.json"
    CONFIG_FILE = "config.toml"
    WEIGHTS_FILE = "best.weights.h5"
    HISTORY_FILE = "history.csv"
    BACKUP_DIR = "backup"
    TENSORBOARD_DIR = "tensorboard"
    REPORT_HTML = "report.html"
    REPORT_MD = "report.md"
    LEARNING_CURVES = "learning_curves.png"
    SPLITS = ("test", "val")

    def __init__(self, folder, record):
        self.dir = Path(folder)
        self.record = dict(record)

    def __repr__(self):
        return f"Run({str(self.dir)!r}, name={self.name!r})"

    # ---- the record ----

    @property
    def name(self):
        return self.record["name"]

    @property
    def template(self):
        return self.record.get("template", "")

    @property
    def meta(self):
        """What the data decided and the exported model needs (class names, ...)."""
        return self.record.get("meta", {})

    def __getitem__(self, key):
        return self.record[key]

    def get(self, key, default=None):
        return self.record.get(key, default)

    def update(self, **fields):
        """Updates the record in memory and writes `run.json`; returns the run."""
        self.record.update(fields)
        files.write_json_atomic(self.record_file, self.record)
        return self

    # ---- its files ----

    @property
    def record_file(self):
        return self.dir / self.RECORD_FILE

    @property
    def config_file(self):
        return self.dir / self.CONFIG_FILE

    @property
    def weights_file(self):
        return self.dir / self.WEIGHTS_FILE

    @property
    def history_file(self):
        return self.dir / self.HISTORY_FILE

    @property
    def backup_dir(self):
        return self.dir / self.BACKUP_DIR

    @property
    def tensorboard_dir(self):
        return self.dir / self.TENSORBOARD_DIR

    @property
    def report_html(self):
        return self.dir / self.REPORT_HTML

    def evaluation_file(self, split):
        return self.dir / f"evaluation-{split}.json"

    def predictions_file(self, split):
        return self.dir / f"predictions-{split}.csv"

    def examples_file(self, split):
        return self.dir / f"examples-{split}.npz"

    def translations_file(self, split):
        return self.dir / f"translations-{split}.tsv"

    def figure_file(self, kind, split=None):
        """A report figure: `KIND.png`, or `KIND-SPLIT.png` for one split."""
        return self.dir / (f"{kind}-{split}.png" if split else f"{kind}.png")

    def has_weights(self):
        return self.weights_file.is_file()

    def write_text(self, name, text):
        """Writes the file `name` of the run atomically."""
        files.write_text_atomic(self.dir / name, text)

    def remove_leftovers(self):
        """Deletes what a killed process left half-written; returns how many."""
        return files.remove_leftovers(self.dir)

    # ---- what it recorded ----

    def history(self):
        """Reads the epoch log, `history.csv` (Keras' CSVLogger).

        A resumed run may log an epoch twice: the last line of an epoch
        wins. Empty cells and CSVLogger's `NA` (a metric an epoch did not
        log) are missing values (NaN); a last line torn by a kill is left
        out.

        Returns:
            Dict of column name to list of floats, epochs in order (column
            `epoch`, 0-based); None when there is no history yet.

        Raises:
            DataError: naming the file if it cannot be parsed.
        """
        path = self.history_file
        if not path.is_file():
            return None
        try:
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error) as e:
            raise DataError(f"{path}: not a readable training history ({e})") from e
        by_epoch = {}
        for i, row in enumerate(rows):
            try:
                by_epoch[int(row["epoch"])] = {k: float(v) for k, v in row.items()
                                               if v not in ("", "NA")}
            except (KeyError, ValueError, TypeError) as e:
                if i == len(rows) - 1 and by_epoch:
                    break  # the line a kill tore
                raise DataError(f"{path}: not a readable training history ({e})") from e
        if not by_epoch:
            return None
        epochs = sorted(by_epoch)
        columns = sorted({k for row in by_epoch.values() for k in row})
        return {k: [by_epoch[e].get(k, float("nan")) for e in epochs] for k in columns}

    def evaluations(self):
        """Returns `{split: evaluation dict}` for the splits the run was evaluated on.

        Raises:
            DataError: naming a file that exists but is not valid JSON.
        """
        found = {}
        for split in self.SPLITS:
            path = self.evaluation_file(split)
            if path.is_file():
                try:
                    found[split] = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as e:
                    raise DataError(f"{path}: not readable JSON ({e})") from e
        return found

    def config_sections(self):
        """The run's resolved `config.toml` as parsed TOML sections.

        Raises:
            ProjectError: if it is missing or not TOML.
        """
        try:
            return tomllib.loads(self.config_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ProjectError(f"{self.config_file}: not a readable config ({e})") from e

    # ---- opening and creating ----

    @classmethod
    def open(cls, folder):
        """Returns the run in `folder`, or None if its record is unreadable."""
        record = files.read_json(Path(folder) / cls.RECORD_FILE)
        if not isinstance(record, dict) or "name" not in record:
            return None
        return cls(folder, record)

    @classmethod
    def create(cls, project_dir, config, name=None, init_from=None):
        """Creates a new run folder holding the resolved config.

        Args:
            project_dir: The project folder.
            config: The resolved `Config`.
            name: The run's name; the current time when None (with a suffix
                if taken).
            init_from: What its weights start from (`dltool train
                --init-from`, `dltool.engine.initfrom`), recorded from the
                start so that only the same start resumes it; None.

        Returns:
            The `Run`.
        """
        name = name or time.strftime("%Y%m%d-%H%M%S")
        folder = Path(project_dir) / RUNS_DIR / name
        suffix = 1
        while folder.exists():
            suffix += 1
            folder = Path(project_dir) / RUNS_DIR / f"{name}-{suffix}"
        record = {"name": folder.name, "template": config.template, "status": "created",
                  "config_digest": config.digest(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S"), "epochs_done": 0}
        if init_from is not None:
            record["init_from"] = init_from
        # Staged, so a full disk or a kill leaves no run folder without its
        # config and record.
        with files.staging_folder(folder) as staging:
            (staging / cls.CONFIG_FILE).write_text(config.to_toml(), encoding="utf-8")
            files.write_json_atomic(staging / cls.RECORD_FILE, record)
        return cls(folder, record)


def list_runs(project_dir):
    """Returns a project's runs, newest first."""
    root = Path(project_dir) / RUNS_DIR
    folders = sorted(root.iterdir(), reverse=True) if root.is_dir() else []
    found = [Run.open(d) for d in folders if not d.name.startswith(files.TMP_PREFIX)]
    return [r for r in found if r is not None]


def find_resumable(project_dir, config, init_source=None):
    """Returns the newest unfinished run with the same config and start, or None.

    Args:
        project_dir: The project folder.
        config: The resolved `Config`.
        init_source: The `source` of the run's `init_from` (`--init-from`),
            or None for a run trained from scratch.

    Raises:
        ProjectError: if that run is still being trained by a live process.
    """
    for run in list_runs(project_dir):
        if run.get("status") in ("created", "running") and \
                run.get("config_digest") == config.digest() and \
                (run.get("init_from") or {}).get("source") == init_source:
            if files.process_alive(run.get("pid")):
                raise ProjectError(
                    f"run {run.name} is being trained by process {run['pid']}; "
                    "wait for it or stop it first")
            return run
    return None


def find_run(project_dir, name):
    """Returns the run called `name`.

    Raises:
        ProjectError: if there is no such run (naming close matches).
    """
    runs = list_runs(project_dir)
    for run in runs:
        if run.name == name:
            return run
    close = difflib.get_close_matches(name, [r.name for r in runs], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ProjectError(f"no run named {name!r} in {Path(project_dir) / RUNS_DIR}{hint}")


def find_trained(project_dir, name=None):
    """Returns the named run, or the newest one with trained weights.

    Raises:
        ProjectError: if there is no such run or nothing was trained yet.
    """
    if name is not None:
        run = find_run(project_dir, name)
        if not run.has_weights():
            raise ProjectError(f"run {name} has no trained weights yet")
        return run
    for run in list_runs(project_dir):
        if run.has_weights():
            return run
    raise ProjectError("no trained model yet: run `dltool train` first")


def summary(run):
    """Returns the facts `dltool runs` shows of a run, as a flat dict.

    Keys: `name`, `template`, `date`, `status` (`interrupted` for a run
    recorded as running whose process is gone), `epochs`, `monitor`,
    `best` (best value of the monitored metric, or None), `exported`
    (`NAME/VERSION` or None) and `init_from` (`describe_start`), then the facts its task recorded when
    `dltool evaluate` ran on the test split (`Task.run_facts`: a
    classifier's `test_accuracy` and `test_loss`).
    """
    status = run.get("status", "")
    if status == "running" and not files.process_alive(run.get("pid")):
        # Its process was killed (or crashed) before it could record why.
        status = "interrupted"
    return {"name": run.name, "template": run.template,
            "date": run.get("started", ""), "status": status,
            "epochs": run.get("epochs_done", 0), "monitor": run.get("monitor"),
            "best": run.get("best_value"), "exported": run.get("exported_version"),
            "init_from": describe_start(run.get("init_from")), **run.get("facts", {})}


def describe_start(init_from):
    """One line saying what a run's weights started from (`run.json`'s
    `init_from`), or None for a run trained from scratch.

    E.g. `run 20261201-101500 (image-classifier, 8 classes): 7 layers
    loaded, 1 new (dense: the classes differ)`.
    """
    if not init_from:
        return None
    classes = init_from.get("class_names")
    about = ", ".join(part for part in (
        init_from.get("template"),
        f"{len(classes)} classes" if classes else None,
        "multi-label" if init_from.get("multi_label") else None) if part)
    new = init_from.get("new") or []
    line = (f"{init_from.get('kind')} {init_from.get('name')}"
            + (f" ({about})" if about else "")
            + f": {len(init_from.get('loaded') or [])} layers loaded, {len(new)} new")
    if new:
        head = f": {init_from['head']}" if init_from.get("head") else ""
        line += f" ({', '.join(new)}{head})"
    if init_from.get("vocabulary"):
        line += f"; vocabulary: {init_from['vocabulary']}"
    return line


def compare(project_dir, name_a, name_b):
    """Compares two runs: config differences and metrics side by side.

    Args:
        project_dir: The project folder.
        name_a: The first run's name.
        name_b: The second run's name.

    Returns:
        A dict with `runs` (the two names), `config` (list of
        `(key, value_a, value_b)` for every `section.key` that differs; None
        for a key one config lacks) and `metrics` (list of `(name, a, b)`:
        epochs, best value, training time, last epoch's metrics, the
        facts of the test evaluation, export).

    Raises:
        ProjectError: no such run, or a run folder without its config.
    """
    runs = [find_run(project_dir, name) for name in (name_a, name_b)]
    configs = [_flatten(run.config_sections()) for run in runs]
    keys = sorted(configs[0].keys() | configs[1].keys())
    config = [(k, configs[0].get(k), configs[1].get(k)) for k in keys
              if configs[0].get(k) != configs[1].get(k)]
    facts = [summary(run) for run in runs]
    metrics = [("template", facts[0]["template"], facts[1]["template"]),
               ("epochs", facts[0]["epochs"], facts[1]["epochs"])]
    if facts[0]["monitor"] or facts[1]["monitor"]:
        metrics.append((f"best {facts[0]['monitor'] or facts[1]['monitor']}",
                        facts[0]["best"], facts[1]["best"]))
    metrics.append(("training seconds", runs[0].get("train_seconds"),
                    runs[1].get("train_seconds")))
    metrics.append(("parameters", runs[0].get("parameters"), runs[1].get("parameters")))
    last = [run.get("last_metrics", {}) for run in runs]
    metrics += [(f"last {k}", last[0].get(k), last[1].get(k))
                for k in sorted(last[0].keys() | last[1].keys())]
    extra = [run.get("facts", {}) for run in runs]
    metrics += [(k, extra[0].get(k), extra[1].get(k)) for k in {**extra[0], **extra[1]}]
    metrics.append(("init from", facts[0]["init_from"], facts[1]["init_from"]))
    metrics.append(("exported", facts[0]["exported"], facts[1]["exported"]))
    return {"runs": [r.name for r in runs], "config": config, "metrics": metrics}


def _flatten(sections):
    return {f"{section}.{key}": value for section, table in sections.items()
            for key, value in table.items()}


def tensorboard_logdirs(project_dir):
    """Returns `{name: folder}` of the TensorBoard logs of a project.

    Raises:
        ProjectError: if there are no runs or tuning searches yet.
    """
    found = {name: Path(project_dir) / name for name in (RUNS_DIR, TUNING_DIR)
             if (Path(project_dir) / name).is_dir()}
    if not found:
        raise ProjectError(f"no {RUNS_DIR}/ in {project_dir} yet: run `dltool train` first")
    return found
