"""One rule for a metric's direction, taken by every consumer.

Before, the best-weights callback kept the lowest `val_precision` (its rule
knew only "acc" and "auc") while the tuner maximised it; now the best
weights, early stopping, the run record and the tuner's objective all take
`dltool.core.metrics.direction`.
"""

import pytest

from dltool.core import metrics
from dltool.core.errors import ConfigError


@pytest.mark.parametrize("name, expected", [
    ("val_accuracy", "max"), ("accuracy", "max"), ("val_precision", "max"),
    ("val_recall", "max"), ("val_auc", "max"), ("val_f1_score", "max"),
    ("val_loss", "min"), ("loss", "min"), ("val_mean_squared_error", "min")])
def test_direction_from_the_name(name, expected):
    assert metrics.direction(name) == expected


def test_direction_set_explicitly_wins_and_unknown_names_are_refused():
    assert metrics.direction("val_loss", "max") == "max"
    with pytest.raises(ConfigError, match="cannot tell whether val_speed should go up or down"):
        metrics.direction("val_speed")


def _config(tmp_path, monitor):
    from dltool.core import config as config_lib

    path = tmp_path / "config.toml"
    path.write_text('[project]\ntemplate = "image-classifier"\n'
                    f'[training]\nmonitor = "{monitor}"\n')
    return config_lib.load_config(path)


def _consumers(tmp_path, monitor):
    """The direction each consumer of `monitor` uses, read off the objects."""
    from dltool._tf import keras
    from dltool.core.runs import Run
    from dltool.engine import callbacks as dl_callbacks
    from dltool.engine import train
    from dltool.tuning import adapter, space

    config = _config(tmp_path, monitor)
    name, mode = train.monitored_metric(config, has_validation=True)
    run = Run(tmp_path / "run", {"name": "run"})
    made = train.make_callbacks(config, run, name, mode)
    best = next(c for c in made if isinstance(c, dl_callbacks.BestWeights))
    recorder = next(c for c in made if isinstance(c, dl_callbacks.RunRecorder))
    stopping = next(c for c in made if isinstance(c, keras.callbacks.EarlyStopping))
    oracle = adapter.make_oracle(config["tune"], name, metrics.direction(name),
                                 space.search_hyperparameters(config), seed=1)
    return {"best weights": best.mode, "run record": recorder.mode,
            "early stopping": stopping.mode, "tuner": oracle.objective.direction}


@pytest.mark.parametrize("monitor, expected", [("val_precision", "max"), ("val_loss", "min")])
def test_every_consumer_agrees(tmp_path, monitor, expected):
    assert _consumers(tmp_path, monitor) == {"best weights": expected, "run record": expected,
                                             "early stopping": expected, "tuner": expected}


@pytest.mark.parametrize("monitor, values, kept", [
    ("val_precision", [0.5, 0.7, 0.6], 0.7), ("val_loss", [0.5, 0.3, 0.4], 0.3)])
def test_best_weights_keep_the_best_epoch(tmp_path, monitor, values, kept):
    from dltool._tf import keras
    from dltool.engine.callbacks import BestWeights

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    best = BestWeights(tmp_path / "best.weights.h5", monitor, metrics.direction(monitor))
    best.set_model(model)
    for epoch, value in enumerate(values):
        best.on_epoch_end(epoch, {monitor: value})
    assert best.best == pytest.approx(kept)
    assert (tmp_path / "best.weights.h5").is_file()
