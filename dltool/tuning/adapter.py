"""keras-tuner's tuners as `dltool tune` runs them.

Each trial execution is trained like a `dltool train` run (the same
callbacks from `dltool.engine.train.make_callbacks`: learning-rate schedule,
non-finite-loss guard, `BackupAndRestore`, early stopping, `history.csv`,
`run.json`), in `trial_<id>/execution<n>/` of the search folder. So a search
killed mid-trial resumes that trial from its last completed epoch (keras-tuner
alone re-runs it from scratch), an execution that had finished is not run
again, and a trial's score is read from its whole `history.csv`, epochs
before the interruption included.

keras-tuner writes its state files (`oracle.json`, `trial.json`) with a
plain `open(...).write(...)`; `atomic_state_files()` makes those writes go
through a temporary file and a rename, so a kill never leaves a torn one.
"""

import csv
import json
import os
import time
from pathlib import Path

from dltool.core import project as project_lib
from dltool.core import runs
from dltool.engine import train as training
from dltool._tf import keras
from dltool.core.errors import DltoolError

import keras_tuner  # noqa: E402  (after dltool._tf set the environment)
from keras_tuner.src import backend as kt_backend  # noqa: E402
from keras_tuner.src import utils as kt_utils  # noqa: E402
from keras_tuner.src.distribute import oracle_chief  # noqa: E402
from keras_tuner.src.engine import trial as trial_module  # noqa: E402

EXECUTION_DIR = "execution{}"


class BudgetExhausted(keras_tuner.errors.FatalError):
    """The search's time budget ran out (stops the search, not a trial failure)."""


class ProcessTrialsDone(keras_tuner.errors.FatalError):
    """This process ran its `tune.trials_per_process` trials; a new one goes on."""


def atomic_state_files():
    """Makes keras-tuner write its JSON state files atomically (idempotent)."""
    if getattr(kt_utils.save_json, "dltool_atomic", False):
        return
    original = kt_utils.save_json

    def save_json(path, obj):
        if "://" in str(path):  # remote file systems: keras-tuner's own way
            return original(path, obj)
        text = json.dumps(obj)
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        return text

    save_json.dltool_atomic = True
    kt_utils.save_json = save_json


class ProjectHyperModel(keras_tuner.HyperModel):
    """The project's `build_model(hp, config, **model_kwargs)` as a HyperModel.

    Args:
        module: The project's imported `model.py`.
        config: The config the trials use.
        model_kwargs: What the data decides (`num_classes`, ...).
    """

    def __init__(self, module, config, model_kwargs):
        super().__init__(name="project_model")
        self.module = module
        self.config = config
        self.model_kwargs = model_kwargs

    def build(self, hp):
        model, _ = project_lib.build_model(self.module, self.config, self.model_kwargs, hp=hp)
        return model


class StopAtDeadline(keras.callbacks.Callback):
    """Raises `BudgetExhausted` after a batch that ends past `deadline`.

    Raising (rather than `stop_training`) skips `on_train_end`, so the
    trial's `BackupAndRestore` backup of its last completed epoch is kept
    and the next run continues the trial from there.
    """

    def __init__(self, deadline):
        super().__init__()
        self.deadline = deadline

    def on_train_batch_end(self, batch, logs=None):
        if time.time() > self.deadline:
            raise BudgetExhausted("time budget used up during a trial")


class _ProjectTunerMixin:
    """What dltool adds to a keras-tuner `Tuner` (see the module docstring).

    Args:
        oracle: The keras-tuner oracle.
        hypermodel: A `ProjectHyperModel`.
        trial_config: The config whose `[training]` section the trials use.
        deadline: `time.time()` after which no trial starts and the running
            one stops (local searches), or None.
        trials_per_process: Trials after which `search()` raises
            `ProcessTrialsDone` if the oracle has more (0: no limit).
        **kwargs: `keras_tuner.Tuner` arguments (`directory`, ...).
    """

    def __init__(self, oracle, hypermodel, trial_config, deadline=None, trials_per_process=0,
                 **kwargs):
        self.trial_config = trial_config
        self.deadline = deadline
        self.trials_per_process = trials_per_process
        self._execution = 0
        self.trials_run = []
        # keras_tuner.Tuner's, not Hyperband's: the oracle is made by dltool.
        keras_tuner.Tuner.__init__(self, oracle=oracle, hypermodel=hypermodel, **kwargs)

    def pre_create_trial(self):
        if self.deadline is not None and time.time() > self.deadline:
            raise BudgetExhausted("time budget used up")
        if self.trials_per_process and len(self.trials_run) >= self.trials_per_process:
            remaining = self.oracle.remaining_trials()  # local oracles only
            if remaining is None or remaining > 0:
                raise ProcessTrialsDone(f"ran {len(self.trials_run)} trial(s) in this process")

    def run_trial(self, trial, *args, **kwargs):
        self._execution = 0
        self.trials_run.append(trial.trial_id)
        return super().run_trial(trial, *args, **kwargs)

    def _build_and_fit_model(self, trial, *args, **kwargs):
        execution = self._execution
        self._execution += 1
        run = execution_run(self.get_trial_dir(trial.trial_id), execution)
        history = run["dir"] / "history.csv"
        if run.get("status") == "finished" and history.is_file():
            return history_from_csv(history)  # done before the search was interrupted
        kwargs["callbacks"] = [*self._execution_callbacks(run), *kwargs.get("callbacks", [])]
        model = self._try_build(trial.hyperparameters)
        if kt_backend.config.multi_backend():  # Hyperband rebuilds models from it
            kt_utils.save_json(self._get_build_config_fname(trial.trial_id),
                               model.get_build_config())
        runs.update_run(run, status="running", pid=os.getpid(), tuner_id=self.tuner_id,
                        parameters=int(model.count_params()))
        model.fit(*args, **kwargs)
        runs.update_run(run, status="finished", pid=None)
        return history_from_csv(history)

    def _execution_callbacks(self, run):
        monitor = self.oracle.objective.name
        callbacks = [c for c in training.make_callbacks(self.trial_config, run, monitor)
                     # keras-tuner saves the best epoch and writes TensorBoard
                     # logs with HParams per trial itself.
                     if not isinstance(c, (keras.callbacks.ModelCheckpoint,
                                           keras.callbacks.TensorBoard))]
        if self.deadline is not None and not self._is_worker():
            callbacks.append(StopAtDeadline(self.deadline))
        return callbacks

    def on_trial_end(self, trial):
        if trial.status != trial_module.TrialStatus.COMPLETED:
            # A retry starts from scratch, not from the failed attempt's backup.
            trial_dir = Path(self.get_trial_dir(trial.trial_id))
            for folder in trial_dir.glob(EXECUTION_DIR.format("*")):
                folder.rename(trial_dir / f"failed-{int(time.time())}-{folder.name}")
        super().on_trial_end(trial)


def execution_run(trial_dir, execution):
    """Returns the run dict of one trial execution, resuming a recorded one."""
    folder = Path(trial_dir) / EXECUTION_DIR.format(execution)
    folder.mkdir(parents=True, exist_ok=True)
    run = runs.read_run(folder)
    if run is None:
        run = {"name": f"{Path(trial_dir).name}/{folder.name}", "dir": folder,
               "epochs_done": 0}
    return run


def history_from_csv(path):
    """Reads a `history.csv` (CSVLogger) into a `keras.callbacks.History`.

    Rows are keyed by epoch, the last row of an epoch winning, so an epoch
    logged again after a resume is counted once.
    """
    by_epoch = {}
    with open(path, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                by_epoch[int(row.pop("epoch"))] = {k: float(v) for k, v in row.items()}
            except (TypeError, ValueError):
                continue  # a row torn by a kill
    history = keras.callbacks.History()
    history.epoch = sorted(by_epoch)
    for epoch in history.epoch:
        for name, value in by_epoch[epoch].items():
            history.history.setdefault(name, []).append(value)
    return history


def make_oracle(tune, objective, space, seed):
    """Creates the keras-tuner oracle named by `tune["tuner"]`.

    Only the hyperparameters of `space` are searched; the others the model
    reads keep their defaults (`tune_new_entries=False`).
    """
    oracles = keras_tuner.oracles
    common = dict(objective=objective, hyperparameters=space, seed=seed,
                  tune_new_entries=False, allow_new_entries=True,
                  max_retries_per_trial=tune["max_retries_per_trial"],
                  max_consecutive_failed_trials=tune["max_consecutive_failed_trials"])
    name = tune["tuner"]
    if name == "hyperband":
        oracle = oracles.HyperbandOracle(max_epochs=tune["epochs"],
                                         factor=tune["hyperband_factor"], **common)
        oracle.max_trials = tune["max_trials"]  # a cap on top of Hyperband's brackets
        return oracle
    kinds = {"random": oracles.RandomSearchOracle, "grid": oracles.GridSearchOracle,
             "bayesian": oracles.BayesianOptimizationOracle}
    return kinds[name](max_trials=tune["max_trials"], **common)


class ProjectTuner(_ProjectTunerMixin, keras_tuner.Tuner):
    """Random, grid and Bayesian search (the oracle decides which)."""


class ProjectHyperband(_ProjectTunerMixin, keras_tuner.Hyperband):
    """Hyperband: trials continue the weights of the previous round's trial."""


def make_tuner(tune, oracle, hypermodel, trial_config, **kwargs):
    """Returns the tuner class for `tune["tuner"]`, instantiated."""
    cls = ProjectHyperband if tune["tuner"] == "hyperband" else ProjectTuner
    return cls(oracle, hypermodel, trial_config,
               executions_per_trial=tune["executions_per_trial"], **kwargs)


class _ChiefServicer(oracle_chief.OracleServicer):
    """keras-tuner's oracle service, handing out no trial after `deadline`."""

    def __init__(self, oracle, deadline):
        super().__init__(oracle)
        self.deadline = deadline

    def CreateTrial(self, request, context):
        if self.deadline is not None and time.time() > self.deadline and \
                request.tuner_id not in self.oracle.ongoing_trials:
            self.oracle.tuner_ids.discard(request.tuner_id)
            self.stop_triggered = True
            trial = trial_module.Trial(self.oracle.get_space(),
                                       status=trial_module.TrialStatus.STOPPED)
            return oracle_chief.protos.get_service().CreateTrialResponse(
                trial=trial.to_proto())
        return super().CreateTrial(request, context)


def serve_oracle(tuner, address, deadline=None, poll_seconds=1.0):
    """Runs the chief: serves `tuner`'s oracle until the search is over.

    keras-tuner's own `start_server` polls every 20 s and reads the address
    from environment variables; this binds `address` and returns within
    about a second of the last worker leaving.

    Args:
        tuner: The chief's tuner (its oracle is served).
        address: `host:port` to bind.
        deadline: `time.time()` after which workers get no new trial.

    Raises:
        DltoolError: if the port cannot be bound.
    """
    import grpc
    from concurrent import futures

    tuner.save()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    servicer = _ChiefServicer(tuner.oracle, deadline)
    oracle_chief.protos.get_service_grpc().add_OracleServicer_to_server(servicer, server)
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError:
        bound = 0
    if not bound:
        raise DltoolError(f"cannot listen on {address}: is the port in use?")
    server.start()
    try:
        while not (servicer.stop_triggered and oracle_chief.exit_chief(tuner.oracle)):
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=2)
