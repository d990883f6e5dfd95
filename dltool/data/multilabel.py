"""Multi-label data: a list of labels per example (`data.multi_label = true`).

An example's label cell holds its labels separated by `data.label_separator`
(`;` by default):

    path,label,split                      (an image manifest)
    photos/0001.jpg,cat;dog,train

    sentence<TAB>label                    (a text file)
    a dog chases a cat<TAB>animals;action

The images come from a manifest (`dltool.data.manifests`), the texts from a
delimited file (`dltool.data.text.read_delimited`); class folders and TFDS
data sets have one label per example and are refused. An empty label list or
a label outside the declared list (`data.labels`; when empty, the training
rows' labels) stops with the file and line. The splits' targets are
multi-hot float32 vectors, one 0/1 per label, what a sigmoid output with
binary cross-entropy trains on.
"""

import random

import numpy as np

from dltool._tf import tf
from dltool.core import auto
from dltool.core.errors import DataError
from dltool.data import images, manifests, text
from dltool.data.splits import parse_labels


def multi_hot(label_lists, class_names):
    """The targets of a split: a float32 array `(n, labels)`, 1 where an
    example has the label."""
    index = {name: i for i, name in enumerate(class_names)}
    targets = np.zeros((len(label_lists), len(class_names)), dtype=np.float32)
    for row, labels in enumerate(label_lists):
        targets[row, [index[label] for label in labels]] = 1.0
    return targets


def count_labels(label_lists, class_names):
    """Examples that have each label, a list (index = label)."""
    index = {name: i for i, name in enumerate(class_names)}
    counts = [0] * len(class_names)
    for labels in label_lists:
        for label in labels:
            counts[index[label]] += 1
    return counts


def random_split(items, fraction, seed):
    """Holds out a seeded `fraction` of `items` (at least one, when there are two).

    Stratifying by label, as single-label data is, does not apply: an
    example has several.

    Returns:
        A tuple `(kept, held_out)` of lists, each in the items' order.
    """
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    count = max(1, round(len(items) * fraction)) if len(items) > 1 and fraction > 0 else 0
    held = set(order[:count])
    return ([item for i, item in enumerate(items) if i not in held],
            [item for i, item in enumerate(items) if i in held])


def report_lines(class_names, label_lists):
    """The data report: examples per label and split, and labels per example.

    Args:
        class_names: The label names.
        label_lists: Dict of split name to its examples' label tuples.

    Returns:
        A list of lines: a header, one line per label, the examples of each
        split, and how many labels a training example has.
    """
    shown = [s for s in ("train", "val", "test") if s in label_lists]
    counts = {s: count_labels(label_lists[s], class_names) for s in shown}
    width = max(len("examples"), *(len(n) for n in class_names))
    lines = [f"{'label':<{width}}  " + "  ".join(f"{s:>6}" for s in shown)]
    lines += [f"{name:<{width}}  " + "  ".join(f"{counts[s][i]:>6}" for s in shown)
              for i, name in enumerate(class_names)]
    lines.append(f"{'examples':<{width}}  " + "  ".join(f"{len(label_lists[s]):>6}"
                                                        for s in shown))
    train = label_lists["train"]
    mean = sum(len(labels) for labels in train) / len(train)
    return [*lines, f"labels per training example: {mean:.2f} on average, "
                    f"{max(len(labels) for labels in train)} at most"]


def open_image_data(data, root, *, seed, skip_bad=False):
    """Opens multi-label image data: a manifest of `path,label[,split]` rows.

    Args:
        data: The config's `data` dict (`source`, `label_separator`,
            `labels`, `image_size`, `validation_split`, `max_pixels`,
            `skip_bad`).
        root: Folder that a relative `source` is relative to.
        seed: Seed of the validation split when no row names `val`.
        skip_bad: Drop rows whose image is missing or unusable.

    Returns:
        An `images.ImageData` whose targets are multi-hot vectors; its
        `class_counts` are the training examples of each label.

    Raises:
        DataError: a source that is not a manifest, an empty label list or
            a label outside `data.labels` (without it: one no training row
            has; file and line), a label without training rows, unusable
            images.
    """
    source = data["source"]
    if source.startswith(("tfds:", "builtin:")) or not manifests.is_manifest(source):
        raise DataError(f"data.multi_label = true reads the labels from a manifest: "
                        f"data.source must be a .csv or .tsv file of path,label rows "
                        f"(labels separated by {data['label_separator']!r}); got {source!r}")
    skip_bad = skip_bad or data["skip_bad"]
    manifest = images.resolve_path(source, root)
    report = []
    declared = text._comma_list(data["labels"]) or None
    rows = manifests.read_manifest(manifest, skip_bad, report, data["label_separator"],
                                   declared)
    sizes = {}
    rows = images.drop_bad_images(rows, data["max_pixels"], skip_bad, report, sizes=sizes)
    class_names = declared or sorted({label for _, labels in rows["train"] for label in labels})
    held_out = "val" not in rows and data["validation_split"] > 0
    if held_out:
        rows["train"], rows["val"] = random_split(rows["train"], data["validation_split"], seed)
        report.append(f"validation: {data['validation_split']:.0%} of the training rows "
                      f"(seed {seed})")
    lists = {s: [labels for _, labels in entries] for s, entries in rows.items()}
    counts = count_labels(lists["train"], class_names)
    missing = [name for name, n in zip(class_names, counts) if n == 0]
    if missing:
        once = " once the validation rows are held out" if held_out else ""
        raise DataError(f"label {missing[0]!r} has no training rows in {manifest}{once}")
    report[:0] = report_lines(class_names, lists)
    image_size, choices = data["image_size"], []
    if auto.is_auto(image_size):
        choices.append(auto.choose_image_size([(sizes[p].width, sizes[p].height)
                                               for p, _ in rows["train"]]))
        image_size = choices[-1].value
    image_size = tuple(image_size)
    splits = {s: images._paths_dataset(list(zip([p for p, _ in entries],
                                                multi_hot(lists[s], class_names).tolist())),
                                       image_size, tf.float32)
              for s, entries in rows.items()}
    return images.ImageData(class_names, image_size, splits,
                            {s: len(entries) for s, entries in rows.items()}, report,
                            class_counts=counts, auto_choices=choices)


def open_text_data(data, root, *, seed, skip_bad=False, vocabulary=None):
    """Opens multi-label text data: delimited files whose label column lists labels.

    Args:
        data: The config's `data` dict (`source`, `label_separator`,
            `labels`, `label_names`, `text_column`, `label_column`, ...).
        root: Folder that a relative `source` is relative to.
        seed: Seed of the validation split when there is no validation file.
        skip_bad: Drop unusable lines instead of failing.
        vocabulary: A trained run's vocabulary, or None to adapt one.

    Returns:
        A `text.TextData` whose targets are multi-hot vectors.

    Raises:
        DataError: a source that is not a delimited file (TFDS, class
            folders), an empty label list or a label outside `data.labels`
            (or, without it, the training labels; file and line), a
            declared label without training examples.
        ConfigError: `data.label_names` that do not match the labels.
    """
    separator = data["label_separator"]
    if data["source"].startswith("tfds:"):
        raise DataError("data.multi_label = true reads the labels from .tsv or .csv files; "
                        f"a TFDS data set has one label per example: {data['source']!r}")
    skip_bad = skip_bad or data["skip_bad"]
    declared = text._comma_list(data["labels"])
    raw, report, _ = text._read_source(data, root, declared, skip_bad)
    if any(split.lines is None for split in raw.values()):
        raise DataError("data.multi_label = true reads the labels from .tsv or .csv files; "
                        f"{data['source']!r} is a folder of label folders (one label each)")
    lists = {s: [parse_labels(cell, separator, f"{split.origin}:{line}")
                 for cell, line in zip(split.labels, split.lines)]
             for s, split in raw.items()}
    values = declared or sorted({label for labels in lists["train"] for label in labels})
    known = set(values)
    for s, split in raw.items():
        for labels, line in zip(lists[s], split.lines):
            unknown = next((label for label in labels if label not in known), None)
            if unknown is not None:
                allowed = "data.labels" if declared else "the training data's labels"
                raise DataError(f"{split.origin}:{line}: label {unknown!r} is not one of "
                                f"{allowed} ({', '.join(values)})")
    class_names = text._class_names(values, text._comma_list(data["label_names"]))
    if "val" not in raw and data["validation_split"] > 0:
        kept, held = random_split(list(zip(raw["train"].texts, lists["train"])),
                                  data["validation_split"], seed)
        raw["val"] = text._Split([t for t, _ in held], [], raw["train"].origin)
        raw["train"] = text._Split([t for t, _ in kept], [], raw["train"].origin)
        lists["train"], lists["val"] = [y for _, y in kept], [y for _, y in held]
        report.append(f"validation: {data['validation_split']:.0%} of the training lines "
                      f"(seed {seed})")
    counts = count_labels(lists["train"], values)
    if 0 in counts:
        raise DataError(f"label {values[counts.index(0)]!r} has no training examples")
    if len(values) < 2:
        raise DataError(f"the training data has only one label ({values[0]!r}); "
                        "a multi-label classifier needs at least two")
    named = dict(zip(values, class_names))
    report[:0] = report_lines(class_names, {s: [tuple(named[label] for label in labels)
                                                for labels in ls]
                                            for s, ls in lists.items()})
    vectorizer, vocabulary = text.adapted_vectorizer(data, raw["train"].texts, vocabulary,
                                                     report)
    return text.TextData(
        class_names=class_names, vocabulary=vocabulary, report=report,
        splits={s: text.token_dataset(split.texts, multi_hot(lists[s], values), vectorizer,
                                      data["subword_buckets"], data["subwords_per_word"],
                                      tf.float32)
                for s, split in raw.items()},
        sizes={s: len(split.texts) for s, split in raw.items()},
        texts={s: split.texts for s, split in raw.items()}, class_counts=counts)


def label_strings(targets, class_names, separator):
    """Each row of multi-hot `targets` as its labels joined by `separator`."""
    return [separator.join(class_names[i] for i in np.flatnonzero(row)) for row in targets]

