"""Config loading: defaults, overrides, and errors that name the key."""

import pytest

from conftest import invoke
from dltool.core import config as config_lib
from dltool.core.errors import ConfigError, ProjectError


def _load(project, *overrides):
    return config_lib.load_config(project / "config.toml", overrides)


def test_generated_config_loads_with_every_key(project):
    config = _load(project)
    assert config.template == "image-classifier"
    assert config["data"]["source"] == "builtin:cifar10"
    assert config["runtime"] == {"strategy": "auto", "precision": "auto", "cpu_devices": 1}
    assert config.model["filters"] == 24


def test_overrides_are_parsed_as_toml_values(project):
    config = _load(project, "training.epochs=3", "data.image_size=[64, 48]",
                   "data.source=some/folder", "model.dropout=0.5", "training.lr_schedule=constant")
    assert config["training"]["epochs"] == 3
    assert config["data"]["image_size"] == [64, 48]
    assert config["data"]["source"] == "some/folder"
    assert config.model["dropout"] == 0.5
    assert config["training"]["lr_schedule"] == "constant"


def test_integer_accepted_for_float(project):
    assert _load(project, "data.validation_split=0")["data"]["validation_split"] == 0.0


@pytest.mark.parametrize("override, message", [
    ("training.epochz=3", "unknown config key 'training.epochz'; did you mean training.epochs?"),
    ("trainin.epochs=3", "unknown config section 'trainin'; did you mean training?"),
    ("runtime.strategy=mirored",
     "runtime.strategy must be one of auto, default, mirrored, multi-worker, tpu; got 'mirored'"),
    ("runtime.precision=fp16", "runtime.precision must be one of auto, float32, mixed_float16"),
    ("training.epochs=0",
     'training.epochs must be "auto" or an integer from 1 to 1000000; got 0'),
    ("training.epochs=ten",
     'training.epochs must be "auto" or an integer from 1 to 1000000; got \'ten\''),
    ("training.epochs=true",
     'training.epochs must be "auto" or an integer from 1 to 1000000; got True'),
    ("data.image_size=[32]",
     'data.image_size must be "auto" or a list of 2 integers from 16 to 4096'),
    ("data.validation_split=1.5", "data.validation_split must be a number from 0.0 to 0.9"),
    ("data.cache=yes", "data.cache must be one of auto, memory, off; got 'yes'"),
    ("model.filters=[1, 2]", "model.filters must be an integer like its value in config.toml"),
    ("model.extra=[1, 2]", "model.extra must be a string, number or true/false"),
    ("epochs=3", "not of the form section.key=value"),
])
def test_bad_values_name_key_and_allowed(project, override, message):
    with pytest.raises(ConfigError) as error:
        _load(project, override)
    assert message in str(error.value)


def test_unknown_key_in_file_lists_allowed(project):
    path = project / "config.toml"
    path.write_text(path.read_text().replace("[export]", "[export]\nformat = 'onnx'"))
    with pytest.raises(ConfigError, match=r"unknown config key 'export.format'.*allowed: name, "
                                          r"top_k"):
        _load(project)


def test_invalid_toml_reports_path(project):
    (project / "config.toml").write_text("[data\nsource = 1")
    with pytest.raises(ConfigError, match="config.toml: invalid TOML"):
        _load(project)


def test_missing_config_is_not_a_project(tmp_path):
    with pytest.raises(ProjectError, match="not a dltool project"):
        config_lib.load_config(tmp_path / "config.toml")


def test_unknown_template_in_config(project):
    with pytest.raises(ConfigError, match="project.template must be one of"):
        _load(project, "project.template=gan")


def test_digest_ignores_key_order(project):
    a = _load(project)
    b = config_lib.Config(sections={k: dict(reversed(list(v.items())))
                                    for k, v in reversed(list(a.sections.items()))})
    assert a.digest() == b.digest()
    assert _load(project, "training.epochs=3").digest() != a.digest()


def test_cli_reports_config_error_in_one_line(runner, project):
    result = invoke(runner, "train", "--project", project, "--set", "training.batchsize=8")
    assert result.exit_code == 1
    assert result.output.strip() == (
        "Error: unknown config key 'training.batchsize'; did you mean training.batch_size? "
        "(allowed: batch_size, calibrate, class_weight, deterministic, early_stopping_patience, "
        "epochs, fine_tune_lr_factor, freeze_backbone_epochs, include_validation, lr_schedule, "
        "monitor, seed, time_budget, verbose, warmup_epochs)")


def test_model_key_not_read_by_build_model(runner, project):
    result = invoke(runner, "train", "--project", project, "--set", "model.filtres=16")
    assert result.exit_code == 1
    assert "unknown config key 'model.filtres'; did you mean model.filters?" in result.output
    assert "build_model reads:" in result.output
    assert not (project / "runs").exists()


def test_unknown_template_message_lists_the_templates(project):
    with pytest.raises(ConfigError) as error:
        _load(project, "project.template=x")
    assert str(error.value) == ("project.template must be one of image-classifier, sentiment, "
                                "translator; got 'x'")


def test_template_schema_comes_from_template_toml():
    image = config_lib.schema_for("image-classifier")
    assert image["data"]["image_size"] == config_lib.Field("auto", length=2, minimum=16,
                                                         maximum=4096, auto=True)
    assert image["data"]["image_size"].kind is list  # its values other than "auto"
    assert image["training"]["epochs"].default == "auto"  # the template's own default
    assert image["training"]["epochs"].auto and image["training"]["epochs"].kind is int
    assert image["training"]["epochs"].minimum == 1  # the rest from COMMON_SECTIONS
    assert not config_lib.schema_for("sentiment")["training"]["epochs"].auto
    assert config_lib.COMMON_SECTIONS["training"]["epochs"].default == 10
    translator = config_lib.schema_for("translator")
    assert list(translator) == [*config_lib.COMMON_SECTIONS, "data", "decoding"]
    assert translator["decoding"]["method"].choices == ("greedy", "beam")
    assert not hasattr(config_lib, "TEMPLATE_SECTIONS")
    assert config_lib.defaults(image)["data"]["validation_split"] == 0.1


# ---- time budgets: training.time_budget and tune.time_budget take the same forms ----

@pytest.mark.parametrize("key", ["training.time_budget", "tune.time_budget"])
@pytest.mark.parametrize("written, seconds", [
    ("90s", 90), ("30m", 1800), ("2h", 7200), ("1.5h", 5400),
    ("45", 2700), ("'45'", 2700), ("1.5", 90), ("0", None), ("''", None), ("0.0", None),
])
def test_time_budget_forms(project, key, written, seconds):
    config = _load(project, f"{key}={written}")
    section, name = key.split(".")
    value = config[section][name]
    assert config_lib.parse_duration(value, key) == seconds
    if isinstance(value, str):  # kept as written, so a run's config digest is stable
        assert value == written.strip("'")


def test_time_budget_numbers_are_kept_as_before(project):
    assert _load(project)["training"]["time_budget"] == 0.0
    assert _load(project)["tune"]["time_budget"] == ""
    assert _load(project, "training.time_budget=30")["training"]["time_budget"] == 30.0
    assert _load(project, "tune.time_budget=30")["tune"]["time_budget"] == 30


@pytest.mark.parametrize("key", ["training.time_budget", "tune.time_budget"])
@pytest.mark.parametrize("written, shown", [
    ("soon", "'soon'"), ("-5", "-5"), ("'-5m'", "'-5m'"), ("0s", "'0s'"), ("true", "True"),
    ("[30]", "[30]"), ("nan", "nan"), ("30x", "'30x'"),
])
def test_bad_time_budget(project, key, written, shown):
    with pytest.raises(ConfigError) as error:
        _load(project, f"{key}={written}")
    assert str(error.value) == (f"{key} must be a duration such as 90s, 30m or 2h, or a number "
                                f"of minutes; got {shown}")


@pytest.mark.parametrize("value, seconds", [(45, 2700), (0.5, 30), (0, None), (0.0, None),
                                            (" 2h ", 7200), ("", None)])
def test_parse_duration_numbers_are_minutes(value, seconds):
    assert config_lib.parse_duration(value) == seconds
