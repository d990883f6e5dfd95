"""Run folders: `runs/<name>/` inside a project.

A run folder holds the resolved config (`config.toml`), its metadata
(`run.json`: status, pid, config digest, class names, epochs, metrics), the
best weights (`best.weights.h5`), the resume backup (`backup/`), the epoch log
(`history.csv`) and TensorBoard logs (`tensorboard/`). Metadata is written
atomically (temporary file, then rename).

This module never imports TensorFlow.
"""

import json
import os
import time
from pathlib import Path

from dltool.errors import ProjectError

RUNS_DIR = "runs"
RUN_FILE = "run.json"
WEIGHTS_FILE = "best.weights.h5"


def write_json_atomic(path, data):
    """Writes `data` as JSON to `path` through a temporary file and a rename."""
    path = Path(path)
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def write_text_atomic(path, text):
    """Writes UTF-8 `text` to `path` through a temporary file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


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


def find_trained(project_dir, name=None):
    """Returns the named run, or the newest one with trained weights.

    Raises:
        ProjectError: if there is no such run or nothing was trained yet.
    """
    runs = list_runs(project_dir)
    if name is not None:
        for run in runs:
            if run["name"] == name:
                if not (run["dir"] / WEIGHTS_FILE).is_file():
                    raise ProjectError(f"run {name} has no trained weights yet")
                return run
        raise ProjectError(f"no run named {name!r} in {Path(project_dir) / RUNS_DIR}")
    for run in runs:
        if (run["dir"] / WEIGHTS_FILE).is_file():
            return run
    raise ProjectError("no trained model yet: run `dltool train` first")
