"""The sentiment template's task: raw text in, label names out."""

from pathlib import Path

from dltool._tf import keras, tf
from dltool.core.errors import ConfigError
from dltool.data import multilabel as data_multilabel
from dltool.data import text
from dltool.report import plots
from dltool.report.reports import Section
from dltool.tasks import backbones, classifier, multilabel
from dltool.tasks.base import ServingEndpoint


class SentimentTask(classifier.ClassifierTask):
    """Labelled texts in, label names out (a text classifier).

    Its report adds, to the classifier's sections, the most confidently
    wrong texts as a figure and a table.
    """

    def open_data(self, config, root, *, skip_bad=False, run_meta=None):
        """Opens the text data of `config["data"]` (see `text.open_text_data`).

        For a trained run (`run_meta`, as `dltool evaluate` opens it), the
        text is vectorized with that run's vocabulary, exactly as in
        training; otherwise a vocabulary is adapted on the training texts.

        Returns:
            The `TextData`, with a `meta` dict added: class names, vocabulary,
            sequence length.
        """
        settings = config["data"]
        preset = backbones.find_preset(config, "text")
        if preset is not None:
            return self._open_pretrained_data(config, root, preset, skip_bad)
        open_data = data_multilabel.open_text_data if settings["multi_label"] \
            else text.open_text_data
        data = open_data(settings, root, seed=config["training"]["seed"], skip_bad=skip_bad,
                         vocabulary=(run_meta or {}).get("vocabulary"))
        data.meta = {"class_names": data.class_names, "vocabulary": data.vocabulary,
                     "sequence_length": settings["sequence_length"],
                     "subword_buckets": settings["subword_buckets"],
                     "subwords_per_word": settings["subwords_per_word"],
                     **multilabel.data_meta(settings)}
        return data

    def _open_pretrained_data(self, config, root, preset, skip_bad):
        """The texts tokenized by a pretrained backbone's preprocessor
        (`backbones.text_preprocessor`) instead of dltool's vectorizer; the
        meta names the preset, which the export's tokenizer comes from."""
        settings = config["data"]
        preprocessor = backbones.text_preprocessor(preset, settings["sequence_length"])
        data = text.open_text_data(
            settings, root, seed=config["training"]["seed"], skip_bad=skip_bad,
            featurize=lambda texts: backbones.text_features(preprocessor, texts))
        vocabulary = [str(t) for t in preprocessor.tokenizer.get_vocabulary()]
        data.report.append(f"tokenizer: the preset's {type(preprocessor.tokenizer).__name__} "
                           f"({len(vocabulary)} tokens), texts cut or padded to "
                           f"{settings['sequence_length']} tokens")
        data.meta = {"class_names": data.class_names, "vocabulary": vocabulary,
                     "sequence_length": settings["sequence_length"], "subword_buckets": 0,
                     "subwords_per_word": 0, "backbone": preset.name, "preset": preset.handle,
                     **multilabel.data_meta(settings)}
        return data

    def check_config(self, config):
        """Refuses what multi-label data cannot use (the classifier's check),
        and a `model.backbone` preset that cannot be used
        (`backbones.find_preset`, `backbones.check_sequence_length`); a
        pretrained backbone does not take multi-label data yet.

        Raises:
            ConfigError: one line naming the key.
        """
        super().check_config(config)
        preset = backbones.find_preset(config, "text")
        if preset is None:
            return
        if config["data"]["multi_label"]:
            raise ConfigError("data.multi_label: the sentiment template takes multi-label data "
                              'with model.backbone = "scratch" only')
        backbones.check_sequence_length(backbones.load_architecture(preset, "text"), preset,
                                        config["data"]["sequence_length"])

    def check_searched_backbones(self, config, values):
        """Refuses a search over backbones other than `model.backbone`: the
        texts are tokenized once for every trial, by the backbone's own
        tokenizer (a preset's) or dltool's vocabulary ("scratch").

        Raises:
            ConfigError: naming `search.backbone` and the value.
        """
        default = config.model.get("backbone", backbones.SCRATCH)
        other = next((value for value in values if value != default), None)
        if other is not None:
            raise ConfigError(f"search.backbone {other!r}: the sentiment template tokenizes "
                              "the texts once for the whole search, for model.backbone "
                              f"({default!r}): search one backbone at a time (set "
                              "model.backbone)")

    def model_facts(self, config):
        """The backbone, scratch or pretrained, and what each phase trains
        (`backbones.info_facts`), once the config is checked."""
        self.check_config(config)
        return backbones.info_facts(config, "text")

    def format_refusal(self, export_format, quantize, meta):
        """The classifier's refusals, and LiteRT and ONNX for a pretrained
        backbone (not converted or checked yet)."""
        if meta.get("backbone") and export_format != "savedmodel":
            return (f"a model on a pretrained backbone has no {export_format} export yet; "
                    "--format savedmodel works (TensorFlow Serving, `dltool predict`)")
        return super().format_refusal(export_format, quantize, meta)

    def bytes_per_example(self, config):
        """Returns the memory one vectorized example (int32 ids + label) takes."""
        data = config["data"]
        subwords = data["subwords_per_word"] if data["subword_buckets"] else 0
        return 4 * (data["sequence_length"] * (1 + subwords) + 1)

    def model_kwargs(self, meta):
        """Returns the data-dependent arguments of `build_model`."""
        return {"num_classes": len(meta["class_names"]),
                "vocabulary_size": len(meta["vocabulary"]), **multilabel.model_kwargs(meta)}

    def serving_endpoint(self, model, meta):
        """Builds the serving function: raw UTF-8 strings in, label names out.

        Args:
            model: The trained Keras model (`text.vectorize` features in,
                probabilities out).
            meta: The run's metadata (`class_names`, `vocabulary`,
                `sequence_length`, `subword_buckets`, `subwords_per_word`).

        Returns:
            A `ServingEndpoint` whose function takes a 1-D string tensor of
            texts and returns `serving_outputs` (with the run's temperature,
            when calibrated); its resources are the
            vectorizer, whose vocabulary table the export must save.
        """
        if meta.get("backbone"):
            return self._pretrained_endpoint(model, meta)
        vectorizer = text.make_vectorizer(meta["sequence_length"], vocabulary=meta["vocabulary"])
        vectorizer.build()  # a built layer can be tracked by the export

        def serve(texts):
            features = text.vectorize(vectorizer, texts, meta["subword_buckets"],
                                      meta["subwords_per_word"])
            return self.serving_outputs(model(features, training=False), meta)

        return ServingEndpoint(serve, [tf.TensorSpec(shape=(None,), dtype=tf.string,
                                                     name="texts")], resources=[vectorizer])

    def _pretrained_endpoint(self, model, meta):
        """The serving function of a pretrained backbone: the preset's
        preprocessor tokenizes the strings in the graph, as in training."""
        preset = backbones.Preset(meta["backbone"], meta["preset"],
                                  local=Path(meta["preset"]).is_dir())
        preprocessor = backbones.text_preprocessor(preset, meta["sequence_length"])

        def serve(texts):
            features = backbones.text_features(preprocessor, texts)
            return self.serving_outputs(model(features, training=False), meta)

        return ServingEndpoint(serve, [tf.TensorSpec(shape=(None,), dtype=tf.string,
                                                     name="texts")], resources=[preprocessor])

    def read_input(self, item, meta):
        """Returns the text to predict: the item itself (a raw string)."""
        return str(item)

    def readable_inputs(self, data, split):
        """Returns the raw texts of `split`, for `predictions-SPLIT.csv`."""
        return data.texts.get(split)

    def inference_model(self, model, meta, export_format):
        """Returns a copy of the model with every recurrent layer unrolled.

        LiteRT has no builtin op for a recurrent layer's `while` loop: on
        this machine a GRU or LSTM model converted only with Select TF ops,
        and then did not run in the LiteRT interpreter; unrolled over the
        fixed `sequence_length` it converts to builtin ops, and tf2onnx
        converts it as well. The copy computes the same function (Keras'
        `unroll` changes how the loop is built, not what it computes) with
        the trained weights.

        Args:
            model: The trained Keras model (`text.vectorize` features in,
                probabilities out).
            meta: The run's `meta` (its temperature).
            export_format: `litert` or `onnx` (the same model for both).

        Returns:
            A Keras model with the same inputs, outputs and weights, followed
            by the run's temperature scaling when calibrated
            (`calibrated_model`).
        """
        copy = keras.models.clone_model(
            model, clone_function=lambda layer: type(layer).from_config(
                _unrolled(layer.get_config())))
        copy.set_weights(model.get_weights())
        return self.calibrated_model(copy, meta)

    def input_spec(self, export_format, meta):
        """The input of an export: raw strings (SavedModel) or token ids.

        Returns:
            For `savedmodel`: the `texts` string tensor, vectorized in the
            graph. For the others: the int32 `token_ids` (and, with
            subwords, `subword_ids`) the model takes, made from a text as
            the README's client `encode` does, with the vocabulary in
            `meta.vocabulary`.
        """
        length, vocabulary = meta["sequence_length"], meta["vocabulary"]
        words = ("lower-cased, Unicode punctuation (category P) and $+<=>^`|~ removed, split "
                 "on ASCII whitespace")
        if export_format == "savedmodel" and meta.get("backbone"):
            return {"name": "texts", "shape": [None], "dtype": "string",
                    "content": f"raw UTF-8 texts, tokenized in the graph by the tokenizer of "
                               f"preset {meta['backbone']} (TensorFlow Text ops: load the "
                               f"SavedModel after `import tensorflow_text`), cut or padded "
                               f"to {length} tokens"}
        if export_format == "savedmodel":
            return {"name": "texts", "shape": [None], "dtype": "string",
                    "content": f"raw UTF-8 texts: {words}, cut or padded to {length} tokens in "
                               "the graph",
                    "vocabulary": f"meta.vocabulary ({len(vocabulary)} tokens; 0 padding, "
                                  "1 out of vocabulary)"}
        spec = {"names": ["token_ids"],
                "token_ids": {"shape": [None, length], "dtype": "int32",
                              "content": f"the text's words ({words}), the first {length}, "
                                         "as their index in meta.vocabulary (1 for a word not "
                                         f"in it), padded with 0 ({len(vocabulary)} tokens)"}}
        buckets, per_word = meta["subword_buckets"], meta["subwords_per_word"]
        if buckets:
            spec["names"].append("subword_ids")
            spec["subword_ids"] = {
                "shape": [None, length, per_word], "dtype": "int32",
                "content": "for word i, its character 3-, 4- then 5-grams of '<' word '>', "
                           f"the first {per_word}, each FarmHash Fingerprint64(UTF-8) % "
                           f"{buckets} + 1 (TensorFlow's to_hash_bucket_fast), padded with 0"}
        spec["tokenizer"] = "encode() in README.md's client"
        return spec

    def client_snippet(self, export_format, meta):
        """A script that classifies texts with the export, without dltool.

        Returns:
            Python defining `classify(texts)` (a list of `(label,
            probability)` of each text's top class) and a `__main__` that
            prints them for its arguments; for LiteRT and ONNX also
            `encode(texts)`, the tokenizer, and `run(features)`.
        """
        if export_format == "savedmodel" and meta.get("backbone"):
            return _SAVEDMODEL_CLIENT.replace(
                "    import tensorflow as tf\n",
                "    import tensorflow as tf\n    import tensorflow_text  # noqa: F401  "
                "(the tokenizer's ops)\n")
        if export_format == "savedmodel":
            return multilabel.savedmodel_client("texts") if multilabel.is_multi_label(meta) \
                else _SAVEDMODEL_CLIENT
        runtime = _LITERT_RUNTIME if export_format == "litert" else _ONNX_RUNTIME
        snippet = _TOKENS_CLIENT.replace("{runtime}", runtime)
        if multilabel.is_multi_label(meta):
            return multilabel.thresholded_client(snippet, "encode(items)")
        return snippet

    def report_sections(self, run, split, evaluation):
        """The classifier's report sections, then the most confidently wrong
        texts as a figure and a table."""
        sections = super().report_sections(run, split, evaluation)
        mistakes = classifier.confident_mistakes(classifier.read_predictions(run, split))
        if not mistakes:
            return sections
        image = run.figure_file("mistakes", split)
        plots.confident_mistakes([r["input"] for r in mistakes],
                                 [r["confidence"] for r in mistakes],
                                 [f"{r['true']} → {r['predicted']}" for r in mistakes],
                                 image)
        table = [["text", "true", "predicted", "probability"]]
        table += [[r["input"], r["true"], r["predicted"], f"{r['confidence']:.3f}"]
                  for r in mistakes]
        sections.append(Section(
            f"Most confident mistakes ({split})", image=image.name, table=table,
            text=f"The {len(mistakes)} wrong predictions made with the highest probability."))
        return sections


def _unrolled(config):
    """A layer config with every `unroll` setting (nested ones too, as a
    `Bidirectional`'s layers) turned on."""
    if isinstance(config, dict):
        return {key: True if key == "unroll" else _unrolled(value)
                for key, value in config.items()}
    if isinstance(config, list):
        return [_unrolled(value) for value in config]
    return config


# The client snippets of the exports' README.md. `tests/test_export_formats.py`
# runs them. `encode` gives the token ids dltool's graph computes
# (`dltool.data.text.vectorize`): TensorFlow's FarmHash is pyfarmhash's
# `fingerprint64`, checked equal to `tf.strings.to_hash_bucket_fast`.
_TOKENS_CLIENT = '''"""Classifies texts with this export: python client.py "TEXT"...

Run it in this folder: it reads dltool.json (the vocabulary) and labels.txt.
"""
import json
import re
import sys
import unicodedata

import numpy as np

META = json.load(open("dltool.json", encoding="utf-8"))["meta"]
LABELS = open("labels.txt", encoding="utf-8").read().splitlines()
IDS = {token: index for index, token in enumerate(META["vocabulary"])}
LENGTH = META["sequence_length"]
BUCKETS, PER_WORD = META["subword_buckets"], META["subwords_per_word"]
if BUCKETS:
    import farmhash  # pip install pyfarmhash (TensorFlow's FarmHash Fingerprint64)


def words(text):
    """The text's words as the model saw them in training: lower-cased,
    punctuation removed, split on ASCII whitespace."""
    text = "".join(c for c in text.lower()
                   if not unicodedata.category(c).startswith("P") and c not in "$+<=>^`|~")
    return [word for word in re.split("[ \\t\\n\\v\\f\\r]+", text) if word][:LENGTH]


def subwords(word):
    """Ids of the word's character 3-, 4- and 5-grams (fastText's), 0-padded."""
    marked = f"<{word}>"
    grams = [marked[i:i + n] for n in (3, 4, 5) for i in range(len(marked) - n + 1)]
    ids = [farmhash.fingerprint64(gram) % BUCKETS + 1 for gram in grams[:PER_WORD]]
    return ids + [0] * (PER_WORD - len(ids))


def encode(texts):
    """The model's inputs for a list of texts: a dict of int32 arrays."""
    split = [words(text) for text in texts]
    features = {"token_ids": np.array(
        [[IDS.get(w, 1) for w in ws] + [0] * (LENGTH - len(ws)) for ws in split], np.int32)}
    if BUCKETS:
        features["subword_ids"] = np.array(
            [[subwords(w) for w in ws] + [[0] * PER_WORD] * (LENGTH - len(ws)) for ws in split],
            np.int32).reshape(len(texts), LENGTH, PER_WORD)
    return features

{runtime}

def classify(texts):
    """Returns the top (label, probability) of each text."""
    probabilities = run(encode(texts))
    return [(LABELS[i], float(row[i])) for row, i in zip(probabilities, probabilities.argmax(-1))]


if __name__ == "__main__":
    for text, (label, probability) in zip(sys.argv[1:], classify(sys.argv[1:])):
        print(label, round(probability, 3), text)
'''

_LITERT_RUNTIME = '''try:
    from ai_edge_litert.interpreter import Interpreter  # pip install ai-edge-litert
except ImportError:  # TensorFlow bundles the same interpreter
    import tensorflow as tf
    Interpreter = tf.lite.Interpreter

runner = Interpreter(model_path="model.tflite").get_signature_runner()


def run(features):
    """Probabilities (n, classes) of `encode`'s features (resized to n inputs)."""
    return next(iter(runner(**features).values()))
'''

_ONNX_RUNTIME = '''import onnxruntime  # pip install onnxruntime

session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])


def run(features):
    """Probabilities (n, classes) of `encode`'s features."""
    return session.run(None, {i.name: features[i.name] for i in session.get_inputs()})[0]
'''

_SAVEDMODEL_CLIENT = '''"""Classifies texts with this export: python client.py "TEXT"...

The SavedModel takes raw strings and tokenizes them itself. Served by
TensorFlow Serving (or `dltool serve`) from the folder above this one:

    docker run -p 8501:8501 -v "$(dirname $PWD):/models/NAME" -e MODEL_NAME=NAME tensorflow/serving

or loaded here with TensorFlow (`classify_local`).
"""
import json
import sys
import urllib.request

NAME = json.load(open("dltool.json", encoding="utf-8"))["name"]
URL = f"http://localhost:8501/v1/models/{NAME}:predict"


def classify(texts):
    """Returns the top (label, probability) of each text, from TF Serving."""
    body = json.dumps({"signature_name": "serving_default", "instances": texts}).encode()
    request = urllib.request.Request(URL, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return [(p["label"], p["score"]) for p in json.load(response)["predictions"]]


def classify_local(texts):
    """The same with the SavedModel loaded in this process."""
    import tensorflow as tf

    serve = tf.saved_model.load(".").signatures["serving_default"]
    out = serve(texts=tf.constant(texts))
    return [(label.decode(), float(score))
            for label, score in zip(out["label"].numpy(), out["score"].numpy())]


if __name__ == "__main__":
    for text, (label, probability) in zip(sys.argv[1:], classify(sys.argv[1:])):
        print(label, round(probability, 3), text)
'''
