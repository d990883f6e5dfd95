"""The image-classifier template's task: images in, class names out."""

from pathlib import Path

import numpy as np

from dltool._tf import tf
from dltool.data import images
from dltool.core.errors import DataError


def open_data(config, root, *, skip_bad=False):
    """Opens the image data of `config["data"]` (see `images.open_image_data`).

    Returns:
        The `ImageData`, with a `meta` dict added: class names, image size.
    """
    data = images.open_image_data(config["data"], root, seed=config["training"]["seed"],
                                  skip_bad=skip_bad)
    data.meta = {"class_names": data.class_names, "image_size": list(data.image_size)}
    return data


def bytes_per_example(config):
    """Returns the memory one decoded float32 image takes."""
    height, width = config["data"]["image_size"]
    return height * width * 3 * 4


def model_kwargs(meta):
    """Returns the data-dependent arguments of `build_model`."""
    return {"num_classes": len(meta["class_names"])}


def serving_endpoint(model, meta):
    """Builds the serving function: encoded image bytes in, class names out.

    Args:
        model: The trained Keras model (float images in, probabilities out).
        meta: The run's metadata (`class_names`, `image_size`).

    Returns:
        A tuple `(fn, input_signature)`. `fn` takes a 1-D string tensor of
        JPEG/PNG/GIF/BMP bytes and returns `probabilities` `(n, classes)`,
        `classes` (the class names, `(n, classes)`, in the same order),
        `label` (top class name, `(n,)`) and `score` (its probability).
    """
    image_size = tuple(meta["image_size"])
    class_names = tf.constant(meta["class_names"])

    def serve(images_bytes):
        pixels = tf.map_fn(lambda b: images.decode_image(b, image_size), images_bytes,
                           fn_output_signature=tf.TensorSpec((*image_size, 3), tf.float32))
        return classifier_outputs(model(pixels, training=False), class_names)

    signature = [tf.TensorSpec(shape=(None,), dtype=tf.string, name="images")]
    return serve, signature


def classifier_outputs(probabilities, class_names):
    """The serving outputs of a classifier.

    Args:
        probabilities: Model output, `(n, classes)`.
        class_names: String tensor of the class names, `(classes,)`.

    Returns:
        A dict: `probabilities` (float32), `classes` (the class names,
        `(n, classes)`, in the same order), `label` (top class name, `(n,)`)
        and `score` (its probability).
    """
    probabilities = tf.cast(probabilities, tf.float32)
    count = tf.shape(probabilities)[0]
    return {
        "probabilities": probabilities,
        "classes": tf.tile(class_names[tf.newaxis], [count, 1]),
        "label": tf.gather(class_names, tf.argmax(probabilities, axis=-1)),
        "score": tf.reduce_max(probabilities, axis=-1),
    }


def read_inputs(items):
    """Reads image files for prediction.

    Args:
        items: Paths of image files.

    Returns:
        A list of the files' bytes.

    Raises:
        DataError: naming the first file that is missing or not an image.
    """
    contents = []
    for item in items:
        reason = images.check_image_file(item)
        if reason is not None:
            raise DataError(f"{item}: {reason}")
        contents.append(Path(item).read_bytes())
    return contents


def format_prediction(outputs, index, top_k):
    """Returns the top-k `(class name, probability)` pairs of one input."""
    probabilities = np.asarray(outputs["probabilities"][index])
    classes = [c.decode() if isinstance(c, bytes) else str(c)
               for c in np.asarray(outputs["classes"][index])]
    order = np.argsort(-probabilities)[:top_k]
    return [(classes[i], float(probabilities[i])) for i in order]


def evaluate_split(model, data, split, config, run, echo=None):
    """Loss, accuracy, per-class figures on a split (see `evaluation.evaluate_classifier`).

    A classifier evaluates in seconds: `echo` is not used.
    """
    from dltool.engine.evaluate import evaluate_classifier

    return evaluate_classifier(model, data, split, config, run)


def evaluation_report(y_true, probabilities, meta):
    """Per-class precision and recall, and the confusion matrix.

    Args:
        y_true: Integer labels, shape `(n,)`.
        probabilities: Model outputs, shape `(n, classes)`.
        meta: Run metadata with `class_names`.

    Returns:
        A dict with `accuracy`, `per_class` (list of dicts: name, precision,
        recall, support) and `confusion` (list of lists, rows = true class).
    """
    names = meta["class_names"]
    predicted = np.argmax(probabilities, axis=-1)
    confusion = np.zeros((len(names), len(names)), dtype=np.int64)
    np.add.at(confusion, (np.asarray(y_true), predicted), 1)
    per_class = []
    for i, name in enumerate(names):
        predicted_i = confusion[:, i].sum()
        support = confusion[i].sum()
        per_class.append({
            "name": name,
            "precision": float(confusion[i, i] / predicted_i) if predicted_i else 0.0,
            "recall": float(confusion[i, i] / support) if support else 0.0,
            "support": int(support),
        })
    accuracy = float(np.trace(confusion) / max(1, confusion.sum()))
    return {"accuracy": accuracy, "per_class": per_class, "confusion": confusion.tolist()}


def readable_inputs(data, split):
    """Images have no one-line readable form for `predictions-SPLIT.csv`."""
    return None


def save_examples(run_dir, split, examples):
    """Saves the images the report shows as `examples-SPLIT.npz` (uint8).

    Args:
        run_dir: The run folder.
        split: The split evaluated.
        examples: `(indices, images, in_sample)` from the evaluation: example
            indices in the split, their float pixels `(n, h, w, 3)` in
            0-255, and whether each is in the random sample (the others are
            confident mistakes).
    """
    from dltool.report import reports

    indices, pixels, in_sample = examples
    if pixels is None:
        return
    path = Path(run_dir) / reports.examples_file(split)
    with open(path, "wb") as f:
        np.savez_compressed(f, index=indices, in_sample=in_sample,
                            images=np.clip(np.rint(pixels), 0, 255).astype(np.uint8))


def report_sections(run, split, evaluation):
    """The classifier's report sections, then a grid of sample predictions
    and one of the most confident mistakes, titled true / predicted."""
    from dltool.report import plots
    from dltool.report import reports

    sections = reports.classifier_sections(run, split, evaluation)
    rows = {r["index"]: r for r in reports.read_predictions(run["dir"], split)}
    path = Path(run["dir"]) / reports.examples_file(split)
    if not rows or not path.is_file():
        return sections
    try:
        with np.load(path, allow_pickle=False) as saved:
            indices, pixels, in_sample = saved["index"], saved["images"], saved["in_sample"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"{path}: not readable ({e})") from e
    position = {int(i): k for k, i in enumerate(indices)}
    sample = [int(i) for i, s in zip(indices, in_sample) if s and int(i) in rows]
    mistakes = [r["index"] for r in reports.confident_mistakes(rows.values())
                if r["index"] in position]
    for kind, chosen, text in (
            ("samples", sample, "A random sample (seeded); title: true label / predicted "
             "label and its probability, green when right."),
            ("mistakes", mistakes, "The wrong predictions made with the highest "
             "probability.")):
        if not chosen:
            continue
        image = f"{kind}-{split}.png"
        plots.image_grid(pixels[[position[i] for i in chosen]],
                         [f"{rows[i]['true']} / {rows[i]['predicted']} "
                          f"{rows[i]['confidence']:.2f}" for i in chosen],
                         [rows[i]["true"] == rows[i]["predicted"] for i in chosen],
                         Path(run["dir"]) / image)
        title = "Sample predictions" if kind == "samples" else "Most confident mistakes"
        sections.append(reports.Section(f"{title} ({split})", text=text, image=image))
    return sections
