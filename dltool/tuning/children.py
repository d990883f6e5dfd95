"""A local `dltool tune` search as a chain of child processes.

TensorFlow keeps a few MiB of every model it has compiled, even after
`keras.backend.clear_session()`: a long search in one process grows from
trial to trial (`bench/tune.py` measures it). So `dltool tune` runs the
trials in child processes, `tune.trials_per_process` each (default 1; 0 runs
them all in the `dltool tune` process). The parent loads no TensorFlow: it
reads the config, starts the children one after the other and relays their
output. Each child is `dltool tune ... --child-of STARTED,DEADLINE,INDEX`:
it checks the input, continues the search from its state files (as a rerun
of the command would), runs its trials and exits with `MORE_TRIALS_EXIT`;
the child that finds the search over prints the summary and exits 0. The
time budget counts from the parent's start.
"""

import sys
import time
import types

from dltool.core import config as config_lib
from dltool.core import files, processes
from dltool.core import project as project_lib
from dltool.core.errors import ReportedError
from dltool.core.scaffold import validate_project_name
from dltool.tuning import trials

MORE_TRIALS_EXIT = 75  # EX_TEMPFAIL: this child ran its trials; the search goes on


class ChildRole(types.SimpleNamespace):
    """What a child process of a local search is told by its parent.

    Attributes:
        started: `time.time()` when the search (the parent) started.
        deadline: `time.time()` when its time budget runs out, or None.
        index: The child's number, from 0 (only the first prints the
            data and search description).
    """

    @classmethod
    def parse(cls, text):
        """Reads `STARTED,DEADLINE,INDEX` (DEADLINE may be empty)."""
        started, deadline, index = text.split(",")
        return cls(started=float(started), deadline=float(deadline) if deadline else None,
                   index=int(index))

    def format(self):
        deadline = "" if self.deadline is None else repr(self.deadline)
        return f"{self.started!r},{deadline},{self.index}"


def run_in_children(project_dir, overrides=(), *, name=None, fresh=False, export_best=False,
                    skip_bad=False):
    """Runs a local search in child processes, if `tune.trials_per_process` asks.

    Args:
        project_dir: The project folder.
        overrides: `section.key=value` strings, passed on to the children.
        name: Search name; the tuner's name if None.
        fresh: Start the search over (the first child moves the old aside).
        export_best: Retrain and export the best afterwards (the last child).
        skip_bad: Drop unusable data files.

    Returns:
        The search summary dict, or None if `tune.trials_per_process` is 0
        (the caller runs the search in its own process).

    Raises:
        ConfigError: a bad config, search name or time budget.
        ReportedError: a child failed (it printed why).
    """
    config = project_lib.load_config(project_dir, overrides)
    settings = config["tune"]
    if not settings["trials_per_process"]:
        return None
    name = validate_project_name(name or settings["tuner"], what="search name")
    budget = config_lib.parse_duration(settings["time_budget"], "tune.time_budget")
    started = time.time()
    role = ChildRole(started=started, deadline=started + budget if budget else None, index=0)
    command = [sys.executable, "-m", "dltool.cli", "tune", "--project", str(project_dir),
               "--name", name, *[arg for o in overrides for arg in ("--set", o)]]
    command += ["--export-best"] * export_best + ["--skip-bad"] * skip_bad
    while True:
        first = ["--fresh"] if fresh and role.index == 0 else []
        code = processes.run_relayed([*command, *first, "--child-of", role.format()])
        if code != MORE_TRIALS_EXIT:
            break
        role.index += 1
    if code != 0:
        raise ReportedError(code)
    return files.read_json(trials.search_dir(project_dir, name) / trials.SUMMARY_FILE) or {}
