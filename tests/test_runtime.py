"""Strategy and precision choice, and float32 outputs under mixed precision."""

import os
import subprocess
import sys

import pytest

from dltool.engine import runtime
from dltool.core.errors import DltoolError

CPU = {"GPU": [], "TPU": [], "CPU": ["cpu0"]}
ONE_GPU = {"GPU": ["gpu0"], "TPU": [], "CPU": ["cpu0"]}
TWO_GPUS = {"GPU": ["gpu0", "gpu1"], "TPU": [], "CPU": ["cpu0"]}
TPU = {"GPU": [], "TPU": ["tpu0"], "CPU": ["cpu0"]}


@pytest.mark.parametrize("found, expected", [
    (CPU, "default"), (ONE_GPU, "default"), (TWO_GPUS, "mirrored"), (TPU, "default")])
def test_auto_strategy(found, expected):
    assert runtime.choose_strategy("auto", found).value == expected


@pytest.mark.parametrize("found, capabilities, expected", [
    (CPU, [], "float32"),
    (ONE_GPU, [(8, 0)], "mixed_float16"),
    (TWO_GPUS, [(7, 0), (7, 5)], "mixed_float16"),
    (ONE_GPU, [(6, 1)], "float32"),
    (TPU, [], "mixed_bfloat16"),
])
def test_auto_precision(found, capabilities, expected):
    choice = runtime.choose_precision("auto", found, capabilities)
    assert choice.value == expected and choice.reason.startswith("auto:")


def test_explicit_settings_are_kept():
    assert runtime.choose_strategy("mirrored", CPU).value == "mirrored"
    assert runtime.choose_precision("mixed_bfloat16", CPU).value == "mixed_bfloat16"


def test_tpu_without_tpu_is_refused():
    with pytest.raises(DltoolError, match="strategy 'tpu' needs a TPU and none was found"):
        runtime.choose_strategy("tpu", CPU)


def test_this_machine_picks_one_device_and_float32():
    assert runtime.choose_strategy("auto").value == "default"
    assert runtime.choose_precision("auto").value == "float32"


def test_onednn_enabled_unless_user_set_it():
    import os
    from dltool import _tf
    if not _tf.ONEDNN_SET_BY_USER:
        assert os.environ["TF_ENABLE_ONEDNN_OPTS"] == "1"
        assert runtime.onednn_status() == "on (TF_ENABLE_ONEDNN_OPTS=1, set by dltool)"


def test_mirrored_strategy_builds_on_cpu():
    strategy = runtime.make_strategy("mirrored")
    assert strategy.num_replicas_in_sync >= 1


def test_multi_worker_without_tf_config_is_refused(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(DltoolError, match="needs TF_CONFIG"):
        runtime.make_strategy("multi-worker")


def test_template_model_outputs_float32_under_mixed_precision(project):
    from dltool.core import project as project_lib
    from dltool.engine import experiment as experiment_lib
    from dltool._tf import keras

    config = project_lib.load_config(project, ["model.filters=8", "model.blocks=1",
                                                "data.image_size=[32, 32]",  # no data opened
                                                "model.batchnorm_momentum=0.99"])
    module = experiment_lib.load_model_module(project)
    try:
        runtime.set_precision("mixed_float16")
        model, _ = experiment_lib.build_model(module, config, {"num_classes": 10})
        assert model.layers[-2].compute_dtype == "float16"
        assert model.output.dtype == "float32"
    finally:
        runtime.set_precision("float32")
    assert keras.mixed_precision.global_policy().name == "float32"


NOISE = ("WARNING: All log messages before absl::InitializeLog() is called are written to "
         "STDERR\n"
         "I0000 00:00:1796192684.646935   25818 port.cc:153] oneDNN custom operations are on.\n"
         "E0000 00:00:1796192689.078536   25818 cuda_platform.cc:52] failed call to cuInit: "
         "INTERNAL: CUDA error\n")


def test_native_log_lines_are_dropped_and_the_rest_kept(capfd, monkeypatch):
    from dltool import _tf

    monkeypatch.setattr(_tf, "LOGS_SET_BY_USER", False)
    with _tf.quiet_native_logs():
        os.write(2, (NOISE + "a line of the program\n").encode())
    assert capfd.readouterr().err == "a line of the program\n"
    with pytest.raises(ZeroDivisionError):  # the lines come out, then the error
        with _tf.quiet_native_logs():
            os.write(2, b"before the error\n")
            1 / 0
    assert capfd.readouterr().err == "before the error\n"
    monkeypatch.setattr(_tf, "LOGS_SET_BY_USER", True)  # they asked for the logs
    with _tf.quiet_native_logs():
        os.write(2, NOISE.encode())
    assert capfd.readouterr().err == NOISE


def test_importing_tensorflow_prints_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-c", "import dltool._tf"], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
