"""Leftovers of killed commands are cleaned by the next command of the same kind.

Each test holds a real process in the middle of a write (a library function
with one step patched to say `ready` and sleep, inside the staging block),
kills it with SIGKILL, then runs the next command: the dead process's
temporary folder `.tmp-<pid>-NAME` is gone, a live process's is untouched.
"""

import os
import select
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY_MODEL, invoke
from dltool.core import runs, scaffold

READY_TIMEOUT = 240  # seconds: a holder that imports TensorFlow and loads a model

# `dltool new` held while it renders the first template file.
NEW_HOLDER = """
import sys, time
from dltool.core import scaffold

def held(env, relative, context):
    print("ready", flush=True)
    time.sleep(600)

scaffold._render_file = held
scaffold.render_project("image-classifier", sys.argv[1])
"""

# `dltool export` held after writing part of the SavedModel.
EXPORT_HOLDER = """
import sys, time
from pathlib import Path
from dltool.engine import export

def held(model, endpoint, path):
    (Path(path) / "saved_model.pb").write_bytes(b"half written")
    print("ready", flush=True)
    time.sleep(600)

export.write_saved_model = held
export.export(sys.argv[1])
"""

# A new run folder held complete (config and record) just before its rename.
RUN_HOLDER = """
import os, sys, time
from dltool.core import config, runs

def held(source, target):
    print("ready", flush=True)
    time.sleep(600)

os.rename = held
runs.Run.create(sys.argv[1], config.load_config(os.path.join(sys.argv[1], "config.toml")))
"""


class Holders:
    """Processes held mid-write; the fixture kills the ones still alive."""

    def __init__(self):
        self.processes = []

    def start(self, code, *args):
        """Runs `python -c code ARGS` and returns it once it printed `ready`."""
        process = subprocess.Popen([sys.executable, "-c", code, *map(str, args)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.processes.append(process)
        return process

    def wait_ready(self, process):
        readable, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT)
        line = process.stdout.readline() if readable else ""
        if line.strip() != "ready":
            process.kill()
            pytest.fail(f"the holder never got ready: {process.stderr.read()[-2000:]}")

    def kill(self, process):
        """SIGKILL, as `kill -9` does; returns once the process is gone."""
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL

    def stop_all(self):
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(timeout=30)


@pytest.fixture
def holders():
    found = Holders()
    yield found
    found.stop_all()


def _staging(folder, process, name):
    """The staging folder of `process` for `name` (see `dltool.core.files`)."""
    return folder / f".tmp-{process.pid}-{name}"


def test_new_removes_what_killed_renders_left_and_keeps_live_ones(runner, tmp_path, holders):
    killed, live = holders.start(NEW_HOLDER, tmp_path / "first"), \
        holders.start(NEW_HOLDER, tmp_path / "second")
    for process in (killed, live):
        holders.wait_ready(process)
    stale, running = _staging(tmp_path, killed, "first"), _staging(tmp_path, live, "second")
    assert stale.is_dir() and running.is_dir()  # held mid-render
    holders.kill(killed)
    assert stale.is_dir()  # what a kill -9 leaves
    # Not ours: a folder of another program's with the same kind of name.
    foreign = tmp_path / f".tmp-{killed.pid}-photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"not dltool's")
    # Staging folders of the dltool before `core.files` (no process id): one
    # untouched for two hours is a leftover, a fresh one may be rendering.
    old = tmp_path / ".dltool-tmp-k2j4x9"
    old.mkdir()
    (old / "model.py").write_text("# half rendered\n")
    os.utime(old, (time.time() - 7200,) * 2)
    fresh_old = tmp_path / ".dltool-tmp-a8b7c6"
    fresh_old.mkdir()

    result = invoke(runner, "new", "image-classifier", tmp_path / "third")

    assert result.exit_code == 0, result.output
    assert (tmp_path / "third" / "config.toml").is_file()
    assert not stale.exists() and not old.exists()
    assert (running / scaffold.ANSWERS_FILE).is_file() and live.poll() is None
    assert (foreign / "cat.jpg").is_file() and fresh_old.is_dir()
    assert not (tmp_path / "first").exists()


@pytest.mark.slow
def test_export_removes_what_killed_exports_left_and_keeps_live_ones(
        runner, trained_project, copy_project, holders):
    from dltool.engine import export

    project = copy_project(trained_project)
    model_root = project / export.EXPORT_ROOT / project.name
    assert export.versions(model_root) == [1]
    killed, live = holders.start(EXPORT_HOLDER, project), holders.start(EXPORT_HOLDER, project)
    for process in (killed, live):
        holders.wait_ready(process)
    stale, running = _staging(model_root, killed, "2"), _staging(model_root, live, "2")
    assert (stale / "saved_model.pb").read_bytes() == b"half written"
    holders.kill(killed)
    assert stale.is_dir()

    result = invoke(runner, "export", "--project", project)

    assert result.exit_code == 0, result.output
    assert not stale.exists()
    assert (running / "saved_model.pb").is_file() and live.poll() is None
    assert export.versions(model_root) == [1, 2]
    assert (model_root / "2" / export.METADATA_FILE).is_file()
    assert (model_root / "2" / "saved_model.pb").stat().st_size > len(b"half written")


@pytest.mark.slow
def test_train_removes_run_folders_killed_while_being_created(runner, project, holders):
    killed, live = holders.start(RUN_HOLDER, project), holders.start(RUN_HOLDER, project)
    for process in (killed, live):
        holders.wait_ready(process)
    root = project / runs.RUNS_DIR
    stale = [p for p in root.iterdir() if p.name.startswith(f".tmp-{killed.pid}-")]
    running = [p for p in root.iterdir() if p.name.startswith(f".tmp-{live.pid}-")]
    assert len(stale) == 1 and (stale[0] / runs.Run.RECORD_FILE).is_file()
    holders.kill(killed)
    assert runs.list_runs(project) == []  # a staging folder is not a run

    result = invoke(runner, "train", "--project", project, "--epochs", 1, *TINY_MODEL)

    assert result.exit_code == 0, result.output
    assert not stale[0].exists()
    assert running[0].is_dir() and live.poll() is None
    assert [run.get("status") for run in runs.list_runs(project)] == ["finished"]
