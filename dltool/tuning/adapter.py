"""keras-tuner behind one adapter: every use of its internals is here.

dltool drives keras-tuner's public API (oracles, `Tuner`, `HyperModel`) and,
here only, a few of its internals, so a keras-tuner release that changes them
breaks one module, and the version check below says so first:

- each trial execution is trained like a `dltool train` run (the phase loop
  `dltool.engine.train.fit_phases`, so a pretrained backbone trains frozen,
  then unfrozen at the lower rate; the callbacks of
  `dltool.engine.train.make_callbacks`, a `Run` record and `history.csv`
  in `trial_<id>/execution<n>/`), by overriding `Tuner._build_and_fit_model`:
  a search killed mid-trial resumes that trial from its last completed epoch
  (keras-tuner alone re-runs it from scratch), and a finished execution is
  not run again;
- keras-tuner writes its state files (`oracle.json`, `trial.json`) with a
  plain `open(...).write(...)`: `atomic_state_files()` routes them through
  `dltool.core.files`, so a kill never leaves a torn one;
- `repair_state` sets damaged trial files aside by editing `oracle.json`, so
  a search whose `trial.json` was torn still reloads;
- the chief's gRPC service (`serve_oracle`) binds the address it is given,
  returns within a second of the last worker leaving and hands out no trial
  after the time budget; workers wait at most 10 minutes for a vanished
  chief (keras-tuner's `oracle_client.TIMEOUT` is an hour);
- every call to the chief carries the search's token (`authorization:
  Bearer TOKEN` metadata, added by `send_token` on the worker, checked by
  the chief's `_TokenCheck` interceptor), and the chief checks what workers
  report (trial ids, hyperparameter values, metrics) before its oracle sees
  it: keras-tuner's service trusts every caller, and one call its oracle
  raises on leaves the oracle's lock taken, so the chief never exits.

The keras-tuner versions this is tested against are the range in dltool's
own requirements (`setup.cfg`); importing this module checks the installed
one against it.
"""

import collections
import hmac
import importlib.metadata
import json
import math
import os
import threading
import time
from pathlib import Path

import grpc
from packaging.requirements import Requirement

from dltool._tf import keras
from dltool.core import files, runs
from dltool.core.errors import DltoolError
from dltool.engine import callbacks as dl_callbacks
from dltool.engine import experiment as experiment_lib
from dltool.engine import train as training
from dltool.tuning import space as search_space
from dltool.tuning.trials import ORACLE_FILE, TRIAL_FILE

import keras_tuner  # noqa: E402  (after dltool._tf set the environment)
from keras_tuner.src import backend as kt_backend  # noqa: E402
from keras_tuner.src import utils as kt_utils  # noqa: E402
from keras_tuner.src.distribute import oracle_chief, oracle_client  # noqa: E402
from keras_tuner.src.engine import oracle as oracle_module  # noqa: E402
from keras_tuner.src.engine import trial as trial_module  # noqa: E402

EXECUTION_DIR = "execution{}"
CHIEF_WAIT_SECONDS = 10 * 60


class UnsupportedVersionError(DltoolError):
    """The installed keras-tuner is outside the range dltool is tested with."""


def tested_range():
    """The keras-tuner requirement dltool declares (`setup.cfg`), or None.

    None when dltool runs from a source tree that is not installed.
    """
    try:
        required = importlib.metadata.requires("dltool") or []
    except importlib.metadata.PackageNotFoundError:
        return None
    for line in required:
        requirement = Requirement(line)
        if requirement.name == "keras-tuner" and not requirement.marker:
            return requirement.specifier
    return None


def check_version(version=None, specifier=None):
    """Checks a keras-tuner version against the tested range.

    Args:
        version: The version; the installed one when None.
        specifier: The range; `tested_range()` when None.

    Raises:
        UnsupportedVersionError: naming both and what to install.
    """
    version = version or keras_tuner.__version__
    specifier = specifier if specifier is not None else tested_range()
    if specifier is not None and not specifier.contains(version, prereleases=True):
        raise UnsupportedVersionError(
            f"keras-tuner {version} is installed, but dltool is tested with keras-tuner"
            f"{specifier} (it uses some of its internals): pip install 'keras-tuner{specifier}'")


check_version()


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
        files.write_text_atomic(path, text)
        return text

    save_json.dltool_atomic = True
    kt_utils.save_json = save_json


class TooManyFailedTrials(DltoolError):
    """keras-tuner stopped the search after failed trials in a row."""


def _too_many_failures(error):
    """Whether `error` is the oracle's `max_consecutive_failed_trials` stop."""
    return isinstance(error, RuntimeError) and "consecutive failures" in str(error)


class ChiefLost(DltoolError):
    """A worker's call to the chief failed (the gRPC status code and details).

    Attributes:
        code: The gRPC status code's name, e.g. `UNAVAILABLE`.
    """

    def __init__(self, code, details=""):
        super().__init__(f"{code}: {details}" if details else code)
        self.code = code


class TokenRefused(ChiefLost):
    """The chief refused the worker's token (`UNAUTHENTICATED`)."""


def _chief_lost(error):
    """The `ChiefLost` (or `TokenRefused`) for a failed gRPC call."""
    code = getattr(error, "code", lambda: None)()
    name = str(getattr(code, "name", code or "error"))
    details = (getattr(error, "details", lambda: "")() or "").strip()
    details = details.splitlines()[0] if details else ""  # the user's error is one line
    cls = TokenRefused if code == grpc.StatusCode.UNAUTHENTICATED else ChiefLost
    return cls(name, details)


def search(tuner, *args, **kwargs):
    """Runs `tuner.search(*args, **kwargs)`, its failures as dltool's errors.

    Raises:
        TooManyFailedTrials: keras-tuner's `max_consecutive_failed_trials`.
        ChiefLost: a worker's gRPC call to the chief failed.
        TokenRefused: the chief refused the worker's token.
    """
    try:
        tuner.search(*args, **kwargs)
    except RuntimeError as e:
        if not _too_many_failures(e):
            raise
        raise TooManyFailedTrials(str(e)) from None
    except grpc.RpcError as e:
        raise _chief_lost(e) from None


def set_distributed_env(address, tuner_id):
    """Sets keras-tuner's distributed-mode variables for this process.

    Args:
        address: `(host, port)` of the chief.
        tuner_id: `chief`, or the worker's id.
    """
    os.environ["KERASTUNER_ORACLE_IP"] = address[0]
    os.environ["KERASTUNER_ORACLE_PORT"] = str(address[1])
    os.environ["KERASTUNER_TUNER_ID"] = tuner_id
    # keras-tuner waits up to an hour for a vanished chief; 10 minutes is
    # plenty once the worker has reached it.
    oracle_client.TIMEOUT = CHIEF_WAIT_SECONDS


class ProjectHyperModel(keras_tuner.HyperModel):
    """The project's `build_model(hp, config, ...)` as a HyperModel.

    Args:
        experiment: The search's `dltool.engine.experiment.Experiment`.
        meta: The data's metadata (what `build_model`'s data arguments
            come from).
        config: The config `build_model` is given: the trials' (their
            `"auto"` values decided for `tune.epochs`, e.g.
            `model.batchnorm_momentum`); the experiment's when None.
    """

    def __init__(self, experiment, meta, config=None):
        super().__init__(name="project_model")
        self.experiment = experiment
        self.meta = meta
        self.config = config

    def build(self, hp):
        model, _ = experiment_lib.build_model(
            self.experiment.model_module, self.config or self.experiment.config,
            self.experiment.task.model_kwargs(self.meta), hp)
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
        trial_config: The config whose `[training]` section the trials use
            (with each trial's searched `training.*` values,
            `space.trial_config`).
        deadline: `time.time()` after which no trial starts and the running
            one stops (local searches), or None.
        trials_per_process: Trials after which `search()` raises
            `ProcessTrialsDone` if the oracle has more (0: no limit).
        echo: Function that prints a line for the user (a pretrained
            backbone's phases).
        **kwargs: `keras_tuner.Tuner` arguments (`directory`, ...).
    """

    def __init__(self, oracle, hypermodel, trial_config, deadline=None, trials_per_process=0,
                 echo=print, **kwargs):
        self.trial_config = trial_config
        self.deadline = deadline
        self.trials_per_process = trials_per_process
        self.echo = echo
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
        """Trains one execution like a `dltool train` run, phase by phase
        (`dltool.engine.train.fit_phases`: a pretrained backbone frozen,
        then every layer but its BatchNormalization at the lower rate).

        The phases are those of the trial's config (`training.epochs` is
        `tune.epochs`; searched `training.freeze_backbone_epochs` and
        `fine_tune_lr_factor` are the trial's): Hyperband's shorter rounds
        (`epochs`) stop inside them, and a trial continuing one of the
        previous round (`initial_epoch`) enters the phase of its first epoch.
        """
        execution = self._execution
        self._execution += 1
        run = execution_run(self.get_trial_dir(trial.trial_id), execution)
        if run.get("status") == "finished" and run.history_file.is_file():
            return keras_history(run)  # done before the search was interrupted
        config = search_space.trial_config(self.trial_config, trial.hyperparameters.values)
        tuner_callbacks = kwargs.pop("callbacks", [])
        epochs = kwargs.pop("epochs", config["training"]["epochs"])
        initial_epoch = kwargs.pop("initial_epoch", 0)
        model = self._try_build(trial.hyperparameters)
        if kt_backend.config.multi_backend():  # Hyperband rebuilds models from it
            kt_utils.save_json(self._get_build_config_fname(trial.trial_id),
                               model.get_build_config())
        run.update(status="running", pid=os.getpid(), tuner_id=self.tuner_id,
                   parameters=int(model.count_params()))
        training.record_fit_options(run, kwargs, self.hypermodel.meta)
        backup = dl_callbacks.TrainingBackup(run.backup_dir)
        phases_run = []

        def callbacks_for(phase):
            # TensorBoard's HParams callback ends its session when its fit
            # ends (it cannot be reused): the first phase's fit has it.
            kept = [c for c in tuner_callbacks if not (phases_run and _single_use(c))]
            phases_run.append(phase)
            return [*self._execution_callbacks(run, config, backup, phase), *kept]

        training.fit_phases(model, config, run, backup, self.distribution_strategy, self.echo,
                            callbacks_for, *args, epochs=epochs, initial_epoch=initial_epoch,
                            **kwargs)
        run.update(status="finished", pid=None)
        return keras_history(run)

    def _execution_callbacks(self, run, config, backup, phase):
        objective = self.oracle.objective
        callbacks = [c for c in training.make_callbacks(config, run, objective.name,
                                                        objective.direction, backup, phase)
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


def _single_use(callback):
    """Whether a callback keras-tuner adds cannot take a second `fit`
    (TensorBoard's HParams `KerasCallback`)."""
    return type(callback).__module__.startswith("tensorboard.plugins.hparams")


def execution_run(trial_dir, execution):
    """Returns the `Run` of one trial execution, resuming a recorded one."""
    folder = Path(trial_dir) / EXECUTION_DIR.format(execution)
    folder.mkdir(parents=True, exist_ok=True)
    run = runs.Run.open(folder)
    if run is None:
        run = runs.Run(folder, {"name": f"{Path(trial_dir).name}/{folder.name}",
                                "epochs_done": 0})
    return run


def keras_history(run):
    """A run's `history.csv` (`Run.history`) as a `keras.callbacks.History`."""
    columns = run.history() or {"epoch": []}
    history = keras.callbacks.History()
    history.epoch = [int(e) for e in columns.pop("epoch")]
    history.history = columns
    return history


def repair_state(folder, warn):
    """Sets damaged trial files aside so keras-tuner can reload the search.

    A `trial.json` that does not parse is renamed `trial.json.damaged-<time>`
    and replaced by a record of a failed trial (same id, so trial ids stay
    unique); the oracle stops waiting for it.

    Args:
        folder: The search folder.
        warn: Function that prints a warning line.

    Raises:
        DltoolError: if `oracle.json` itself is damaged.
    """
    folder = Path(folder)
    oracle_path = folder / ORACLE_FILE
    if not oracle_path.exists():
        return
    oracle = files.read_json(oracle_path)
    if not isinstance(oracle, dict) or "end_order" not in oracle:
        raise DltoolError(f"{oracle_path} is damaged: start the search over with --fresh "
                          "(the old one is kept aside)")
    changed = False
    for trial_dir in sorted(folder.glob("trial_*")):
        path = trial_dir / TRIAL_FILE
        state = files.read_json(path)
        if isinstance(state, dict) and {"trial_id", "status", "hyperparameters"} <= set(state):
            continue
        if not path.exists() and not trial_dir.is_dir():
            continue
        trial_id = trial_dir.name.removeprefix("trial_")
        damaged = path.with_name(f"{TRIAL_FILE}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        if path.exists():
            os.rename(path, damaged)
        elif trial_id not in oracle.get("start_order", []):
            continue  # a folder keras-tuner made before recording the trial
        warn(f"Warning: {path} was damaged; set aside as {damaged.name}, "
             f"trial {trial_id} counts as failed")
        files.write_json_atomic(path, {
            "trial_id": trial_id, "status": "FAILED", "score": None, "best_step": 0,
            "hyperparameters": {**oracle.get("hyperparameters", {"space": []}),
                                "values": {}},
            "metrics": {"metrics": {}},
            "message": f"trial.json was damaged and set aside as {damaged.name}"})
        oracle["ongoing_trials"] = {k: v for k, v in oracle.get("ongoing_trials", {}).items()
                                    if v != trial_id}
        oracle["retry_queue"] = [t for t in oracle.get("retry_queue", []) if t != trial_id]
        if trial_id not in oracle["end_order"]:
            oracle["end_order"].append(trial_id)
        if trial_id not in oracle.get("start_order", []):
            oracle.setdefault("start_order", []).append(trial_id)
        changed = True
    if changed:
        files.write_json_atomic(oracle_path, oracle)


def ensure_tuner_file(folder, tuner_id):
    """Makes keras-tuner reload an existing search under another tuner id.

    keras-tuner reloads a search only when the file of the tuner id running
    it exists (`tuner0.json` locally, `chief.json` for a chief); a search
    started locally and continued as a chief would otherwise start over.
    The file holds no state of its own (`{}`).
    """
    path = Path(folder) / f"{tuner_id}.json"
    if (Path(folder) / ORACLE_FILE).exists() and not path.exists():
        files.write_json_atomic(path, {})


def make_oracle(tune, objective, direction, space, seed):
    """Creates the keras-tuner oracle named by `tune["tuner"]`.

    Only the hyperparameters of `space` are searched; the others the model
    reads keep their defaults (`tune_new_entries=False`).

    Args:
        tune: The config's `[tune]` section.
        objective: The metric to optimize.
        direction: `max` or `min` (`dltool.core.metrics.direction`).
        space: The `keras_tuner.HyperParameters` to search.
        seed: The oracle's seed.
    """
    oracles = keras_tuner.oracles
    common = dict(objective=keras_tuner.Objective(objective, direction),
                  hyperparameters=space, seed=seed, tune_new_entries=False, allow_new_entries=True,
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


# ---- the chief's service: the token, and what workers may report ----

TOKEN_METADATA_KEY = "authorization"


def _bearer(token):
    return f"Bearer {token}"


class _TokenCheck(grpc.ServerInterceptor):
    """Refuses (`UNAUTHENTICATED`) every call without the search's token.

    Args:
        token: The token the chief wrote into the search folder.
    """

    def __init__(self, token):
        self._expected = _bearer(token).encode()
        self._refusal = grpc.unary_unary_rpc_method_handler(self._refuse)

    @staticmethod
    def _refuse(request, context):
        context.abort(grpc.StatusCode.UNAUTHENTICATED,
                      "missing or wrong search token (authorization: Bearer TOKEN)")

    def intercept_service(self, continuation, handler_call_details):
        given = [value for key, value in handler_call_details.invocation_metadata or ()
                 if key == TOKEN_METADATA_KEY]
        if len(given) == 1:
            value = given[0] if isinstance(given[0], bytes) else given[0].encode()
            # Constant time: how long the comparison takes tells nothing.
            if hmac.compare_digest(value, self._expected):
                return continuation(handler_call_details)
        return self._refusal


class _CallDetails(collections.namedtuple(
        "_CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready",
                         "compression")), grpc.ClientCallDetails):
    """A call's details with other metadata (grpc's own class is private)."""


class _TokenSender(grpc.UnaryUnaryClientInterceptor):
    """Adds the search's token to every call of a worker (all are unary)."""

    def __init__(self, token):
        self._metadata = ((TOKEN_METADATA_KEY, _bearer(token)),)

    def intercept_unary_unary(self, continuation, details, request):
        details = _CallDetails(details.method, details.timeout,
                               (*(details.metadata or ()), *self._metadata),
                               details.credentials, details.wait_for_ready,
                               details.compression)
        return continuation(details, request)


def _oracle_stub(address, token):
    """A channel to the chief sending `token`, and the oracle's stub on it."""
    channel = grpc.intercept_channel(grpc.insecure_channel(address), _TokenSender(token))
    return channel, oracle_chief.protos.get_service_grpc().OracleStub(channel)


def send_token(tuner, address, token):
    """Makes a worker's tuner send `token` on every call to its chief.

    keras-tuner's `OracleClient` makes its stub on a plain channel when the
    tuner is created; it is replaced by one whose channel adds the token.

    Args:
        tuner: A worker's tuner (its oracle is keras-tuner's `OracleClient`).
        address: `host:port` of the chief.
        token: The search's token.
    """
    _, tuner.oracle.stub = _oracle_stub(address, token)


def check_token(address, token, timeout=30.0):
    """Asks the chief whether it takes `token`, before a worker loads its data.

    Raises:
        TokenRefused: the chief refused the token.
        ChiefLost: the call failed otherwise.
    """
    channel, stub = _oracle_stub(address, token)
    try:
        stub.GetSpace(oracle_chief.protos.get_service().GetSpaceRequest(),
                      timeout=timeout, wait_for_ready=True)
    except grpc.RpcError as e:
        raise _chief_lost(e) from None
    finally:
        channel.close()


def _release_stranded_lock(oracle):
    """Releases the oracle's lock if a call that raised left it taken.

    keras-tuner's `synchronized` releases its lock only when the method
    returns: after a raise the gRPC thread keeps it and the chief's
    `exit_chief` check waits for it forever.
    """
    if oracle_module.THREADS[oracle] == threading.current_thread().name:
        oracle_module.THREADS[oracle] = None
        oracle_module.LOCKS[oracle].release()


class _ChiefServicer(oracle_chief.OracleServicer):
    """keras-tuner's oracle service, checking each call before the oracle sees it.

    A call naming no running trial is refused with `NOT_FOUND`; one with
    hyperparameter values outside the search space, values other than those
    the chief handed out, missing or non-finite metrics, or a trial that does
    not parse, with `INVALID_ARGUMENT`. A refused call changes nothing.
    After the time budget, no trial is handed out.

    The server runs one thread, so the checks and the oracle's calls do not
    interleave.

    Args:
        oracle: The chief's oracle.
        deadline: `time.time()` after which no trial is handed out, or None.
        model_defaults: The values of the hyperparameters `model.py` reads
            that are not searched (their `[model]` defaults), or None to take
            any plain value for them.
    """

    _ENDED = frozenset((trial_module.TrialStatus.COMPLETED, trial_module.TrialStatus.INVALID,
                        trial_module.TrialStatus.FAILED))

    def __init__(self, oracle, deadline, model_defaults=None):
        super().__init__(oracle)
        self.deadline = deadline
        self.model_defaults = model_defaults
        self.failure = None  # the oracle's stop after failed trials in a row

    def CreateTrial(self, request, context):
        if not request.tuner_id:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "CreateTrial needs a tuner_id")
        if self.deadline is not None and time.time() > self.deadline and \
                request.tuner_id not in self.oracle.ongoing_trials:
            self.oracle.tuner_ids.discard(request.tuner_id)
            self.stop_triggered = True
            trial = trial_module.Trial(self.oracle.get_space(),
                                       status=trial_module.TrialStatus.STOPPED)
            return oracle_chief.protos.get_service().CreateTrialResponse(
                trial=trial.to_proto())
        return self._call(super().CreateTrial, request, context)

    def UpdateTrial(self, request, context):
        self._running_trial(request.trial_id, "UpdateTrial", context)
        self._check_metrics(dict(request.metrics), f"UpdateTrial of trial {request.trial_id}",
                            context)
        return self._call(super().UpdateTrial, request, context)

    def EndTrial(self, request, context):
        try:
            trial = trial_module.Trial.from_proto(request.trial)
        except Exception as e:  # noqa: BLE001  (whatever a malformed trial makes it raise)
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"EndTrial's trial does not parse: {type(e).__name__}")
        record = self._running_trial(trial.trial_id, "EndTrial", context)
        where = f"EndTrial of trial {trial.trial_id}"
        if trial.status not in self._ENDED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{where}: status {trial.status} is not COMPLETED, INVALID or FAILED")
        # keras-tuner fills a value left out with a default: ask the message.
        sent = set(request.trial.hyperparameters.values.values)
        self._check_values(trial.hyperparameters.values, sent, record, where, context)
        if trial.status == trial_module.TrialStatus.COMPLETED:
            # The oracle scores the metrics it was sent by UpdateTrial.
            best = {name: record.metrics.get_best_value(name)
                    for name in record.metrics.metrics}
            self._check_metrics(best, where, context)
        return self._call(super().EndTrial, request, context)

    def GetTrial(self, request, context):
        if request.trial_id not in self.oracle.trials:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no trial {request.trial_id!r}")
        return self._call(super().GetTrial, request, context)

    def UpdateSpace(self, request, context):
        return self._call(super().UpdateSpace, request, context)

    def _call(self, method, request, context):
        """Runs keras-tuner's handler; an error it raises frees the oracle's lock.

        The oracle's stop after `max_consecutive_failed_trials` ends the
        search (`serve_oracle` raises it), as it does a local one.
        """
        try:
            return method(request, context)
        except Exception as e:  # noqa: BLE001  (any error: the lock must be freed)
            _release_stranded_lock(self.oracle)
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else ""
            if _too_many_failures(e):
                self.failure = e
                context.abort(grpc.StatusCode.ABORTED, f"the search stopped: {first_line}")
            context.abort(grpc.StatusCode.INTERNAL,
                          f"the chief's oracle failed: {type(e).__name__}: {first_line}")

    def _running_trial(self, trial_id, call, context):
        """The oracle's record of running trial `trial_id` (else aborts, NOT_FOUND)."""
        if trial_id not in {t.trial_id for t in self.oracle.ongoing_trials.values()}:
            context.abort(grpc.StatusCode.NOT_FOUND,
                          f"{call}: no running trial {trial_id!r}")
        return self.oracle.trials[trial_id]

    def _check_metrics(self, values, where, context):
        """Aborts unless `values` has the objective and every value is finite."""
        objective = self.oracle.objective.name
        if objective not in values:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                          f"{where}: no value of the objective {objective}")
        for name, value in values.items():
            if not isinstance(value, (int, float)) or not math.isfinite(value):
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{where}: metric {name} is {value!r}, not a finite number")

    def _check_values(self, values, sent, record, where, context):
        """Aborts unless the trial's hyperparameter values are the chief's.

        Searched ones must be sent, lie in the space and be the values
        handed out; the others must be the `[model]` defaults
        (`model_defaults`).

        Args:
            values: The values as the oracle would record them.
            sent: The names the message gave a value.
            record: The oracle's trial.
            where: The call, for the messages.
            context: The gRPC context.
        """
        handed_out = record.hyperparameters.values
        for hp in self.oracle.get_space().space:
            if hp.name not in handed_out:
                continue  # inactive in this trial
            if hp.name not in sent:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"{where}: no value of {hp.name}")
            problem = search_space.value_problem(hp, values[hp.name])
            if problem:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{where}: {hp.name}={values[hp.name]!r} is outside the search "
                              f"space ({problem})")
        for name, value in values.items():
            if name in handed_out:
                expected = handed_out[name]
            elif name in (self.model_defaults or {}):
                expected = self.model_defaults[name]
            elif _plain_value(value):
                continue  # read by model.py in some trials only: no default to compare
            else:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{where}: {name}={value!r} is not a value a config can hold")
            # Types too: 1 == True == 1.0 in Python, not in a config.
            if type(value) is not type(expected) or value != expected:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                              f"{where}: {name}={value!r} is not the value the chief gave "
                              f"this trial ({expected!r})")


def _plain_value(value):
    """Whether a config can hold `value` (a string, bool, int or finite float)."""
    return isinstance(value, (str, bool, int)) or (
        isinstance(value, float) and math.isfinite(value))


def serve_oracle(tuner, address, token, deadline=None, model_defaults=None, poll_seconds=1.0):
    """Runs the chief: serves `tuner`'s oracle until the search is over.

    keras-tuner's own `start_server` polls every 20 s and reads the address
    from environment variables; this binds `address`, refuses calls without
    `token`, checks what workers report (`_ChiefServicer`) and returns
    within about a second of the last worker leaving.

    Args:
        tuner: The chief's tuner (its oracle is served).
        address: `host:port` to bind.
        token: The search's token, which every call must carry.
        deadline: `time.time()` after which workers get no new trial.
        model_defaults: See `_ChiefServicer`.

    Raises:
        DltoolError: if the port cannot be bound.
        TooManyFailedTrials: keras-tuner's `max_consecutive_failed_trials`.
    """
    from concurrent import futures

    tuner.save()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1),
                         interceptors=[_TokenCheck(token)])
    servicer = _ChiefServicer(tuner.oracle, deadline, model_defaults)
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
            if servicer.failure is not None:
                raise TooManyFailedTrials(str(servicer.failure))
            time.sleep(poll_seconds)
    finally:
        server.stop(grace=2)
