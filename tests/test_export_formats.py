"""`dltool export --format litert | onnx --quantize ...`: each exported file runs
in its own runtime (the LiteRT interpreter, ONNX Runtime) on the embedded test
split and agrees with the in-memory Keras model; the client snippets of the
exports' README.md run as written; refusals write nothing.

One image classifier is trained for the module (10 epochs of the tiny model,
a few seconds) and converted once per format and quantization. The sentiment
model is the session's `trained_text_project`, converted to each format as
float32 and with the quantization that differs for it (int8 calibration
feeds its two named inputs); its LiteRT float16 and dynamic-range exports
take the image's code path and are measured in `bench/export.py`.
"""

import json
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke
from dltool.core.errors import ConfigError, ProjectError
from dltool.engine import formats
from dltool.tasks import task_for

# 10 epochs with momentum 0.9 (as `make demo`): the model must tell classes
# apart for quantized accuracy to mean anything; the 2-epoch `trained_project`
# predicts one class for every image. 16 filters: LiteRT's dynamic-range
# quantization leaves float every weight of fewer than 1,024 values, which
# with 8 filters is all of them.
# No label smoothing: with the default 0.1 this model reached 0.15 test
# accuracy in 10 epochs, too near chance for the quantized accuracy to mean much.
IMAGE_MODEL = ("--set", "model.filters=16", "--set", "model.blocks=1",
               "--set", "model.batchnorm_momentum=0.9", "--set", "model.label_smoothing=0.0",
               "--set", "training.verbose=0")
FLOAT_FORMATS = [("litert", "none"), ("onnx", "none")]
QUANTIZED = [("litert", "float16"), ("litert", "dynamic"), ("litert", "int8"),
             ("onnx", "dynamic")]
# The tensor type each LiteRT quantization must leave in the flatbuffer.
QUANTIZED_TYPE = {"float16": np.float16, "dynamic": np.int8, "int8": np.int8}
# The bounds: float formats agree with Keras on every top-1 label and
# within 1e-4 on each probability; a quantized model is within 1 point of
# accuracy of the float one on the embedded test split (200 images).
MAX_PROBABILITY_DIFFERENCE = 1e-4
MAX_ACCURACY_DROP = 0.01


@pytest.fixture(scope="module")
def image_exports(tmp_path_factory):
    """A trained image classifier, exported once per format and quantization.

    Returns:
        A dict: `project`, `exports` ((format, quantize) to the version
        folder), `pixels` and `labels` of the test split, `keras` (the
        in-memory model's calibrated probabilities of them).
    """
    from click.testing import CliRunner

    from dltool.core import runs
    from dltool.engine.experiment import Experiment

    project = tmp_path_factory.mktemp("formats") / "cnn"
    runner = CliRunner()
    for args in (("new", "image-classifier", project),
                 ("train", "--project", project, "--epochs", 10, *IMAGE_MODEL),
                 ("export", "--project", project)):
        result = invoke(runner, *args)
        assert result.exit_code == 0, result.output
    exports = {("savedmodel", "none"): project / "saved_models" / "cnn" / "1"}
    exports.update(_export_each(runner, project, FLOAT_FORMATS + QUANTIZED))
    run = runs.find_trained(project)
    experiment = Experiment.for_run(project, run)
    model = _calibrated_model(experiment, run)
    pixels, labels = zip(*experiment.open_data().splits["test"].as_numpy_iterator())
    pixels = np.stack(pixels).astype(np.float32)
    return {"project": project, "exports": exports, "pixels": pixels,
            "labels": np.asarray(labels),
            "keras": np.asarray(model(pixels, training=False))}


def _calibrated_model(experiment, run):
    """The run's Keras model with the temperature its exports apply (fitted
    after training: `training.calibrate` is on by default)."""
    assert run.meta["temperature"] != 1.0
    return experiment.task.calibrated_model(experiment.load_trained_model(run), run.meta)


def _export_each(runner, project, pairs):
    """Exports the project's newest run once per `(format, quantize)`; returns
    each pair's version folder."""
    exports = {}
    for export_format, quantize in pairs:
        result = invoke(runner, "export", "--project", project, "--format", export_format,
                        "--quantize", quantize)
        assert result.exit_code == 0, result.output
        exports[export_format, quantize] = _exported_path(result.stdout)
    return exports


def _exported_path(stdout):
    return Path(re.search(r" as (\S+) \(", stdout.splitlines()[-1]).group(1))


def _run_litert(path, pixels):
    """Probabilities of `pixels` from the LiteRT interpreter."""
    from dltool._tf import tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    (given,), (output,) = interpreter.get_input_details(), interpreter.get_output_details()
    interpreter.resize_tensor_input(given["index"], pixels.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(given["index"], pixels)
    interpreter.invoke()
    return interpreter.get_tensor(output["index"])


def _run_onnx(path, pixels):
    """Probabilities of `pixels` from ONNX Runtime."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: pixels})[0]


def _run(export_format, folder, pixels):
    if export_format == "litert":
        return _run_litert(folder / "model.tflite", pixels)
    return _run_onnx(folder / "model.onnx", pixels)


@pytest.mark.slow
@pytest.mark.parametrize("export_format, quantize", FLOAT_FORMATS)
def test_float_exports_agree_with_keras(image_exports, export_format, quantize):
    folder = image_exports["exports"][export_format, quantize]
    keras_probabilities = image_exports["keras"]
    probabilities = _run(export_format, folder, image_exports["pixels"])
    assert probabilities.shape == keras_probabilities.shape
    assert np.array_equal(probabilities.argmax(-1), keras_probabilities.argmax(-1))
    assert np.max(np.abs(probabilities - keras_probabilities)) < MAX_PROBABILITY_DIFFERENCE
    # The model tells classes apart, or agreement would say little.
    assert len(set(keras_probabilities.argmax(-1).tolist())) > 2


@pytest.mark.slow
@pytest.mark.parametrize("export_format, quantize", QUANTIZED)
def test_quantized_exports_keep_the_accuracy(image_exports, export_format, quantize):
    folder = image_exports["exports"][export_format, quantize]
    labels = image_exports["labels"]
    float_accuracy = np.mean(image_exports["keras"].argmax(-1) == labels)
    probabilities = _run(export_format, folder, image_exports["pixels"])
    accuracy = np.mean(probabilities.argmax(-1) == labels)
    assert accuracy >= float_accuracy - MAX_ACCURACY_DROP, (accuracy, float_accuracy)
    if export_format == "onnx":
        import onnx

        operators = {node.op_type for node in onnx.load(folder / "model.onnx").graph.node}
        assert {"ConvInteger", "MatMulInteger"} <= operators
        return
    from dltool._tf import tf

    interpreter = tf.lite.Interpreter(model_path=str(folder / "model.tflite"))
    types = {detail["dtype"] for detail in interpreter.get_tensor_details()}
    assert QUANTIZED_TYPE[quantize] in types


@pytest.mark.slow
def test_int8_export_records_its_calibration(image_exports):
    folder = image_exports["exports"]["litert", "int8"]
    metadata = json.loads((folder / "dltool.json").read_text())
    assert metadata["calibration"] == {"split": "train", "examples": formats.CALIBRATION_EXAMPLES,
                                       "seed": 42}
    assert "300 examples of the train split, seed 42" in (folder / "README.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("key", [("savedmodel", "none"), *FLOAT_FORMATS, *QUANTIZED])
def test_export_folder_describes_the_model(image_exports, key):
    folder = image_exports["exports"][key]
    metadata = json.loads((folder / "dltool.json").read_text())
    assert (metadata["format"], metadata["quantize"]) == key
    class_names = metadata["meta"]["class_names"]
    assert (folder / "labels.txt").read_text().splitlines() == class_names
    readme = (folder / "README.md").read_text()
    assert "## Client" in readme and "```python" in readme
    if key[0] == "savedmodel":
        assert metadata["input"]["dtype"] == "string"
        assert (folder / "saved_model.pb").is_file()
    else:
        assert metadata["input"]["shape"] == [None, *metadata["meta"]["image_size"], 3]
        assert metadata["input"]["value_range"] == [0, 255]
        assert folder.parent.parent.parent.name == "exports"  # out of saved_models/


# PIL's and TensorFlow's JPEG decoders differ by a few levels: on the embedded
# CIFAR-10 test JPEGs, at most 5 of 255 and 0.99 on average.
MAX_DECODER_DIFFERENCE = 5
MEAN_DECODER_DIFFERENCE = 1.5


def _snippet(folder, monkeypatch):
    """Runs the README's client code in `folder`; returns its namespace."""
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(folder)
    namespace = {"__name__": "client"}
    exec(compile(code, "client.py", "exec"), namespace)
    return namespace


def _served(image_exports, samples):
    """The SavedModel's outputs for image files: dltool's own path."""
    from dltool._tf import tf

    serve = tf.saved_model.load(str(image_exports["exports"]["savedmodel", "none"]))
    return serve.signatures["serving_default"](
        images=tf.constant([p.read_bytes() for p in samples]))


@pytest.mark.slow
def test_savedmodel_readme_client_runs(image_exports, monkeypatch):
    samples = sorted((image_exports["project"] / "samples").glob("*.jpg"))
    client = _snippet(image_exports["exports"]["savedmodel", "none"], monkeypatch)
    predictions = client["classify_local"]([str(p) for p in samples])
    expected = _served(image_exports, samples)
    assert [label for label, _ in predictions] == [
        label.decode() for label in expected["label"].numpy()]
    np.testing.assert_allclose([p for _, p in predictions], expected["score"].numpy(),
                               rtol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("key", [("litert", "none"), ("onnx", "none"), ("litert", "int8"),
                                 ("onnx", "dynamic")])
def test_pixel_readme_client_runs(image_exports, key, monkeypatch):
    from dltool.data import images

    samples = sorted((image_exports["project"] / "samples").glob("*.jpg"))
    client = _snippet(image_exports["exports"][key], monkeypatch)
    # Its preprocessing gives the pixels dltool decodes, up to the JPEG decoder.
    pixels = np.stack([client["preprocess"](str(p)) for p in samples])
    decoded = np.stack([images.decode_image(p.read_bytes(), (32, 32)).numpy() for p in samples])
    assert pixels.dtype == np.float32 and pixels.shape == decoded.shape
    assert np.max(np.abs(pixels - decoded)) <= MAX_DECODER_DIFFERENCE
    assert np.mean(np.abs(pixels - decoded)) <= MEAN_DECODER_DIFFERENCE
    # Its runtime code, on the same pixels, gives the SavedModel's probabilities.
    tolerance = MAX_PROBABILITY_DIFFERENCE if key[1] == "none" else 0.05
    np.testing.assert_allclose(client["run"](decoded), _served(image_exports, samples)
                               ["probabilities"].numpy(), atol=tolerance)
    # And `classify` names the top class of what `run` returns.
    probabilities = client["run"](pixels)
    labels = (image_exports["exports"][key] / "labels.txt").read_text().splitlines()
    assert client["classify"]([str(p) for p in samples]) == [
        (labels[i], float(row[i])) for row, i in zip(probabilities, probabilities.argmax(-1))]


@pytest.mark.slow
def test_predict_still_finds_the_savedmodel(image_exports, runner):
    project = image_exports["project"]
    sample = next((project / "samples").glob("*.jpg"))
    result = invoke(runner, "predict", "--project", project, sample)
    assert result.exit_code == 0, result.output
    assert "saved_models" in result.output and "exports" not in result.output


@pytest.mark.slow
@pytest.mark.parametrize("options, message", [
    (("--format", "onnx", "--quantize", "int8"),
     "Error: --quantize int8 does not apply to --format onnx (it takes none, dynamic); int8 "
     "works with --format litert"),
    (("--format", "savedmodel", "--quantize", "float16"),
     "Error: --quantize float16 does not apply to --format savedmodel (it takes none); "
     "float16 works with --format litert"),
    (("--format", "tflite"),
     "Error: --format must be one of savedmodel, litert, onnx; got 'tflite'"),
])
def test_impossible_requests_are_refused_before_writing(image_exports, runner, options,
                                                        message):
    project = image_exports["project"]
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    result = invoke(runner, "export", "--project", project, *options)
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == message
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


def test_missing_converter_names_the_extra(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    missing = {"tf2onnx", "onnxruntime"}
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in missing else real(name, *a))
    with pytest.raises(ProjectError) as error:
        formats.check_extra("onnx")
    assert str(error.value) == ("--format onnx needs tf2onnx: "
                                "pip install 'dltool-keras[onnx]'")
    with pytest.raises(ProjectError) as error:
        formats.check_extra("onnx", "dynamic")  # ONNX Runtime quantizes
    assert str(error.value) == ("--format onnx needs tf2onnx, onnxruntime: "
                                "pip install 'dltool-keras[onnx]'")
    formats.check_extra("litert", "int8")  # TensorFlow's own converter: nothing to install


@pytest.mark.parametrize("export_format", ["litert", "onnx"])
def test_quantized_translator_is_refused_in_one_line(export_format):
    with pytest.raises(ConfigError) as error:
        formats.check_request(task_for("translator"), export_format, "dynamic", {})
    assert str(error.value) == (
        f"cannot export a translator model as {export_format}: --quantize dynamic changes "
        "greedy translations (229 of 247 sentences identical with int8 weights, measured), so "
        f"they could no longer be checked against the model's; --format {export_format} "
        "--quantize none works")
    formats.check_request(task_for("translator"), export_format, "none", {})


@pytest.mark.slow
def test_a_converter_error_is_one_line_and_writes_nothing(image_exports, runner,
                                                          monkeypatch):
    project = image_exports["project"]
    before = sorted(p.relative_to(project) for p in project.rglob("*"))

    def refuse(*args, **kwargs):
        raise RuntimeError("'FlexConv3D' op is neither a custom op nor a flex op\nmore")

    monkeypatch.setattr(formats, "write_litert", refuse)
    result = invoke(runner, "export", "--project", project, "--format", "litert")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "Error: the litert converter refused the model: 'FlexConv3D' op is neither a "
        "custom op nor a flex op; --format savedmodel takes every model")
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before


@pytest.mark.parametrize("template, meta", [
    ("sentiment", {"class_names": ["negative", "positive"], "sequence_length": 24,
                   "vocabulary": ["", "[UNK]", "film"]}),
    ("translator", {"max_length": 20, "decoding": {"method": "greedy", "beam_width": 2}}),
])
def test_text_savedmodel_readme_describes_the_input(template, meta):
    from dltool.engine.export import client_readme

    task = task_for(template)
    spec = task.input_spec("savedmodel", meta)
    assert spec["dtype"] == "string" and spec["name"] == "texts"
    readme = client_readme({"name": "m", "version": 1, "run": "r", "template": template,
                            "format": "savedmodel", "quantize": "none", "input": spec,
                            "meta": meta}, task.client_snippet("savedmodel", meta))
    assert "## Input" in readme and "- dtype: `string`" in readme


# The sentiment classifier: token ids in ---------------------------------------

TEXT_FORMATS = [("litert", "none"), ("onnx", "none"), ("litert", "float16"), ("litert", "dynamic"),
                ("litert", "int8"), ("onnx", "dynamic")]
# Texts the client's tokenizer must split as TensorFlow does: punctuation of
# all of Unicode, accents, upper-case outside ASCII, emoji, symbols dltool
# strips besides category P, tabs and line breaks, non-breaking spaces (not
# whitespace to TensorFlow's split), words longer than the n-grams kept, a
# text longer than `sequence_length`, an empty one.
TRICKY_TEXTS = ["", "A gorgeous, witty, seductive movie.", "Très émouvant, un chef-d'œuvre ! 😀",
                "ZÜRICH's «naïve» café—überfunny!!", "1+1=2 <b>$5</b> ^_^ `x` | ~",
                "tab\tand\nnew line\r\nend", "non\u00a0breaking", "supercalifragilistic",
                "word " * 40]


@pytest.fixture(scope="module")
def text_exports(trained_text_project, tmp_path_factory):
    """The session's sentiment project exported as `TEXT_FORMATS` (on a copy).

    Returns:
        A dict: `project`, `exports` ((format, quantize) to the version
        folder), `features` and `labels` of the test split, `texts` (its raw
        texts), `keras` (the in-memory model's calibrated probabilities of them).
    """
    import shutil

    from click.testing import CliRunner

    from dltool.core import runs
    from dltool.engine.experiment import Experiment

    project = tmp_path_factory.mktemp("text-formats") / "reviews"
    shutil.copytree(trained_text_project, project, symlinks=True)
    runner = CliRunner()
    exports = {("savedmodel", "none"): project / "saved_models" / "reviews" / "1"}
    exports.update(_export_each(runner, project, TEXT_FORMATS))
    run = runs.find_trained(project)
    experiment = Experiment.for_run(project, run)
    model = _calibrated_model(experiment, run)
    data = experiment.open_data()
    features, labels = zip(*data.splits["test"].as_numpy_iterator())
    features = {key: np.stack([f[key] for f in features]) for key in features[0]}
    return {"project": project, "exports": exports, "features": features,
            "labels": np.asarray(labels), "texts": data.texts["test"],
            "keras": np.asarray(model(features, training=False))}


def _run_text(export_format, folder, features):
    """Probabilities of token-id features from the export's own runtime."""
    if export_format == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(folder / "model.onnx"),
                                               providers=["CPUExecutionProvider"])
        return session.run(None, {i.name: features[i.name] for i in session.get_inputs()})[0]
    from dltool._tf import tf

    runner = tf.lite.Interpreter(model_path=str(folder / "model.tflite")).get_signature_runner()
    return next(iter(runner(**features).values()))


@pytest.mark.slow
@pytest.mark.parametrize("key", TEXT_FORMATS)
def test_text_exports_agree_with_keras(text_exports, key):
    probabilities = _run_text(key[0], text_exports["exports"][key], text_exports["features"])
    keras_probabilities, labels = text_exports["keras"], text_exports["labels"]
    assert probabilities.shape == keras_probabilities.shape == (200, 2)
    # The model tells the classes apart, or agreement would say little.
    assert np.mean(keras_probabilities.argmax(-1) == labels) > 0.6
    if key[1] == "none":
        assert np.array_equal(probabilities.argmax(-1), keras_probabilities.argmax(-1))
        assert np.max(np.abs(probabilities - keras_probabilities)) < MAX_PROBABILITY_DIFFERENCE
    else:
        accuracy = np.mean(probabilities.argmax(-1) == labels)
        float_accuracy = np.mean(keras_probabilities.argmax(-1) == labels)
        assert abs(accuracy - float_accuracy) <= MAX_ACCURACY_DROP, (accuracy, float_accuracy)
        if key[0] == "litert":  # the weights are stored quantized, not only labelled so
            from dltool._tf import tf

            interpreter = tf.lite.Interpreter(
                model_path=str(text_exports["exports"][key] / "model.tflite"))
            types = {detail["dtype"] for detail in interpreter.get_tensor_details()}
            assert QUANTIZED_TYPE[key[1]] in types
    metadata = json.loads((text_exports["exports"][key] / "dltool.json").read_text())
    assert metadata["input"]["names"] == ["token_ids", "subword_ids"]
    assert metadata["input"]["subword_ids"]["shape"] == [None, 12, 16]


@pytest.mark.slow
def test_text_client_encodes_as_the_graph(text_exports, monkeypatch):
    from dltool._tf import tf
    from dltool.data import text

    client = _snippet(text_exports["exports"]["litert", "none"], monkeypatch)
    meta = json.loads(Path("dltool.json").read_text())["meta"]
    texts = TRICKY_TEXTS + text_exports["texts"]
    vectorizer = text.make_vectorizer(meta["sequence_length"], vocabulary=meta["vocabulary"])
    expected = text.vectorize(vectorizer, tf.constant(texts), meta["subword_buckets"],
                              meta["subwords_per_word"])
    encoded = client["encode"](texts)
    assert encoded.keys() == expected.keys()
    for key, ids in expected.items():
        assert encoded[key].dtype == np.int32
        np.testing.assert_array_equal(encoded[key], ids.numpy(), err_msg=key)


@pytest.mark.slow
@pytest.mark.parametrize("key", [("savedmodel", "none"), ("litert", "none"), ("onnx", "none")])
def test_text_readme_client_runs(text_exports, key, monkeypatch):
    from dltool._tf import tf

    texts = TRICKY_TEXTS + text_exports["texts"][:20]
    served = tf.saved_model.load(str(text_exports["exports"]["savedmodel", "none"]))
    expected = served.signatures["serving_default"](texts=tf.constant(texts))
    client = _snippet(text_exports["exports"][key], monkeypatch)
    predictions = client["classify_local" if key[0] == "savedmodel" else "classify"](texts)
    assert [label for label, _ in predictions] == [
        label.decode() for label in expected["label"].numpy()]
    np.testing.assert_allclose([p for _, p in predictions], expected["score"].numpy(),
                               atol=MAX_PROBABILITY_DIFFERENCE)
