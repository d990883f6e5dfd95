"""`training.class_weight`: the config key, the weights it gives, the data
report's balance line, and a deliberately imbalanced cut of the embedded SST-2
sample on which `balanced` raises the minority class's recall."""

import json
import random

import pytest

from conftest import TEXT_MODEL, invoke
from dltool.core import config as config_lib
from dltool.core.errors import ConfigError
from dltool.data import splits
from dltool.tasks import task_for


@pytest.mark.parametrize("value", ["none", "balanced", {"cat": 2.0, "dog": 1}])
def test_config_takes_none_balanced_or_a_table(value):
    raw = {"project": {"template": "image-classifier"}, "training": {"class_weight": value}}
    checked = config_lib.validate(raw)["training"]["class_weight"]
    assert checked == (value if isinstance(value, str) else {"cat": 2.0, "dog": 1.0})


@pytest.mark.parametrize("value, message", [
    ("balance", "training.class_weight must be one of none, balanced, or a table of class "
                "names to weights above 0 (at most 1e+06); got 'balance'"),
    ({"cat": 0}, "training.class_weight.cat must be a number above 0 and at most 1e+06; got 0"),
    ({"cat": float("nan")}, "training.class_weight.cat must be a number above 0 and at most "
                            "1e+06; got nan"),
    ({"cat": "2"}, "training.class_weight.cat must be a number above 0 and at most 1e+06; "
                   "got '2'"),
    ({}, "training.class_weight must be one of none, balanced, or a table of class names to "
         "weights above 0 (at most 1e+06); got an empty table"),
])
def test_config_refuses_bad_weights_in_one_line(value, message):
    raw = {"project": {"template": "sentiment"}, "training": {"class_weight": value}}
    with pytest.raises(ConfigError) as error:
        config_lib.validate(raw)
    assert str(error.value) == message


def test_balanced_weights_follow_scikit_learn():
    weights = splits.class_weights("balanced", ["a", "b", "c"], [60, 30, 10])
    assert weights == pytest.approx([100 / 180, 100 / 90, 100 / 30])
    # every class weighs the same in total, and the mean example weight is 1
    assert [w * n for w, n in zip(weights, [60, 30, 10])] == pytest.approx([100 / 3] * 3)
    assert splits.class_weights("none", ["a", "b"], [5, 1]) == [1.0, 1.0]
    assert splits.class_weights({"b": 3.0}, ["a", "b"], None) == [1.0, 3.0]


def test_unknown_class_and_missing_counts_are_one_line():
    with pytest.raises(ConfigError) as error:
        splits.class_weights({"kat": 2.0}, ["cat", "dog"], [5, 5])
    assert str(error.value) == ("training.class_weight.kat: no class 'kat'; did you mean cat? "
                                "(classes: cat, dog)")
    with pytest.raises(ConfigError, match='"balanced" needs the class counts'):
        splits.class_weights("balanced", ["cat", "dog"], None)


def test_balance_line_suggests_balanced_from_three_to_one():
    assert splits.balance_line(["cat", "dog"], [7, 7]) == (
        "class balance: every training class has 7 examples")
    assert splits.balance_line(["cat", "dog"], [20, 10]) == (
        "class balance: largest/smallest training class 2.0x (cat 20, dog 10)")
    assert splits.balance_line(["cat", "dog"], [5, 30]).endswith(
        '(dog 30, cat 5); training.class_weight = "balanced" weighs every class the same '
        "in the loss")


def test_the_translator_takes_only_none():
    config = {"training": {"class_weight": "balanced"}}
    with pytest.raises(ConfigError) as error:
        task_for("translator").fit_options(config, None)
    assert str(error.value) == ('training.class_weight applies to classifiers; the translator '
                                'template takes only "none"')
    assert task_for("translator").fit_options({"training": {"class_weight": "none",
                                                            "calibrate": False}}, None) == {}


# Training (slow) --------------------------------------------------------------

# Until the best epoch by validation loss; `val_accuracy` would pick the epoch
# that predicts the majority class, on a validation split just as imbalanced.
IMBALANCED_RUN = ("--epochs", 8, *TEXT_MODEL, "--set", "training.monitor=val_loss",
                  "--set", "training.early_stopping_patience=0")


@pytest.mark.slow
def test_balanced_raises_the_minority_recall(runner, tmp_path):
    from dltool.data.images import SAMPLES_ROOT

    rows = (SAMPLES_ROOT / "sst2" / "train.tsv").read_text(encoding="utf-8").splitlines()
    rng = random.Random(0)  # negatives cut to a tenth
    kept = [r for r in rows[1:] if r.endswith("\t1") or rng.random() < 0.1]
    data = tmp_path / "sst"
    data.mkdir()
    (data / "train.tsv").write_text("\n".join([rows[0], *kept]) + "\n", encoding="utf-8")
    (data / "test.tsv").write_bytes((SAMPLES_ROOT / "sst2" / "test.tsv").read_bytes())
    recall, balanced_accuracy = {}, {}
    for setting in ("none", "balanced"):
        project = tmp_path / setting
        assert invoke(runner, "new", "sentiment", project, "--data", data).exit_code == 0
        result = invoke(runner, "train", "--project", project, *IMBALANCED_RUN,
                        "--set", f"training.class_weight={setting}")
        assert result.exit_code == 0, result.output
        assert "class balance: largest/smallest training class 10.4x" in result.output
        result = invoke(runner, "evaluate", "--project", project, "--json")
        assert result.exit_code == 0, result.output
        evaluation = json.loads(result.stdout)
        recall[setting] = evaluation["per_class"][0]["recall"]  # the minority: label 0
        balanced_accuracy[setting] = evaluation["balanced_accuracy"]
        (run,) = (project / "runs").iterdir()
        weights = json.loads((run / "run.json").read_text()).get("class_weights")
        if setting == "balanced":
            # 94 and 980 training texts once 10% of each label went to validation
            assert weights == {"0": pytest.approx(1074 / 2 / 94, abs=1e-6),
                               "1": pytest.approx(1074 / 2 / 980, abs=1e-6)}
        else:
            assert weights is None
    assert recall["balanced"] >= recall["none"] + 0.1, recall
    assert balanced_accuracy["balanced"] > balanced_accuracy["none"], balanced_accuracy
