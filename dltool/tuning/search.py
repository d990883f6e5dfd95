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
chief address) runs before the search folder is touched.
"""

import fcntl
import json
import os
import socket
import time
import types
import warnings
from pathlib import Path

from dltool.core import config as config_lib
from dltool.core import project as project_lib
from dltool.core import runs
from dltool.tuning import space as search_space
from dltool.engine import train as training
from dltool.tuning import trials
from dltool.tuning import adapter as tuners
from dltool._tf import keras
from dltool.core.errors import ConfigError, DltoolError
from dltool.core.scaffold import validate_project_name
from dltool.tasks import task_for

# Settings a search must keep to be resumed (the rest, e.g. max_trials or
# the time budget, may change between runs).
_FIXED_TUNE_KEYS = ("tuner", "objective", "direction", "epochs", "early_stopping_patience",
                    "hyperband_factor")
_FIXED_SECTIONS = ("data", "model", "search")
_FIXED_TRAINING_KEYS = ("batch_size", "lr_schedule", "warmup_epochs", "seed")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def objective_direction(objective, direction):
    """Resolves `tune.direction`: `max` or `min` for `objective`.

    Raises:
        ConfigError: if `direction` is `auto` and the name does not tell.
    """
    if direction != "auto":
        return direction
    name = objective.removeprefix("val_")
    if "loss" in name or "error" in name:
        return "min"
    if any(word in name for word in ("acc", "auc", "precision", "recall", "f1")):
        return "max"
    raise ConfigError(f"cannot tell whether {objective} should go up or down: "
                      "set tune.direction (--direction max or min)")


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
    sections = {s: config[s] for s in _FIXED_SECTIONS}
    # [tune] decides the trials' epochs, early stopping and monitored metric.
    sections["training"] = {k: v for k, v in config["training"].items()
                            if k in _FIXED_TRAINING_KEYS}
    sections["tune"] = {k: config["tune"][k] for k in _FIXED_TUNE_KEYS}
    return sections


def _check_same_search(folder, settings):
    saved = trials.read_json(folder / trials.SEARCH_FILE)
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
         connect_timeout=60.0, export_best=False, skip_bad=False, echo=print, child=None):
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
        export_best: Afterwards, retrain the best trial's hyperparameters on
            train + validation data and export it.
        skip_bad: Drop unusable data files instead of failing.
        echo: Function that prints a line for the user.
        child: In a child process of a local search, its
            `search_processes.ChildRole` (when the search started, its
            deadline, the child's number); None otherwise.

    Returns:
        The search summary dict (a worker's: trials it ran; a child that
        leaves trials to the next one: `{"more_trials": True}`).

    Raises:
        DltoolError: bad config, space, objective or data; unreachable chief.
    """
    config = project_lib.load_config(project_dir, overrides)
    tune_settings = config["tune"]
    objective = tune_settings["objective"]
    direction = objective_direction(objective, tune_settings["direction"])
    budget = config_lib.parse_duration(tune_settings["time_budget"], "tune.time_budget")
    name = validate_project_name(name or tune_settings["tuner"], what="search name")
    folder = trials.search_dir(project_dir, name)
    if chief and worker:
        raise ConfigError("give --chief or --worker, not both")
    address = parse_address(chief or worker, "--chief" if chief else "--worker") \
        if (chief or worker) else None
    if export_best and worker:
        raise ConfigError("--export-best belongs to the chief (or a search without workers)")
    if worker:
        wait_for_chief(*address, connect_timeout)
    settings = {"name": name, "template": config.template, "fingerprint": _fingerprint(config)}
    if not fresh and not worker:
        _check_same_search(folder, settings)
    preamble = echo if child is None or child.index == 0 else (lambda *args, **kwargs: None)

    inputs = _checked_inputs(project_dir, overrides, config, skip_bad, preamble)

    # The input is good: from here on the search folder changes.
    role = "chief" if chief else "worker" if worker else "local"
    if fresh and folder.exists() and role != "worker":
        echo(f"Moved the old search to {trials.set_aside(folder)}")
    folder.mkdir(parents=True, exist_ok=True)
    if role == "chief":
        _set_distributed_env(address, "chief")
        _warn_no_authentication(address, echo)
    elif role == "worker":
        _set_distributed_env(address, worker_id(folder))
    if role != "worker":
        trials.repair_state(folder, warn=echo)
        if not (folder / trials.SEARCH_FILE).exists():
            runs.write_json_atomic(folder / trials.SEARCH_FILE, settings)
        trials.ensure_tuner_file(folder, os.environ.get("KERASTUNER_TUNER_ID", "tuner0"))
    tuners.atomic_state_files()
    if child is None:
        started = time.time()
        deadline = started + budget if (budget and role != "worker") else None
    else:
        started, deadline = child.started, child.deadline
    tuner = _make_tuner(config, inputs, objective, direction, folder, deadline,
                        trials_per_process=tune_settings["trials_per_process"] if child else 0)
    if role != "worker":
        tuner.save()  # so a search killed in its first trial reloads
    preamble(f"Search: {folder} ({tune_settings['tuner']}, {objective} {direction}, "
             f"{role}{', time budget ' + tune_settings['time_budget'] if deadline else ''}"
             f"{', trials in child processes' if child else ''})")

    stopped_by, failure = _run(tuner, role, address, deadline, inputs, config)
    if stopped_by == "more trials":
        return {"more_trials": True}
    if role == "worker":
        ran = sorted(tuner.trials_run)
        echo(f"Worker {tuner.tuner_id} ran {len(ran)} trial(s): {', '.join(ran)}")
        return {"worker": tuner.tuner_id, "trials": ran}
    summary = summarize(folder, settings, tune_settings, objective, direction, inputs.space,
                        stopped_by, time.time() - started, echo)
    if failure:
        raise DltoolError(failure)
    if export_best:
        summary["export"] = export_best_trial(project_dir, overrides, summary, skip_bad, echo)
    return summary


def _checked_inputs(project_dir, overrides, config, skip_bad, echo):
    """Opens the data and checks the space and objective against the model.

    Returns:
        A namespace: `module`, `trial_config`, `strategy`, `train_ds`,
        `val_ds`, `model_kwargs`, `space`.

    Raises:
        DltoolError: bad data, space or objective.
    """
    task = task_for(config.template)
    module = project_lib.load_model_module(project_dir)
    trial_config = _trial_config(project_dir, overrides, config, config["tune"]["objective"])
    keras.utils.set_random_seed(config["training"]["seed"])
    strategy, description = training.prepare_runtime(config)
    data = task.open_data(config, project_dir, skip_bad=skip_bad)
    for line in [description, *data.report]:
        echo(line)
    train_ds, val_ds = training.training_datasets(task, trial_config, data)
    model_kwargs = task.model_kwargs(data.meta)
    space = search_space.search_hyperparameters(config)
    with strategy.scope():
        model, declared = project_lib.build_model(module, config, model_kwargs)
    search_space.check_against_model(space, declared, config["tune"]["tuner"])
    _check_objective(model, train_ds, val_ds, config["tune"]["objective"])
    del model
    keras.backend.clear_session()
    return types.SimpleNamespace(module=module, trial_config=trial_config, strategy=strategy,
                                 train_ds=train_ds, val_ds=val_ds, model_kwargs=model_kwargs,
                                 space=space)


def _make_tuner(config, inputs, objective, direction, folder, deadline, trials_per_process=0):
    import keras_tuner

    tune_settings = config["tune"]
    oracle = tuners.make_oracle(tune_settings, keras_tuner.Objective(objective, direction),
                                inputs.space, seed=config["training"]["seed"])
    hypermodel = tuners.ProjectHyperModel(inputs.module, config, inputs.model_kwargs)
    return tuners.make_tuner(tune_settings, oracle, hypermodel, inputs.trial_config,
                             deadline=deadline, trials_per_process=trials_per_process,
                             directory=str(folder.parent),
                             project_name=folder.name, overwrite=False,
                             distribution_strategy=inputs.strategy)


def _run(tuner, role, address, deadline, inputs, config):
    """Runs the search in this process's role.

    Returns:
        A tuple `(stopped_by, failure)`: what ended it, and the error line
        to exit with (None when it ended well).
    """
    import grpc

    tune_settings = config["tune"]
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed")
    try:
        if role == "chief":
            tuners.serve_oracle(tuner, f"{address[0]}:{address[1]}", deadline)
            if deadline is not None and time.time() > deadline:
                return "time budget", None
        else:
            log_dir = Path(tuner.project_dir) / "tensorboard"
            tuner.search(inputs.train_ds, validation_data=inputs.val_ds,
                         epochs=tune_settings["epochs"],
                         callbacks=[keras.callbacks.TensorBoard(str(log_dir))],
                         verbose=config["training"]["verbose"])
    except tuners.BudgetExhausted:
        return "time budget", None
    except tuners.ProcessTrialsDone:
        return "more trials", None
    except KeyboardInterrupt:
        return "interrupted", "interrupted: run the same command to resume"
    except RuntimeError as e:
        if "consecutive failures" not in str(e):
            raise
        return "failures", (f"stopped after {tune_settings['max_consecutive_failed_trials']} "
                            f"failed trials in a row; last error: {_last_line(str(e))}")
    except grpc.RpcError as e:
        code = getattr(e, "code", lambda: "error")()
        raise DltoolError(f"lost the chief at {address[0]}:{address[1]}: "
                          f"{getattr(code, 'name', code)}") from None
    return "done", None


def _last_line(text):
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else text


def _set_distributed_env(address, tuner_id):
    """Sets keras-tuner's distributed-mode variables for this process."""
    from keras_tuner.src.distribute import oracle_client

    os.environ["KERASTUNER_ORACLE_IP"] = address[0]
    os.environ["KERASTUNER_ORACLE_PORT"] = str(address[1])
    os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    # keras-tuner waits up to an hour for a vanished chief; 10 minutes is
    # plenty once the worker has reached it.
    oracle_client.TIMEOUT = 10 * 60


def _warn_no_authentication(address, echo):
    host, port = address
    where = "this machine only" if host in LOOPBACK else "anyone who can reach it"
    echo(f"Warning: the chief's port {host}:{port} has no authentication or encryption "
         f"(keras-tuner's gRPC service); open to {where}: use it on a private network only")


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
    from dltool.engine.export import export

    if not summary.get("best"):
        raise DltoolError("no completed trial to export yet")
    echo(f"Retraining trial {summary['best']['trial']}'s hyperparameters on train + "
         "validation data")
    run = training.train(project_dir, [
        *overrides, *trials.hyperparameter_overrides(summary["best"]["hyperparameters"]),
        "training.include_validation=true"], skip_bad=skip_bad, fresh=True, echo=echo)
    result = export(project_dir, run["name"])
    echo(f"Exported run {result['run']} as {result['path']}")
    return {k: str(v) for k, v in result.items()}
