"""The sentiment template: text sources and their checks, train, export on raw
strings, predict from the command line."""

import json

import numpy as np
import pytest

from conftest import invoke
from dltool.core import config as config_lib
from dltool._tf import tf
from dltool.data import text
from dltool.core.errors import ConfigError, DataError

DATA = config_lib.defaults(config_lib.schema_for("sentiment"))["data"]
SMALL_MODEL = ("--set", "model.embedding_dim=16", "--set", "model.units=16",
               "--set", "data.sequence_length=24", "--set", "training.verbose=0")
LONG_TEXT = "a fine film , " * 5000
ODD_TEXTS = ["", LONG_TEXT, "Très émouvant, un chef-d'œuvre ! 😀", "terrible , boring film"]


def _open(source, root, **changes):
    return text.open_text_data({**DATA, "source": str(source), **changes}, root, seed=1)


def _write_tsv(path, rows, header="sentence\tlabel"):
    lines = ([header] if header else []) + [f"{t}\t{y}" for t, y in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _rows(n, labels=("0", "1")):
    return [(f"text number {i} is {'good' if i % 2 else 'bad'}", labels[i % 2]) for i in range(n)]


# Data sources --------------------------------------------------------------


def test_tsv_with_header_seeded_split_and_train_only_vocabulary(tmp_path):
    train = _write_tsv(tmp_path / "train.tsv", _rows(20))
    _write_tsv(tmp_path / "test.tsv", [("an unseenword here", "1")])
    data = _open(tmp_path, tmp_path, validation_split=0.25)
    assert data.class_names == ["0", "1"]
    assert data.sizes == {"train": 16, "val": 4, "test": 1}
    assert "unseenword" not in data.vocabulary and "good" in data.vocabulary
    assert data.vocabulary[:2] == ["", "[UNK]"]
    features, label = next(iter(data.splits["train"]))
    length, per_word = DATA["sequence_length"], DATA["subwords_per_word"]
    assert features["token_ids"].dtype == tf.int32
    assert features["token_ids"].shape == (length,)
    assert features["subword_ids"].dtype == tf.int32
    assert features["subword_ids"].shape == (length, per_word)
    assert label.dtype == tf.int32
    again = _open(train, tmp_path, validation_split=0.25)
    assert [int(y) for _, y in again.splits["val"]] == [int(y) for _, y in data.splits["val"]]


def test_csv_with_quoted_commas_and_configured_columns(tmp_path):
    path = tmp_path / "reviews.csv"
    path.write_text('id,review,stars\n1,"good, really good",pos\n2,"bad, so bad",neg\n'
                    '3,"fine, fine",pos\n4,"awful",neg\n', encoding="utf-8")
    data = _open(path, tmp_path, text_column="review", label_column="stars",
                 validation_split=0.0, label_names="negative,positive")
    assert data.class_names == ["negative", "positive"]
    assert data.sizes == {"train": 4}


def test_two_columns_without_header(tmp_path):
    path = _write_tsv(tmp_path / "data.tsv", _rows(6), header=None)
    data = _open(path, tmp_path, validation_split=0.0)
    assert data.sizes == {"train": 6}
    assert "has no header" in data.report[-2]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n  \n", "is empty"),
    (b"sentence\tlabel\n", "has a header but no examples"),
    (b"review\tsentiment\ngood\t1\n",
     "no column named 'sentence' (columns found: review, sentiment); "
     "set data.text_column and data.label_column"),
    (b"sentence\tlabel\ngood\t1\nbad\t0\nmeh\t2\nugh\tneutral\n",
     "labels outside data.labels (0, 1): '2', 'neutral'"),
    (b"sentence\tlabel\ngood\t1\nbad\t0\nno label here\n",
     ":4: expected at least 2 fields; fix the file or pass --skip-bad"),
    (b"sentence\tlabel\ngood\t1\nbad \xff\xfe film\t0\n",
     ":3: bytes that are not UTF-8 at column 5; fix the file or pass --skip-bad"),
])
def test_bad_files_are_one_clear_error(tmp_path, content, message):
    path = tmp_path / "train.tsv"
    path.write_bytes(content)
    with pytest.raises(DataError) as error:
        _open(path, tmp_path, labels="0,1")
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_skip_bad_drops_lines_and_counts_them(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_bytes(b"sentence\tlabel\ngood\t1\nbad \xff film\t0\nno label\n"
                     + b"".join(f"film {i}\t{i % 2}\n".encode() for i in range(6)))
    data = _open(path, tmp_path, validation_split=0.0, skip_bad=True)
    assert data.sizes == {"train": 7}
    assert "skipped 1 line(s) of train.tsv that are not UTF-8 (--skip-bad)" in data.report
    assert "skipped 1 line(s) of train.tsv with missing fields (--skip-bad)" in data.report


def test_a_missing_data_file_is_named_as_a_file(tmp_path):
    with pytest.raises(DataError, match=f"^data file {tmp_path}/reviews.csv does not exist$"):
        _open("reviews.csv", tmp_path)
    with pytest.raises(DataError, match=f"^data folder {tmp_path}/reviews does not exist$"):
        _open("reviews", tmp_path)


def test_label_names_must_match_the_labels(tmp_path):
    path = _write_tsv(tmp_path / "train.tsv", _rows(4))
    with pytest.raises(ConfigError, match="data.label_names has 3 names for 2 labels"):
        _open(path, tmp_path, label_names="a,b,c")


def test_class_folders_with_test_split_and_bad_file(tmp_path):
    for split, n in (("train", 6), ("test", 2)):
        for label in ("neg", "pos", "unsup"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{i}.txt").write_text(f"{label} review {i}", encoding="utf-8")
    bad = tmp_path / "train" / "pos" / "bad.txt"
    bad.write_bytes(b"first line\nsecond \xff line")
    with pytest.raises(DataError, match=f"1 unusable text file\\(s\\): {bad}:2 "):
        _open(tmp_path, tmp_path, labels="neg,pos")
    data = _open(tmp_path, tmp_path, labels="neg,pos", skip_bad=True, validation_split=0.5)
    assert data.class_names == ["neg", "pos"]
    assert data.sizes == {"train": 6, "val": 6, "test": 4}
    assert "ignored folders not in data.labels: unsup" in data.report
    assert "skipped 1 unusable text file(s) (--skip-bad)" in data.report


def test_builtin_sample_ships_with_the_package(tmp_path):
    data = _open("builtin:sst2", tmp_path, labels="0,1", label_names="negative,positive")
    assert data.class_names == ["negative", "positive"]
    assert data.sizes == {"train": 1800, "val": 200, "test": 200}


def test_tfds_source_offline_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=20, data_dir=str(tmp_path)):
        data = _open("tfds:imdb_reviews", tmp_path, labels="0,1")  # TFDS brings its labels
    assert data.class_names == ["neg", "pos"]
    assert {"train", "val"} <= set(data.splits)  # val: a seeded split of train
    features, label = next(iter(data.splits["train"]))
    assert features["token_ids"].dtype == tf.int32 and label.dtype == tf.int32


def test_subword_ids_line_up_with_the_token_ids():
    texts = tf.constant(["A charming, un-funny film!", "", "été 😀"])
    vectorizer = text.make_vectorizer(5, vocabulary=["", "[UNK]", "a", "film"])
    features = text.vectorize(vectorizer, texts, subword_buckets=1000, subwords_per_word=6)
    token_ids, subword_ids = features["token_ids"].numpy(), features["subword_ids"].numpy()
    assert subword_ids.shape == (3, 5, 6) and subword_ids.dtype == np.int32
    # A word has subwords exactly where it has a token id: words line up.
    np.testing.assert_array_equal(subword_ids[..., 0] > 0, token_ids > 0)
    assert (subword_ids >= 0).all() and (subword_ids <= 1000).all()
    # "<a>" has one 3-gram; "unfunny" (punctuation stripped) more than 6: cut.
    assert list(subword_ids[0, 0]) == [subword_ids[0, 0, 0], 0, 0, 0, 0, 0]
    assert (subword_ids[0, 2] > 0).all()
    # The same word hashes the same, in any text and any run.
    again = text.subword_ids(tf.constant(["film"]), 1, 1000, 6).numpy()
    np.testing.assert_array_equal(again[0, 0], subword_ids[0, 3])
    assert not subword_ids[1].any()


def test_standardize_handles_unicode_and_invalid_bytes():
    out = text.standardize(tf.constant(["ÉTÉ, Très BIEN!", b"bad \xff byte"])).numpy()
    assert out[0].decode() == "été très bien"
    assert out[1].decode() == "bad \ufffd byte"


# Command line ----------------------------------------------------------------


def test_new_sentiment_project(runner, tmp_path):
    result = invoke(runner, "new", "sentiment", tmp_path / "reviews")
    assert result.exit_code == 0, result.output
    assert "dltool predict --file samples/reviews.txt" in result.output
    project = tmp_path / "reviews"
    for name in ("config.toml", "model.py", "README.md", ".gitignore", "samples/reviews.txt",
                 "tests/test_project.py"):
        assert (project / name).is_file(), name
    config = config_lib.load_config(project / "config.toml")
    assert config.template == "sentiment" and config["data"]["labels"] == "0,1"
    assert config.model["cell"] in ("lstm", "gru", "rnn")
    result = invoke(runner, "new", "sentiment", tmp_path / "other", "--data", "reviews.csv")
    config = config_lib.load_config(tmp_path / "other" / "config.toml")
    assert config["data"]["source"] == "reviews.csv" and config["data"]["labels"] == ""


def test_predict_needs_inputs(runner):
    result = invoke(runner, "predict")
    assert result.exit_code == 2 and "give INPUTS or --file PATH" in result.output


def test_predict_file_with_bad_bytes_is_one_line(runner, tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes(b"good\n\xff bad\n")
    result = invoke(runner, "predict", "--file", path, "--model", tmp_path)
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {path}:2: bytes that are not UTF-8 at column 1; "
                                     "fix the file")


# Training and export (slow) --------------------------------------------------


@pytest.mark.slow
def test_train_records_vocabulary_and_labels(trained_text_project):
    (run,) = (trained_text_project / "runs").iterdir()
    meta = json.loads((run / "run.json").read_text())
    assert meta["status"] == "finished"
    assert meta["sizes"] == {"train": 1800, "val": 200, "test": 200}
    assert meta["meta"]["class_names"] == ["negative", "positive"]
    assert meta["meta"]["sequence_length"] == 12
    assert meta["meta"]["vocabulary"][:2] == ["", "[UNK]"]


@pytest.mark.slow
def test_saved_model_matches_in_memory_model_on_raw_strings(trained_text_project):
    from dltool.core import runs
    from dltool.engine.experiment import Experiment
    from dltool.tasks import calibration

    run = runs.find_trained(trained_text_project)
    model = Experiment.for_run(trained_text_project, run).load_trained_model(run)
    meta = run["meta"]
    vectorizer = text.make_vectorizer(12, vocabulary=meta["vocabulary"])
    features = text.vectorize(vectorizer, tf.constant(ODD_TEXTS), meta["subword_buckets"],
                              meta["subwords_per_word"])
    assert set(features) == {"token_ids", "subword_ids"}
    # The export applies the temperature fitted after training (on by default):
    # softmax(log(p) / T) of the Keras model's probabilities p.
    assert meta["temperature"] != 1.0
    expected = calibration.scaled(np.asarray(model(features, training=False)),
                                  meta["temperature"])

    loaded = tf.saved_model.load(str(trained_text_project / "saved_models" / "reviews" / "1"))
    outputs = loaded.signatures["serving_default"](texts=tf.constant(ODD_TEXTS))
    probabilities = outputs["probabilities"].numpy()
    assert probabilities.dtype == np.float32 and probabilities.shape == (4, 2)
    assert np.isfinite(probabilities).all()
    np.testing.assert_allclose(probabilities, expected, atol=1e-5)
    names = ["negative", "positive"]
    assert [c.decode() for c in outputs["label"].numpy()] == [names[i] for i in expected.argmax(-1)]
    assert [c.decode() for c in outputs["classes"].numpy()[0]] == names
    np.testing.assert_allclose(outputs["score"].numpy(), expected.max(-1), atol=1e-5)


@pytest.mark.slow
def test_predict_texts_and_file(runner, trained_text_project, tmp_path, monkeypatch):
    monkeypatch.chdir(trained_text_project)
    result = invoke(runner, "predict", "a gorgeous , moving film", "flat and dull")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("Model: ") and lines[0].endswith("saved_models/reviews/1")
    assert lines[1].split(": ")[0] == "a gorgeous , moving film"
    assert lines[1].split(": ")[1].split()[0] in ("negative", "positive")
    texts = tmp_path / "texts.txt"
    texts.write_text("first text\n\nsecond text ünïcode\r\nthird\n", encoding="utf-8")
    result = invoke(runner, "predict", "--file", texts, "--json", "--top-k", 2)
    items = json.loads(result.output)
    assert [i["input"] for i in items] == ["first text", "second text ünïcode", "third"]
    assert [t["label"] for t in items[0]["top"]] in (["negative", "positive"],
                                                      ["positive", "negative"])


@pytest.mark.slow
def test_predict_with_keras_file(runner, trained_text_project):
    keras_file = trained_text_project / "saved_models" / "reviews" / "1" / "model.keras"
    result = invoke(runner, "predict", "", "a fine film", "--model", keras_file)
    assert result.exit_code == 0, result.output
    assert len(result.output.strip().splitlines()) == 3


@pytest.mark.slow
def test_evaluate_uses_the_test_file(runner, trained_text_project):
    result = invoke(runner, "evaluate", "--project", trained_text_project)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()  # progress lines go to stderr
    assert lines[0].endswith("test split, 200 examples")
    assert lines[5].startswith("NLL ") and lines[6].startswith("ECE (15 bins) ")
    assert [line.split()[0] for line in lines[8:]] == ["negative", "positive"]


@pytest.mark.slow
def test_bad_data_stops_training_then_skip_bad_trains(runner, tmp_path):
    project = tmp_path / "proj"
    assert invoke(runner, "new", "sentiment", project).exit_code == 0
    data = tmp_path / "data.tsv"
    data.write_bytes(b"sentence\tlabel\n" + b"".join(
        f"film number {i} {'good' if i % 2 else 'bad'}\t{i % 2}\n".encode() for i in range(40))
        + b"broken \xc3\x28 bytes\t1\n")
    args = ("train", "--project", project, "--epochs", 1, "--set", f"data.source={data}",
            *SMALL_MODEL)
    result = invoke(runner, *args)
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {data}:42: bytes that are not UTF-8 at column 8; "
                                     "fix the file or pass --skip-bad")
    assert not (project / "runs").exists()
    result = invoke(runner, *args, "--skip-bad")
    assert result.exit_code == 0, result.output
    assert "skipped 1 line(s) of data.tsv that are not UTF-8 (--skip-bad)" in result.output
    result = invoke(runner, "train", "--project", project, "--set", "data.text_column=review")
    assert result.exit_code == 1
    assert "no column named 'review' (columns found: sentence, label)" in result.output


@pytest.mark.slow
@pytest.mark.parametrize("cell, bidirectional, layers", [
    ("lstm", True, 2), ("gru", False, 1), ("rnn", True, 1), ("rnn", False, 2)])
def test_each_cell_builds_and_trains_one_step(project_files, cell, bidirectional, layers):
    from dltool.engine import experiment as experiment_lib

    config = config_lib.load_config(project_files / "config.toml", [
        f"model.cell={cell}", f"model.bidirectional={str(bidirectional).lower()}",
        f"model.layers={layers}", "model.units=8", "model.embedding_dim=8",
        "model.optimizer=sgd", "model.learning_rate=0.05", "data.sequence_length=12"])
    module = experiment_lib.load_model_module(project_files)
    model, _ = experiment_lib.build_model(module, config, {"num_classes": 3, "vocabulary_size": 50})
    rng = np.random.default_rng(0)
    token_ids = rng.integers(1, 50, (8, 12)).astype("int32")
    token_ids[:, 6:] = 0
    subword_ids = rng.integers(1, 100, (8, 12, config["data"]["subwords_per_word"]))
    subword_ids[:, 6:] = 0
    features = {"token_ids": token_ids, "subword_ids": subword_ids.astype("int32")}
    history = model.fit(features, np.arange(8) % 3, epochs=1, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert model.output_shape == (None, 3)


@pytest.fixture(scope="module")
def project_files(tmp_path_factory):
    from click.testing import CliRunner

    project = tmp_path_factory.mktemp("cells") / "proj"
    assert invoke(CliRunner(), "new", "sentiment", project).exit_code == 0
    return project


def test_unknown_cell_is_a_config_error(project_files):
    from dltool.engine import experiment as experiment_lib

    config = config_lib.load_config(project_files / "config.toml", ["model.cell=transformer"])
    module = experiment_lib.load_model_module(project_files)
    with pytest.raises(ConfigError, match="model.cell must be one of lstm, gru, rnn; got"):
        experiment_lib.build_model(module, config, {"num_classes": 2, "vocabulary_size": 50})
