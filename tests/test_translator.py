"""The translator template: parallel text sources and their checks, tokens,
decoding in the graph, train, export on raw strings, evaluate, predict."""

import markupsafe
import json
import warnings

import numpy as np
import pytest

from conftest import invoke
from dltool.core import config as config_lib
from dltool._tf import keras, tf
from dltool.data import parallel
from dltool.core.errors import DataError
from dltool.tasks import task_for, translator

DATA = config_lib.defaults(config_lib.schema_for("translator"))["data"]
SMALL_MODEL = ("--set", "model.embedding_dim=16", "--set", "model.units=16",
               "--set", "data.source_vocabulary_size=400",
               "--set", "data.target_vocabulary_size=400",
               "--set", "decoding.beam_width=2", "--set", "training.verbose=0")
# The trained fixture's model: 4 epochs at 0.005 make translations that differ
# (23 distinct of 60 test sentences, against "." for all after 1 epoch of the
# 16-unit model), so an export agreeing with them means something.
TRAINED_MODEL = ("--epochs", 4, "--set", "model.embedding_dim=32", "--set", "model.units=32",
                 "--set", "model.learning_rate=0.005", *SMALL_MODEL[4:])
LONG_TEXT = "the cat is on the mat and " * 40
# The data metadata of a model built without data: 30 source and 20 target
# tokens (built through the task, as train builds it).
_PAIR_META = {"source_vocabulary": [f"s{i}" for i in range(30)],
              "target_vocabulary": [f"t{i}" for i in range(20)]}


def _open(source, root, **changes):
    return parallel.open_parallel_data({**DATA, "source": str(source), **changes}, root, seed=1)


def _pairs(n):
    return [(f"I see {i} cats.", f"Je vois {i} chats.") for i in range(n)]


def _write_tsv(path, pairs, extra=""):
    path.write_text("".join(f"{a}\t{b}{extra}\n" for a, b in pairs), encoding="utf-8")
    return path


# Tokens ----------------------------------------------------------------------


def test_tokenize_keeps_case_accents_apostrophes_and_splits_punctuation():
    texts = ["Qu’est-ce que c'est ?", "A-t-il 3,5 ans… (peut-être)", "Il dit\u202f: « Va\u00a0! »",
             b"bad \xff byte", ""]
    tokens = [t.decode() for t in parallel.tokenize(tf.constant(texts)).numpy()]
    assert tokens == ["Qu' est @-@ ce que c' est ?",
                      "A @-@ t @-@ il 3 @,@ 5 ans … ( peut @-@ être )",
                      "Il dit : « Va ! »", "bad \ufffd byte", ""]
    back = parallel.detokenize(tf.strings.split(tf.constant(tokens))).numpy()
    assert [t.decode() for t in back] == ["Qu'est-ce que c'est ?", "A-t-il 3,5 ans… (peut-être)",
                                          "Il dit : « Va ! »", "bad \ufffd byte", ""]


@pytest.fixture(scope="module")
def builtin_subwords():
    """The builtin sample's pairs and subword vocabularies learned on all of them."""
    pairs = parallel.read_tsv(parallel.images.resolve_folder("builtin:fra-eng", ".") / "fra.txt")
    return {"pairs": pairs,
            "source": parallel.learn_subwords([a for a, _ in pairs], 8000, ["", "[UNK]"]),
            "target": parallel.learn_subwords([b for _, b in pairs], 8000,
                                              ["", "[UNK]", "[start]", "[end]"])}


def _pieces(texts, vocabulary):
    """The WordPiece pieces (strings) of raw texts, as the model sees them."""
    ids = parallel.make_vectorizer(vocabulary=vocabulary, tokens="subwords")(
        parallel.tokenize(tf.constant(texts)))
    return tf.gather(tf.constant(vocabulary), ids)


def test_subwords_round_trip_the_builtin_sample(builtin_subwords):
    pairs = builtin_subwords["pairs"]
    assert len(pairs) == 5000
    for side, vocabulary in ((0, builtin_subwords["source"]), (1, builtin_subwords["target"])):
        texts = [pair[side] for pair in pairs] + ["Qu'est-ce que c'est ?", "A-t-il 3,5 ans ?"]
        pieces = _pieces(texts, vocabulary)
        words = tf.strings.split(parallel.tokenize(tf.constant(texts)))
        assert [t.decode() for t in parallel.detokenize(pieces, subwords=True).numpy()] == [
            t.decode() for t in parallel.detokenize(words).numpy()]
        flat = [t.decode() for t in pieces.flat_values.numpy()]
        assert "[UNK]" not in flat
        assert any(t.startswith("##") for t in flat) and len(flat) > len(words.flat_values)
    # WordPiece's own splitting is off: the elision and the hyphen mark are whole pieces
    assert {"@-@", "l'"} <= set(builtin_subwords["target"])
    assert "[start]" not in builtin_subwords["source"]


def test_rare_words_and_names_become_pieces_not_unknown(builtin_subwords):
    text = "A Boston Terrier is running on the grass."
    subwords = _pieces([text], builtin_subwords["source"]).numpy()[0].tolist()
    assert b"[UNK]" not in subwords and b"##r" in subwords, subwords
    assert parallel.detokenize(tf.constant([subwords]), subwords=True).numpy()[0].decode() == text
    words = parallel.make_vectorizer(10)
    words.adapt(tf.data.Dataset.from_tensor_slices(parallel.tokenize(tf.constant(
        [a for a, _ in builtin_subwords["pairs"]]))).batch(64))
    assert "[UNK]" in [words.get_vocabulary()[i] for i in
                       words(parallel.tokenize(tf.constant([text]))).numpy()[0]]
    # a word with a character the training pairs never had is one [UNK]
    assert _pieces(["Tom 日本"], builtin_subwords["source"]).numpy()[0].tolist() == [
        b"Tom", b"[UNK]"]


def test_subword_vocabularies_are_learned_on_the_training_pairs_only(tmp_path):
    for split, pairs in (("train", _pairs(30)),
                         ("test", [("Zbigniew sees Qwxyz.", "Zbigniew voit Qwxyz.")])):
        (tmp_path / f"en.{split}.txt").write_text("".join(a + "\n" for a, _ in pairs))
        (tmp_path / f"fr.{split}.txt").write_text("".join(b + "\n" for _, b in pairs))
    data = _open(tmp_path, tmp_path, validation_split=0.0, max_length=8,
                 source_vocabulary_size=200, target_vocabulary_size=200)
    assert data.tokens == "subwords" and data.sizes == {"train": 30, "test": 1}
    assert data.source_vocabulary == parallel.learn_subwords(
        [a for a, _ in data.pairs["train"]], 200, ["", "[UNK]"])
    assert data.target_vocabulary[:4] == ["", "[UNK]", "[start]", "[end]"]
    for vocabulary in (data.source_vocabulary, data.target_vocabulary):
        assert not {"Z", "Q", "##b", "##w", "##x", "##y", "##z"} & set(vocabulary)
    assert "vocabulary: %d source and %d target subword tokens" % (
        len(data.source_vocabulary), len(data.target_vocabulary)) in data.report
    inputs, target_out = next(iter(data.splits["test"]))
    pieces = [data.source_vocabulary[i] for i in inputs["source_ids"].numpy()]
    assert pieces == ["[UNK]", "see", "##s", "[UNK]", "."]
    start, end = (data.target_vocabulary.index(t) for t in ("[start]", "[end]"))
    assert inputs["target_ids"][0] == start and target_out[-1] == end


def test_max_length_counts_subword_pieces(tmp_path):
    # A word seen once is spelt out: "Zbigniewski" is 11 pieces, the pair 14 and 15 tokens
    pairs = _pairs(30) + [("I see Zbigniewski.", "Je vois Zbigniewski.")]
    path = _write_tsv(tmp_path / "fra.txt", pairs)
    kept = dict(validation_split=0.0, test_split=0.0, max_length=9)
    words = _open(path, tmp_path, tokens="words", **kept)
    subwords = _open(path, tmp_path, **kept)
    assert words.sizes["train"] == 31 and subwords.sizes["train"] == 30
    assert "train: left out 1 pair(s) longer than 9 subword tokens (data.max_length)" in \
        subwords.report
    assert parallel.token_counts(["I see Zbigniewski."], parallel.make_vectorizer(
        vocabulary=subwords.source_vocabulary, tokens="subwords")).tolist() == [14]


def test_word_level_runs_without_tokens_in_their_meta_still_open_and_translate(tmp_path):
    path = _write_tsv(tmp_path / "fra.txt", _pairs(20))
    old = _open(path, tmp_path, tokens="words", validation_split=0.0, test_split=0.0)
    run_meta = {"source_vocabulary": old.source_vocabulary,
                "target_vocabulary": old.target_vocabulary}  # a run made before data.tokens
    config = {"data": {**DATA, "source": str(path), "validation_split": 0.0, "test_split": 0.0},
              "training": {"seed": 1}, "decoding": {"method": "greedy", "beam_width": 2}}
    assert config["data"]["tokens"] == "subwords"  # the new default does not apply to it
    data = task_for("translator").open_data(config, tmp_path, run_meta=run_meta)
    assert data.meta["tokens"] == "words" and data.source_vocabulary == old.source_vocabulary
    assert [list(x["source_ids"].numpy()) for x, _ in data.splits["train"]] == [
        list(x["source_ids"].numpy()) for x, _ in old.splits["train"]]
    new = task_for("translator").open_data(config, tmp_path)
    assert new.meta["tokens"] == "subwords" and new.source_vocabulary != old.source_vocabulary
    translate = translator.Translator(_bigram_model(), {**run_meta, "max_length": 6})
    assert not translate.subwords
    ids, _ = translate.source_ids(tf.constant(["I see 3 cats."]))
    assert [old.source_vocabulary[i] for i in ids.numpy()[0]] == ["I", "see", "3", "cats", "."]
    spec = task_for("translator").input_spec("onnx", {**run_meta, "max_length": 6,
                                                      "decoding": config["decoding"]})
    assert "WordPiece" not in spec["content"]


def test_tokens_choice_is_checked(tmp_path, runner):
    assert invoke(runner, "new", "translator", tmp_path / "fr").exit_code == 0
    with pytest.raises(config_lib.ConfigError) as error:
        config_lib.load_config(tmp_path / "fr" / "config.toml", ["data.tokens=pieces"])
    assert str(error.value).endswith("data.tokens must be one of subwords, words; got 'pieces'")
    assert config_lib.load_config(tmp_path / "fr" / "config.toml")["data"]["tokens"] == "subwords"


def _ids_client(meta, folder, monkeypatch):
    """The LiteRT / ONNX README client's tokenizer (`encode`, `decode`) for `meta`."""
    (folder / "dltool.json").write_text(json.dumps({"meta": meta}), encoding="utf-8")
    monkeypatch.chdir(folder)
    client = {"__name__": "client"}
    exec(compile(translator._IDS_CLIENT.replace("{runtime}", ""), "client.py", "exec"), client)
    return client


@pytest.mark.parametrize("tokens", ["subwords", "words"])
def test_export_client_tokenizer_is_the_graphs(builtin_subwords, tokens, tmp_path, monkeypatch):
    pairs = builtin_subwords["pairs"]
    if tokens == "subwords":
        vocabularies = builtin_subwords["source"], builtin_subwords["target"]
    else:
        words = _open("builtin:fra-eng", tmp_path, tokens="words")
        vocabularies = words.source_vocabulary, words.target_vocabulary
    meta = {"source_vocabulary": vocabularies[0], "target_vocabulary": vocabularies[1],
            "tokens": tokens, "max_length": 24}
    client = _ids_client(meta, tmp_path, monkeypatch)
    texts = [a for a, _ in pairs[::5]] + TRICKY_SOURCES + [
        "A Boston Terrier is running on the grass.", "Tom 日本 Zbigniew Brzeziński",
        "a" * 100, "a" * 101, "é" * 50, "é" * 51, "##", "ab##cd"]
    graph = translator.Translator(_bigram_model(), meta)
    ids, truncated = graph.source_ids(tf.constant(texts))
    ids = np.pad(ids.numpy(), [(0, 0), (0, 24 - ids.shape[1])])
    client_ids, client_truncated = client["encode"](texts)
    np.testing.assert_array_equal(client_ids, ids)
    assert client_truncated == truncated.numpy().tolist()
    # decoding: the target ids of the targets, [end] then padding
    targets = [b for _, b in pairs[::5]] + ["Où est-il ? L'été, 3,5 km.", "Zbigniew à Zürich"]
    target = parallel.make_vectorizer(vocabulary=vocabularies[1], tokens=tokens)
    rows = target(parallel.target_text(parallel.tokenize(tf.constant(targets))))[:, 1:]
    rows = rows.to_tensor(shape=[len(targets), 40]).numpy()
    end = vocabularies[1].index("[end]")
    tokens_before_end = np.where(np.cumsum(rows == end, axis=1) == 0, rows, 0)
    expected = parallel.detokenize(tf.gather(tf.constant(vocabularies[1]), tokens_before_end),
                                   subwords=tokens == "subwords").numpy()
    assert [client["decode"](row) for row in rows] == [t.decode() for t in expected]


# Data sources ----------------------------------------------------------------


def test_tsv_dedupes_filters_and_splits_by_source_sentence(tmp_path):
    pairs = _pairs(60) + [("I see 3 cats.", "Je vois trois chats.")]  # 2nd translation
    pairs += [("I see 5 cats.", "Je vois 5 chats.")]  # a duplicate pair
    pairs += [("Long " * 30, "Longue " * 30)]
    path = _write_tsv(tmp_path / "fra.txt", pairs, extra="\tCC-BY 2.0 (France) Attribution")
    data = _open(path, tmp_path, validation_split=0.1, test_split=0.2, max_length=20)
    assert "train: removed 1 duplicate pair(s)" in data.report
    sources = {s: {a for a, _ in p} for s, p in data.pairs.items()}
    assert not sources["train"] & sources["test"] and not sources["train"] & sources["val"]
    assert sum(data.sizes.values()) in (61, 62)  # the long pair is kept only in test
    again = _open(path, tmp_path, validation_split=0.1, test_split=0.2, max_length=20)
    assert again.pairs == data.pairs
    assert data.target_vocabulary[:2] == ["", "[UNK]"]
    assert {"[start]", "[end]", "chats", "Je"} <= set(data.target_vocabulary)
    assert set(data.run_files) == {"val-pairs.tsv", "test-pairs.tsv"}
    inputs, target_out = next(iter(data.splits["train"]))
    assert inputs["source_ids"].dtype == tf.int32 and target_out.dtype == tf.int32
    start, end = (data.target_vocabulary.index(t) for t in ("[start]", "[end]"))
    assert inputs["target_ids"][0] == start and target_out[-1] == end
    np.testing.assert_array_equal(inputs["target_ids"][1:], target_out[:-1])


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"Hello.\tBonjour.\nNo tab here\nBye.\tSalut.\n",
     ":2: expected source<TAB>target with both sides non-empty; fix the file or pass --skip-bad"),
    (b"Hello.\tBonjour.\n\tSalut.\nA.\t\nB.\tB.\n",
     ":2: expected source<TAB>target with both sides non-empty (2 such lines)"),
    (b"Hello.\tBonjour.\nBad \xff.\tMauvais.\n",
     ":2: bytes that are not UTF-8 at column 5; fix the file or pass --skip-bad"),
])
def test_bad_lines_are_one_clear_error_with_file_and_line(tmp_path, content, message):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        _open(path, tmp_path)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_skip_bad_drops_lines_and_counts_them(tmp_path):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(b"No tab\nBad \xff.\tMauvais.\n" + "".join(
        f"{a}\t{b}\n" for a, b in _pairs(10)).encode())
    data = _open(path, tmp_path, skip_bad=True, validation_split=0.0, test_split=0.0)
    assert data.sizes == {"train": 10}
    assert "skipped 1 line(s) of pairs.tsv that are not UTF-8 (--skip-bad)" in data.report
    assert "skipped 1 malformed line(s) of pairs.tsv (--skip-bad)" in data.report


def test_line_aligned_files_with_a_test_split(tmp_path):
    for split, n in (("train", 20), ("test", 4)):
        pairs = _pairs(n)
        (tmp_path / f"en.{split}.txt").write_text("".join(a + "\n" for a, _ in pairs))
        (tmp_path / f"fr.{split}.txt").write_text("".join(b + "\n" for _, b in pairs))
    data = _open(tmp_path, tmp_path, validation_split=0.1)
    assert data.sizes["test"] == 4 and data.sizes["train"] + data.sizes["val"] == 20
    (tmp_path / "fr.train.txt").write_text("".join(b + "\n" for _, b in _pairs(19)))
    with pytest.raises(DataError, match="en.train.txt has 20 lines but .*fr.train.txt has 19"):
        _open(tmp_path, tmp_path)
    (tmp_path / "fr.test.txt").unlink()
    with pytest.raises(DataError, match="fr.test.txt is missing"):
        _open(tmp_path, tmp_path)


def test_builtin_sample_ships_with_the_package(tmp_path):
    data = _open("builtin:fra-eng", tmp_path, source_vocabulary_size=100,
                 target_vocabulary_size=100)
    assert sum(data.sizes.values()) > 4900 and data.sizes["test"] > 200
    assert len(data.source_vocabulary) == 100


def test_tfds_source_offline_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
        data = _open("tfds:ted_hrlr_translate/pt_to_en", tmp_path, source_language="pt",
                     target_language="en", validation_split=0.1, test_split=0.1)
        with pytest.raises(DataError, match="has no 'fr' feature .*features: pt, en"):
            _open("tfds:ted_hrlr_translate/pt_to_en", tmp_path)
    assert set(data.splits) == {"train", "val", "test"}
    assert data.report[1].startswith("TFDS ted_hrlr_translate/pt_to_en: train ")
    inputs, _ = next(iter(data.splits["train"]))
    assert inputs["source_ids"].dtype == tf.int32


# Decoding in the graph ------------------------------------------------------

VOCABULARY = ["", "[UNK]", "[start]", "[end]", "a", "b", "x", "y", "z"]
# Next-token probabilities given the last token: greedy takes a (0.6) then z
# (0.4): 0.24; beam search finds b then [end]: 0.396.
NEXT = {"[start]": {"a": 0.6, "b": 0.4}, "a": {"x": 0.3, "y": 0.3, "z": 0.4},
        "b": {"[end]": 0.99, "x": 0.01}, "x": {"[end]": 1.0}, "y": {"[end]": 1.0},
        "z": {"[end]": 1.0}}


def _bigram_model():
    """A model whose next-token distribution depends only on the last token."""
    table = np.full((len(VOCABULARY), len(VOCABULARY)), -30.0, np.float32)
    for token, nexts in NEXT.items():
        for other, p in nexts.items():
            table[VOCABULARY.index(token), VOCABULARY.index(other)] = np.log(p)
    source_ids = keras.Input((None,), dtype="int32", name="source_ids")
    target_ids = keras.Input((None,), dtype="int32", name="target_ids")
    logits = keras.layers.Embedding(len(VOCABULARY), len(VOCABULARY),
                                    weights=[table])(target_ids)
    # The source is read (its sum times 0) so the model uses both inputs.
    logits = logits + keras.ops.cast(keras.ops.sum(source_ids), "float32") * 0.0
    return keras.Model({"source_ids": source_ids, "target_ids": target_ids}, logits)


def test_greedy_and_beam_search_in_the_graph():
    meta = {"source_vocabulary": ["", "[UNK]", "hello"], "target_vocabulary": VOCABULARY,
            "max_length": 6}
    translate = translator.Translator(_bigram_model(), meta)
    texts = tf.constant(["hello", "", "hello " * 10])
    greedy = translate(texts, "greedy")
    assert [t.decode() for t in greedy["translation"].numpy()] == ["a z", "", "a z"]
    assert greedy["truncated"].numpy().tolist() == [False, False, True]
    beam = tf.function(lambda t: translate(t, "beam", 2))(texts)
    assert [t.decode() for t in beam["translation"].numpy()] == ["b", "", "b"]
    width_one = translate(texts, "beam", 1)
    assert width_one["translation"].numpy().tolist() == greedy["translation"].numpy().tolist()


def test_bleu_and_chrf_of_known_pairs():
    perfect = translator.score(["Le chat est sur le tapis."], ["Le chat est sur le tapis."])
    assert perfect["bleu"] == 100.0 and perfect["chrf"] == 100.0
    # All n-grams right, 5 of 10 tokens: BLEU = brevity penalty exp(1 - 10/5).
    short = translator.score(["a b c d e"], ["a b c d e f g h i j"])
    assert short["bleu"] == pytest.approx(100 * np.exp(-1.0), abs=0.01)
    assert "case:mixed" in short["signature"]["bleu"] and "tok:13a" in short["signature"]["bleu"]
    assert translator.score(["x y z"], ["a b c"])["bleu"] == 0.0


# Command line ----------------------------------------------------------------


def test_new_translator_project(runner, tmp_path):
    result = invoke(runner, "new", "translator", tmp_path / "fr")
    assert result.exit_code == 0, result.output
    assert 'dltool predict "How are you?"' in result.output
    project = tmp_path / "fr"
    for name in ("config.toml", "model.py", "README.md", ".gitignore", "samples/sentences.txt",
                 "tests/test_project.py"):
        assert (project / name).is_file(), name
    config = config_lib.load_config(project / "config.toml")
    assert config.template == "translator" and config["data"]["source"] == "builtin:fra-eng"
    assert config.model["architecture"] == "rnn"
    assert config["decoding"]["method"] == "beam"


# Training and export (slow) --------------------------------------------------


@pytest.fixture(scope="module")
def trained_translator(tmp_path_factory):
    """A translator trained 4 epochs (`TRAINED_MODEL`) on the embedded sample, exported."""
    from click.testing import CliRunner

    project = tmp_path_factory.mktemp("translator") / "fr"
    runner = CliRunner()
    for args in (("new", "translator", project),
                 ("train", "--project", project, *TRAINED_MODEL),
                 ("export", "--project", project)):
        result = invoke(runner, *args)
        assert result.exit_code == 0, result.output
    return project


@pytest.mark.slow
def test_train_writes_the_split_and_vocabularies(trained_translator):
    (run,) = (trained_translator / "runs").iterdir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished"
    assert meta["meta"]["tokens"] == "subwords"
    vocabulary = meta["meta"]["target_vocabulary"]
    assert len(vocabulary) <= 400 and vocabulary[:4] == ["", "[UNK]", "[start]", "[end]"]
    assert any(token.startswith("##") for token in vocabulary)
    test_pairs = (run / "test-pairs.tsv").read_text(encoding="utf-8").splitlines()
    assert len(test_pairs) == meta["sizes"]["test"] > 200
    assert all(len(line.split("\t")) == 2 for line in test_pairs)


@pytest.mark.slow
def test_saved_model_matches_in_memory_model_on_raw_strings(trained_translator):
    from dltool.core import runs
    from dltool.engine.experiment import Experiment

    texts = ["How are you?", "", "Tom is my friend.", LONG_TEXT, "Où est-il ?"]
    run = runs.find_trained(trained_translator)
    model = Experiment.for_run(trained_translator, run).load_trained_model(run)
    in_memory = translator.Translator(model, run["meta"])
    loaded = tf.saved_model.load(str(trained_translator / "saved_models" / "fr" / "1"))
    assert {"serving_default", "translate_greedy", "translate_beam"} <= set(loaded.signatures)
    for signature, method in (("translate_greedy", "greedy"), ("translate_beam", "beam"),
                              ("serving_default", "beam")):
        out = loaded.signatures[signature](texts=tf.constant(texts))
        expected = in_memory(tf.constant(texts), method, 2)
        assert out["translation"].numpy().tolist() == expected["translation"].numpy().tolist()
        assert out["truncated"].numpy().tolist() == [False, False, False, True, False]
    assert out["translation"].numpy()[1] == b""


@pytest.mark.slow
def test_readme_client_translates_as_the_saved_model(trained_translator, monkeypatch):
    import re

    folder = trained_translator / "saved_models" / "fr" / "1"
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(folder)
    client = {"__name__": "client"}
    exec(compile(code, "client.py", "exec"), client)
    texts = ["How are you?", "Tom is my friend."]
    loaded = tf.saved_model.load(str(folder))
    for signature in ("serving_default", "translate_greedy"):
        expected = loaded.signatures[signature](texts=tf.constant(texts))["translation"]
        assert client["translate_local"](texts, signature) == [
            t.decode() for t in expected.numpy()]
    # In a fresh process, where nothing imported tensorflow_text (its WordPiece op) before
    import os
    import subprocess
    import sys

    (folder / "client.py").write_text(code, encoding="utf-8")
    try:
        out = subprocess.run([sys.executable, "-c", "import json, client; print(json.dumps("
                              "client.translate_local(['How are you?'], 'translate_greedy')))"],
                             capture_output=True, text=True, cwd=folder, timeout=300,
                             env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    finally:
        (folder / "client.py").unlink()
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == client["translate_local"](
        texts[:1], "translate_greedy")


# Sentences the clients' tokenizer must split as dltool's graph does: none,
# punctuation, numbers, apostrophes, hyphens, non-breaking spaces, too long.
TRICKY_SOURCES = ["", "Hello... world!", "It's 3.5 km: l'été, n'est-ce pas?", "well-known",
                  "a\u00a0b\u2019c", "word " * 40, "A Boston Terrier is running on the grass.",
                  "Zbigniew Brzeziński 日本", "x" * 101]


@pytest.mark.slow
@pytest.mark.parametrize("export_format", ["litert", "onnx"])
def test_greedy_exports_translate_as_the_saved_model(runner, trained_translator,
                                                     export_format, monkeypatch):
    import re

    result = invoke(runner, "export", "--project", trained_translator, "--format",
                    export_format)
    assert result.exit_code == 0, result.output
    folder = trained_translator / "exports" / "fr" / export_format / "1"
    metadata = json.loads((folder / "dltool.json").read_text())
    length = metadata["meta"]["max_length"]
    batch = 1 if export_format == "litert" else None
    assert metadata["input"]["shape"] == [batch, length]
    assert metadata["input"]["output"]["shape"] == [batch, length + 1]
    (run,) = (trained_translator / "runs").iterdir()
    sources = [line.split("\t")[0] for line in
               (run / "test-pairs.tsv").read_text(encoding="utf-8").splitlines()]
    texts = sources[:60] + TRICKY_SOURCES
    loaded = tf.saved_model.load(str(trained_translator / "saved_models" / "fr" / "1"))
    expected = [t.decode() for t in loaded.signatures["translate_greedy"](
        texts=tf.constant(texts))["translation"].numpy()]
    code = re.search(r"```python\n(.*?)```", (folder / "README.md").read_text(), re.S).group(1)
    monkeypatch.chdir(folder)
    client = {"__name__": "client"}
    exec(compile(code, "client.py", "exec"), client)
    assert client["translate"](texts) == expected
    # the model tells sentences apart, or agreement would say little
    assert len(set(expected)) > 3


@pytest.mark.slow
def test_predict_prints_translations_and_warns_on_overlong_input(runner, trained_translator,
                                                                  monkeypatch):
    monkeypatch.chdir(trained_translator)
    result = invoke(runner, "predict", "How are you?", "", LONG_TEXT)
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("Warning: 'the cat is on the mat and the cat is on '... is longer")
    assert lines[1].startswith("Model: ") and lines[1].endswith("saved_models/fr/1")
    assert lines[2].startswith("How are you? ->")  # a 1-epoch tiny model may say nothing
    assert lines[3].strip() == "->"  # the empty string translates to an empty string
    result = invoke(runner, "predict", "--json", "Hello.")
    (item,) = json.loads(result.output)
    assert item["input"] == "Hello." and item["truncated"] is False
    assert isinstance(item["translation"], str)


@pytest.mark.slow
def test_predict_with_keras_file(runner, trained_translator):
    keras_file = trained_translator / "saved_models" / "fr" / "1" / "model.keras"
    result = invoke(runner, "predict", "Hello.", "--model", keras_file)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[1].startswith("Hello. ->")


@pytest.mark.slow
def test_evaluate_reports_bleu_chrf_and_writes_translations(runner, trained_translator):
    result = invoke(runner, "evaluate", "--project", trained_translator)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("Run ") and "test split" in lines[0]
    assert lines[1].startswith("BLEU ") and "tok:13a" in lines[1] and "case:mixed" in lines[1]
    assert lines[2].startswith("chrF ")
    (run,) = (trained_translator / "runs").iterdir()
    rows = (run / "translations-test.tsv").read_text(encoding="utf-8").splitlines()
    assert rows[0] == "source\treference\ttranslation"
    test_pairs = (run / "test-pairs.tsv").read_text(encoding="utf-8").splitlines()
    assert [r.rsplit("\t", 1)[0] for r in rows[1:]] == test_pairs
    evaluation = json.loads((run / "evaluation-test.json").read_text())
    assert 0.0 <= evaluation["bleu"] <= 100.0 and evaluation["examples"] == len(test_pairs)
    n = len(test_pairs)
    assert f"Translated {n}/{n} sentences" in result.stderr  # progress, off stdout
    report = (run / "report.html").read_text(encoding="utf-8")
    assert "Sample translations (test)" in report and f"BLEU {evaluation['bleu']:.2f}" in report
    sources = [r.split("\t")[0] for r in rows[1:]]
    shown = sum(str(markupsafe.escape(source)) in report for source in sources)
    assert shown >= min(20, len(sources))  # a short source can also match inside a longer one
    listed = invoke(runner, "runs", "--project", trained_translator).output
    score = f"BLEU {evaluation['bleu']:.2f}" if evaluation["bleu"] > 1 else \
        f"BLEU {evaluation['bleu']:.4f}"
    assert score in listed, listed


@pytest.mark.slow
def test_bad_data_stops_training_then_skip_bad_trains(runner, tmp_path):
    project = tmp_path / "proj"
    assert invoke(runner, "new", "translator", project).exit_code == 0
    data = _write_tsv(tmp_path / "pairs.tsv", _pairs(40))
    with open(data, "a", encoding="utf-8") as f:
        f.write("only one side\n")
    args = ("train", "--project", project, "--epochs", 1, "--set", f"data.source={data}",
            *SMALL_MODEL)
    result = invoke(runner, *args)
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"Error: {data}:41: expected source<TAB>target with both sides non-empty; "
        "fix the file or pass --skip-bad")
    assert not (project / "runs").exists()
    result = invoke(runner, *args, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 1 malformed line(s) of pairs.tsv (--skip-bad)" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("architecture, cell", [("rnn", "lstm"), ("transformer", "gru")])
def test_each_architecture_trains_one_step_with_masked_loss(tmp_path, runner, architecture,
                                                             cell):
    from dltool.engine import experiment as experiment_lib

    project = tmp_path / "proj"
    assert invoke(runner, "new", "translator", project).exit_code == 0
    config = config_lib.load_config(project / "config.toml", [
        f"model.architecture={architecture}", f"model.cell={cell}", "model.units=8",
        "model.embedding_dim=8", "model.heads=2", "model.transformer_layers=1"])
    module = experiment_lib.load_model_module(project)
    model, _ = experiment_lib.build_model(module, config,
                                          task_for("translator").model_kwargs(_PAIR_META))
    rng = np.random.default_rng(0)
    inputs = {"source_ids": rng.integers(1, 30, (4, 6)).astype("int32"),
              "target_ids": rng.integers(1, 20, (4, 5)).astype("int32")}
    target_out = rng.integers(1, 20, (4, 5)).astype("int32")
    inputs["target_ids"][:2, 3:] = 0  # two short targets: padding after 3 tokens
    target_out[:2, 3:] = 0
    loss, accuracy = model.evaluate(inputs, target_out, batch_size=4, verbose=0)
    logits = np.asarray(model(inputs, training=False))
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    real = target_out != 0
    expected = -np.take_along_axis(log_probs, target_out[..., None], -1)[..., 0][real].mean()
    assert loss == pytest.approx(expected, rel=1e-4)  # the mean over real tokens only
    assert accuracy == pytest.approx((logits.argmax(-1) == target_out)[real].mean(), abs=1e-6)
    history = model.fit(inputs, target_out, epochs=1, batch_size=4, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_transformer_outputs_at_real_positions_ignore_padding(tmp_path, runner):
    # Keras carries the padding mask from TokenAndPositionEmbedding(mask_zero)
    # to keras_hub's TransformerEncoder / TransformerDecoder, which turn it
    # into their attention masks (encoder self-attention, cross-attention,
    # decoder self-attention with the causal mask); the UserWarnings "Layer
    # 'query' ... will destroy the mask" come from layers inside them after
    # that, and the translator task (dltool/tasks/translator.py) silences them. So the same sentences with any number
    # of padding tokens more give the same logits at their real positions
    # (source padding: the encoder and the attention to the source; target
    # padding comes after the real tokens, which the causal mask hides anyway).
    from dltool.engine import experiment as experiment_lib

    project = tmp_path / "proj"
    assert invoke(runner, "new", "translator", project).exit_code == 0
    config = config_lib.load_config(project / "config.toml", [
        "model.architecture=transformer", "model.units=16", "model.embedding_dim=8",
        "model.heads=2", "model.transformer_layers=1", "model.dropout=0.5"])
    model, _ = experiment_lib.build_model(experiment_lib.load_model_module(project), config,
                                          task_for("translator").model_kwargs(_PAIR_META))
    rng = np.random.default_rng(0)
    source = rng.integers(2, 30, (3, 6)).astype("int32")
    source[1, 4:], source[2, 2:] = 0, 0  # shorter sentences, padded
    target = rng.integers(2, 20, (3, 5)).astype("int32")
    target[1, 3:] = 0
    real = target != 0

    def logits(source, target):
        with warnings.catch_warnings(record=True) as caught:
            out = np.asarray(model({"source_ids": source, "target_ids": target}, training=False))
        assert not [w for w in caught if "destroy the mask" in str(w.message)]
        return out[:, :5]

    def pad(ids, n):
        return np.pad(ids, ((0, 0), (0, n)))

    base = logits(source, target)
    for more_source, more_target in ((12, 0), (0, 9), (12, 9)):
        padded = logits(pad(source, more_source), pad(target, more_target))
        np.testing.assert_allclose(padded[real], base[real], atol=1e-5)
    # The check can fail: what the mask hides changes the outputs once it is
    # a token (the third sentence, 2 tokens long, gets 4 more).
    unpadded = source.copy()
    unpadded[2, 2:] = 5
    assert np.abs(logits(unpadded, target)[2] - base[2]).max() > 1e-3


def test_time_budget_stops_training_and_spans_the_schedule():
    from dltool.engine import callbacks

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(keras.optimizers.SGD(0.5), "mse")
    x, y = np.ones((64, 2), np.float32), np.ones((64, 1), np.float32)
    batches = []
    counter = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: batches.append(batch))
    schedule = callbacks.EpochLearningRate("cosine", epochs=5, time_budget=3600.0,
                                           seconds_done=1800.0)
    history = model.fit(x, y, batch_size=8, epochs=5, verbose=0, callbacks=[
        schedule, callbacks.TimeBudget(1e-9), counter])
    assert len(history.history["loss"]) == 1 and batches == [0]  # stopped after one batch
    # Half the budget was spent before: the cosine is at half the peak rate.
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.25, rel=1e-3)
    spent = callbacks.TimeBudget(60.0, seconds_done=61.0)
    model.fit(x, y, batch_size=8, epochs=2, verbose=0, callbacks=[spent])
    assert spent.stopped
