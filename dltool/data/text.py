"""Text data: delimited files, class-per-folder text and TensorFlow Datasets.

`open_text_data` reads the `[data]` section of a config and returns a
`TextData` whose splits are tf.data datasets of `(features, label)` pairs:
`features["token_ids"]` is an int32 tensor of shape `(sequence_length,)` and,
when subwords are on, `features["subword_ids"]` one of shape
`(sequence_length, subwords_per_word)`: the hashed character 3- to 5-grams of
each word, so a word missing from the vocabulary still has features. The
vocabulary is adapted on the training texts only; the texts are turned into
features in the dataset map (the pipeline caches them), so training runs at
the model's speed. The exported model vectorizes raw strings with
`vectorize`, the same function, so serving sees the same features as
training.

Every source is read and checked before training: an empty file, a missing
column (the columns found are listed), labels outside the declared set (they
are listed) and bytes that are not UTF-8 (file and line) stop with one line;
`skip_bad` drops unusable lines or files and says how many.
"""

import collections
import csv
import dataclasses
import functools
from pathlib import Path

from dltool._tf import keras, tf
from dltool.data import images, manifests
from dltool.data.lines import decode_lines, read_lines
from dltool.data import splits as splits_lib
from dltool.data.tfds_loader import prepared_builder
from dltool.core.errors import ConfigError, DataError

DELIMITED_SUFFIXES = manifests.DELIMITERS
_DELIMITERS = {"tab": "\t", "comma": ","}
_VAL_NAMES = ("val", "validation", "dev")
# Unicode punctuation and the ASCII symbols of `string.punctuation`; other
# symbols (emoji) are kept as tokens.
_PUNCTUATION = r"[\p{P}$+<=>^`|~]"
_VECTORIZE_BATCH = 1024
SUBWORD_SIZES = (3, 4, 5)


@dataclasses.dataclass
class TextData:
    """Splits of a text classification data set.

    Attributes:
        class_names: Label names, index = label.
        vocabulary: The vectorizer's tokens, index = token id (0 is padding,
            1 out-of-vocabulary).
        splits: Dict of split name (`train`, `val`, `test`) to an unbatched
            `tf.data.Dataset` of `(features, label)` (see `vectorize`).
        sizes: Dict of split name to number of examples.
        report: Lines describing the data (counts, skipped lines) to show.
        meta: What an exported model needs to know of the data (set by the
            task).
        texts: Dict of split name to its raw texts, in the split's order.
        run_files: Dict of file name to text the run folder keeps (none).
        class_counts: Training examples per class.
    """

    class_names: list
    vocabulary: list
    splits: dict
    sizes: dict
    report: list
    meta: dict = dataclasses.field(default_factory=dict)
    texts: dict = dataclasses.field(default_factory=dict)
    run_files: dict = dataclasses.field(default_factory=dict)
    class_counts: list = None


@dataclasses.dataclass
class _Split:
    """Raw texts and their label strings, and where they were read from."""

    texts: list
    labels: list
    origin: str = ""
    lines: list = None  # each example's line number in `origin` (delimited files)


def standardize(texts):
    """Lower-cases (all of Unicode) and strips punctuation from UTF-8 strings.

    Bytes that are not UTF-8 become U+FFFD first, so the exported model
    accepts any string.
    """
    texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")
    texts = tf.strings.lower(texts, encoding="utf-8")
    return tf.strings.regex_replace(texts, _PUNCTUATION, "")


def make_vectorizer(sequence_length, vocabulary_size=None, vocabulary=None):
    """Returns a `TextVectorization` layer with dltool's standardization.

    Args:
        sequence_length: Token ids per text (padded with 0 or truncated).
        vocabulary_size: Most tokens to keep when adapting.
        vocabulary: A vocabulary from `get_vocabulary()`, or None to adapt.
    """
    return keras.layers.TextVectorization(
        max_tokens=None if vocabulary else vocabulary_size, standardize=standardize,
        output_sequence_length=sequence_length, vocabulary=vocabulary or None)


def vectorize(vectorizer, texts, subword_buckets=0, subwords_per_word=0):
    """Maps a 1-D batch of strings to the model's inputs.

    The training pipeline and the exported serving signature both use it.

    Args:
        vectorizer: A layer from `make_vectorizer`.
        texts: A 1-D string tensor.
        subword_buckets: Rows the subwords are hashed into; 0 for none.
        subwords_per_word: Subwords kept per word (see `subword_ids`).

    Returns:
        A dict: `token_ids`, int32 `(n, sequence_length)`, and with
        `subword_buckets`, `subword_ids` (see `subword_ids`).
    """
    features = {"token_ids": tf.cast(vectorizer(texts), tf.int32)}
    if subword_buckets:
        sequence_length = vectorizer.get_config()["output_sequence_length"]
        features["subword_ids"] = subword_ids(texts, sequence_length, subword_buckets,
                                              subwords_per_word)
    return features


def subword_ids(texts, sequence_length, buckets, per_word):
    """Hashes the character n-grams of each word, as fastText does.

    Each word (after `standardize`, split on whitespace like the vectorizer,
    so position i is token i) is marked `<word>`; its character 3-, 4- and
    5-grams, in that order, are hashed into `buckets` ids from 1 (0 is
    padding).

    Args:
        texts: A 1-D string tensor.
        sequence_length: Words per text (padded or cut, as the token ids).
        buckets: Number of hash buckets.
        per_word: N-grams kept per word (the first ones; padded with 0).

    Returns:
        An int32 tensor `(n, sequence_length, per_word)`.
    """
    words = tf.strings.split(standardize(texts))
    marked = tf.ragged.map_flat_values(lambda w: tf.strings.join(["<", w, ">"]), words)
    chars = tf.strings.unicode_split(marked, "UTF-8")
    grams = tf.concat([tf.strings.ngrams(chars, n, separator="") for n in SUBWORD_SIZES],
                      axis=-1)
    ids = tf.ragged.map_flat_values(lambda g: tf.strings.to_hash_bucket_fast(g, buckets) + 1,
                                    grams)
    return tf.cast(ids.to_tensor(0, shape=[None, sequence_length, per_word]), tf.int32)


def open_text_data(data, root, *, seed, skip_bad=False, vocabulary=None, featurize=None):
    """Opens the text data a `[data]` config section describes.

    Args:
        data: The config's `data` dict (`source`, `text_column`,
            `label_column`, `labels`, `sequence_length`, ...).
        root: Folder that relative paths in `source` are relative to.
        seed: Seed of the validation split when there is no validation file.
        skip_bad: Drop lines and files that are not usable (and say how
            many) instead of failing.
        vocabulary: Vocabulary to vectorize with (a trained run's); None
            adapts one on the training texts.
        featurize: A function of a 1-D string tensor to the model's
            features (a pretrained backbone's preprocessor,
            `dltool.tasks.backbones.text_features`), used instead of
            dltool's vectorizer, which is then not adapted (the data's
            `vocabulary` is the one given).

    Returns:
        A `TextData`.

    Raises:
        DataError: missing, empty or undecodable data, missing columns,
            unexpected labels.
        ConfigError: `label_names` that do not match the labels.
    """
    skip_bad = skip_bad or data["skip_bad"]
    declared = _comma_list(data["labels"])
    splits, report, tfds_labels = _read_source(data, root, declared, skip_bad)
    label_values = _label_values(splits, tfds_labels or declared)
    class_names = _class_names(label_values, _comma_list(data["label_names"]))
    if "val" not in splits and data["validation_split"] > 0:
        splits["train"], splits["val"] = _split(splits["train"], data["validation_split"], seed)
        report.append(f"validation: {data['validation_split']:.0%} of train per label "
                      f"(seed {seed})")
    index = {value: i for i, value in enumerate(label_values)}
    encoded = {s: (split.texts, [index[y] for y in split.labels]) for s, split in splits.items()}
    counts = {s: splits_lib.count_labels(y, len(class_names)) for s, (_, y) in encoded.items()}
    report[:0] = [*splits_lib.count_table(class_names, counts),  # as images: a row per class
                  splits_lib.balance_line(class_names, counts["train"])]

    if featurize is None:
        vectorizer, vocabulary = adapted_vectorizer(data, encoded["train"][0], vocabulary,
                                                    report)
        featurize = functools.partial(vectorize, vectorizer,
                                      subword_buckets=data["subword_buckets"],
                                      subwords_per_word=data["subwords_per_word"])
    return TextData(
        class_names=class_names, vocabulary=vocabulary, report=report,
        splits={s: featurized_dataset(t, y, featurize) for s, (t, y) in encoded.items()},
        sizes={s: len(t) for s, (t, _) in encoded.items()},
        texts={s: t for s, (t, _) in encoded.items()}, class_counts=counts["train"])


def adapted_vectorizer(data, train_texts, vocabulary, report):
    """The vectorizer of the texts: with a trained run's vocabulary, or
    adapted on the training texts.

    Args:
        data: The config's `data` dict.
        train_texts: The training texts (a list of strings).
        vocabulary: A trained run's vocabulary, or None to adapt one.
        report: A list that gets the vocabulary's line.

    Returns:
        A tuple `(vectorizer, vocabulary)`, the vocabulary a list of strings.
    """
    vectorizer = make_vectorizer(data["sequence_length"], data["vocabulary_size"], vocabulary)
    if vocabulary is None:
        vectorizer.adapt(tf.data.Dataset.from_tensor_slices(train_texts)
                         .batch(_VECTORIZE_BATCH))
    vocabulary = [str(token) for token in vectorizer.get_vocabulary()]
    subwords = (f", up to {data['subwords_per_word']} subwords per word in "
                f"{data['subword_buckets']} buckets" if data["subword_buckets"] else "")
    report.append(f"vocabulary: {len(vocabulary)} tokens, texts cut or padded to "
                  f"{data['sequence_length']} tokens{subwords}")
    return vectorizer, vocabulary


def _comma_list(text):
    return [item.strip() for item in text.split(",") if item.strip()]


def token_dataset(texts, labels, vectorizer, subword_buckets, subwords_per_word,
                  label_dtype=tf.int32):
    """Vectorizes in batches (fast), then yields one example at a time."""
    return featurized_dataset(texts, labels, lambda t: vectorize(
        vectorizer, t, subword_buckets, subwords_per_word), label_dtype)


def featurized_dataset(texts, labels, featurize, label_dtype=tf.int32):
    """`(featurize(texts), labels)` computed in batches, one example at a time."""
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(texts, tf.string),
                                             tf.constant(labels, label_dtype)))
    ds = ds.batch(_VECTORIZE_BATCH).map(lambda t, y: (featurize(t), y),
                                        num_parallel_calls=tf.data.AUTOTUNE)
    # unbatch() loses the size; Keras needs it to know the steps per epoch.
    return ds.unbatch().apply(tf.data.experimental.assert_cardinality(len(texts)))


def _label_values(splits, declared):
    """Returns the label values in class order; refuses unexpected labels."""
    values = declared or sorted(set(splits["train"].labels))
    for split in splits.values():
        unexpected = sorted(set(split.labels) - set(values))
        if unexpected:
            allowed = (f"outside data.labels ({', '.join(values)})" if declared
                       else "not in the training data")
            shown = ", ".join(map(repr, unexpected[:10]))
            more = f" and {len(unexpected) - 10} more" if len(unexpected) > 10 else ""
            raise DataError(f"{split.origin}: labels {allowed}: {shown}{more}")
    counts = collections.Counter(splits["train"].labels)
    missing = [v for v in values if not counts[v]]
    if missing:
        raise DataError(f"label {missing[0]!r} has no training examples")
    if len(values) < 2:
        raise DataError(f"the training data has only one label ({values[0]!r}); "
                        "a classifier needs at least two")
    return values


def _class_names(label_values, label_names):
    if not label_names:
        return list(label_values)
    if len(label_names) != len(label_values):
        raise ConfigError(f"data.label_names has {len(label_names)} names for "
                          f"{len(label_values)} labels ({', '.join(label_values)})")
    return label_names


def _split(split, fraction, seed):
    """Splits a `_Split` per label into (train, val), seeded."""
    train, val = splits_lib.stratified_split(list(zip(split.texts, split.labels)),
                                             fraction, seed)
    return tuple(_Split([t for t, _ in pairs], [y for _, y in pairs], split.origin)
                 for pairs in (train, val))


# Sources ---------------------------------------------------------------------


def _read_source(data, root, declared, skip_bad):
    """Reads every split of `data.source`.

    Returns:
        A tuple `(splits, report, tfds_labels)`: a dict of split name to
        `_Split`, lines to show, and the label names of a TFDS data set (None
        for files and folders).
    """
    source = data["source"]
    if source.startswith("tfds:"):
        return _read_tfds(source[len("tfds:"):])
    path = None if source.startswith("builtin:") else images.resolve_path(source, root)
    if path is not None and path.suffix.lower() in DELIMITED_SUFFIXES and not path.is_file():
        raise DataError(f"data file {path} does not exist")
    if path is None or not path.is_file():
        path = images.resolve_folder(source, root)
    report = []
    files = _split_files(path)
    if files:
        splits = {s: read_delimited(f, data, skip_bad, report) for s, f in files.items()}
    else:
        splits = _read_class_folders(path, declared, skip_bad, report)
    return splits, report, None


def _split_files(path):
    """Returns `{split: file}` for a delimited file or a folder of them."""
    if path.is_file():
        return {"train": path}
    found = {}
    for split, names in (("train", ("train",)), ("val", _VAL_NAMES), ("test", ("test",))):
        for name in names:
            for suffix in DELIMITED_SUFFIXES:
                if (path / f"{name}{suffix}").is_file() and split not in found:
                    found[split] = path / f"{name}{suffix}"
    if found and "train" not in found:
        raise DataError(f"{path} has {', '.join(f.name for f in found.values())} "
                        "but no train.tsv or train.csv")
    return found


def read_delimited(path, data, skip_bad=False, report=None):
    """Reads texts and labels from a tab- or comma-separated file.

    The first line is a header when it holds `data.text_column` and
    `data.label_column`. A two-column file without a header is read as text,
    label when its first line's second field is a label seen in the file.

    Args:
        path: The file.
        data: The config's `data` dict.
        skip_bad: Drop undecodable or malformed lines instead of failing.
        report: A list that gets lines to show (skipped lines, no header).

    Returns:
        A `_Split`.

    Raises:
        DataError: empty file, missing columns (the columns found are
            listed), undecodable bytes or malformed lines (file and line).
    """
    report = [] if report is None else report
    path = Path(path)
    lines = read_lines(path, skip_bad, report)
    delimiter = _delimiter(path, data["delimiter"])
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader((line for _, line in lines), delimiter=delimiter, quoting=quoting)
    try:
        rows = [(lines[reader.line_num - 1][0], row) for row in reader
                if any(field.strip() for field in row)]
    except csv.Error as e:
        raise DataError(f"{path}:{lines[reader.line_num - 1][0]}: {e}") from e
    if not rows:
        raise DataError(f"{path} is empty")
    text_index, label_index, has_header = _columns(path, rows, data, report)
    needed = max(text_index, label_index) + 1
    body = rows[1:] if has_header else rows
    short = [number for number, row in body if len(row) < needed]
    if short and not skip_bad:
        raise DataError(f"{path}:{short[0]}: expected at least {needed} fields"
                        + (f" ({len(short)} such lines)" if len(short) > 1 else "")
                        + "; fix the file or pass --skip-bad")
    if short:
        report.append(f"skipped {len(short)} line(s) of {path.name} with missing fields "
                      "(--skip-bad)")
    body = [(number, row) for number, row in body if len(row) >= needed]
    if not body:
        raise DataError(f"{path} has a header but no examples")
    return _Split([row[text_index].strip() for _, row in body],
                  [row[label_index].strip() for _, row in body], str(path),
                  [number for number, _ in body])


def _delimiter(path, setting):
    if setting != "auto":
        return _DELIMITERS[setting]
    return DELIMITED_SUFFIXES.get(path.suffix.lower(), "\t")


def _columns(path, rows, data, report):
    """Finds the text and label columns.

    Returns:
        A tuple `(text_index, label_index, has_header)`.
    """
    header = [field.strip() for field in rows[0][1]]
    text_column, label_column = data["text_column"], data["label_column"]
    if text_column in header and label_column in header:
        return header.index(text_column), header.index(label_column), True
    second_fields = {row[1].strip() for _, row in rows[1:] if len(row) == 2}
    if len(header) == 2 and header[1] in second_fields:
        report.append(f"{path.name} has no header: column 1 is the text, column 2 the label")
        return 0, 1, False
    missing = [c for c in (text_column, label_column) if c not in header]
    raise DataError(f"{path}: no column named {missing[0]!r} (columns found: "
                    f"{', '.join(header)}); set data.text_column and data.label_column")


def _read_class_folders(folder, declared, skip_bad, report):
    """Reads `[train/]<label>/*.txt`, with optional `val/` and `test/`."""
    train_dir = folder / "train" if (folder / "train").is_dir() else folder
    split_dirs = {"train": train_dir}
    val_dir = next((folder / n for n in _VAL_NAMES if (folder / n).is_dir()), None)
    if val_dir is not None and train_dir != folder:
        split_dirs["val"] = val_dir
    if (folder / "test").is_dir() and train_dir != folder:
        split_dirs["test"] = folder / "test"
    found = sorted(p.name for p in train_dir.iterdir() if p.is_dir()
                   and not p.name.startswith(".") and p.name not in ("test",) + _VAL_NAMES)
    if not found:
        raise DataError(f"no train.tsv, train.csv or label folders in {folder}: expected "
                        f"{folder}/train.tsv or {folder}/<label>/<text>.txt")
    labels = declared or found
    ignored = sorted(set(found) - set(labels))
    if ignored:
        report.append(f"ignored folders not in data.labels: {', '.join(ignored)}")
    splits, bad = {}, []
    for split, split_dir in split_dirs.items():
        texts, split_labels = [], []
        for label in labels:
            for path in sorted((split_dir / label).glob("*.txt")):
                text = _read_text_file(path, bad)
                if text is not None:
                    texts.append(text)
                    split_labels.append(label)
        if not texts:
            raise DataError(f"no .txt files in the label folders of {split_dir}")
        splits[split] = _Split(texts, split_labels, str(split_dir))
    if bad and not skip_bad:
        shown = "; ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise DataError(f"{len(bad)} unusable text file(s): {shown}; "
                        "fix them or pass --skip-bad")
    if bad:
        report.append(f"skipped {len(bad)} unusable text file(s) (--skip-bad)")
    return splits


def _read_text_file(path, bad):
    """Returns the file's text, or None after adding why it is unusable to `bad`."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        bad.append(f"{path} (unreadable: {e.strerror})")
        return None
    try:
        return raw.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        bad.append(f"{path}:{line} (bytes that are not UTF-8)")
        return None


def _read_tfds(name):
    """Reads a TFDS text classification data set (text feature, ClassLabel)."""
    import tensorflow_datasets as tfds

    builder = prepared_builder(name)
    info = builder.info
    keys = info.supervised_keys
    label_feature = info.features[keys[1]] if keys else None
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise DataError(f"TFDS data set {name!r} is not a (text, class label) data set")
    names = list(label_feature.names)
    wanted = {"train": "train", "val": "validation", "test": "test"}
    splits = {}
    for split, tfds_split in wanted.items():
        if split == "train" or tfds_split in info.splits:
            try:
                ds = builder.as_dataset(split=tfds_split, as_supervised=True,
                                        shuffle_files=False)
            except ValueError as e:
                raise DataError(f"TFDS data set {name!r} has no {tfds_split!r} split") from e
            pairs = [(t.decode("utf-8", errors="replace"), names[int(y)])
                     for t, y in tfds.as_numpy(ds)]
            splits[split] = _Split([t for t, _ in pairs], [y for _, y in pairs],
                                   f"TFDS {name} {tfds_split}")
    report = [f"TFDS {name}: " + ", ".join(f"{s} {len(v.texts)}" for s, v in splits.items())]
    return splits, report, names


def read_input_lines(path):
    """Reads one input per line of a UTF-8 file; blank lines are skipped.

    Raises:
        DataError: an unreadable file, no inputs, or bytes that are not UTF-8
            (file and line).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: unreadable: {e.strerror}") from e
    lines = decode_lines(path, raw.removeprefix(b"\xef\xbb\xbf"), False, [],
                          hint="fix the file")
    inputs = [line.rstrip("\r\n") for _, line in lines if line.strip()]
    if not inputs:
        raise DataError(f"{path} has no inputs (one per line)")
    return inputs
