"""`dltool tune`: search the `[search]` space of a project with keras-tuner.

A search lives in `tuning/<name>/` (see `dltool.tuning.trials`), apart from the
training runs in `runs/`: it is many trials, not one model. Running the same
command again continues it (keras-tuner reloads its oracle; an interrupted
trial continues from its last completed epoch, see `dltool.tuning.adapter`);
`fresh=True` moves the old search aside and starts over.

`tune()` runs the trials in this process. `dltool tune` runs a local search
in child processes instead (`dltool.tuning.children`): each one calls
`tune(child=...)`, which stops after `tune.trials_per_process` trials.

Every check that can fail on bad input (config, search space, objective,
chief address, every searched backbone) runs before the search folder is
touched.

The trials' config (`_trial_config`) is the project's with `training.epochs`
= `tune.epochs`: its `"auto"` values are decided for those epochs (e.g.
`model.batchnorm_momentum` from the steps of a trial, not of a
`training.epochs` run), and `model.py` builds every trial from it.
"""

import fcntl
import json
import socket
import time
import types
import warnings
from pathlib import Path

from dltool._tf import keras
from dltool.core import config as config_lib
from dltool.core import files, metrics, tokens
from dltool.core import project as project_lib
from dltool.core.errors import ConfigError, DltoolError
from dltool.core.scaffold import validate_project_name
from dltool.tasks import task_for
from dltool.engine import train as training
from dltool.engine import runtime
from dltool.engine.experiment import Experiment, build_model
from dltool.engine.export import export
from dltool.tuning import adapter, trials
from dltool.tuning import space as search_space

# Settings a search must keep to be resumed (the rest, e.g. max_trials or
# the time budget, may change between runs).
_FIXED_TUNE_KEYS = ("tuner", "objective", "direction", "epochs", "early_stopping_patience",
                    "hyperband_factor")
_FIXED_SECTIONS = ("data", "model", "search")
_FIXED_TRAINING_KEYS = ("batch_size", "lr_schedule", "warmup_epochs", "seed")
LOOPBACK = ("127.0.0.1", "localhost", "::1")
# The chief's token, which every call to it must carry (see `write_token`).
TOKEN_FILE = "chief.token"
TOKEN_ENV = "DLTOOL_TUNE_TOKEN"


def parse_address(text, what):
    """Splits `HOST:PORT` (or `PORT`, meaning 127.0.0.1) for `--chief`/`--worker`.

    Returns:
        A tuple `(host, port)`.

    Raises:
        ConfigError: if it is not a host and a port number.
    """
    host, sep, port = str(text).rpartition(":")
    host = host.strip("[]") if sep else "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536 or (sep and not host):
        raise ConfigError(f"{what} must be HOST:PORT, e.g. 127.0.0.1:8470; got {text!r}")
    return host, int(port)


def wait_for_chief(host, port, timeout, poll_seconds=0.5):
    """Waits until the chief accepts connections on `host:port`.

    Raises:
        DltoolError: if it does not within `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return
        except OSError as e:
            reason = e.strerror or type(e).__name__
        if time.monotonic() >= deadline:
            raise DltoolError(f"cannot reach the chief at {host}:{port} within {timeout:g} s "
                              f"({reason}): start `dltool tune --chief {host}:{port}` there "
                              "first, or check the address")
        time.sleep(poll_seconds)


def write_token(folder):
    """Generates the chief's token and writes it to `folder/chief.token`.

    A new token for each start of the chief: a worker reads it from the same
    file, or is given it (`--token-file`, `DLTOOL_TUNE_TOKEN`). The file is
    written atomically and readable by its owner only (mode 0600; see
    `dltool.core.tokens.write_token`).

    Returns:
        The token.
    """
    return tokens.write_token(Path(folder) / TOKEN_FILE)


def read_token(folder, token_file=None, environ=None):
    """Finds a worker's token: `--token-file`, else `DLTOOL_TUNE_TOKEN`, else the chief's file.

    Args:
        folder: The search folder (the chief's `chief.token` when it is shared).
        token_file: The `--token-file` path, or None.
        environ: The environment; `os.environ` when None.

    Returns:
        The token.

    Raises:
        DltoolError: if the file given cannot be read or holds no token, or
            no token is found.
    """
    made_by = f"as the chief writes to {TOKEN_FILE}"
    token = tokens.read_token(token_file, TOKEN_ENV, environ=environ, whose="the chief's",
                              made_by=made_by)
    if token is not None:
        return token
    path = Path(folder) / TOKEN_FILE
    if not path.is_file():
        raise DltoolError(f"no token for the search chief: give the chief's token with "
                          f"--token-file or {TOKEN_ENV} (the chief writes it to {path})")
    return tokens.read_token(path, whose="the chief's", made_by=made_by)


def refused_token(address):
    """The error of a worker whose token the chief at `address` refused."""
    return DltoolError(f"the search chief at {address[0]}:{address[1]} refused this worker's "
                       f"token: give the chief's token with --token-file or {TOKEN_ENV}")


def worker_id(folder):
    """Generates a worker id `worker-<host>-<n>`, n the lowest free on this host.

    The id is held by a lock file in `folder/workers/` for the life of the
    process, so a worker started again after a crash gets the same id back
    and the chief hands it the trial it was running. keras-tuner treats any
    id containing "chief" as the chief, so the host name never adds one.
    """
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname().lower())
    host = host.replace("chief", "chf")[:24].strip("-") or "host"
    locks = folder / "workers"
    locks.mkdir(parents=True, exist_ok=True)
    n = 0
    while True:
        handle = open(locks / f"{host}-{n}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            n += 1
            continue
        worker_id.held = handle  # kept open: the lock lasts as long as the process
        return f"worker-{host}-{n}"


def _fingerprint(config):
    # A copy: the checks may decide an "auto" value of the config later (a
    # preset's image size), which a rerun's fingerprint, taken first, has not.
    sections = json.loads(json.dumps({s: config[s] for s in _FIXED_SECTIONS}))
    # [tune] decides the trials' epochs, early stopping and monitored metric.
    sections["training"] = {k: v for k, v in config["training"].items()
                            if k in _FIXED_TRAINING_KEYS}
    sections["tune"] = {k: config["tune"][k] for k in _FIXED_TUNE_KEYS}
    return sections


def _check_same_search(folder, settings):
    saved = files.read_json(folder / trials.SEARCH_FILE)
    if not isinstance(saved, dict) or saved.get("fingerprint") == settings["fingerprint"]:
        return
    old, new = saved.get("fingerprint", {}), settings["fingerprint"]
    changed = [f"{s}.{k}" for s in sorted(set(old) | set(new))
               for k in sorted(set(old.get(s, {})) | set(new.get(s, {})))
               if old.get(s, {}).get(k) != new.get(s, {}).get(k)]
    raise ConfigError(f"search {folder.name!r} was started with other settings "
                      f"({', '.join(changed[:4]) or 'config'} changed): run with --fresh to "
                      "start it over (the old one is kept aside) or --name for a new search")


def _trial_config(project_dir, overrides, config, objective):
    tune = config["tune"]
    return project_lib.load_config(project_dir, [
        *overrides, f"training.epochs={tune['epochs']}",
        f"training.early_stopping_patience={tune['early_stopping_patience']}",
        f"training.monitor={json.dumps(objective)}", "training.include_validation=false"])


def _check_phases_searched(config, backbones):
    """Refuses a search of the phases' `[training]` keys without a pretrained
    backbone: its trials would differ in settings no trial uses.

    Raises:
        ConfigError: naming the searched key.
    """
    names = [name for name in config_lib.parse_search_space(config["search"])
             if config_lib.searched_training_key(name) is not None]
    used = backbones or [config.model.get(search_space.BACKBONE, "scratch")]
    if names and all(value == "scratch" for value in used):
        raise ConfigError(f"search.{names[0]}: the phases are those of a pretrained backbone, "
                          'and every trial of this search is "scratch" (model.backbone, '
                          "search.backbone): search a backbone, or remove the key")


def _check_objective(model, train_ds, val_ds, objective):
    """Checks that fitting the model reports `objective`.

    Raises:
        ConfigError: naming the metrics it reports instead.
    """
    names = list(model.evaluate(train_ds.take(1), return_dict=True, verbose=0))
    reported = names + ([f"val_{n}" for n in names] if val_ds is not None else [])
    if objective not in reported:
        raise ConfigError(f"tune.objective {objective!r} is not a metric the model reports "
                          f"(it reports: {', '.join(reported)})")


def tune(project_dir, overrides=(), *, name=None, fresh=False, chief=None, worker=None,
         connect_timeout=60.0, token_file=None, export_best=False, skip_bad=False, echo=print,
         child=None):
    """Runs, resumes or joins a hyperparameter search.

    Args:
        project_dir: The project folder.
        overrides: `section.key=value` strings (`tune.*` holds the search
            settings: tuner, objective, max_trials, time_budget, ...).
        name: Search name (folder under `tuning/`); the tuner's name if None.
        fresh: Move an existing search of that name aside and start over.
        chief: `HOST:PORT` to serve the search to workers from.
        worker: `HOST:PORT` of a chief to run trials for.
        connect_timeout: Seconds a worker waits for its chief.
        token_file: A worker's file holding the chief's token; without it,
            `DLTOOL_TUNE_TOKEN`, else the chief's `chief.token` in the
            search folder.
        export_best: Afterwards, retrain the best trial's hyperparameters on
            train + validation data and export it.
        skip_bad: Drop unusable data files instead of failing.
        echo: Function that prints a line for the user.
        child: In a child process of a local search, its
            `dltool.tuning.children.ChildRole`; None otherwise.

    Returns:
        The search summary dict (a worker's: trials it ran; a child that
        leaves trials to the next one: `{"more_trials": True}`).

    Raises:
        DltoolError: bad config, space, objective or data; unreachable chief;
            no token, or one the chief refuses.
    """
    if chief and worker:
        raise ConfigError("give --chief or --worker, not both")
    if token_file is not None and not worker:
        raise ConfigError(f"--token-file belongs to --worker (the chief makes a new token at "
                          f"each start, in tuning/<name>/{TOKEN_FILE})")
    if export_best and worker:
        raise ConfigError("--export-best belongs to the chief (or a search without workers)")
    common = dict(name=name, fresh=fresh, skip_bad=skip_bad, echo=echo)
    if chief:
        search = ChiefSearch(project_dir, overrides, parse_address(chief, "--chief"),
                             export_best=export_best, **common)
    elif worker:
        search = WorkerSearch(project_dir, overrides, parse_address(worker, "--worker"),
                              connect_timeout, token_file=token_file, **common)
    else:
        search = LocalSearch(project_dir, overrides, child=child, export_best=export_best,
                             **common)
    return search.run()


class Search:
    """A search as this process takes part in it: the checks and setup all roles share.

    Subclasses say what the process does: `LocalSearch` runs the trials,
    `ChiefSearch` serves them to workers, `WorkerSearch` runs the chief's.
    Every check that can fail on bad input runs in `__init__` and
    `check_inputs`, before `open_folder` changes anything on disk.

    Args:
        project_dir: The project folder.
        overrides: `section.key=value` strings.
        name: Search name; the tuner's name if None.
        fresh: Move an existing search aside and start over.
        skip_bad: Drop unusable data files.
        echo: Function that prints a line for the user.
    """

    role = "local"
    saves_state = True  # the chief's and a local search's oracle; a worker's is the chief's
    export_best = False

    def __init__(self, project_dir, overrides=(), *, name=None, fresh=False, skip_bad=False,
                 echo=print):
        self.project_dir = project_dir
        self.overrides = tuple(overrides)
        self.config = project_lib.load_config(project_dir, overrides)
        self.settings = self.config["tune"]
        self.objective = self.settings["objective"]
        self.direction = metrics.direction(self.objective, self.settings["direction"])
        self.budget = config_lib.parse_duration(self.settings["time_budget"], "tune.time_budget")
        self.name = validate_project_name(name or self.settings["tuner"], what="search name")
        self.folder = trials.search_dir(project_dir, self.name)
        self.fresh = fresh
        self.skip_bad = skip_bad
        self.echo = echo
        self.record = {"name": self.name, "template": self.config.template,
                       "fingerprint": _fingerprint(self.config)}

    def run(self):
        """Checks the input, then runs this process's part of the search.

        Returns:
            The summary dict (see `tune`).
        """
        self.check_search()
        self.inputs = inputs = self.check_inputs()
        self.open_folder()
        started, deadline = self.clock()
        tuner = self.make_tuner(inputs, deadline)
        if self.saves_state:
            tuner.save()  # so a search killed in its first trial reloads
        self.preamble(f"Search: {self.folder} ({self.settings['tuner']}, {self.objective} "
                      f"{self.direction}, {self.role}"
                      f"{', time budget ' + str(self.settings['time_budget']) if deadline else ''}"
                      f"{self.description_suffix()})")
        stopped_by, failure = self.stopping(lambda: self.search(tuner, inputs, deadline))
        return self.finish(tuner, stopped_by, failure, time.time() - started)

    # ---- what the roles change ----

    def check_search(self):
        """Refuses to continue a search started with other settings."""
        if not self.fresh:
            _check_same_search(self.folder, self.record)

    def preamble(self, line):
        """Prints a line of the search's description."""
        self.echo(line)

    def description_suffix(self):
        return ""

    def clock(self):
        """Returns `(started, deadline)`: when the search started, when it must stop."""
        started = time.time()
        return started, (started + self.budget if self.budget else None)

    def open_folder(self):
        """Creates (or sets aside and recreates) the search folder and its state."""
        if self.fresh and self.folder.exists():
            self.echo(f"Moved the old search to {trials.set_aside(self.folder)}")
        self.folder.mkdir(parents=True, exist_ok=True)
        adapter.repair_state(self.folder, warn=self.echo)
        if not (self.folder / trials.SEARCH_FILE).exists():
            files.write_json_atomic(self.folder / trials.SEARCH_FILE, self.record)
        adapter.ensure_tuner_file(self.folder, self.tuner_id())
        adapter.atomic_state_files()

    def tuner_id(self):
        return "tuner0"

    def trials_per_process(self):
        return 0

    def search(self, tuner, inputs, deadline):
        """Runs the trials in this process (the local search and the workers)."""
        log_dir = Path(tuner.project_dir) / "tensorboard"
        adapter.search(tuner, inputs.train_ds, validation_data=inputs.val_ds,
                       epochs=self.settings["epochs"],
                       callbacks=[keras.callbacks.TensorBoard(str(log_dir))],
                       verbose=self.config["training"]["verbose"], **inputs.fit_options)

    def finish(self, tuner, stopped_by, failure, seconds):
        """Writes and prints the summary; exports the best if asked.

        Raises:
            DltoolError: the search ended on a failure.
        """
        summary = summarize(self.folder, self.record, self.settings, self.objective,
                            self.direction, self.inputs.space, stopped_by, seconds,
                            self.echo)
        if failure:
            raise DltoolError(failure)
        if self.export_best:
            summary["export"] = export_best_trial(self.project_dir, self.overrides, summary,
                                                  self.skip_bad, self.echo)
        return summary

    # ---- shared pieces ----

    def check_inputs(self):
        """Opens the data and checks the space and objective against the model.

        Returns:
            A namespace: `experiment`, `trial_config`, `strategy`, `train_ds`,
            `val_ds`, `meta` (the data's), `space`, `model_defaults` (the
            values `model.py` reads by default).

        Raises:
            DltoolError: bad data, space or objective.
        """
        config = self.config
        backbones = search_space.searched_backbones(config)
        _check_phases_searched(config, backbones)
        decided = []  # "auto" values the same for every trial (an image size)
        if backbones:  # before TensorFlow starts: checking a pretrained backbone builds it
            runtime.split_cpu(config["runtime"]["cpu_devices"])
            decided = task_for(config.template).check_searched_backbones(config, backbones)
        experiment = Experiment(self.project_dir, config)
        trial_config = _trial_config(self.project_dir, self.overrides, config, self.objective)
        keras.utils.set_random_seed(config["training"]["seed"])
        strategy, description = experiment.prepare_runtime()
        data = experiment.open_data(skip_bad=self.skip_bad, chosen=decided)
        # The trials' "auto" values: e.g. data.image_size, and
        # model.batchnorm_momentum from the steps of tune.epochs.
        trial_config, choices = experiment.resolve(trial_config)
        report = data.report[:len(data.report) - len(experiment.auto_choices)]
        for line in [description, *report, *(choice.line() for choice in choices)]:
            self.preamble(line)
        train_ds, val_ds = experiment.datasets(data, trial_config)
        fit_options = experiment.task.fit_options(config, data)  # e.g. class weights
        space = search_space.search_hyperparameters(config)
        with strategy.scope():
            model, declared = build_model(experiment.model_module, trial_config,
                                          experiment.task.model_kwargs(data.meta))
        search_space.check_against_model(space, declared, self.settings["tuner"])
        _check_objective(model, train_ds, val_ds, self.objective)
        del model
        keras.backend.clear_session()
        return types.SimpleNamespace(experiment=experiment, trial_config=trial_config,
                                     fit_options=fit_options,
                                     strategy=strategy, train_ds=train_ds, val_ds=val_ds,
                                     meta=data.meta, space=space,
                                     model_defaults=dict(declared.values))

    def make_tuner(self, inputs, deadline):
        """The keras-tuner tuner of this search, its oracle made from the config."""
        oracle = adapter.make_oracle(self.settings, self.objective, self.direction,
                                     inputs.space, seed=self.config["training"]["seed"])
        hypermodel = adapter.ProjectHyperModel(inputs.experiment, inputs.meta,
                                               inputs.trial_config)
        return adapter.make_tuner(self.settings, oracle, hypermodel, inputs.trial_config,
                                  deadline=deadline, echo=self.echo,
                                  trials_per_process=self.trials_per_process(),
                                  directory=str(self.folder.parent),
                                  project_name=self.folder.name, overwrite=False,
                                  distribution_strategy=inputs.strategy)

    def stopping(self, search):
        """Runs `search()` and tells what ended it.

        Returns:
            A tuple `(stopped_by, failure)`: what ended it, and the error
            line to exit with (None when it ended well).
        """
        warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed")
        try:
            search()
        except adapter.BudgetExhausted:
            return "time budget", None
        except adapter.ProcessTrialsDone:
            return "more trials", None
        except KeyboardInterrupt:
            return "interrupted", "interrupted: run the same command to resume"
        except adapter.TooManyFailedTrials as e:
            return "failures", (f"stopped after {self.settings['max_consecutive_failed_trials']} "
                                f"failed trials in a row; last error: {_last_line(str(e))}")
        return "done", None


class LocalSearch(Search):
    """A search that runs its trials itself (in `dltool tune`, or in its children).

    Args:
        child: In a child process of a local search, its `ChildRole`: the
            search's start and deadline come from the parent, and the child
            stops after `tune.trials_per_process` trials.
        export_best: Retrain and export the best trial afterwards.
        **kwargs: See `Search`.
    """

    def __init__(self, project_dir, overrides=(), *, child=None, export_best=False, **kwargs):
        super().__init__(project_dir, overrides, **kwargs)
        self.child = child
        self.export_best = export_best

    def preamble(self, line):
        if self.child is None or self.child.index == 0:
            self.echo(line)

    def description_suffix(self):
        return ", trials in child processes" if self.child else ""

    def clock(self):
        if self.child is None:
            return super().clock()
        return self.child.started, self.child.deadline

    def trials_per_process(self):
        return self.settings["trials_per_process"] if self.child else 0

    def finish(self, tuner, stopped_by, failure, seconds):
        if stopped_by == "more trials":
            return {"more_trials": True}
        return super().finish(tuner, stopped_by, failure, seconds)


class ChiefSearch(Search):
    """The chief of a distributed search: serves the trials to workers.

    Args:
        address: `(host, port)` to listen on.
        export_best: Retrain and export the best trial afterwards.
        **kwargs: See `Search`.
    """

    role = "chief"

    def __init__(self, project_dir, overrides, address, *, export_best=False, **kwargs):
        super().__init__(project_dir, overrides, **kwargs)
        self.address = address
        self.export_best = export_best

    def tuner_id(self):
        return "chief"

    def open_folder(self):
        super().open_folder()
        adapter.set_distributed_env(self.address, "chief")
        # Before the server starts: a worker that reaches it finds the token.
        self.token = write_token(self.folder)
        _warn_no_encryption(self.address, self.folder / TOKEN_FILE, self.echo)

    def search(self, tuner, inputs, deadline):
        adapter.serve_oracle(tuner, f"{self.address[0]}:{self.address[1]}", self.token,
                             deadline, model_defaults=inputs.model_defaults)
        if deadline is not None and time.time() > deadline:
            raise adapter.BudgetExhausted("time budget used up")


class WorkerSearch(Search):
    """A worker of a distributed search: runs the trials its chief hands out.

    Args:
        address: `(host, port)` of the chief.
        connect_timeout: Seconds to wait for the chief.
        token_file: The file holding the chief's token (see `read_token`).
        **kwargs: See `Search`.
    """

    role = "worker"
    saves_state = False

    def __init__(self, project_dir, overrides, address, connect_timeout=60.0, token_file=None,
                 **kwargs):
        super().__init__(project_dir, overrides, **kwargs)
        self.address = address
        self.connect_timeout = connect_timeout
        self.token_file = token_file

    def check_search(self):
        wait_for_chief(*self.address, self.connect_timeout)
        # Read once the chief listens: it writes a new token before that.
        self.token = read_token(self.folder, self.token_file)
        try:  # before the data is loaded: a refused token fails in seconds
            adapter.check_token(self._chief(), self.token,
                                timeout=max(self.connect_timeout, 10.0))
        except adapter.TokenRefused:
            raise refused_token(self.address) from None
        except adapter.ChiefLost as e:
            raise DltoolError(f"lost the chief at {self._chief()}: {e}") from None

    def _chief(self):
        return f"{self.address[0]}:{self.address[1]}"

    def make_tuner(self, inputs, deadline):
        tuner = super().make_tuner(inputs, deadline)
        adapter.send_token(tuner, self._chief(), self.token)
        return tuner

    def clock(self):
        return time.time(), None  # the chief keeps the time budget

    def open_folder(self):
        self.folder.mkdir(parents=True, exist_ok=True)
        adapter.set_distributed_env(self.address, worker_id(self.folder))
        adapter.atomic_state_files()

    def search(self, tuner, inputs, deadline):
        try:
            super().search(tuner, inputs, deadline)
        except adapter.TokenRefused:  # a chief started again has a new token
            raise refused_token(self.address) from None
        except adapter.ChiefLost as e:
            raise DltoolError(f"lost the chief at {self._chief()}: {e}") from None

    def finish(self, tuner, stopped_by, failure, seconds):
        ran = sorted(tuner.trials_run)
        self.echo(f"Worker {tuner.tuner_id} ran {len(ran)} trial(s): {', '.join(ran)}")
        return {"worker": tuner.tuner_id, "trials": ran}


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text




def _warn_no_encryption(address, token_path, echo):
    host, port = address
    where = "this machine only" if host in LOOPBACK else "anyone who can reach it"
    echo(f"Warning: the chief's port {host}:{port} is not encrypted (keras-tuner's gRPC "
         f"service), open to {where}: use it on a private network only; workers need "
         f"the token in {token_path}")


def summarize(folder, settings, tune_settings, objective, direction, space, stopped_by,
              seconds, echo):
    """Prints the trials table, writes trials.csv/.md and summary.json.

    Returns:
        The summary dict.
    """
    found = trials.read_trials(folder)
    best = trials.best_trial(found, direction)
    hp_names = [hp.name for hp in space.space]
    rows = trials.table_rows(found, objective, hp_names)
    echo(trials.format_table(rows))
    trials.write_tables(folder, rows)
    counts = {}
    for trial in found:
        counts[trial["status"]] = counts.get(trial["status"], 0) + 1
    summary = {"name": settings["name"], "tuner": tune_settings["tuner"],
               "objective": objective, "direction": direction, "stopped_by": stopped_by,
               "trials": counts, "seconds": round(seconds, 1),
               "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
               "best": best and {k: best[k] for k in ("trial", "score", "hyperparameters",
                                                        "epochs")}}
    trials.write_summary(folder, summary)
    if stopped_by == "time budget":
        echo(f"Time budget {tune_settings['time_budget']} used up: stopped; run the same "
             "command to continue the search")
    if best is None:
        echo(f"No completed trial yet. Trials: {folder / 'trials.md'}")
    else:
        shown = ", ".join(f"{k}={best['hyperparameters'][k]}" for k in hp_names
                          if k in best["hyperparameters"])
        echo(f"Best {objective}: {best['score']:.4f} (trial {best['trial']}): {shown}")
        echo(f"Trials: {folder / 'trials.md'}; train with the best: "
             f"dltool train --hparams {settings['name']}")
    return summary


def export_best_trial(project_dir, overrides, summary, skip_bad, echo):
    """Retrains the best hyperparameters on train + validation and exports.

    Returns:
        The export's result dict (see `dltool.engine.export.export`).

    Raises:
        DltoolError: if the search has no completed trial.
    """
    if not summary.get("best"):
        raise DltoolError("no completed trial to export yet")
    echo(f"Retraining trial {summary['best']['trial']}'s hyperparameters on train + "
         "validation data")
    run = training.train(project_dir, [
        *overrides, *trials.hyperparameter_overrides(trials.for_training(
            trials.search_dir(project_dir, summary["name"]), summary["best"]["hyperparameters"])),
        "training.include_validation=true"], skip_bad=skip_bad, fresh=True, echo=echo)
    result = export(project_dir, run["name"])
    echo(f"Exported run {result['run']} as {result['path']}")
    return {k: str(v) for k, v in result.items()}
