"""Hostile model files: `.keras` archives that run code, zip bombs, foreign SavedModels.

The `.keras` gadgets are real archives: a valid model saved with `model.save`,
then its `config.json` rewritten inside the zip, as an attacker would.
"""

import json
import shutil
import zipfile

import numpy as np
import pytest
from conftest import invoke, rewrite_keras_config

from dltool._tf import keras, tf
from dltool.core import config as config_lib
from dltool.core.errors import ModelFileError
from dltool.engine import experiment as experiment_lib
from dltool.engine import modelfiles, runtime
from dltool.engine import predict as predict_lib

NOT_PRODUCED = "which dltool's templates never produce"
IS_LAMBDA = ("is a Lambda layer (code that runs when loaded); dltool loads only the "
             "layers its templates produce")


def _save_tiny_model(path):
    """Saves a real `.keras` file: 4 inputs -> Dense 'dense' (softmax) -> 3 outputs."""
    inputs = keras.Input((4,), name="features")
    outputs = keras.layers.Dense(3, activation="softmax", name="dense")(inputs)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.save(path)
    return path


def _layer(config, name):
    return next(layer for layer in config["config"]["layers"] if layer["name"] == name)


def _function(module, name):
    return {"module": module, "class_name": "function", "config": name,
            "registered_name": name}


def _set_activation(value):
    def edit(config):
        _layer(config, "dense")["config"]["activation"] = value
    return edit


def _insert_lambda(function, arguments):
    """An edit that puts a Lambda layer 'gadget' calling `function(x, **arguments)`
    between a functional model's input and the layer after it."""
    def edit(config):
        layers = config["config"]["layers"]
        input_layer, after_input = layers[0], layers[1]
        link = after_input["inbound_nodes"][0]["args"][0]
        gadget = {"module": "keras.layers", "class_name": "Lambda", "registered_name": None,
                  "name": "gadget",
                  "config": {"name": "gadget", "trainable": True, "dtype": "float32",
                             "function": function, "arguments": arguments,
                             "output_shape": input_layer["config"]["batch_shape"][1:]},
                  "inbound_nodes": [{"args": [json.loads(json.dumps(link))], "kwargs": {}}]}
        link["config"]["keras_history"] = ["gadget", 0, 0]
        layers.insert(1, gadget)
    return edit


@pytest.fixture
def tiny_keras(tmp_path):
    return _save_tiny_model(tmp_path / "tiny.keras")


# The config.json allow-list --------------------------------------------------


def test_lambda_wrapping_a_public_keras_function_is_refused_before_it_runs(tmp_path,
                                                                          tiny_keras):
    marker = tmp_path / "written-by-the-model.png"
    gadget = rewrite_keras_config(tiny_keras, tmp_path / "gallery.keras", _insert_lambda(
        _function("keras.visualization", "plot_image_gallery"), {"path": str(marker)}))
    with pytest.raises(ModelFileError) as refused:  # safe mode loads it
        modelfiles.load_keras_file(gadget)
    assert str(refused.value) == f"{gadget}: refused: layer 'gadget' {IS_LAMBDA}"
    assert not marker.exists()


def test_lambda_holding_a_python_lambda_is_refused(tmp_path):
    inputs = keras.Input((3,))
    outputs = keras.layers.Lambda(lambda x: x * 2, name="doubler")(inputs)
    path = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(path)
    with pytest.raises(ModelFileError) as refused:
        modelfiles.load_keras_file(path)
    assert str(refused.value) == f"{path}: refused: layer 'doubler' {IS_LAMBDA}"


@pytest.mark.parametrize("activation, shown", [
    (_function("os", "system"), "os.system"),
    ({"module": "builtins", "class_name": "function", "config": "exec",
      "registered_name": None}, "builtins.exec"),
    (_function("subprocess", "getoutput"), "subprocess.getoutput"),
    (_function("keras.utils", "get_file"), "keras.utils.get_file"),
    (_function("keras.models", "model_from_json"), "keras.models.model_from_json"),
    # A dotted name under the bare `keras` module: Keras resolves it as a
    # public API path, around a check of `module` alone.
    ({"module": "keras", "class_name": "function",
      "config": "visualization.plot_image_gallery", "registered_name": None},
     "keras.visualization.plot_image_gallery"),
    # A registered name wins over `module` in Keras: KerasHub registers a
    # function that uploads presets.
    ({"module": "keras.activations", "class_name": "function",
      "config": "keras_hub>upload_preset", "registered_name": None},
     "keras_hub>upload_preset"),
    # A plain string is looked up among registered objects too.
    ("keras_hub>compute_word_piece_vocabulary", "keras_hub>compute_word_piece_vocabulary"),
])
def test_function_outside_the_allow_list_is_refused_naming_layer_and_function(
        tmp_path, tiny_keras, activation, shown):
    gadget = rewrite_keras_config(tiny_keras, tmp_path / "gadget.keras", _set_activation(activation))
    with pytest.raises(ModelFileError) as refused:
        modelfiles.load_keras_file(gadget)
    assert str(refused.value) == f"{gadget}: refused: layer 'dense' uses {shown}, {NOT_PRODUCED}"


@pytest.mark.parametrize("module, class_name, shown", [
    ("keras.layers", "TFSMLayer", "keras.layers.TFSMLayer"),  # loads a SavedModel: a program
    ("keras.layers", "TorchModuleWrapper", "keras.layers.TorchModuleWrapper"),
    ("os", "system", "os.system"),
])
def test_layer_class_outside_the_allow_list_is_refused(tmp_path, tiny_keras, module,
                                                       class_name, shown):
    def edit(config):
        _layer(config, "dense").update(module=module, class_name=class_name)

    gadget = rewrite_keras_config(tiny_keras, tmp_path / "gadget.keras", edit)
    with pytest.raises(ModelFileError) as refused:
        modelfiles.load_keras_file(gadget)
    assert str(refused.value) == f"{gadget}: refused: layer 'dense' uses {shown}, {NOT_PRODUCED}"


def test_compile_config_and_nested_python_lambda_are_checked(tmp_path, tiny_keras):
    def poisoned_loss(config):
        config["compile_config"]["loss"] = _function("os", "system")

    gadget = rewrite_keras_config(tiny_keras, tmp_path / "loss.keras", poisoned_loss)
    with pytest.raises(ModelFileError) as refused:  # Keras drops it (compile=False): it loads
        modelfiles.load_keras_file(gadget)
    assert str(refused.value) == f"{gadget}: refused: model 'tiny' uses os.system, {NOT_PRODUCED}"

    code = {"class_name": "__lambda__", "config": {"value": "lambda x: x"}}
    gadget = rewrite_keras_config(tiny_keras, tmp_path / "code.keras", _set_activation(code))
    with pytest.raises(ModelFileError) as refused:
        modelfiles.load_keras_file(gadget)
    assert str(refused.value) == (f"{gadget}: refused: layer 'dense' holds a Python lambda "
                                  "(code that runs when loaded); dltool loads only the layers "
                                  "its templates produce")


def test_keras_hub_backbone_activation_is_allowed(tmp_path):
    # The activation KerasHub's ALBERT and ELECTRA backbones use.
    from keras_hub.src.utils.keras_utils import gelu_approximate

    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(3, activation=gelu_approximate, name="dense")(inputs)
    path = tmp_path / "gelu.keras"
    keras.Model(inputs, outputs).save(path)
    model = modelfiles.load_keras_file(path)
    assert model.get_layer("dense").activation is gelu_approximate


# Zip archives --------------------------------------------------------------


def _with_deflated_member(source, target, name, size, byte):
    """Copies the archive `source` with member `name` replaced by `size` bytes
    of `byte`, compressed (DEFLATE stores 65 MiB of one byte in about 65 KB)."""
    with zipfile.ZipFile(source) as original, \
            zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as rewritten:
        for info in original.infolist():
            if info.filename != name:
                rewritten.writestr(info.filename, original.read(info.filename))
        with rewritten.open(name, "w", force_zip64=True) as member:
            for _ in range(size >> 20):
                member.write(byte * (1 << 20))
    return target


def test_zip_bomb_member_is_refused_before_it_is_inflated(tmp_path, tiny_keras):
    size = 65 << 20  # over dltool's 64 MiB floor, far under Keras' own (256 MiB, 4 GiB)
    bomb = _with_deflated_member(tiny_keras, tmp_path / "bomb.keras", "model.weights.h5",
                                 size, b"\0")
    stored = zipfile.ZipFile(bomb).getinfo("model.weights.h5").compress_size
    with pytest.raises(ModelFileError) as refused:
        modelfiles.load_keras_file(bomb)
    assert str(refused.value) == (
        f"{bomb}: refused: member model.weights.h5 expands from {stored} to {size} bytes "
        "(a zip bomb); dltool accepts at most 20 times the stored size")


def test_oversized_config_json_is_refused(tmp_path, tiny_keras):
    size = 65 << 20
    big = _with_deflated_member(tiny_keras, tmp_path / "big.keras", "config.json", size, b" ")
    with pytest.raises(ModelFileError) as refused:
        modelfiles.load_keras_file(big)
    assert str(refused.value) == (f"{big}: refused: config.json declares {size} bytes; "
                                  f"dltool reads at most {64 << 20}")


@pytest.mark.parametrize("members, message", [
    ({"metadata.json": b"{}"}, "not a Keras model archive (no config.json)"),
    ({"config.json": b"{not json"}, "corrupt .keras file (config.json is not valid JSON)"),
    ({"config.json": b"[" * 100_000}, "corrupt .keras file (config.json is not valid JSON)"),
])
def test_archive_without_a_readable_config_is_one_line(tmp_path, members, message):
    path = tmp_path / "odd.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(ModelFileError) as refused:
        modelfiles.load_keras_file(path)
    assert str(refused.value) == f"{path}: {message}"


# The templates' own models -------------------------------------------------


@pytest.fixture(scope="module")
def projects(tmp_path_factory):
    """One generated (untrained) project per template."""
    from click.testing import CliRunner

    root = tmp_path_factory.mktemp("templates")
    for template in ("image-classifier", "sentiment", "translator"):
        result = invoke(CliRunner(), "new", template, root / template)
        assert result.exit_code == 0, result.output
    return root


IMAGE = {"num_classes": 3}
TEXT = {"num_classes": 2, "vocabulary_size": 50}
PAIRS = {"source_vocabulary_size": 30, "target_vocabulary_size": 20}


IMAGE_AUTO = ["data.image_size=[32, 32]", "model.batchnorm_momentum=0.99"]


@pytest.mark.parametrize("template, overrides, model_kwargs, precision", [
    # The image template's "auto" values given: no data is opened to decide them.
    ("image-classifier", ["model.filters=8", "model.blocks=1", *IMAGE_AUTO], IMAGE, "float32"),
    ("image-classifier", ["model.filters=8", "model.blocks=1", *IMAGE_AUTO], IMAGE,
     "mixed_float16"),
    ("sentiment", ["model.cell=lstm", "model.bidirectional=true", "model.units=8",
                   "model.embedding_dim=8"], TEXT, "float32"),
    ("sentiment", ["model.cell=rnn", "model.bidirectional=false", "model.layers=2",
                   "model.units=8", "model.embedding_dim=8"], TEXT, "float32"),
    ("translator", ["model.architecture=rnn", "model.cell=lstm", "model.units=8",
                    "model.embedding_dim=8"], PAIRS, "float32"),
    ("translator", ["model.architecture=transformer", "model.units=8", "model.embedding_dim=8",
                    "model.heads=2", "model.transformer_layers=1"], PAIRS, "float32"),
])
def test_templates_models_pass_the_check_and_predict_the_same(tmp_path, projects, template,
                                                             overrides, model_kwargs,
                                                             precision):
    project = projects / template
    config = config_lib.load_config(project / "config.toml", overrides)
    module = experiment_lib.load_model_module(project)
    with runtime.precision_scope(precision):
        model, _ = experiment_lib.build_model(module, config, model_kwargs)
    path = tmp_path / "model.keras"
    model.save(path)
    assert modelfiles.check_keras_file(path) == path
    loaded = modelfiles.load_keras_file(path)
    features = _random_inputs(model)
    np.testing.assert_allclose(np.asarray(loaded(features, training=False), "float32"),
                               np.asarray(model(features, training=False), "float32"),
                               rtol=1e-3, atol=1e-3)


def _random_inputs(model):
    """A batch of 2 for each of the model's inputs (6 steps where the length is free)."""
    rng = np.random.default_rng(0)
    batch = {}
    for tensor in model.inputs:
        shape = (2, *(size or 6 for size in tensor.shape[1:]))
        batch[tensor.name] = rng.integers(1, 20, shape).astype("int32") \
            if tensor.dtype == "int32" else rng.random(shape).astype("float32")
    return batch if len(batch) > 1 else next(iter(batch.values()))


# Through the CLI -------------------------------------------------------------


def _export_folder(project):
    return next((project / "saved_models").glob("*/1"))


@pytest.mark.slow
def test_predict_refuses_the_gadget_in_one_line_and_writes_nothing(runner, trained_project,
                                                                  tmp_path):
    export = _export_folder(trained_project)
    gadgets = tmp_path / "downloaded"
    gadgets.mkdir()
    shutil.copy(export / "dltool.json", gadgets)
    marker = tmp_path / "overwritten.png"
    gadget = rewrite_keras_config(export / "model.keras", gadgets / "model.keras", _insert_lambda(
        _function("keras.visualization", "plot_image_gallery"),
        {"path": str(marker), "rows": 1, "cols": 1}))
    sample = min((trained_project / "samples").glob("*.jpg"))
    result = invoke(runner, "predict", "--project", trained_project, "--model", gadget, sample)
    assert result.exit_code == 1
    assert result.output == f"Error: {gadget}: refused: layer 'gadget' {IS_LAMBDA}\n"
    assert not marker.exists()

    result = invoke(runner, "predict", "--project", trained_project, "--model",
                    export / "model.keras", sample)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[1].startswith(f"{sample}: ")
    assert result.stderr == ""


# Foreign SavedModels ---------------------------------------------------------


def _forge_saved_model(folder, marker, dltool_json):
    """A SavedModel whose serving graph writes `marker`, with a forged dltool.json."""
    class Forged(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="images")])
        def serve(self, images):
            tf.io.write_file(str(marker), "the graph ran")
            count = tf.shape(images)[0]
            names = tf.constant(["airplane", "automobile"])
            probabilities = tf.tile(tf.constant([[0.75, 0.25]]), [count, 1])
            return {"probabilities": probabilities,
                    "classes": tf.tile(names[tf.newaxis], [count, 1]),
                    "label": tf.gather(names, tf.zeros([count], tf.int32)),
                    "score": probabilities[:, 0]}

    forged = Forged()
    tf.saved_model.save(forged, str(folder), signatures={"serving_default": forged.serve})
    (folder / "dltool.json").write_text(json.dumps(dltool_json))
    return folder


def _forged_metadata(name="proj", version=1, run="20200101-000000"):
    return {"name": name, "version": version, "run": run, "template": "image-classifier",
            "meta": {"class_names": ["airplane", "automobile"], "image_size": [32, 32]}}


def _warning(folder, reason):
    return (f"Warning: {folder} was not exported from this project ({reason}): a SavedModel "
            "is a program and runs with your permissions; pass --trusted if you trust its "
            "source")


def test_foreign_saved_model_warns_before_its_graph_runs_and_trusted_silences_it(
        runner, project, tmp_path):
    marker = tmp_path / "graph-ran.txt"
    foreign = _forge_saved_model(tmp_path / "downloaded" / "1", marker, _forged_metadata())
    sample = min((project / "samples").glob("*.jpg"))
    result = invoke(runner, "predict", "--project", project, "--model", foreign, sample)
    assert result.exit_code == 0, result.output
    assert result.stderr == _warning(foreign, "not in saved_models/NAME/VERSION") + "\n"
    assert marker.exists()  # a warning, not a refusal: the user may trust it

    marker.unlink()
    result = invoke(runner, "predict", "--project", project, "--model", foreign, "--trusted",
                    sample)
    assert result.exit_code == 0, result.output
    assert result.stderr == "" and marker.exists()

    marker.unlink()
    seen = []
    predict_lib.predict(project, [str(sample)], model_path=foreign,
                        warn=lambda line: seen.append((line, marker.exists())))
    assert seen == [(_warning(foreign, "not in saved_models/NAME/VERSION"), False)]
    assert marker.exists()


def test_planted_saved_model_without_its_run_warns(runner, project, tmp_path):
    marker = tmp_path / "graph-ran.txt"
    planted = _forge_saved_model(project / "saved_models" / "proj" / "1", marker,
                                 _forged_metadata())
    sample = min((project / "samples").glob("*.jpg"))
    result = invoke(runner, "predict", "--project", project, sample)  # the newest export
    assert result.exit_code == 0, result.output
    assert result.stderr == _warning(planted, "no matching run") + "\n"

    (planted / "dltool.json").write_text(json.dumps(_forged_metadata(version=2)))
    assert predict_lib.untrusted_model_warning(project, planted) == _warning(
        planted, "its dltool.json names another export")
    assert predict_lib.untrusted_model_warning(None, planted) == _warning(
        planted, "not in a project folder")


@pytest.mark.slow
def test_the_projects_own_export_gets_no_warning_and_a_copy_elsewhere_does(
        runner, trained_project, tmp_path):
    export = _export_folder(trained_project)
    assert predict_lib.untrusted_model_warning(trained_project, export) is None
    sample = min((trained_project / "samples").glob("*.jpg"))
    result = invoke(runner, "predict", "--project", trained_project, "--model", export, sample)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    copy = tmp_path / "copy" / "1"
    shutil.copytree(export, copy)
    assert predict_lib.untrusted_model_warning(trained_project, copy) == _warning(
        copy, "not in saved_models/NAME/VERSION")
