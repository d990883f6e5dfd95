"""Seeded splits of examples and per-class counts, shared by the data sources.

- `stratified_split`: hold out a fraction of each class (classifiers);
- `grouped_split`: split into train / validation / test so that examples
  sharing a key (the same source sentence) land in the same split;
- `count_labels` and `count_table`: the per-class counts a data report shows;
  `balance_line`, how uneven they are; `class_weights`, the loss weights
  `training.class_weight` asks for;
- `parse_labels`: the labels of a multi-label cell (`cat;dog`).

This module never imports TensorFlow.
"""

import random

from dltool.core.config import did_you_mean
from dltool.core.errors import ConfigError, DataError


def parse_labels(cell, separator, where):
    """The labels of one label cell.

    Args:
        cell: The cell's text, e.g. `cat;dog`.
        separator: What separates the labels (`data.label_separator`).
        where: `FILE:LINE`, for the message.

    Returns:
        A tuple of the labels, stripped, each once, in the cell's order.

    Raises:
        DataError: `FILE:LINE: empty label list ...` when the cell holds none.
    """
    labels = tuple(dict.fromkeys(label.strip() for label in cell.split(separator)
                                 if label.strip()))
    if not labels:
        raise DataError(f"{where}: empty label list (data.multi_label = true needs at least "
                        f"one label per example, separated by {separator!r})")
    return labels


def count_labels(labels, num_classes):
    """Counts integer labels.

    Args:
        labels: Iterable of integer labels in `[0, num_classes)`.
        num_classes: Number of classes.

    Returns:
        A list of `num_classes` counts, index = label.
    """
    counts = [0] * num_classes
    for label in labels:
        counts[label] += 1
    return counts


def stratified_split(pairs, fraction, seed):
    """Splits `(example, label)` pairs per label into `(train, held_out)`.

    Each label with more than one example gives `fraction` of its examples
    (at least one) to the held-out part, chosen with `random.Random(seed)`.

    Returns:
        A tuple `(train, held_out)` of lists of pairs.
    """
    rng = random.Random(seed)
    by_class = {}
    for pair in pairs:
        by_class.setdefault(pair[1], []).append(pair)
    train, held_out = [], []
    for label in sorted(by_class):
        members = by_class[label][:]
        rng.shuffle(members)
        n_held = max(1, round(len(members) * fraction)) if len(members) > 1 else 0
        held_out += members[:n_held]
        train += members[n_held:]
    return train, held_out


def grouped_split(items, key, fractions, seed):
    """Splits `items` into named parts, keeping items with equal keys together.

    The distinct keys are shuffled with `random.Random(seed)` (in the order
    of first appearance, so the result depends only on the items and the
    seed) and cut by `fractions`; every item follows its key. Use it to keep
    every translation of one source sentence in the same split, so no test
    sentence is seen in training.

    Args:
        items: List of examples.
        key: Function of an example returning its group key (hashable).
        fractions: Dict of part name to fraction of the keys, e.g.
            `{"val": 0.05, "test": 0.05}`; the rest goes to `"train"`. A
            non-zero fraction gets at least one key while `"train"` keeps one.
        seed: Seed of the shuffle.

    Returns:
        A dict of part name (`train` and each name of `fractions`) to the list
        of its items, in their original order.
    """
    keys = list(dict.fromkeys(key(item) for item in items))
    random.Random(seed).shuffle(keys)
    part_of, start = {}, 0
    for name, fraction in fractions.items():
        count = round(len(keys) * fraction)
        if fraction > 0:
            count = max(0, min(max(1, count), len(keys) - start - 1))
        for k in keys[start:start + count]:
            part_of[k] = name
        start += count
    parts = {"train": [], **{name: [] for name in fractions}}
    for item in items:
        parts[part_of.get(key(item), "train")].append(item)
    return parts


def count_table(class_names, counts):
    """Formats per-class counts as aligned lines, one row per class.

    Args:
        class_names: Class names, index = label.
        counts: Dict of split name (`train`, `val`, `test`) to a list of
            counts per class.

    Returns:
        A list of lines: a header, one line per class and a total line.
    """
    splits = [s for s in ("train", "val", "test") if s in counts]
    width = max(len(n) for n in class_names)
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>6}" for s in splits)]
    for i, name in enumerate(class_names):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[s][i]:>6}" for s in splits))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{sum(counts[s]):>6}" for s in splits))
    return lines


# The ratio of the largest training class to the smallest from which the data
# report suggests `training.class_weight = "balanced"`.
IMBALANCE_HINT = 3.0


def balance_line(class_names, counts):
    """One line on how uneven the training classes are.

    Args:
        class_names: Class names, index = label.
        counts: Training examples per class.

    Returns:
        `class balance: every training class has 45 examples`, or
        `class balance: largest/smallest training class 10.0x (cat 450,
        dog 45); ...`, suggesting `training.class_weight = "balanced"` from
        `IMBALANCE_HINT` on.
    """
    largest = max(range(len(counts)), key=lambda i: counts[i])
    smallest = min(range(len(counts)), key=lambda i: counts[i])
    if counts[largest] == counts[smallest]:
        return f"class balance: every training class has {counts[largest]} examples"
    ratio = counts[largest] / max(1, counts[smallest])
    line = (f"class balance: largest/smallest training class {ratio:.1f}x "
            f"({class_names[largest]} {counts[largest]}, "
            f"{class_names[smallest]} {counts[smallest]})")
    if ratio >= IMBALANCE_HINT:
        line += ('; training.class_weight = "balanced" weighs every class the same '
                 "in the loss")
    return line


def class_weights(setting, class_names, counts):
    """The loss weight of each class for a `training.class_weight` setting.

    Args:
        setting: `"none"`, `"balanced"` or a dict of class names to weights
            (unlisted classes weigh 1).
        class_names: Class names, index = label.
        counts: Training examples per class, or None when the source does
            not give them (`"balanced"` needs them).

    Returns:
        A list of floats, index = label: all 1 for `"none"`; for
        `"balanced"` `total / (classes * count)`, scikit-learn's rule, so
        that each class weighs the same in total and the mean weight of an
        example stays 1.

    Raises:
        ConfigError: a class name that is not one of `class_names` (with the
            close matches), or `"balanced"` without counts.
    """
    if setting == "none":
        return [1.0] * len(class_names)
    if setting == "balanced":
        if counts is None:
            raise ConfigError('training.class_weight = "balanced" needs the class counts of '
                              "the training split, which this data source does not give; "
                              "give a table of weights instead")
        total = sum(counts)
        return [total / (len(counts) * count) if count else 1.0 for count in counts]
    for name in setting:
        if name not in class_names:
            raise ConfigError(
                f"training.class_weight.{name}: no class {name!r}"
                f"{did_you_mean(name, class_names)} (classes: {', '.join(class_names)})")
    return [float(setting.get(name, 1.0)) for name in class_names]
