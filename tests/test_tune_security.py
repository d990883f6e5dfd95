"""The distributed search's service (issue 18): a token on every call, reports checked.

A rogue client talks to a real `dltool tune --chief` over 127.0.0.1 with raw
gRPC stubs made from keras-tuner's protos: without the token, with a wrong
one, and, holding the token, with malformed or out-of-space reports. Then a
real worker runs the search to its end, whose result holds none of it, and
the chief exits. Every call has a timeout, so a hung chief fails the test.

The tests that use the `chief` fixture run in file order: the rogue first,
the real worker last (`test_the_search_ends_unaffected_and_the_chief_exits`).
"""

import json
import math
import os
import socket
import stat
import subprocess
import threading
import time
import types
from concurrent import futures

import grpc
import pytest
from click.testing import CliRunner

from conftest import invoke
from dltool.core import config as config_lib
from dltool.core.errors import DltoolError
from dltool.tuning import adapter, search
from dltool.tuning import space as search_space
from test_tune import TINY_SEARCH, _cli, _free_port, _rows

import keras_tuner  # after dltool set the environment
from keras_tuner.src import protos
from keras_tuner.src.distribute import oracle_chief

SERVICE = protos.get_service()
STATUS = protos.get_proto().TrialStatus
CALL_SECONDS = 20  # every rogue call: a chief that stops answering fails, not hangs
ROGUE_ID = "rogue-insider"
# One retry, so the trial the rogue hands back runs again on the real worker.
CHIEF_ARGS = ("--max-trials", 2, "--epochs", 1, *TINY_SEARCH,
              "--set", "tune.max_retries_per_trial=1")
REFUSED = ("the search chief at {address} refused this worker's token: give the chief's "
           "token with --token-file or DLTOOL_TUNE_TOKEN")


def _env():
    env = {**os.environ, "TF_NUM_INTEROP_THREADS": "1", "TF_NUM_INTRAOP_THREADS": "1"}
    env.pop(search.TOKEN_ENV, None)
    return env


def _wait_until(ready, seconds, what, process=None, log=None):
    deadline = time.monotonic() + seconds
    while not ready():
        if process is not None and process.poll() is not None:
            pytest.fail(f"{what}: the process exited ({process.returncode}): "
                        f"{log.read_text() if log else ''}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {seconds} s")
        time.sleep(0.2)


def _listening(address):
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def chief(tmp_path_factory):
    """A `dltool tune --chief` on 127.0.0.1 with a 2-trial search, no worker yet."""
    root = tmp_path_factory.mktemp("secured")
    assert invoke(CliRunner(), "new", "image-classifier", root / "proj").exit_code == 0
    project = root / "proj"
    address = f"127.0.0.1:{_free_port()}"
    log = root / "chief.log"
    with open(log, "w") as output:
        process = subprocess.Popen(_cli("tune", "--chief", address, "--project", project,
                                        *CHIEF_ARGS), env=_env(), stdout=output,
                                   stderr=subprocess.STDOUT, text=True)
    folder = project / "tuning" / "random"
    try:
        _wait_until(lambda: _listening(address), 180, "the chief listens", process, log)
        token = (folder / search.TOKEN_FILE).read_text().strip()
        channel = grpc.insecure_channel(address)
        yield types.SimpleNamespace(address=address, project=project, folder=folder,
                                    token=token, process=process, log=log,
                                    stub=protos.get_service_grpc().OracleStub(channel),
                                    channel=channel)
        channel.close()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def _metadata(token):
    return (("authorization", f"Bearer {token}"),)


def _call(chief, method, request, metadata):
    return getattr(chief.stub, method)(request, timeout=CALL_SECONDS, metadata=metadata)


def _refused(chief, method, request, metadata):
    """The status code and details of a call the chief refuses."""
    with pytest.raises(grpc.RpcError) as raised:
        _call(chief, method, request, metadata)
    return raised.value.code(), raised.value.details()


def _search_files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# ---- the token file (no server) ----

def test_the_chief_token_is_fresh_private_and_read_by_workers(tmp_path):
    token = search.write_token(tmp_path)
    path = tmp_path / search.TOKEN_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(token) >= 43 and search.read_token(tmp_path, environ={}) == token
    assert not list(tmp_path.glob(".tmp-*"))  # written through a temporary file
    assert search.write_token(tmp_path) != token  # a new one at each start
    given = tmp_path / "copy.token"
    given.write_text("from-the-file\n")
    environ = {search.TOKEN_ENV: "from-the-environment"}
    assert search.read_token(tmp_path, given, environ) == "from-the-file"
    assert search.read_token(tmp_path, None, environ) == "from-the-environment"


def test_a_missing_or_bad_token_is_one_line(tmp_path):
    with pytest.raises(DltoolError, match="no token for the search chief: give the "
                       "chief's token with --token-file or DLTOOL_TUNE_TOKEN"):
        search.read_token(tmp_path, environ={})
    with pytest.raises(DltoolError, match="cannot read the chief's token from .*nope"):
        search.read_token(tmp_path, tmp_path / "nope", environ={})
    bad = tmp_path / "bad.token"
    bad.write_text("two words\n")
    with pytest.raises(DltoolError, match="bad.token holds no token"):
        search.read_token(tmp_path, bad, environ={})


def test_token_file_belongs_to_workers(runner, project, tmp_path):
    (tmp_path / "t").write_text("abc\n")
    for role in (("--chief", "127.0.0.1:1"), ()):
        result = invoke(runner, "tune", "--project", project, *role, "--token-file",
                        tmp_path / "t")
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines()[-1].startswith(
            "Error: --token-file belongs to --worker"), result.output
    assert not (project / "tuning").exists()


# ---- "inside the space" ----

@pytest.mark.parametrize("make, value, problem", [
    (lambda hp: hp.Float("x", 0.001, 0.01, sampling="log"), 5.0, "not in 0.001..0.01"),
    (lambda hp: hp.Float("x", 0.0, 0.5, step=0.1), 0.25, "not on the step 0.1"),
    (lambda hp: hp.Float("x", 0.0, 0.5), math.nan, "not a finite number"),
    (lambda hp: hp.Int("x", 1, 4), 2.0, "not an integer"),
    (lambda hp: hp.Int("x", 16, 128, step=8), 20, "not on the step 8"),
    (lambda hp: hp.Choice("x", [0.0, 0.3]), "0.3", "not one of 0.0, 0.3"),
    (lambda hp: hp.Choice("x", [8, 16]), True, "not one of 8, 16"),
    (lambda hp: hp.Boolean("x"), 1, "not true or false"),
    (lambda hp: hp.Fixed("x", False), True, "not one of False"),
])
def test_values_outside_the_space(make, value, problem):
    hp = keras_tuner.HyperParameters()
    make(hp)
    (declared,) = hp.space
    assert search_space.value_problem(declared, value).startswith(problem)
    assert search_space.value_problem(declared, hp.values["x"]) is None


# ---- a rogue client against a real chief ----

@pytest.mark.slow
@pytest.mark.parametrize("metadata", [
    None,
    (("authorization", "Bearer wrong"),),
    "TOKEN",                  # the token without "Bearer "
    "TOKEN+x",                # the token and one more character
    "TWICE",                  # the right header and a wrong one
], ids=["no-token", "wrong-token", "no-bearer", "longer", "two-headers"])
def test_calls_without_the_token_are_refused(chief, metadata):
    if metadata == "TOKEN":
        metadata = (("authorization", chief.token),)
    elif metadata == "TOKEN+x":
        metadata = _metadata(chief.token + "x")
    elif metadata == "TWICE":
        metadata = (*_metadata(chief.token), *_metadata("wrong"))
    before = _search_files(chief.folder)
    for method, request in [
            ("GetSpace", SERVICE.GetSpaceRequest()),
            ("CreateTrial", SERVICE.CreateTrialRequest(tuner_id="made-up-worker")),
            ("UpdateTrial", SERVICE.UpdateTrialRequest(trial_id="0",
                                                       metrics={"val_accuracy": 0.999})),
            ("EndTrial", SERVICE.EndTrialRequest()),
            ("GetBestTrials", SERVICE.GetBestTrialsRequest(num_trials=1))]:
        code, _ = _refused(chief, method, request, metadata)
        assert code == grpc.StatusCode.UNAUTHENTICATED, method
    assert _search_files(chief.folder) == before  # no trial was created
    assert chief.process.poll() is None


@pytest.mark.slow
def test_a_worker_with_a_wrong_token_exits_with_one_line(chief, tmp_path):
    wrong = tmp_path / "wrong.token"
    wrong.write_text("not-the-chief-s-token\n")
    expected = "Error: " + REFUSED.format(address=chief.address)
    runs = [(CliRunner(), ("--token-file", wrong)),
            (CliRunner(env={search.TOKEN_ENV: "not-the-chief-s-token"}), ())]
    for runner, args in runs:
        started = time.monotonic()
        result = invoke(runner, "tune", "--project", chief.project, "--worker", chief.address,
                        *CHIEF_ARGS, *args)
        assert result.exit_code == 1, result.output
        assert result.output.strip().splitlines()[-1] == expected, result.output
        assert "Traceback" not in result.output
        assert time.monotonic() - started < 30  # refused before the data is loaded


@pytest.fixture(scope="module")
def rogue_trial(chief):
    """A trial the rogue took with the right token under a made-up id."""
    response = _call(chief, "CreateTrial", SERVICE.CreateTrialRequest(tuner_id=ROGUE_ID),
                     _metadata(chief.token))
    assert response.trial.status == STATUS.Value("RUNNING")
    return response.trial


def _ending(trial, status="COMPLETED", **values):
    """An EndTrialRequest for a copy of `trial` with `values` changed (`None`: removed)."""
    ended = protos.get_proto().Trial()
    ended.CopyFrom(trial)
    ended.status = STATUS.Value(status)
    for name, value in values.items():
        slot = ended.hyperparameters.values.values
        if value is None:
            del slot[name]
        elif isinstance(value, bool):
            slot[name].boolean_value = value
        elif isinstance(value, int):
            slot[name].int_value = value
        elif isinstance(value, float):
            slot[name].float_value = value
        else:
            slot[name].string_value = value
    return SERVICE.EndTrialRequest(trial=ended)


def _handed_out(trial):
    return keras_tuner.engine.trial.Trial.from_proto(trial).hyperparameters.values


@pytest.mark.slow
def test_malformed_and_out_of_space_reports_are_refused(chief, rogue_trial):
    token = _metadata(chief.token)
    trial_id = rogue_trial.trial_id
    trial_file = chief.folder / f"trial_{trial_id}" / "trial.json"
    before = trial_file.read_text()
    dropout = _handed_out(rogue_trial)["dropout"]
    optimizer = config_lib.load_config(chief.project / "config.toml").model["optimizer"]
    refusals = [
        ("CreateTrial", SERVICE.CreateTrialRequest(tuner_id=""),
         grpc.StatusCode.INVALID_ARGUMENT, "needs a tuner_id"),
        ("UpdateTrial", SERVICE.UpdateTrialRequest(trial_id="99", metrics={"val_accuracy": 1}),
         grpc.StatusCode.NOT_FOUND, "no running trial '99'"),
        ("UpdateTrial", SERVICE.UpdateTrialRequest(trial_id=trial_id, metrics={"loss": 1.0}),
         grpc.StatusCode.INVALID_ARGUMENT, "no value of the objective val_accuracy"),
        ("UpdateTrial", SERVICE.UpdateTrialRequest(trial_id=trial_id,
                                                   metrics={"val_accuracy": math.nan}),
         grpc.StatusCode.INVALID_ARGUMENT, "val_accuracy is nan, not a finite number"),
        ("UpdateTrial", SERVICE.UpdateTrialRequest(trial_id=trial_id,
                                                   metrics={"val_accuracy": math.inf}),
         grpc.StatusCode.INVALID_ARGUMENT, "val_accuracy is inf"),
        ("UpdateTrial", SERVICE.UpdateTrialRequest(
            trial_id=trial_id, metrics={"val_accuracy": 0.5, "val_loss": -math.inf}),
         grpc.StatusCode.INVALID_ARGUMENT, "val_loss is -inf"),
        ("GetTrial", SERVICE.GetTrialRequest(trial_id="99"), grpc.StatusCode.NOT_FOUND,
         "no trial '99'"),
        ("EndTrial", SERVICE.EndTrialRequest(), grpc.StatusCode.NOT_FOUND,
         "no running trial ''"),
        # What kept keras-tuner's chief from ever exiting: no metrics were sent.
        ("EndTrial", _ending(rogue_trial), grpc.StatusCode.INVALID_ARGUMENT,
         "no value of the objective val_accuracy"),
        ("EndTrial", _ending(rogue_trial, "RUNNING"), grpc.StatusCode.INVALID_ARGUMENT,
         "status RUNNING is not COMPLETED, INVALID or FAILED"),
        ("EndTrial", _ending(rogue_trial, "FAILED", learning_rate=5.0),
         grpc.StatusCode.INVALID_ARGUMENT, ("learning_rate=5.0 is outside the search space "
                                            "(not in 0.001..0.01)")),
        ("EndTrial", _ending(rogue_trial, "FAILED", dropout=0.9),
         grpc.StatusCode.INVALID_ARGUMENT, "dropout=0.9 is outside the search space"),
        ("EndTrial", _ending(rogue_trial, "FAILED", dropout="0.3"),
         grpc.StatusCode.INVALID_ARGUMENT, "dropout='0.3' is outside the search space"),
        ("EndTrial", _ending(rogue_trial, "FAILED", filters=9),
         grpc.StatusCode.INVALID_ARGUMENT, "filters=9 is outside the search space"),
        ("EndTrial", _ending(rogue_trial, "FAILED", blocks=1.0),
         grpc.StatusCode.INVALID_ARGUMENT, "blocks=1.0 is outside the search space"),
        ("EndTrial", _ending(rogue_trial, "FAILED", augment=True),
         grpc.StatusCode.INVALID_ARGUMENT, "augment=True is outside the search space"),
        ("EndTrial", _ending(rogue_trial, "FAILED", learning_rate=None),
         grpc.StatusCode.INVALID_ARGUMENT, "no value of learning_rate"),
        # Inside the space, but not what the chief handed out for this trial.
        ("EndTrial", _ending(rogue_trial, "FAILED", dropout=0.3 if dropout == 0.0 else 0.0),
         grpc.StatusCode.INVALID_ARGUMENT, "is not the value the chief gave this trial"),
        # Not searched: must stay the [model] default `train --hparams` would apply.
        ("EndTrial", _ending(rogue_trial, "FAILED",
                             optimizer="sgd" if optimizer != "sgd" else "adamw"),
         grpc.StatusCode.INVALID_ARGUMENT, (f"is not the value the chief gave this trial "
                                            f"({optimizer!r})")),
    ]
    for method, request, code, details in refusals:
        got_code, got_details = _refused(chief, method, request, token)
        assert (got_code, details in got_details) == (code, True), (method, got_details)
    # Bytes that are no EndTrialRequest at all.
    garbage = chief.channel.unary_unary("/keras_tuner.Oracle/EndTrial")
    with pytest.raises(grpc.RpcError) as raised:
        garbage(b"\x0a\xff\xff\xff\xff", timeout=CALL_SECONDS, metadata=token)
    assert raised.value.code() != grpc.StatusCode.OK
    # None of it reached the oracle: the trial is as it was handed out.
    state = keras_tuner.engine.trial.Trial.from_proto(_call(
        chief, "GetTrial", SERVICE.GetTrialRequest(trial_id=trial_id), token).trial)
    assert state.status == "RUNNING" and not state.metrics.metrics
    assert state.hyperparameters.values == _handed_out(rogue_trial)
    assert trial_file.read_text() == before
    assert chief.process.poll() is None
    # Handed back as a crash (INVALID): the real worker retries it.
    _call(chief, "EndTrial", _ending(rogue_trial, "INVALID"), token)


@pytest.mark.slow
def test_the_search_ends_unaffected_and_the_chief_exits(chief, rogue_trial):
    log = chief.log.with_name("worker.log")
    with open(log, "w") as output:
        worker = subprocess.run(_cli("tune", "--worker", chief.address, "--project",
                                     chief.project, *CHIEF_ARGS),
                                env={**_env(), search.TOKEN_ENV: chief.token}, stdout=output,
                                stderr=subprocess.STDOUT, timeout=300, check=False)
    assert worker.returncode == 0, log.read_text()
    # The rogue's id still counts as a worker until it is told to stop.
    stopped = _call(chief, "CreateTrial", SERVICE.CreateTrialRequest(tuner_id=ROGUE_ID),
                    _metadata(chief.token))
    assert stopped.trial.status == STATUS.Value("STOPPED")
    assert chief.process.wait(timeout=60) == 0, chief.log.read_text()
    output = chief.log.read_text()
    assert "Traceback" not in output and "is not encrypted" in output
    rows = _rows(chief.folder)
    assert [(r["trial"], r["status"]) for r in rows] == [("0", "completed"), ("1", "completed")]
    assert all(r["worker"].startswith("worker-") for r in rows), rows
    assert all(r["dropout"] in ("0", "0.3") and 0.001 <= float(r["learning_rate"]) <= 0.01
               for r in rows), rows
    best = json.loads((chief.folder / "summary.json").read_text())["best"]
    assert best["score"] == pytest.approx(max(float(r["val_accuracy"]) for r in rows),
                                          abs=1e-4)
    assert best["hyperparameters"]["learning_rate"] <= 0.01 and best["score"] <= 1.0


# ---- the oracle's stop after failed trials in a row, through a real server ----

def test_failed_trials_in_a_row_stop_the_chief_instead_of_hanging_it(tmp_path):
    space = keras_tuner.HyperParameters()
    space.Choice("dropout", [0.0, 0.3])
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("val_accuracy", "max"), max_trials=3,
        hyperparameters=space, max_consecutive_failed_trials=1)
    oracle._set_project_dir(str(tmp_path), "search")
    address = f"127.0.0.1:{_free_port()}"
    outcome = {}

    def serve():
        tuner = types.SimpleNamespace(oracle=oracle, save=lambda: None)
        try:
            adapter.serve_oracle(tuner, address, "the-token", poll_seconds=0.1)
        except adapter.TooManyFailedTrials as e:
            outcome["error"] = e

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    channel = grpc.insecure_channel(address)
    stub = protos.get_service_grpc().OracleStub(channel)
    token = _metadata("the-token")
    trial = stub.CreateTrial(SERVICE.CreateTrialRequest(tuner_id="w"), timeout=CALL_SECONDS,
                             wait_for_ready=True, metadata=token).trial
    with pytest.raises(grpc.RpcError) as raised:
        stub.EndTrial(_ending(trial, "FAILED"), timeout=CALL_SECONDS, metadata=token)
    assert raised.value.code() == grpc.StatusCode.ABORTED
    assert "Number of consecutive failures exceeded the limit of 1" in raised.value.details()
    server.join(timeout=15)  # keras-tuner's own service would keep the lock: a hang
    channel.close()
    assert not server.is_alive() and "consecutive failures" in str(outcome.get("error"))
    checked = futures.ThreadPoolExecutor(1).submit(oracle_chief.exit_chief, oracle)
    assert checked.result(timeout=5) in (True, False)  # the oracle's lock is free
