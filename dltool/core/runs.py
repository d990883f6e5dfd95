"""Run folders: `runs/<name>/` inside a project.

A run folder holds the resolved config (`config.toml`), its metadata
(`run.json`: status, pid, config digest, class names, epochs, metrics), the
best weights (`best.weights.h5`), the resume backup (`backup/`), the epoch log
(`history.csv`) and TensorBoard logs (`tensorboard/`). Metadata is written
atomically (temporary file, then rename).

This module never imports TensorFlow.
"""

import contextlib
import difflib
import json
import os
import shutil
import time
from pathlib import Path

from dltool.core.errors import ProjectError

RUNS_DIR = "runs"
TUNING_DIR = "tuning"
RUN_FILE = "run.json"
WEIGHTS_FILE = "best.weights.h5"
TMP_PREFIX = ".tmp-"


def fsync_path(path):
    """Flushes a file or folder to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def replacing(path):
    """Yields a temporary path next to `path`; renames it to `path` on success.

    The temporary name ends like `path` (`.tmp-PID-best.weights.h5`), so
    writers that check the suffix accept it. On an error it is removed and
    `path` is left as it was.
    """
    path = Path(path)
    tmp = path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def remove_leftovers(run_dir):
    """Deletes the temporary files and folders a killed process left in a run.

    Returns:
        The number removed.
    """
    found = [p for p in Path(run_dir).rglob(f"{TMP_PREFIX}*")
             if not _alive(_tmp_pid(p.name))]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(found)


def _tmp_pid(name):
    pid = name[len(TMP_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def write_json_atomic(path, data):
    """Writes `data` as JSON to `path` through a temporary file and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path, text):
    """Writes UTF-8 `text` to `path` through a temporary file and a rename."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def read_run(run_dir):
    """Returns a run's metadata dict (with `dir` added), or None if unreadable."""
    try:
        meta = json.loads((Path(run_dir) / RUN_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    meta["dir"] = Path(run_dir)
    return meta


def list_runs(project_dir):
    """Returns the metadata of a project's runs, newest first."""
    root = Path(project_dir) / RUNS_DIR
    runs = [read_run(d) for d in sorted(root.iterdir(), reverse=True)] if root.is_dir() else []
    return [r for r in runs if r is not None]


def create_run(project_dir, config, name=None):
    """Creates a new run folder holding the resolved config.

    Returns:
        The run's metadata dict.
    """
    name = name or time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(project_dir) / RUNS_DIR / name
    suffix = 1
    while run_dir.exists():
        suffix += 1
        run_dir = Path(project_dir) / RUNS_DIR / f"{name}-{suffix}"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    meta = {"name": run_dir.name, "template": config.template, "status": "created",
            "config_digest": config.digest(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "epochs_done": 0}
    write_json_atomic(run_dir / RUN_FILE, meta)
    return {**meta, "dir": run_dir}


def update_run(run, **fields):
    """Updates a run's metadata on disk and in `run`; returns `run`."""
    run.update(fields)
    write_json_atomic(run["dir"] / RUN_FILE, {k: v for k, v in run.items() if k != "dir"})
    return run


def _alive(pid):
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def find_resumable(project_dir, config):
    """Returns the newest unfinished run with the same config, or None.

    Raises:
        ProjectError: if that run is still being trained by a live process.
    """
    for run in list_runs(project_dir):
        if run.get("status") in ("created", "running") and \
                run.get("config_digest") == config.digest():
            if _alive(run.get("pid")):
                raise ProjectError(
                    f"run {run['name']} is being trained by process {run['pid']}; "
                    "wait for it or stop it first")
            return run
    return None


def find_run(project_dir, name):
    """Returns the metadata of the run called `name`.

    Raises:
        ProjectError: if there is no such run (naming close matches).
    """
    runs = list_runs(project_dir)
    for run in runs:
        if run["name"] == name:
            return run
    close = difflib.get_close_matches(name, [r["name"] for r in runs], n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ProjectError(f"no run named {name!r} in {Path(project_dir) / RUNS_DIR}{hint}")


def find_trained(project_dir, name=None):
    """Returns the named run, or the newest one with trained weights.

    Raises:
        ProjectError: if there is no such run or nothing was trained yet.
    """
    if name is not None:
        run = find_run(project_dir, name)
        if not (run["dir"] / WEIGHTS_FILE).is_file():
            raise ProjectError(f"run {name} has no trained weights yet")
        return run
    for run in list_runs(project_dir):
        if (run["dir"] / WEIGHTS_FILE).is_file():
            return run
    raise ProjectError("no trained model yet: run `dltool train` first")


def summary(run):
    """Returns the facts `dltool runs` shows of a run, as a flat dict.

    Keys: `name`, `template`, `date`, `status`, `epochs`, `monitor`,
    `best` (best value of the monitored metric, or None), `exported`
    (`NAME/VERSION` or None), and the `test_accuracy` and `test_loss` of
    `dltool evaluate` when it ran.
    """
    facts = {"name": run["name"], "template": run.get("template", ""),
             "date": run.get("started", ""), "status": run.get("status", ""),
             "epochs": run.get("epochs_done", 0), "monitor": run.get("monitor"),
             "best": run.get("best_value"), "exported": run.get("exported_version")}
    try:
        evaluation = json.loads((run["dir"] / "evaluation-test.json").read_text("utf-8"))
        facts.update(test_accuracy=evaluation.get("accuracy"), test_loss=evaluation.get("loss"))
    except (OSError, ValueError):
        pass
    return facts


def compare(project_dir, name_a, name_b):
    """Compares two runs: config differences and metrics side by side.

    Returns:
        A dict with `runs` (the two names), `config` (list of
        `(key, value_a, value_b)` for every `section.key` that differs; None
        for a key one config lacks) and `metrics` (list of `(name, a, b)`:
        epochs, best value, training time, last epoch's metrics, test
        results).

    Raises:
        ProjectError: no such run, or a run folder without its config.
    """
    import tomllib

    runs = [find_run(project_dir, name) for name in (name_a, name_b)]
    configs = []
    for run in runs:
        path = run["dir"] / "config.toml"
        try:
            configs.append(_flatten(tomllib.loads(path.read_text(encoding="utf-8"))))
        except (OSError, ValueError) as e:
            raise ProjectError(f"{path}: not a readable config ({e})") from e
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
    metrics += [(k, facts[0].get(k), facts[1].get(k)) for k in ("test_accuracy", "test_loss")
                if k in facts[0] or k in facts[1]]
    metrics.append(("exported", facts[0]["exported"], facts[1]["exported"]))
    return {"runs": [r["name"] for r in runs], "config": config, "metrics": metrics}


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
