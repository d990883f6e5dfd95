"""Temperature scaling (`training.calibrate`): the fit and the calibration
error on synthetic predictions, the config key, and the session's trained
sentiment run (its record, its evaluation, its exported SavedModel)."""

import json

import numpy as np
import pytest

from dltool.core import config as config_lib
from dltool.core.errors import ConfigError
from dltool.tasks import calibration, task_for


def _over_confident(n=2000, classes=10, sharpen=3.0, seed=0):
    """Labels drawn from softmax(logits), and the probabilities of a model that
    says softmax(sharpen * logits): over-confident by a temperature of
    `sharpen`. Returns `(labels, probabilities)` (float32, as a model's)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), rng.integers(0, classes, n)] += 1.5
    true = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    labels = np.array([rng.choice(classes, p=row) for row in true])
    sharp = np.exp(sharpen * logits)
    return labels, (sharp / sharp.sum(-1, keepdims=True)).astype(np.float32)


def test_calibration_keeps_the_argmax_and_lowers_the_ece():
    labels, probabilities = _over_confident()
    temperature = calibration.fit_temperature(labels, probabilities)
    calibrated = calibration.scaled(probabilities, temperature)
    assert temperature == pytest.approx(3.0, rel=0.1)  # the over-confidence put in
    assert np.array_equal(calibrated.argmax(-1), probabilities.argmax(-1))
    before = calibration.expected_calibration_error(labels, probabilities)
    after = calibration.expected_calibration_error(labels, calibrated)
    assert before > 0.3 and after < 0.05, (before, after)
    assert calibration.negative_log_likelihood(labels, calibrated) < \
        calibration.negative_log_likelihood(labels, probabilities) - 0.5
    # the same predictions always give the same temperature
    assert calibration.fit_temperature(labels, probabilities) == temperature


def test_under_confident_predictions_get_a_temperature_below_one():
    labels, probabilities = _over_confident(sharpen=0.5)
    assert calibration.fit_temperature(labels, probabilities) == pytest.approx(0.5, rel=0.1)


def test_degenerate_predictions_stay_in_range():
    labels = np.arange(20) % 4
    uniform = np.full((20, 4), 0.25, np.float32)
    assert calibration.fit_temperature(labels, uniform) == 1.0  # nothing to learn
    always_wrong = np.eye(4, dtype=np.float32)[(labels + 1) % 4]  # probability 0 on the truth
    assert calibration.fit_temperature(labels, always_wrong) == calibration.MAX_TEMPERATURE
    assert np.all(np.isfinite(calibration.scaled(always_wrong, calibration.MAX_TEMPERATURE)))


def test_reliability_bins_and_ece_by_hand():
    # confidences 0.9 (right), 0.9 (wrong), 0.6 (right), 1/3 (wrong): bins of 1/15
    probabilities = np.array([[0.9, 0.1, 0.0], [0.9, 0.05, 0.05], [0.6, 0.4, 0.0],
                              [1 / 3, 1 / 3, 1 / 3]])
    labels = np.array([0, 1, 0, 1])
    bins = calibration.reliability(labels, probabilities)
    assert bins["count"][13] == 2 and bins["count"][8] == 1 and bins["count"][4] == 1
    assert sum(bins["count"]) == 4
    assert bins["accuracy"][13] == 0.5 and bins["confidence"][13] == pytest.approx(0.9)
    expected = (2 * abs(0.5 - 0.9) + abs(1 - 0.6) + abs(0 - 1 / 3)) / 4
    assert calibration.expected_calibration_error(labels, probabilities) == \
        pytest.approx(expected)
    figures = calibration.summary(labels, probabilities, None)
    assert figures["temperature"] is None and "ece_after" not in figures


def test_the_graph_scales_as_numpy_does():
    _, probabilities = _over_confident(n=50)
    layer = calibration.TemperatureScaling(2.5)
    np.testing.assert_allclose(np.asarray(layer(probabilities)),
                               calibration.scaled(probabilities, 2.5), atol=1e-6)
    zero = np.array([[1.0, 0.0]], np.float32)  # an underflowed probability stays finite
    assert np.all(np.isfinite(np.asarray(calibration.scale(zero, 3.0))))


def test_classifiers_calibrate_by_default_and_the_translator_refuses():
    for template, default in (("image-classifier", True), ("sentiment", True),
                              ("translator", False)):
        raw = {"project": {"template": template}}
        assert config_lib.validate(raw)["training"]["calibrate"] is default
    with pytest.raises(ConfigError) as error:
        config_lib.validate({"project": {"template": "sentiment"},
                             "training": {"calibrate": 1}})
    assert str(error.value) == "training.calibrate must be true or false; got 1"
    translator = task_for("translator")
    with pytest.raises(ConfigError) as error:
        translator.fit_options({"training": {"class_weight": "none", "calibrate": True}}, None)
    assert str(error.value) == ("training.calibrate applies to classifiers; the translator "
                                "template takes only false")
    assert translator.fit_options({"training": {"class_weight": "none",
                                                "calibrate": False}}, None) == {}


def test_training_says_why_it_did_not_calibrate():
    from dltool.engine import train

    lines = []
    for include_validation in (True, False):
        config = {"training": {"calibrate": True, "include_validation": include_validation}}
        train.calibrate(None, None, config, None, None, lines.append)
    train.calibrate(None, None, {"training": {"calibrate": False}}, None, None, lines.append)
    assert lines == [
        "Calibration: skipped, no validation split (training.include_validation trains on it)",
        "Calibration: skipped, no validation split (the data has none)"]


def test_evaluate_prints_nll_and_ece_before_and_after():
    figures = {"temperature": 1.5, "bins": 15, "nll_before": 1.0, "nll_after": 0.9,
               "ece_before": 0.2, "ece_after": 0.1}
    result = {"run": "r", "split": "test", "examples": 3, "loss": 0.5, "accuracy": 0.6,
              "calibration": figures}
    task = task_for("sentiment")
    assert task.evaluation_lines(result)[3:] == ["NLL                1.0000 → 0.9000 "
                                                 "(temperature 1.5)",
                                                 "ECE (15 bins)      0.2000 → 0.1000"]
    result["calibration"] = {"temperature": None, "bins": 15, "nll_before": 1.0,
                             "ece_before": 0.2}
    assert task.evaluation_lines(result)[3:] == ["NLL                1.0000 (not calibrated)",
                                                 "ECE (15 bins)      0.2000"]


# The exported SavedModels' probabilities are softmax(log(p) / T) of the Keras
# model's p: test_saved_model_matches_in_memory_model (image classifier) and
# test_saved_model_matches_in_memory_model_on_raw_strings (sentiment); the
# LiteRT and ONNX exports: tests/test_export_formats.py.
@pytest.mark.slow
def test_trained_run_records_and_exports_its_temperature(trained_text_project):
    from dltool.core import runs

    run = runs.find_trained(trained_text_project)
    record = run["calibration"]
    assert record["split"] == "val" and record["examples"] == run["sizes"]["val"]
    assert run.meta["temperature"] == record["temperature"] != 1.0
    assert record["val_nll_after"] <= record["val_nll_before"]  # what the fit minimises
    export = trained_text_project / "saved_models" / "reviews" / "1"
    assert json.loads((export / "dltool.json").read_text())["meta"]["temperature"] == \
        record["temperature"]
    assert "temperature scaling (T = " in (export / "README.md").read_text()
