"""The image-classifier template's task: images in, class names out."""

from pathlib import Path

import numpy as np

from dltool._tf import tf
from dltool.core import files
from dltool.core.errors import DataError
from dltool.data import images
from dltool.report import plots
from dltool.report.reports import Section
from dltool.tasks import classifier
from dltool.tasks.base import ServingEndpoint


class ImageClassifierTask(classifier.ClassifierTask):
    """Class folders or TFDS images in, class names out.

    Its report adds, to the classifier's sections, a grid of sample
    predictions and one of the most confident mistakes.
    """

    keeps_examples = True

    def open_data(self, config, root, *, skip_bad=False, run_meta=None):
        """Opens the image data of `config["data"]` (see `images.open_image_data`).

        Returns:
            The `ImageData`, with a `meta` dict added: class names, image
            size, and `max_pixels`, which `read_inputs` applies when the
            export predicts.
        """
        data = images.open_image_data(config["data"], root, seed=config["training"]["seed"],
                                      skip_bad=skip_bad)
        data.meta = {"class_names": data.class_names, "image_size": list(data.image_size),
                     "max_pixels": config["data"]["max_pixels"]}
        return data

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
        return {"num_classes": len(meta["class_names"])}

    def serving_endpoint(self, model, meta):
        """Builds the serving function: encoded image bytes in, class names out.

        Args:
            model: The trained Keras model (float images in, probabilities out).
            meta: The run's metadata (`class_names`, `image_size`).

        Returns:
            A `ServingEndpoint` whose function takes a 1-D string tensor of
            JPEG/PNG/GIF/BMP bytes and returns `classifier_outputs`.
        """
        image_size = tuple(meta["image_size"])
        class_names = tf.constant(meta["class_names"])

        def serve(images_bytes):
            pixels = tf.map_fn(lambda b: images.decode_image(b, image_size), images_bytes,
                               fn_output_signature=tf.TensorSpec((*image_size, 3), tf.float32))
            return self.classifier_outputs(model(pixels, training=False), class_names)

        return ServingEndpoint(serve, [tf.TensorSpec(shape=(None,), dtype=tf.string,
                                                     name="images")])

    def read_inputs(self, items, meta):
        """Reads image files for prediction.

        Args:
            items: Paths of image files.
            meta: The export's `meta`: an image over its `max_pixels` is
                refused before it is decoded.

        Returns:
            A list of the files' bytes.

        Raises:
            DataError: naming the first file that is missing, not an image or
                over the limit.
        """
        max_pixels = self.max_pixels(meta)
        contents = []
        for item in items:
            reason = images.check_image_file(item, max_pixels)
            if reason is not None:
                raise DataError(f"{item}: {reason}")
            contents.append(Path(item).read_bytes())
        return contents

    def save_examples(self, run, split, examples):
        """Saves the images the report shows as `examples-SPLIT.npz` (uint8).

        Args:
            run: The `Run`.
            split: The split evaluated.
            examples: `(indices, images, in_sample)` from the evaluation: example
                indices in the split, their float pixels `(n, h, w, 3)` in
                0-255 (None when there are none), and whether each is in the
                random sample (the others are confident mistakes).
        """
        indices, pixels, in_sample = examples
        if pixels is None:
            return
        with files.replacing(run.examples_file(split)) as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, index=indices, in_sample=in_sample,
                                images=np.clip(np.rint(pixels), 0, 255).astype(np.uint8))

    def report_sections(self, run, split, evaluation):
        """The classifier's report sections, then a grid of sample predictions
        and one of the most confident mistakes, titled true / predicted."""
        sections = super().report_sections(run, split, evaluation)
        rows = {r["index"]: r for r in classifier.read_predictions(run, split)}
        saved = _read_examples(run.examples_file(split)) if rows else None
        if saved is None:
            return sections
        indices, pixels, in_sample = saved
        position = {int(i): k for k, i in enumerate(indices)}
        sample = [int(i) for i, s in zip(indices, in_sample) if s and int(i) in rows]
        mistakes = [r["index"] for r in classifier.confident_mistakes(rows.values())
                    if r["index"] in position]
        for kind, chosen, text in (
                ("samples", sample, "A random sample (seeded); title: true label / predicted "
                 "label and its probability, green when right."),
                ("mistakes", mistakes, "The wrong predictions made with the highest "
                 "probability.")):
            if not chosen:
                continue
            image = run.figure_file(kind, split)
            plots.image_grid(pixels[[position[i] for i in chosen]],
                             [f"{rows[i]['true']} / {rows[i]['predicted']} "
                              f"{rows[i]['confidence']:.2f}" for i in chosen],
                             [rows[i]["true"] == rows[i]["predicted"] for i in chosen],
                             image)
            title = "Sample predictions" if kind == "samples" else "Most confident mistakes"
            sections.append(Section(f"{title} ({split})", text=text, image=image.name))
        return sections


def _read_examples(path):
    """Reads `examples-SPLIT.npz`: `(indices, images, in_sample)`, or None if missing.

    Raises:
        DataError: naming the file if it cannot be read.
    """
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            return saved["index"], saved["images"], saved["in_sample"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not readable ({e})") from e
