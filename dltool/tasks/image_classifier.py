"""The image-classifier template's task: images in, class names out."""

from pathlib import Path

import numpy as np

from dltool._tf import keras, tf
from dltool.core import auto, files
from dltool.core.errors import ConfigError, DataError
from dltool.data import images
from dltool.data import multilabel as data_multilabel
from dltool.report import plots
from dltool.report.reports import Section
from dltool.tasks import backbones, classifier, gradcam, multilabel
from dltool.tasks.base import ServingEndpoint


# What `model.label_smoothing` accepts: 0 (the labels as they are) to 0.5
# (half of each target spread over the other classes).
LABEL_SMOOTHING = (0.0, 0.5)


class ImageClassifierTask(classifier.ClassifierTask):
    """Class folders or TFDS images in, class names out.

    Its report adds, to the classifier's sections, a grid of sample
    predictions and one of the most confident mistakes.
    """

    keeps_examples = True
    inputs_are_paths = True
    input_suffixes = tuple(sorted(images.IMAGE_SUFFIXES))

    def open_data(self, config, root, *, skip_bad=False, run_meta=None):
        """Opens the image data of `config["data"]` (see `images.open_image_data`).

        Returns:
            The `ImageData`, with a `meta` dict added: class names, image
            size, and `max_pixels`, which `read_inputs` applies when the
            export predicts; its `auto_choices` hold the image size chosen
            for `data.image_size = "auto"`.
        """
        settings, chosen = config["data"], []
        preset = backbones.find_preset(config, "image")
        if preset is not None and auto.is_auto(settings["image_size"]):
            chosen = [backbones.image_size_choice(preset)]
            settings = {**settings, "image_size": chosen[0].value}
        open_data = data_multilabel.open_image_data if settings["multi_label"] \
            else images.open_image_data
        data = open_data(settings, root, seed=config["training"]["seed"], skip_bad=skip_bad)
        data.auto_choices = [*chosen, *data.auto_choices]
        data.meta = {"class_names": data.class_names, "image_size": list(data.image_size),
                     "max_pixels": config["data"]["max_pixels"],
                     **multilabel.data_meta(config["data"])}
        return data

    def check_config(self, config):
        """Refuses what multi-label data cannot use (the classifier's check)
        and a `model.backbone` preset that cannot be used
        (`backbones.find_preset`), and with a pretrained backbone checks that
        the backbone takes `data.image_size` (an `"auto"` one: its preset's
        size, which `open_data` chooses), and `model.label_smoothing`'s
        range: before any data is read or run written. With "scratch", an
        `"auto"` size is decided from the images when the data is opened
        (`dltool.core.auto`).

        Raises:
            ConfigError: one line naming the key.
        """
        super().check_config(config)
        smoothing = config.model.get("label_smoothing", 0.0)
        number = isinstance(smoothing, (int, float)) and not isinstance(smoothing, bool)
        if not (number and LABEL_SMOOTHING[0] <= smoothing <= LABEL_SMOOTHING[1]):
            raise ConfigError(f"model.label_smoothing must be a number from "
                              f"{LABEL_SMOOTHING[0]} to {LABEL_SMOOTHING[1]}; got {smoothing!r}")
        preset = backbones.find_preset(config, "image")
        if preset is None:
            return
        size = config["data"]["image_size"]
        if auto.is_auto(size):
            size = backbones.image_size_choice(preset).value
        backbones.check_image_size(backbones.load_architecture(preset, "image"), preset, size)

    def check_searched_backbones(self, config, values):
        """Checks every backbone a search lists and decides the one image
        size of its trials.

        The data is decoded once, at `data.image_size`, for every trial. With
        `"auto"` and pretrained backbones among the values (or the `[model]`
        default, which the search's checks build), the size is their presets'
        when they all have the same one (the scratch CNN takes it too), and
        refused otherwise; with "scratch" alone it is decided from the
        images. Each pretrained backbone must take the size
        (`backbones.check_image_size`).

        Raises:
            ConfigError: one line naming `search.backbone` and the value, or
                `data.image_size`.
        """
        default = config.model.get("backbone", backbones.SCRATCH)
        built = [*values, *([] if default in values else [default])]
        presets = backbones.searched_presets(config, built, "image")
        if not presets:
            return []
        size, chosen = config["data"]["image_size"], []
        if auto.is_auto(size):
            sizes = {}
            for value, preset in presets.items():
                sizes[value] = backbones.image_size_choice(preset).value
            if len({tuple(s) for s in sizes.values()}) > 1:
                shown = ", ".join(f"{v} {s}" for v, s in sizes.items())
                raise ConfigError(f'data.image_size = "auto": the searched backbones\' presets '
                                  f"take different sizes ({shown}); the data is decoded at one "
                                  "size for every trial: set data.image_size = [height, width]")
            # The search's "scratch" trials take it too: the data is opened
            # once, at this size, not at the `open_data` choice of one preset.
            size = next(iter(sizes.values()))
            chosen = [auto.Choice("data.image_size", size,
                                  "the size the ImageConverters of the searched backbones' "
                                  f"presets ({', '.join(sizes)}) resize to")]
        for preset in presets.values():
            backbones.check_image_size(backbones.load_architecture(preset, "image"), preset,
                                       size)
        return chosen

    def model_facts(self, config):
        """The backbone, scratch or pretrained, and what each phase trains
        (`backbones.info_facts`), once the config is checked."""
        self.check_config(config)
        return backbones.info_facts(config, "image")

    def max_pixels(self, meta):
        """Returns the limit on an input image's pixels a model applies.

        Args:
            meta: The run's or export's `meta`.

        Returns:
            Its `max_pixels`; for a model exported before dltool recorded it,
            the template's default `data.max_pixels`.
        """
        default = self.spec["config"]["data"]["max_pixels"]["default"]
        return meta.get("max_pixels", default)

    def bytes_per_example(self, config):
        """Returns the memory one decoded float32 image takes."""
        height, width = config["data"]["image_size"]
        return height * width * 3 * 4

    def model_kwargs(self, meta):
        """Returns the data-dependent arguments of `build_model`."""
        return {"num_classes": len(meta["class_names"]), **multilabel.model_kwargs(meta)}

    def serving_endpoint(self, model, meta):
        """Builds the serving function: encoded image bytes in, class names out.

        Args:
            model: The trained Keras model (float images in, probabilities out).
            meta: The run's metadata (`class_names`, `image_size`).

        Returns:
            A `ServingEndpoint` whose function takes a 1-D string tensor of
            JPEG/PNG/GIF/BMP bytes and returns `serving_outputs` (with the
            run's temperature, when calibrated).
        """
        image_size = tuple(meta["image_size"])

        def serve(images_bytes):
            pixels = tf.map_fn(lambda b: images.decode_image(b, image_size), images_bytes,
                               fn_output_signature=tf.TensorSpec((*image_size, 3), tf.float32))
            return self.serving_outputs(model(pixels, training=False), meta)

        return ServingEndpoint(serve, [tf.TensorSpec(shape=(None,), dtype=tf.string,
                                                     name="images")])

    def read_input(self, item, meta):
        """Reads one image file for prediction, checking its header.

        The file is read once and its header checked on the bytes
        (`raw_input_problem`); it is not decoded here: the serving
        signature decodes it, and `dltool predict` finds a corrupt image
        when its batch fails. (Decoding every image here too, as
        `check_image_file` does, cut `dltool predict`'s rate on the 2,000
        CIFAR-10 test JPEGs from 3,600-4,700 to 2,250-2,500 images/s with
        the tests' tiny model on 2 shared cores.)

        Args:
            item: The path of an image file.
            meta: The export's `meta`: an image over its `max_pixels` is
                refused before it is decoded.

        Returns:
            The file's bytes.

        Raises:
            DataError: `PATH: reason` for a file that is missing, unreadable,
                not an image or over the limit.
        """
        try:
            data = Path(item).read_bytes()
        except OSError as e:
            raise DataError(f"{item}: unreadable: {e.strerror}") from None
        reason = self.raw_input_problem(data, meta)
        if reason is not None:
            raise DataError(f"{item}: {reason}")
        return data

    def raw_input_problem(self, data, meta):
        """The serving signature decodes whatever bytes it is given, so an
        image is refused by its header (not an image, or over the export's
        `max_pixels`) before it is decoded.

        Returns:
            Why `data` is refused (`images.check_image_bytes`), or None.
        """
        return images.check_image_bytes(data, self.max_pixels(meta))

    def explain_refusal(self):
        """None: `dltool predict --explain` draws Grad-CAM heatmaps over images."""
        return None

    def explainer(self, model, meta):
        """Returns what draws the Grad-CAM heatmap of the predicted class over
        each input image, at the image's own size, a small image enlarged
        to `gradcam.PICTURE_MIN_SIDE` pixels (`gradcam.overlay`).

        Args:
            model: The export's Keras model (float pixels in, probabilities out).
            meta: The export's `meta` (`image_size`).

        Returns:
            A function of a list of image bytes (`read_input`) that returns
            `(overlay, None)` for each image, or `(None, reason)` for one that
            does not decode.

        Raises:
            ConfigError: the model has no feature map Grad-CAM can weigh
                (`gradcam.feature_tensor`).
        """
        explain = gradcam.GradCam(model)
        image_size = tuple(meta["image_size"])

        def draw(values):
            decoded = [images.decode_original(value) for value in values]
            usable = [image for image, _ in decoded if image is not None]
            if not usable:
                return decoded
            # The pixels `images.decode_image` gives the model: resized as decoded.
            pixels = np.stack([tf.image.resize(image, image_size).numpy() for image in usable])
            heatmaps = iter(explain(pixels)[0])
            return [(None, reason) if image is None else
                    (gradcam.overlay(image, next(heatmaps), min_side=gradcam.PICTURE_MIN_SIDE),
                     None) for image, reason in decoded]

        return draw

    def save_examples(self, run, split, examples, model=None, predicted=None, echo=None):
        """Saves the images the report shows as `examples-SPLIT.npz` (uint8),
        with the Grad-CAM heatmaps of the classes the evaluation predicted.

        Each heatmap is on the model's feature map (`gradcam.feature_tensor`);
        a model without one gets no heatmaps, and a line saying why.

        Args:
            run: The `Run`.
            split: The split evaluated.
            examples: `(indices, images, in_sample)` from the evaluation: example
                indices in the split, their float pixels `(n, h, w, 3)` in
                0-255 (None when there are none), and whether each is in the
                random sample (the others are confident mistakes).
            model: The evaluated Keras model, or None for no heatmaps.
            predicted: The predicted class of every example of the split.
            echo: Function that prints a line for the user, or None.
        """
        indices, pixels, in_sample = examples
        if pixels is None:
            return
        images = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        arrays = {"index": indices, "in_sample": in_sample, "images": images}
        if model is not None:
            arrays.update(_heatmaps(model, images, np.asarray(predicted)[indices], echo))
        _write_examples(run.examples_file(split), **arrays)

    # ---- exporting to LiteRT and ONNX: pixels in, probabilities out ----

    def inference_model(self, model, meta, export_format):
        """Returns the model without its random augmentation layers.

        They are the identity at inference, but their ops stay in the graph:
        on this machine `RandomFlip` left a `StatelessRandomUniformV2` node
        that ONNX Runtime refused to load (keras-team/keras#21346). The
        other layers are shared, not copied, so the weights are the trained
        ones.

        Args:
            model: The trained Keras model (float pixels in, probabilities out).
            meta: The run's `meta` (its temperature).
            export_format: `litert` or `onnx` (the same model for both).

        Returns:
            A Keras model with the same input and output, followed by the
            run's temperature scaling when calibrated (`calibrated_model`).
        """
        return self.calibrated_model(keras.models.clone_model(
            model, clone_function=lambda layer: (
                keras.layers.Identity(name=layer.name) if _is_augmentation(layer) else layer)),
            meta)

    def input_spec(self, export_format, meta):
        """The input of an export: image bytes (SavedModel) or pixels.

        Returns:
            For `savedmodel`: the `images` string tensor of encoded images.
            For the others: float32 RGB pixels in [0, 255], NHWC, each image
            resized to the model's size as `dltool.data.images.decode_image`
            does (bilinear, aspect ratio not kept, no antialiasing).
        """
        height, width = meta["image_size"]
        if export_format == "savedmodel":
            return {"name": "images", "shape": [None], "dtype": "string",
                    "content": "encoded JPEG/PNG/GIF/BMP bytes, decoded (RGB) and resized "
                               f"to {height}x{width} in the graph",
                    "max_pixels": self.max_pixels(meta)}
        return {"name": "image", "shape": [None, height, width, 3], "dtype": "float32",
                "layout": "NHWC", "channels": "RGB", "value_range": [0, 255],
                "resize": f"bilinear to {height}x{width} (height x width), aspect ratio not "
                          "kept, no antialiasing (tf.image.resize)",
                "normalization": "none: the model rescales the pixels itself"}

    def client_snippet(self, export_format, meta):
        """A script that classifies image files with the export, without dltool.

        Returns:
            Python defining `classify(paths)` (a list of `(label,
            probability)` of each image's top class) and a `__main__` that
            prints them; run in the export's folder.
        """
        height, width = meta["image_size"]
        if export_format == "savedmodel":
            return multilabel.savedmodel_client("images") if multilabel.is_multi_label(meta) \
                else _SAVEDMODEL_CLIENT
        runtime = _LITERT_RUNTIME if export_format == "litert" else _ONNX_RUNTIME
        snippet = _PIXELS_CLIENT.format(height=height, width=width, runtime=runtime)
        if multilabel.is_multi_label(meta):
            return multilabel.thresholded_client(snippet, "np.stack([preprocess(path) "
                                                          "for path in items])")
        return snippet

    def report_sections(self, run, split, evaluation):
        """The classifier's report sections, then a grid of sample predictions
        and one of the most confident mistakes, titled true / predicted, each
        followed by the same images under their Grad-CAM heatmaps ("What the
        model looked at") when the evaluation saved them (`save_examples`)."""
        sections = super().report_sections(run, split, evaluation)
        rows = {r["index"]: r for r in classifier.read_predictions(run, split)}
        saved = _read_examples(run.examples_file(split)) if rows else None
        if saved is None:
            return sections
        indices, pixels, in_sample = saved["index"], saved["images"], saved["in_sample"]
        heatmaps = saved.get("heatmaps")
        position = {int(i): k for k, i in enumerate(indices)}
        sample = [int(i) for i, s in zip(indices, in_sample) if s and int(i) in rows]
        mistakes = [r["index"] for r in classifier.confident_mistakes(rows.values())
                    if r["index"] in position]
        title_rule = ("true labels / predicted labels and the mean probability of the "
                      "label decisions" if evaluation.get("multi_label") else
                      "true label / predicted label and its probability")
        for kind, chosen, text in (
                ("samples", sample, f"A random sample (seeded); title: {title_rule}, green "
                 "when right."),
                ("mistakes", mistakes, "The wrong predictions made with the highest "
                 "probability.")):
            if not chosen:
                continue
            image = run.figure_file(kind, split)
            titles = [f"{rows[i]['true']} / {rows[i]['predicted']} {rows[i]['confidence']:.2f}"
                      for i in chosen]
            correct = [rows[i]["true"] == rows[i]["predicted"] for i in chosen]
            plots.image_grid(pixels[[position[i] for i in chosen]], titles, correct, image)
            title = "Sample predictions" if kind == "samples" else "Most confident mistakes"
            sections.append(Section(f"{title} ({split})", text=text, image=image.name))
            if heatmaps is None:
                continue
            image = run.figure_file(f"gradcam-{kind}", split)
            plots.image_grid([gradcam.overlay(pixels[position[i]], heatmaps[position[i]])
                              for i in chosen], titles, correct, image)
            layer, (height, width) = str(saved["heatmap_layer"]), heatmaps.shape[1:]
            sections.append(Section(
                f"What the model looked at: {title.lower()} ({split})", image=image.name,
                text=f"The same images under the Grad-CAM heatmap of the predicted class "
                     + ("(here the label scored highest) " if evaluation.get("multi_label")
                        else "")
                     + f"(red: the regions that raise its score most, blue: none), from the "
                     f"{height}x{width} feature map of layer '{layer}'."))
        return sections


def _read_examples(path):
    """Reads `examples-SPLIT.npz`: a dict of its arrays (`index`, `images`,
    `in_sample`; with `_heatmaps`' `heatmaps`, `explained` and
    `heatmap_layer`), or None if it is missing.

    Raises:
        DataError: naming the file if it cannot be read.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            arrays = {name: saved[name] for name in saved.files}
        if not {"index", "images", "in_sample"} <= arrays.keys():
            raise ValueError("no index, images or in_sample array")
        return arrays
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not readable ({e})") from e


def _heatmaps(model, images, classes, echo=None):
    """The Grad-CAM arrays `examples-SPLIT.npz` keeps: `heatmaps` (float16),
    `explained` (the classes) and `heatmap_layer`; `{}` for a model without
    a feature map (and a line saying why)."""
    try:
        explain = gradcam.GradCam(model)
    except ConfigError as e:
        if echo is not None:
            echo(f"No Grad-CAM heatmaps in the report: {e}")
        return {}
    classes = classes.astype(np.int64)
    heatmaps, _ = explain(images.astype(np.float32), classes)
    return {"heatmaps": heatmaps.astype(np.float16), "explained": classes,
            "heatmap_layer": np.asarray(explain.layer_name)}


def _write_examples(path, **arrays):
    """Writes `examples-SPLIT.npz` (compressed, no pickles) atomically."""
    with files.replacing(path) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def _is_augmentation(layer):
    """Whether `layer` is one of Keras' random image augmentations (`RandomFlip`,
    `RandomTranslation`, ...), the identity at inference."""
    kind = type(layer)
    return kind.__name__.startswith("Random") and kind.__module__.startswith("keras.")


# The client snippets of the exports' README.md. `tests/test_export_formats.py`
# runs the LiteRT, ONNX and local SavedModel ones.
_PIXELS_CLIENT = '''"""Classifies image files with this export: python client.py IMAGE...

Run it in this folder: it reads labels.txt and the model file.
"""
import sys

import numpy as np
from PIL import Image  # pip install pillow

HEIGHT, WIDTH = {height}, {width}
LABELS = open("labels.txt", encoding="utf-8").read().splitlines()


def preprocess(path):
    """The model's input: RGB float32 pixels in 0-255, resized (bilinear, aspect
    ratio not kept) to HEIGHT x WIDTH. PIL antialiases when it shrinks an image
    and TensorFlow does not, so for images larger than the model's size the
    probabilities can differ a little from `dltool predict`'s."""
    image = Image.open(path).convert("RGB")
    if image.size != (WIDTH, HEIGHT):
        image = image.resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.float32)

{runtime}

def classify(paths):
    """Returns the top (label, probability) of each image file."""
    probabilities = run(np.stack([preprocess(path) for path in paths]))
    return [(LABELS[i], float(row[i])) for row, i in zip(probabilities, probabilities.argmax(-1))]


if __name__ == "__main__":
    for path, (label, probability) in zip(sys.argv[1:], classify(sys.argv[1:])):
        print(path, label, round(probability, 3))
'''

_LITERT_RUNTIME = '''try:
    from ai_edge_litert.interpreter import Interpreter  # pip install ai-edge-litert
except ImportError:  # TensorFlow bundles the same interpreter
    import tensorflow as tf
    Interpreter = tf.lite.Interpreter

interpreter = Interpreter(model_path="model.tflite")
INPUT = interpreter.get_input_details()[0]["index"]
OUTPUT = interpreter.get_output_details()[0]["index"]


def run(pixels):
    """Probabilities (n, classes) of a float32 batch (n, HEIGHT, WIDTH, 3)."""
    interpreter.resize_tensor_input(INPUT, pixels.shape)
    interpreter.allocate_tensors()
    interpreter.set_tensor(INPUT, pixels)
    interpreter.invoke()
    return interpreter.get_tensor(OUTPUT)
'''

_ONNX_RUNTIME = '''import onnxruntime  # pip install onnxruntime

session = onnxruntime.InferenceSession("model.onnx", providers=["CPUExecutionProvider"])
INPUT = session.get_inputs()[0].name


def run(pixels):
    """Probabilities (n, classes) of a float32 batch (n, HEIGHT, WIDTH, 3)."""
    return session.run(None, {INPUT: pixels})[0]
'''

_SAVEDMODEL_CLIENT = '''"""Classifies image files with this export: python client.py IMAGE...

The SavedModel takes the files' bytes and decodes them itself. Served by
TensorFlow Serving from the folder above this one:

    docker run -p 8501:8501 -v "$(dirname $PWD):/models/NAME" -e MODEL_NAME=NAME tensorflow/serving

or loaded here with TensorFlow (`classify_local`).
"""
import base64
import json
import sys
import urllib.request

NAME = json.load(open("dltool.json", encoding="utf-8"))["name"]
URL = f"http://localhost:8501/v1/models/{NAME}:predict"


def classify(paths):
    """Returns the top (label, probability) of each image file, from TF Serving."""
    instances = [{"b64": base64.b64encode(open(path, "rb").read()).decode()} for path in paths]
    body = json.dumps({"signature_name": "serving_default", "instances": instances}).encode()
    request = urllib.request.Request(URL, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request) as response:
        return [(p["label"], p["score"]) for p in json.load(response)["predictions"]]


def classify_local(paths):
    """The same with the SavedModel loaded in this process."""
    import tensorflow as tf

    serve = tf.saved_model.load(".").signatures["serving_default"]
    out = serve(images=tf.constant([open(path, "rb").read() for path in paths]))
    return [(label.decode(), float(score))
            for label, score in zip(out["label"].numpy(), out["score"].numpy())]


if __name__ == "__main__":
    for path, (label, probability) in zip(sys.argv[1:], classify(sys.argv[1:])):
        print(path, label, round(probability, 3))
'''
