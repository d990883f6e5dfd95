"""Write files and folders atomically: complete or absent, never torn.

Every writer in dltool that must survive a kill goes through here: a file or
folder is written under a temporary name beside its target,
`.tmp-<pid>-<name>`, flushed to disk and renamed into place. A process killed
midway leaves only such a temporary name, which `remove_leftovers` deletes
once the process that wrote it is gone.

A folder that cannot take a write (read-only, full, not ours) is reported as
one `StorageError` naming it: `check_writable` tests a folder before a
command starts, `storage_errors` catches what a command's writes meet later.

This module never imports TensorFlow.
"""

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

from dltool.core.errors import StorageError

TMP_PREFIX = ".tmp-"
# The errors only a write meets, and which are the folder's, not the
# command's: read-only, full, over quota. (A folder not ours to write is
# found by `check_writable`: "Permission denied" may also be a read's.)
_STORAGE_ERRNOS = (errno.EROFS, errno.ENOSPC, errno.EDQUOT)
# The same reasons in the words the C library gives them, as TensorFlow's and
# h5py's C++ writers quote them in their own errors.
_STORAGE_REASONS = tuple(os.strerror(code) for code in _STORAGE_ERRNOS)
# What `check_writable` writes: one page, so a disk with no free block fails.
_PROBE_BYTES = 4096


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
        # On a read-only folder unlink fails too: the error that matters is
        # the write's, and a temporary file left is `remove_leftovers`' to clean.
        with contextlib.suppress(OSError):
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


def remove_leftovers(folder, *, recursive=True, accept=None):
    """Deletes the temporary files and folders a killed process left in `folder`.

    Only names `.tmp-<pid>-...` whose writer (the process id in the name) is
    no longer alive are removed; a live writer's are never touched.

    Args:
        folder: The folder to clean.
        recursive: Look at every depth (a folder dltool owns, such as a run),
            or only at `folder`'s own entries (a folder the user owns, such
            as the parent of a new project).
        accept: A function of a leftover's path that says whether it may be
            removed; by default every one may.

    Returns:
        The number removed.
    """
    pattern = f"{TMP_PREFIX}*"
    candidates = Path(folder).rglob(pattern) if recursive else Path(folder).glob(pattern)
    found = [p for p in candidates if _writer(p.name) is not None
             and not process_alive(_writer(p.name)) and (accept is None or accept(p))]
    removed = 0
    for path in found:
        with contextlib.suppress(OSError):  # gone already, or a read-only folder
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def check_writable(folder):
    """Checks, before a command writes anything, that `folder` takes new files.

    One page is written to it (or, while it does not exist, to the folder
    it will be made in), flushed and deleted; nothing else changes. So a
    read-only folder, a full disk or a folder we may not write stops the
    command here with one line, before TensorFlow's C++ writers meet it.

    Args:
        folder: The folder the command will write to.

    Raises:
        StorageError: naming `folder` and the operating system's reason.
    """
    folder = Path(folder).absolute()
    probe = temporary_name(_nearest_existing(folder) / "write-check")
    try:
        with open(probe, "wb") as f:
            f.write(bytes(_PROBE_BYTES))
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise StorageError(f"cannot write {folder}: {e.strerror}") from None
    finally:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)


def check_free_space(folder, needed_bytes, what):
    """Checks that the file system of `folder` has `needed_bytes` free.

    For writers that must not meet a full disk midway: HDF5 (Keras'
    `.weights.h5`) crashes the process when a write fails while it closes
    a file.

    Args:
        folder: The folder written to (or, while it does not exist, the one
            it will be made in).
        needed_bytes: The room the writes need.
        what: What needs it, for the message.

    Raises:
        StorageError: naming `folder`, the room free and the room needed.
    """
    stats = os.statvfs(_nearest_existing(Path(folder).absolute()))
    free = stats.f_bavail * stats.f_frsize
    if free < needed_bytes:
        raise StorageError(
            f"cannot write {folder}: {os.strerror(errno.ENOSPC)} ({_kib(free)} free; "
            f"{what} need about {_kib(needed_bytes)})")


def _nearest_existing(folder):
    """`folder`, or the nearest of its parents that exists."""
    return next(p for p in (folder, *folder.parents) if os.path.lexists(p))


def _kib(size):
    return f"{size / 2**20:.1f} MiB" if size >= 2**20 else f"{size // 1024} KiB"


@contextlib.contextmanager
def storage_errors(path):
    """Turns a write that the folder refused, inside the block, into one line.

    A refused write is an `OSError` of a read-only or full file system, or
    an error of TensorFlow's or h5py's C++ writers whose message quotes
    that reason (`...; No space left on device`). Other errors pass as they
    are.

    Args:
        path: The folder or file the block writes, named in the message.

    Raises:
        StorageError: `cannot write PATH: REASON`.
    """
    try:
        yield
    except StorageError:
        raise
    except Exception as e:
        reason = _storage_reason(e)
        if reason is None:
            raise
        raise StorageError(f"cannot write {path}: {reason}") from e


def _storage_reason(error):
    """The operating system's reason a write failed, or None if it was not the folder's."""
    if isinstance(error, OSError):  # h5py's strerror is HDF5's whole error stack
        return os.strerror(error.errno) if error.errno in _STORAGE_ERRNOS else None
    text = str(error)
    return next((reason for reason in _STORAGE_REASONS if reason in text), None)


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
