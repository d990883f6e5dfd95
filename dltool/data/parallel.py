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
`3 @,@ 5`); `detokenize` undoes it. The model's tokens are then, as
`data.tokens` says, either these words (a `TextVectorization` vocabulary of
the most frequent ones, the rest `[UNK]`) or WordPiece subwords of them
(`subwords`, the default): a vocabulary learned on the training pairs with
KerasHub's `compute_word_piece_vocabulary`, applied by its
`WordPieceTokenizer` to each word, so a rare word or a name becomes pieces
(`Terrier` -> `T ##er ##r ##ie ##r` with the builtin sample's vocabulary)
instead of `[UNK]`; `detokenize` glues a `##` piece to the one before.
"""

import collections
import dataclasses
from pathlib import Path

from dltool._tf import keras, tf  # first: TensorFlow's environment, before keras_hub

import keras_hub  # noqa: E402
from dltool.data import images, lines, splits as splits_lib
from dltool.data.tfds_loader import prepared_builder
from dltool.core.errors import DataError

START, END = "[start]", "[end]"
UNKNOWN = "[UNK]"
HYPHEN = "@-@"
SUFFIX = "##"  # WordPiece's mark of a piece continuing the one before
_TOKEN_NAMES = {"words": "tokens", "subwords": "subword tokens"}
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
        tokens: `words` or `subwords` (WordPiece pieces of the words).
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
    tokens: str = "words"
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


def detokenize(tokens, subwords=False):
    """Joins a batch of token rows back into text (the reverse of `tokenize`).

    Args:
        tokens: A 2-D string tensor or ragged tensor, one row per text;
            empty strings (padding) are dropped.
        subwords: The tokens are WordPiece pieces: a piece starting with
            `##` is glued to the one before (a row's first loses its `##`).

    Returns:
        A 1-D string tensor.
    """
    texts = tf.strings.reduce_join(tokens, axis=-1, separator=" ")
    texts = tf.strings.regex_replace(texts, r"\s+", " ")
    if subwords:  # `tokenize` splits `#` off, so no word starts with `##`
        texts = tf.strings.regex_replace(texts, f"(^| ){SUFFIX}", "")
    texts = tf.strings.regex_replace(texts, f" ?{HYPHEN} ?", "-")
    texts = tf.strings.regex_replace(texts, r" ?@([.,:])@ ?", r"\1")
    texts = tf.strings.regex_replace(texts, r"(\pL') ", r"\1")
    texts = tf.strings.regex_replace(texts, r" ([.,)…%])", r"\1")
    texts = tf.strings.regex_replace(texts, r"([(]) ", r"\1")
    return tf.strings.strip(texts)


def target_text(tokens):
    """Wraps tokenized target strings in `[start]` ... `[end]`."""
    return tf.strings.join([START + " ", tokens, " " + END])


def make_vectorizer(vocabulary_size=None, vocabulary=None, tokens="words"):
    """A layer from `tokenize`d text to ragged token ids.

    Args:
        vocabulary_size: Most tokens to keep when adapting (`words`).
        vocabulary: A vocabulary from `get_vocabulary()`, or None to adapt
            (`words`; `subwords` needs one, see `learn_subwords`).
        tokens: `words`: a `TextVectorization` layer, one id a word;
            `subwords`: a `WordPieces` layer, one id a piece.
    """
    if tokens == "subwords":
        return WordPieces(vocabulary=vocabulary)
    return keras.layers.TextVectorization(
        max_tokens=None if vocabulary else vocabulary_size, standardize=None,
        split="whitespace", ragged=True, vocabulary=vocabulary or None)


class WordPieces(keras_hub.tokenizers.WordPieceTokenizer):
    """KerasHub's WordPiece tokenizer over `tokenize`d text: each word (the
    text split at its spaces) becomes its pieces, greedy longest match first,
    a piece after a word's first marked `##`; a word that has no pieces (a
    character not in the vocabulary, or more than 100 UTF-8 bytes) is one
    `[UNK]`. No splitting, lowercasing or accent stripping of its own:
    `tokenize` has split the words, and WordPiece's punctuation splitting
    would cut `l'` and `@-@`. Always the TensorFlow path (`tf_text`'s
    `FastWordpieceTokenizer`), eager or traced, so Python and the exported
    graph give the same ids.
    """

    def __init__(self, vocabulary, **kwargs):
        super().__init__(vocabulary=vocabulary, lowercase=False, strip_accents=False,
                         split=False, suffix_indicator=SUFFIX, oov_token=UNKNOWN,
                         _allow_python_workflow=False, **kwargs)

    def build(self, input_shape=None):  # no shape needed, as TextVectorization's
        super().build(input_shape)

    def call(self, texts):
        return self._ids(tf.convert_to_tensor(texts, tf.string))

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def _ids(self, texts):
        # Traced, also when called eagerly: eagerly, KerasHub's layers return
        # Python lists; in a tf.function, tensors.
        return super().call(tf.strings.split(texts))


def learn_subwords(texts, vocabulary_size, reserved):
    """Learns a WordPiece vocabulary of `tokenize`d words.

    KerasHub's `compute_word_piece_vocabulary` (TensorFlow Text's BERT
    vocabulary learner) on the words of `texts`, split only at spaces; the
    learner keeps every character it sees (up to 1,000) and the pieces seen
    at least 10 times, so it may return fewer than `vocabulary_size`. When it
    returns more, KerasHub cuts its list, whose rarest entries (last) can be
    `##` characters: a word holding one is then `[UNK]`.

    Args:
        texts: Raw strings (the training side of one language).
        vocabulary_size: Most tokens, `reserved` included.
        reserved: The tokens it starts with (padding `""`, `[UNK]`...).

    Returns:
        The vocabulary, a list (index = id).
    """
    words = tf.data.Dataset.from_tensor_slices(tf.constant(texts, tf.string)).batch(
        _BATCH).map(lambda t: tf.strings.split(tokenize(t)))
    vocabulary = keras_hub.tokenizers.compute_word_piece_vocabulary(
        words, vocabulary_size, lowercase=False, strip_accents=False, split=False,
        suffix_indicator=SUFFIX, reserved_tokens=list(reserved))
    return [str(t) for t in vocabulary]


def token_counts(texts, vectorizer=None):
    """Returns the number of tokens of each string (a NumPy int array): its
    words, or its ids with `vectorizer` (`make_vectorizer`'s)."""
    counts = []
    for start in range(0, len(texts), _BATCH * 8):
        tokens = tokenize(tf.constant(texts[start:start + _BATCH * 8], tf.string))
        tokens = vectorizer(tokens) if vectorizer is not None else tf.strings.split(tokens)
        counts.append(tokens.row_lengths().numpy())
    import numpy as np

    return np.concatenate(counts) if counts else np.zeros((0,), np.int64)


def open_parallel_data(data, root, *, seed, skip_bad=False, vocabularies=None):
    """Opens the parallel text a `[data]` config section describes.

    Args:
        data: The config's `data` dict.
        root: Folder that relative paths in `source` are relative to.
        seed: Seed of the validation and test split.
        skip_bad: Drop unusable lines (and say how many) instead of failing.
        vocabularies: `(source, target)` vocabularies of a trained run (of
            `data["tokens"]`); None adapts (`words`) or learns (`subwords`)
            them on the training pairs.

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
    dropped = {}
    for split in ("train", "val"):
        if split in pairs:
            pairs[split], dropped[split] = _length_filter(pairs[split], data["max_length"])
    if not pairs["train"]:
        raise DataError("no training pairs left after the split and the length filter")

    tokens = data["tokens"]
    source_vectorizer, target_vectorizer = _vectorizers(pairs["train"], data, vocabularies)
    if tokens == "subwords":  # a word has one piece or more: count the pieces now
        for split in dropped:
            pairs[split], more = _length_filter(pairs[split], data["max_length"],
                                                source_vectorizer, target_vectorizer)
            dropped[split] += more
    for split, count in dropped.items():
        if count:
            report.append(f"{split}: left out {count} pair(s) longer than "
                          f"{data['max_length']} {_TOKEN_NAMES[tokens]} (data.max_length)")
    if not pairs["train"]:
        raise DataError("no training pairs left after the split and the length filter")
    source_vocabulary = [str(t) for t in source_vectorizer.get_vocabulary()]
    target_vocabulary = [str(t) for t in target_vectorizer.get_vocabulary()]
    report.insert(0, "pairs: " + ", ".join(f"{s} {len(p)}" for s, p in pairs.items()))
    report.append(f"vocabulary: {len(source_vocabulary)} source and "
                  f"{len(target_vocabulary)} target {_TOKEN_NAMES[tokens]}")
    return ParallelData(
        pairs=pairs, report=report,
        splits={s: _token_dataset(p, source_vectorizer, target_vectorizer)
                for s, p in pairs.items()},
        sizes={s: len(p) for s, p in pairs.items()},
        source_vocabulary=source_vocabulary, target_vocabulary=target_vocabulary,
        tokens=tokens,
        run_files={f"{s}-pairs.tsv": "".join(f"{a}\t{b}\n" for a, b in p)
                   for s, p in pairs.items() if s != "train"})


def _length_filter(pairs, max_length, source_vectorizer=None, target_vectorizer=None):
    """Keeps the pairs of at most `max_length` tokens a side (words, or the
    vectorizers' ids); returns them and how many were left out."""
    if not pairs:
        return pairs, 0
    source_counts = token_counts([a for a, _ in pairs], source_vectorizer)
    target_counts = token_counts([b for _, b in pairs], target_vectorizer)
    kept = [p for p, n, m in zip(pairs, source_counts, target_counts)
            if n <= max_length and m <= max_length]
    return kept, len(pairs) - len(kept)


def _vectorizers(train_pairs, data, vocabularies):
    """The source and target vectorizers: of `vocabularies`, or adapted
    (`words`) or learned (`subwords`) on the training pairs only."""
    source_vocabulary, target_vocabulary = vocabularies or (None, None)
    if data["tokens"] == "subwords" and vocabularies is None:
        source_vocabulary = learn_subwords([a for a, _ in train_pairs],
                                           data["source_vocabulary_size"], ["", UNKNOWN])
        target_vocabulary = learn_subwords([b for _, b in train_pairs],
                                           data["target_vocabulary_size"],
                                           ["", UNKNOWN, START, END])
    source = make_vectorizer(data["source_vocabulary_size"], source_vocabulary, data["tokens"])
    target = make_vectorizer(data["target_vocabulary_size"], target_vocabulary, data["tokens"])
    if data["tokens"] == "words" and vocabularies is None:
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
