"""Write files and folders atomically: complete or absent, never torn.

Every writer in dltool that must survive a kill goes through here: a file or
folder is written under a temporary name beside its target,
`.tmp-<pid>-<name>`, flushed to disk and renamed into place. A process killed
midway leaves only such a temporary name, which `remove_leftovers` deletes
once the process that wrote it is gone.

This module never imports TensorFlow.
"""

import contextlib
import json
import os
import shutil
from pathlib import Path

TMP_PREFIX = ".tmp-"


def temporary_name(path):
    """Returns the temporary path a write of `path` goes through.

    It ends like `path` (`.tmp-PID-best.weights.h5`), so writers that check
    the suffix accept it, and starts with the writer's process id, so
    `remove_leftovers` can tell whether its writer is still alive.
    """
    path = Path(path)
    return path.with_name(f"{TMP_PREFIX}{os.getpid()}-{path.name}")


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

    On an error the temporary file is removed and `path` is left as it was.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def staging_folder(path):
    """Yields an empty temporary folder; renames it to `path` on success.

    Every file in it is flushed to disk before the rename, so the folder is
    complete or absent. On an error the temporary folder is deleted.

    Raises:
        OSError: if `path` exists when the folder is renamed into place.
    """
    path = Path(path)
    staging = temporary_name(path)
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield staging
        for folder, _, names in os.walk(staging):
            for name in names:
                fsync_path(Path(folder) / name)
            fsync_path(folder)
        os.rename(staging, path)
        fsync_path(path.parent)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text_atomic(path, text):
    """Writes UTF-8 `text` to `path` through a temporary file and a rename."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path, data):
    """Writes `data` to `path` atomically as indented JSON, keys sorted."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path):
    """Returns the JSON in `path`, or None if it is missing or damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def remove_leftovers(folder):
    """Deletes the temporary files and folders a killed process left in `folder`.

    Only names whose writer (the process id in the name) is no longer alive
    are removed, at any depth.

    Returns:
        The number removed.
    """
    found = [p for p in Path(folder).rglob(f"{TMP_PREFIX}*") if not process_alive(_writer(p.name))]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return len(found)


def _writer(name):
    pid = name[len(TMP_PREFIX):].split("-", 1)[0]
    return int(pid) if pid.isdigit() else None


def process_alive(pid):
    """Whether another process with id `pid` is running (False for our own)."""
    if not pid or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
