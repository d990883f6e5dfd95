"""Parallel text for translation: sentence pairs, tokens, seeded splits.

`open_parallel_data` reads the `[data]` section of a translator config and
returns a `ParallelData` whose splits are tf.data datasets of
`({"source_ids": s, "target_ids": t_in}, t_out)`: int32 token ids of
variable length (the pipeline pads each batch to its longest pair), `t_in`
the target starting with `[start]`, `t_out` the same shifted by one and
ending with `[end]` (teacher forcing).

Sources:

- a tab-separated file in the Tatoeba / manythings.org layout,
  `English<TAB>French[<TAB>attribution]` (extra columns are ignored);
- a folder of line-aligned files `<lang>.<split>.txt` (the layout of
  `tfds.TranslateFolder`, languages from `data.source_language` and
  `data.target_language`), or holding one such tab-separated file;
- `tfds:NAME`, a TensorFlow Datasets translation data set with both
  languages as features;
- `builtin:fra-eng`, 5,000 English-French pairs shipped with dltool.

Every line is read and checked before training: bytes that are not UTF-8,
a missing or empty side, files of different lengths stop with the file and
line; `skip_bad` drops those lines and says how many. Exact duplicate pairs
are removed and pairs longer than `data.max_length` tokens on either side
are left out of training and validation. Without given validation and test
splits, the distinct source sentences are shuffled with the seed and split,
so every translation of a test sentence stays out of training.

Tokenization runs in the TensorFlow graph, the same function in training
and in the exported model: `tokenize` keeps case, accents and apostrophes,
splits punctuation into tokens, elided words (`l'homme` -> `l' homme`),
hyphenated words (`dis-moi` -> `dis @-@ moi`) and numbers (`3,5` ->
`3 @,@ 5`); `detokenize` undoes it.
"""

import collections
import dataclasses
from pathlib import Path

from dltool._tf import keras, tf
from dltool.data import images, lines, splits as splits_lib
from dltool.data.tfds_loader import prepared_builder
from dltool.core.errors import DataError

START, END = "[start]", "[end]"
HYPHEN = "@-@"
_VAL_NAMES = ("val", "validation", "dev")
_BATCH = 2048
_LETTER = r"[\p{L}\p{N}]"


@dataclasses.dataclass
class ParallelData:
    """Splits of a parallel corpus.

    Attributes:
        pairs: Dict of split name (`train`, `val`, `test`) to a list of
            `(source, target)` strings as read (not tokenized).
        splits: Dict of split name to an unbatched `tf.data.Dataset` of
            `({"source_ids", "target_ids"}, target_out)`.
        sizes: Dict of split name to number of pairs.
        report: Lines describing the data to show.
        source_vocabulary: Source tokens, index = id (0 padding, 1 unknown).
        target_vocabulary: Target tokens, `[start]` and `[end]` included.
        run_files: Dict of file name to text the run folder keeps (the
            split, so the test pairs are known).
        meta: What an exported model needs to know (set by the task).
    """

    pairs: dict
    splits: dict
    sizes: dict
    report: list
    source_vocabulary: list
    target_vocabulary: list
    run_files: dict = dataclasses.field(default_factory=dict)
    meta: dict = dataclasses.field(default_factory=dict)


def tokenize(texts):
    """Splits UTF-8 strings into space-separated tokens, in the graph.

    Keeps case, accents and apostrophes; punctuation becomes separate tokens,
    an elided word is cut after its apostrophe and a hyphen inside a word
    becomes the token `@-@`. Bytes that are not UTF-8 become U+FFFD, so any
    string is accepted.

    Args:
        texts: A string tensor.

    Returns:
        A string tensor of the same shape: tokens separated by one space.
    """
    texts = tf.strings.unicode_transcode(texts, "UTF-8", "UTF-8", errors="replace")
    texts = tf.strings.regex_replace(texts, "\u200b", "")
    texts = tf.strings.regex_replace(texts, r"[\s\x{00A0}\x{202F}\x{2009}]+", " ")
    texts = tf.strings.regex_replace(texts, "[\u2019\u02bc]", "'")
    for _ in range(2):  # `a-t-il`: matches overlap by one letter
        texts = tf.strings.regex_replace(texts, f"({_LETTER})-({_LETTER})",
                                         rf"\1 {HYPHEN} \2")
    texts = tf.strings.regex_replace(texts, r"(\pL')(\pL)", r"\1 \2")
    texts = tf.strings.regex_replace(texts, r"([^\pL\pN\s'@-])", r" \1 ")
    for _ in range(2):  # `1.000.000`: matches overlap by one digit
        texts = tf.strings.regex_replace(texts, r"(\pN) +([.,:]) +(\pN)", r"\1 @\2@ \3")
    texts = tf.strings.regex_replace(texts, r"\s+", " ")
    return tf.strings.strip(texts)


def detokenize(tokens):
    """Joins a batch of token rows back into text (the reverse of `tokenize`).

    Args:
        tokens: A 2-D string tensor or ragged tensor, one row per text;
            empty strings (padding) are dropped.

    Returns:
        A 1-D string tensor.
    """
    texts = tf.strings.reduce_join(tokens, axis=-1, separator=" ")
    texts = tf.strings.regex_replace(texts, r"\s+", " ")
    texts = tf.strings.regex_replace(texts, f" ?{HYPHEN} ?", "-")
    texts = tf.strings.regex_replace(texts, r" ?@([.,:])@ ?", r"\1")
    texts = tf.strings.regex_replace(texts, r"(\pL') ", r"\1")
    texts = tf.strings.regex_replace(texts, r" ([.,)…%])", r"\1")
    texts = tf.strings.regex_replace(texts, r"([(]) ", r"\1")
    return tf.strings.strip(texts)


def target_text(tokens):
    """Wraps tokenized target strings in `[start]` ... `[end]`."""
    return tf.strings.join([START + " ", tokens, " " + END])


def make_vectorizer(vocabulary_size=None, vocabulary=None):
    """A `TextVectorization` layer over `tokenize`d text, ragged output.

    Args:
        vocabulary_size: Most tokens to keep when adapting.
        vocabulary: A vocabulary from `get_vocabulary()`, or None to adapt.
    """
    return keras.layers.TextVectorization(
        max_tokens=None if vocabulary else vocabulary_size, standardize=None,
        split="whitespace", ragged=True, vocabulary=vocabulary or None)


def token_counts(texts):
    """Returns the number of tokens of each string (a NumPy int array)."""
    counts = []
    for start in range(0, len(texts), _BATCH * 8):
        chunk = tf.constant(texts[start:start + _BATCH * 8], tf.string)
        counts.append(tf.strings.split(tokenize(chunk)).row_lengths().numpy())
    import numpy as np

    return np.concatenate(counts) if counts else np.zeros((0,), np.int64)


def open_parallel_data(data, root, *, seed, skip_bad=False, vocabularies=None):
    """Opens the parallel text a `[data]` config section describes.

    Args:
        data: The config's `data` dict.
        root: Folder that relative paths in `source` are relative to.
        seed: Seed of the validation and test split.
        skip_bad: Drop unusable lines (and say how many) instead of failing.
        vocabularies: `(source, target)` vocabularies of a trained run; None
            adapts them on the training pairs.

    Returns:
        A `ParallelData`.

    Raises:
        DataError: missing, empty, misaligned or undecodable data.
    """
    skip_bad = skip_bad or data["skip_bad"]
    pairs, report = _read_source(data, root, skip_bad)
    for split in list(pairs):
        unique = list(dict.fromkeys(pairs[split]))
        if len(unique) < len(pairs[split]):
            report.append(f"{split}: removed {len(pairs[split]) - len(unique)} duplicate pair(s)")
        pairs[split] = unique
    fractions = {s: data[f"{'validation' if s == 'val' else 'test'}_split"]
                 for s in ("val", "test") if s not in pairs}
    fractions = {s: f for s, f in fractions.items() if f > 0}
    if fractions:
        parts = splits_lib.grouped_split(pairs["train"], key=lambda pair: pair[0],
                                         fractions=fractions, seed=seed)
        pairs.update(parts)
        report.append("held out by source sentence (seed %d): %s" % (seed, ", ".join(
            f"{s} {f:.1%}" for s, f in fractions.items())))
    for split in ("train", "val"):
        if split in pairs:
            pairs[split], dropped = _length_filter(pairs[split], data["max_length"])
            if dropped:
                report.append(f"{split}: left out {dropped} pair(s) longer than "
                              f"{data['max_length']} tokens (data.max_length)")
    if not pairs["train"]:
        raise DataError("no training pairs left after the split and the length filter")

    source_vectorizer, target_vectorizer = _vectorizers(pairs["train"], data, vocabularies)
    source_vocabulary = [str(t) for t in source_vectorizer.get_vocabulary()]
    target_vocabulary = [str(t) for t in target_vectorizer.get_vocabulary()]
    report.insert(0, "pairs: " + ", ".join(f"{s} {len(p)}" for s, p in pairs.items()))
    report.append(f"vocabulary: {len(source_vocabulary)} source and "
                  f"{len(target_vocabulary)} target tokens")
    return ParallelData(
        pairs=pairs, report=report,
        splits={s: _token_dataset(p, source_vectorizer, target_vectorizer)
                for s, p in pairs.items()},
        sizes={s: len(p) for s, p in pairs.items()},
        source_vocabulary=source_vocabulary, target_vocabulary=target_vocabulary,
        run_files={f"{s}-pairs.tsv": "".join(f"{a}\t{b}\n" for a, b in p)
                   for s, p in pairs.items() if s != "train"})


def _length_filter(pairs, max_length):
    if not pairs:
        return pairs, 0
    source_counts = token_counts([a for a, _ in pairs])
    target_counts = token_counts([b for _, b in pairs])
    kept = [p for p, n, m in zip(pairs, source_counts, target_counts)
            if n <= max_length and m <= max_length]
    return kept, len(pairs) - len(kept)


def _vectorizers(train_pairs, data, vocabularies):
    source_vocabulary, target_vocabulary = vocabularies or (None, None)
    source = make_vectorizer(data["source_vocabulary_size"], source_vocabulary)
    target = make_vectorizer(data["target_vocabulary_size"], target_vocabulary)
    if vocabularies is None:
        texts = tf.data.Dataset.from_tensor_slices(
            (tf.constant([a for a, _ in train_pairs]), tf.constant([b for _, b in train_pairs])))
        texts = texts.batch(_BATCH)
        source.adapt(texts.map(lambda a, b: tokenize(a)))
        target.adapt(texts.map(lambda a, b: target_text(tokenize(b))))
    return source, target


def vectorize_pairs(sources, targets, source_vectorizer, target_vectorizer):
    """Token ids of a batch of pairs: ragged `source_ids` and `target_ids`."""
    return (tf.cast(source_vectorizer(tokenize(sources)), tf.int32),
            tf.cast(target_vectorizer(target_text(tokenize(targets))), tf.int32))


def _token_dataset(pairs, source_vectorizer, target_vectorizer):
    """Vectorizes in batches (fast), then yields one teacher-forced pair at a time."""
    ds = tf.data.Dataset.from_tensor_slices((tf.constant([a for a, _ in pairs] or [""]),
                                             tf.constant([b for _, b in pairs] or [""])))
    ds = ds.take(len(pairs)).batch(_BATCH).map(
        lambda a, b: vectorize_pairs(a, b, source_vectorizer, target_vectorizer),
        num_parallel_calls=tf.data.AUTOTUNE).unbatch()
    ds = ds.map(lambda s, t: ({"source_ids": s, "target_ids": t[:-1]}, t[1:]))
    return ds.apply(tf.data.experimental.assert_cardinality(len(pairs)))


# Sources ---------------------------------------------------------------------


def _read_source(data, root, skip_bad):
    """Reads every split of `data.source`.

    Returns:
        A tuple `(pairs, report)`: a dict of split name to a list of
        `(source, target)`, and lines to show.
    """
    source = data["source"]
    if source.startswith("tfds:"):
        return _read_tfds(source[len("tfds:"):], data)
    path = None if source.startswith("builtin:") else Path(root) / Path(source).expanduser()
    if path is None or not path.is_file():
        path = images.resolve_folder(source, root)
    report = []
    if path.is_file():
        return {"train": read_tsv(path, skip_bad, report)}, report
    files = _language_files(path, data["source_language"], data["target_language"])
    if files:
        return {s: read_aligned(a, b, skip_bad, report) for s, (a, b) in files.items()}, report
    candidates = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".txt", ".tsv")
                        and not p.name.startswith(("_", ".")))
    if len(candidates) != 1:
        lang = f"{data['source_language']}.train.txt and {data['target_language']}.train.txt"
        found = ", ".join(p.name for p in candidates) or "none"
        raise DataError(f"{path}: expected one tab-separated .txt/.tsv file or {lang} "
                        f"(tab-separated files found: {found})")
    return {"train": read_tsv(candidates[0], skip_bad, report)}, report


def _language_files(folder, source_language, target_language):
    """Returns `{split: (source_file, target_file)}` of a TranslateFolder layout."""
    found = {}
    for split, names in (("train", ("train",)), ("val", _VAL_NAMES), ("test", ("test",))):
        for name in names:
            a = folder / f"{source_language}.{name}.txt"
            b = folder / f"{target_language}.{name}.txt"
            if split not in found and (a.is_file() or b.is_file()):
                missing = b if a.is_file() else a
                if not missing.is_file():
                    raise DataError(f"{missing} is missing: line-aligned files come in pairs "
                                    f"({a.name} and {b.name})")
                found[split] = (a, b)
    if found and "train" not in found:
        raise DataError(f"{folder} has no {source_language}.train.txt and "
                        f"{target_language}.train.txt")
    return found


def read_tsv(path, skip_bad=False, report=None):
    """Reads `source<TAB>target[<TAB>...]` lines; blank lines are skipped.

    Args:
        path: The file.
        skip_bad: Drop undecodable lines and lines without two non-empty
            fields instead of failing.
        report: A list that gets lines to show (skipped lines).

    Returns:
        A list of `(source, target)` strings, stripped.

    Raises:
        DataError: empty file, undecodable bytes or malformed lines (file
            and line number).
    """
    report = [] if report is None else report
    path = Path(path)
    pairs, bad = [], []
    for number, line in lines.read_lines(path, skip_bad, report):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or not fields[0].strip() or not fields[1].strip():
            bad.append(number)
            continue
        pairs.append((fields[0].strip(), fields[1].strip()))
    _check_bad(path, bad, skip_bad, report,
               "expected source<TAB>target with both sides non-empty")
    if not pairs:
        raise DataError(f"{path} has no sentence pairs (source<TAB>target per line)")
    return pairs


def read_aligned(source_path, target_path, skip_bad=False, report=None):
    """Reads two line-aligned files, one sentence per line.

    Raises:
        DataError: files of different lengths, an empty line on one side
            only, undecodable bytes (file and line number).
    """
    report = [] if report is None else report
    sources = lines.read_lines(source_path, skip_bad, report)
    targets = lines.read_lines(target_path, skip_bad, report)
    if len(sources) != len(targets) and not skip_bad:
        raise DataError(f"{source_path} has {len(sources)} lines but {target_path} has "
                        f"{len(targets)}: line-aligned files need one line per sentence")
    by_number = dict(targets)
    pairs, bad = [], []
    for number, line in sources:
        a, b = line.strip(), by_number.get(number, "").strip()
        if a and b:
            pairs.append((a, b))
        elif a or b:
            bad.append(number)
    _check_bad(Path(source_path), bad, skip_bad, report,
               f"a sentence on one side only (see {Path(target_path).name})")
    if not pairs:
        raise DataError(f"{source_path} and {target_path} have no sentence pairs")
    return pairs


def _check_bad(path, bad, skip_bad, report, what):
    if bad and not skip_bad:
        more = f" ({len(bad)} such lines)" if len(bad) > 1 else ""
        raise DataError(f"{path}:{bad[0]}: {what}{more}; fix the file or pass --skip-bad")
    if bad:
        report.append(f"skipped {len(bad)} malformed line(s) of {path.name} (--skip-bad)")


def _read_tfds(name, data):
    """Reads a TFDS translation data set (one text feature per language)."""
    import tensorflow_datasets as tfds

    builder = prepared_builder(name)
    info = builder.info
    languages = (data["source_language"], data["target_language"])
    features = list(info.features.keys())
    missing = [lang for lang in languages if lang not in features]
    if missing:
        raise DataError(f"TFDS data set {name!r} has no {missing[0]!r} feature (features: "
                        f"{', '.join(features)}); set data.source_language and "
                        "data.target_language")
    pairs = {}
    for split, tfds_split in (("train", "train"), ("val", "validation"), ("test", "test")):
        if split == "train" or tfds_split in info.splits:
            ds = builder.as_dataset(split=tfds_split, shuffle_files=False)
            pairs[split] = [(ex[languages[0]].decode("utf-8", errors="replace").strip(),
                             ex[languages[1]].decode("utf-8", errors="replace").strip())
                            for ex in tfds.as_numpy(ds)]
            pairs[split] = [(a, b) for a, b in pairs[split] if a and b]
    counts = collections.OrderedDict((s, len(p)) for s, p in pairs.items())
    return pairs, [f"TFDS {name}: " + ", ".join(f"{s} {n}" for s, n in counts.items())]
