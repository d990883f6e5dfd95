"""Read-only and full folders: `new`, `train`, `export`, `evaluate` stop with one line.

The folder each command writes to is a real mount (the `mounts` fixture): a
read-only tmpfs, or a small tmpfs filled to its last page or to a few KiB,
unmounted when the test ends. Each command runs as its own `dltool`
process, so what is checked is what a user sees: exit code 1 (not a
segfault), one line `Error: cannot write PATH: REASON` on stderr and no
traceback, and nothing half-written left behind.
"""

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import TINY_MODEL
from dltool.core import runs

READ_ONLY = "Read-only file system"
FULL = "No space left on device"
FILLER = "filler"
TIMEOUT = 600


class Mounts:
    """tmpfs mounts over test folders; `unmount_all` takes them off again."""

    def __init__(self):
        self.points = []

    def mount(self, folder, kind, free_kib=0):
        """Mounts a tmpfs over `folder` that holds what `folder` held.

        Args:
            folder: The folder to cover (made if missing).
            kind: `read-only`, or `full`: a file `filler` takes all the space
                but `free_kib` KiB.

        Returns:
            `folder`.
        """
        folder.mkdir(parents=True, exist_ok=True)
        saved = Path(tempfile.mkdtemp(prefix="dltool-mount-")) / "saved"
        shutil.copytree(folder, saved, symlinks=True)
        size_kib = _size_kib(saved) + 512
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kib}k", "tmpfs",
                                  str(folder)], capture_output=True, text=True)
        if mounted.returncode != 0:
            pytest.skip("these tests mount a tmpfs (root or CAP_SYS_ADMIN), which is not "
                        f"permitted here: {mounted.stderr.strip()}")
        self.points.append(folder)
        shutil.copytree(saved, folder, symlinks=True, dirs_exist_ok=True)
        shutil.rmtree(saved.parent)
        if kind == "read-only":
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            _fill(folder, free_kib)
        return folder

    def unmount_all(self):
        for folder in reversed(self.points):
            if subprocess.run(["umount", str(folder)]).returncode != 0:
                subprocess.run(["umount", "-l", str(folder)], check=True)  # still busy


@pytest.fixture
def mounts():
    found = Mounts()
    yield found
    found.unmount_all()


def _size_kib(folder):
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) // 1024


def _fill(folder, free_kib):
    """Fills `folder`'s file system with `filler`, then frees `free_kib` KiB of it."""
    chunk = bytes(64 * 1024)
    with open(folder / FILLER, "wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
        except OSError:
            pass
        os.ftruncate(f.fileno(), max(0, f.tell() - free_kib * 1024))
    stats = os.statvfs(folder)
    assert stats.f_bavail * stats.f_frsize <= free_kib * 1024 + 64 * 1024


def _dltool(*args, cwd=None):
    """Runs the `dltool` CLI as its own process."""
    return subprocess.run([sys.executable, "-m", "dltool.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=TIMEOUT)


def _assert_refused(result, path, reason):
    """Exit code 1, no traceback, and one error line naming `path` and `reason`.

    `path` may be a compiled pattern of the path.
    """
    where = path.pattern if isinstance(path, re.Pattern) else re.escape(str(path))
    tail = result.stderr[-3000:]
    assert result.returncode == 1, f"exit code {result.returncode}:\n{tail}"
    assert "Traceback" not in result.stderr, tail
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1, tail
    assert re.fullmatch(f"Error: cannot write {where}: {re.escape(reason)}( \\(.+\\))?",
                        errors[0]), tail


def _entries(folder):
    """What `folder` holds, at every depth, but the filler."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != FILLER)


@pytest.mark.parametrize("kind, free_kib, reason", [
    ("read-only", 0, READ_ONLY), ("full", 0, FULL),
    ("full", 8, FULL)])  # room for the check's page, not for the project
def test_new_in_a_read_only_or_full_folder(tmp_path, mounts, kind, free_kib, reason):
    parent = mounts.mount(tmp_path / "parent", kind, free_kib)
    result = _dltool("new", "image-classifier", parent / "proj")
    _assert_refused(result, parent / "proj" if free_kib else parent, reason)
    assert _entries(parent) == []


@pytest.mark.slow
@pytest.mark.parametrize("kind, free_kib, reason", [
    ("read-only", 0, READ_ONLY), ("full", 0, FULL),
    # Room for the run folder, not for the first epoch's weights: HDF5 would
    # crash the process (exit -11) if it met the full disk while writing them.
    ("full", 40, FULL)])
def test_train_into_a_read_only_or_full_runs_folder(project, mounts, kind, free_kib, reason):
    root = mounts.mount(project / runs.RUNS_DIR, kind, free_kib)
    result = _dltool("train", "--project", project, "--epochs", 1, *TINY_MODEL)
    _assert_refused(result, root, reason)
    assert _entries(root) == []  # no run folder left looking as if it were running


@pytest.mark.slow
@pytest.mark.parametrize("kind, free_kib, reason", [
    ("read-only", 0, READ_ONLY),
    ("full", 64, FULL)])  # room to start the SavedModel, not to finish it
def test_export_into_a_read_only_or_full_folder(trained_project, copy_project, mounts, kind,
                                                free_kib, reason):
    from dltool.engine import export

    project = copy_project(trained_project)
    record = (runs.find_trained(project).record_file).read_bytes()
    saved = mounts.mount(project / export.EXPORT_ROOT, kind, free_kib)
    before = _entries(saved)
    result = _dltool("export", "--project", project)
    model_root = saved / project.name
    _assert_refused(result, model_root / "2" if free_kib else model_root, reason)
    assert _entries(saved) == before  # no version 2, whole or in part
    assert runs.find_trained(project).record_file.read_bytes() == record


@pytest.mark.slow
@pytest.mark.parametrize("kind, free_kib, reason", [
    ("read-only", 0, READ_ONLY),
    ("full", 4, FULL)])  # room for the check's page, not for the predictions
def test_evaluate_into_a_read_only_or_full_run_folder(trained_project, copy_project, mounts,
                                                      kind, free_kib, reason):
    project = copy_project(trained_project)
    run = runs.find_trained(project)
    record = run.record_file.read_bytes()
    before = _entries(run.dir)
    mounts.mount(run.dir, kind, free_kib)
    result = _dltool("evaluate", "--project", project)
    _assert_refused(result, run.dir, reason)
    assert _entries(run.dir) == before
    assert run.record_file.read_bytes() == record


@pytest.mark.parametrize("epochs_done", [0, 1])
def test_a_run_whose_folder_fills_up_is_removed_unless_it_has_epochs(project, mounts,
                                                                     epochs_done):
    from dltool.core import project as project_lib
    from dltool.core.errors import StorageError
    from dltool.engine import train

    root = mounts.mount(project / runs.RUNS_DIR, "full", free_kib=512)
    config = project_lib.load_config(project)
    with pytest.raises(StorageError) as raised:
        with train.open_run(project, config, None, fresh=True, cluster=None,
                            echo=lambda line: None) as (run, _):
            run.update(status="running", epochs_done=epochs_done)
            _fill(root, 0)  # the disk fills up during training
            run.update(status="finished")
    assert str(raised.value).startswith(f"cannot write {run.dir}: {FULL}")
    if epochs_done:
        assert "is kept: `dltool train` resumes it" in str(raised.value)
        assert runs.Run.open(run.dir).get("epochs_done") == 1
    else:
        assert _entries(root) == []


def test_weights_saves_during_training_check_the_room_first(tmp_path, mounts):
    """A disk that fills up during training: HDF5 would crash the process
    (a segfault) in `save_weights`, so the best-weights and the backup
    callbacks check the room before each save and stop with one line."""
    from dltool.core.errors import StorageError
    from dltool.engine import callbacks
    from dltool._tf import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(512), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    folder = mounts.mount(tmp_path / "runs", "full", free_kib=64)

    best = callbacks.BestWeights(folder / "best.weights.h5", "val_loss", "min")
    best.set_model(model)
    with pytest.raises(StorageError, match=rf"cannot write {re.escape(str(folder))}: {FULL}"):
        best.on_epoch_end(0, {"val_loss": 0.5})
    backup = callbacks.TrainingBackup(folder / "backup")
    backup.set_model(model)
    with pytest.raises(StorageError, match=FULL):
        backup.on_epoch_end(0)
    assert sorted(p.name for p in folder.rglob("*") if p.is_file()) == [FILLER]
