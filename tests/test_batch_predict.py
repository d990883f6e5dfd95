"""Batch prediction: folders, table columns, `--output`, `--skip-bad`, streaming.

Images go through the trained and exported image-classifier project of
conftest. Texts go through small real SavedModels written here (a sentiment
classifier that says `positive` when a text holds "good", a translator that
upper-cases), so that their predictions are known from their inputs.
"""

import json
import shutil
from pathlib import Path

import pytest
from conftest import invoke

from dltool._tf import tf
from dltool.core import tables
from dltool.engine import predict as predict_lib

POSITIVE = 0.875  # the text export's probability of `positive` for a text holding "good"


def _save_text_export(folder, template, serve_fn, meta):
    """Saves `serve_fn` (strings in) as a SavedModel with a `dltool.json` for `template`."""
    module = tf.Module()
    module.serve = tf.function(serve_fn, input_signature=[
        tf.TensorSpec([None], tf.string, name="texts")])
    tf.saved_model.save(module, str(folder), signatures={"serving_default": module.serve})
    (folder / "dltool.json").write_text(json.dumps({"template": template, "meta": meta}))
    return folder


def _sentiment(texts):
    good = tf.strings.regex_full_match(texts, ".*good.*")
    positive = tf.where(good, POSITIVE, 1 - POSITIVE)
    probabilities = tf.stack([1 - positive, positive], axis=-1)
    names = tf.constant(["negative", "positive"])
    count = tf.shape(texts)[0]
    return {"probabilities": probabilities, "classes": tf.tile(names[tf.newaxis], [count, 1]),
            "label": tf.gather(names, tf.argmax(probabilities, axis=-1)),
            "score": tf.reduce_max(probabilities, axis=-1)}


def _translator(texts):
    return {"translation": tf.strings.upper(texts),
            "truncated": tf.strings.length(texts) > 40}


@pytest.fixture(scope="module")
def text_exports(tmp_path_factory):
    root = tmp_path_factory.mktemp("exports")
    return {
        "sentiment": _save_text_export(root / "sentiment" / "1", "sentiment", _sentiment,
                                       {"class_names": ["negative", "positive"]}),
        "translator": _save_text_export(root / "translator" / "1", "translator", _translator,
                                        {}),
    }


@pytest.fixture(scope="module")
def image_folder(trained_project, tmp_path_factory):
    """A folder of the project's sample images, nested, with files predict must ignore."""
    folder = tmp_path_factory.mktemp("images") / "inputs"
    samples = sorted((trained_project / "samples").glob("*.jpg"))
    (folder / "more" / "deeper").mkdir(parents=True)
    for sample in samples:
        shutil.copy(sample, folder / sample.name)
    shutil.copy(samples[0], folder / "more" / "deeper" / "again.JPG")
    shutil.copy(samples[0], folder / ".hidden.jpg")
    (folder / "notes.md").write_text("not an input")
    return folder


def _expected_order(folder):
    return sorted(str(p) for p in folder.rglob("*") if p.is_file()
                  and p.suffix.lower() == ".jpg" and not p.name.startswith("."))


def _one_by_one(runner, project, paths, top_k):
    """The predictions `dltool predict PATHS --json` gives (today's path)."""
    result = invoke(runner, "predict", *paths, "--project", project, "--json", "--top-k", top_k)
    assert result.exit_code == 0, result.output
    return {r["input"]: [(t["label"], t["probability"]) for t in r["top"]]
            for r in json.loads(result.stdout)}


def _rows_as_predictions(rows, top_k):
    return {row["input"]: [(row["label" if rank == 1 else f"label_{rank}"],
                            float(row["probability" if rank == 1 else f"probability_{rank}"]))
                           for rank in range(1, top_k + 1)] for row in rows}


def _assert_same_predictions(got, expected):
    assert list(got) == list(expected)
    for item, top in expected.items():
        assert [label for label, _ in got[item]] == [label for label, _ in top]
        assert [p for _, p in got[item]] == pytest.approx([p for _, p in top], abs=1e-6)


@pytest.mark.slow  # the trained project
def test_a_folder_predicts_like_its_files_one_by_one(runner, trained_project, image_folder,
                                                      tmp_path):
    output = tmp_path / "predictions.csv"
    result = invoke(runner, "predict", image_folder, "--project", trained_project,
                    "--top-k", 2, "--output", output)
    assert result.exit_code == 0, result.output
    paths = _expected_order(image_folder)
    assert result.stdout.splitlines()[1] == f"Wrote {len(paths)} predictions to {output}"
    rows = tables.read_rows(output)
    assert list(rows[0]) == ["input", "label", "probability", "label_2", "probability_2"]
    _assert_same_predictions(_rows_as_predictions(rows, 2),
                             _one_by_one(runner, trained_project, paths, 2))


@pytest.mark.slow  # the trained project
def test_a_table_column_names_images_relative_to_the_table(runner, trained_project,
                                                           image_folder, tmp_path):
    paths = _expected_order(image_folder)
    relative = [str(Path(p).relative_to(image_folder)) for p in paths]
    table = image_folder / "list.csv"
    tables.write_rows(table, [["id", "file"], *([i, name] for i, name in enumerate(relative))])
    output = tmp_path / "predictions.tsv"
    result = invoke(runner, "predict", table, "--column", "file", "--project", trained_project,
                    "--top-k", 1, "--output", output)
    assert result.exit_code == 0, result.output
    rows = tables.read_rows(output, delimiter="\t")
    expected = _one_by_one(runner, trained_project, paths, 1)
    _assert_same_predictions(_rows_as_predictions(rows, 1),
                             dict(zip(relative, expected.values())))

    result = invoke(runner, "predict", table, "--column", "path", "--project", trained_project)
    assert result.exit_code == 1
    assert result.output.strip() == (f"Error: {table}: no column named 'path' "
                                     "(columns found: id, file)")


@pytest.mark.slow  # the trained project
def test_a_bad_input_in_a_later_batch_stops_the_run_and_writes_nothing(
        runner, trained_project, tmp_path):
    sample = trained_project / "samples" / "cat.jpg"
    bad = tmp_path / "notes.jpg"
    bad.write_text("just some text")
    cells = [str(sample)] * 300
    cells[280] = str(bad)  # after the first batch of 256 was predicted and written
    table = tmp_path / "inputs.csv"
    tables.write_rows(table, [["image"], *([c] for c in cells)])
    output = tmp_path / "predictions.csv"
    output.write_text("kept\n")
    result = invoke(runner, "predict", table, "--column", "image", "--project", trained_project,
                    "--output", output)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr.splitlines()[-1] == \
        f"Error: {bad}: not a JPEG, PNG, GIF or BMP image"
    assert output.read_text() == "kept\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["inputs.csv", "notes.jpg", "predictions.csv"]  # no temporary file left

    result = invoke(runner, "predict", table, "--column", "image", "--project", trained_project)
    assert result.exit_code == 1 and result.stdout == ""  # printed lines are held too


@pytest.mark.slow  # the trained project
def test_skip_bad_names_each_unusable_input_and_predicts_the_rest(runner, trained_project,
                                                                  image_folder, tmp_path):
    folder = tmp_path / "mixed"
    shutil.copytree(image_folder, folder)
    sample = (trained_project / "samples" / "cat.jpg").read_bytes()
    start_of_scan = sample.index(b"\xff\xda")
    broken = {  # file name: the reason predict gives
        "empty.png": "empty file",
        "text.gif": "not a JPEG, PNG, GIF or BMP image",
        "corrupt.jpg": "cannot be decoded: jpeg::Uncompress failed. Invalid JPEG data or crop "
                       "window.",
    }
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.gif").write_text("GIF? no")
    (folder / "corrupt.jpg").write_bytes(sample[:start_of_scan + 2] + b"\x00\x07"
                                        + bytes(range(256)) * 4)
    output = tmp_path / "predictions.csv"
    result = invoke(runner, "predict", folder, "--project", trained_project, "--skip-bad",
                    "--output", output, "--top-k", 1)
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("Skipped")]
    assert sorted(skipped[:-1]) == sorted(f"Skipped {folder / name}: {reason}"
                                          for name, reason in broken.items())
    assert skipped[-1] == "Skipped 3 unusable input(s) (--skip-bad)"
    good = [p for p in _expected_order(folder) if not p.endswith(tuple(broken))]
    assert [row["input"] for row in tables.read_rows(output)] == good


def test_texts_from_a_folder_and_a_tsv_column_are_written_spreadsheet_safe(
        runner, text_exports, tmp_path):
    model = text_exports["sentiment"]
    folder = tmp_path / "reviews"
    (folder / "b").mkdir(parents=True)
    (folder / "a.txt").write_text("a good film\n")
    (folder / "b" / "c.txt").write_text("=HYPERLINK(\"http://x\") dull")
    (folder / "b" / "d.TXT").write_bytes(b"caf\xe9")  # Latin-1, not UTF-8
    (folder / "skip.md").write_text("good")
    texts = ["good, \"quoted\" fun", "-2 stars", "'plain' and dull"]
    table = tmp_path / "reviews.tsv"
    table.write_text("id\tsentence\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(texts)),
                     encoding="utf-8")
    output = tmp_path / "out.csv"
    result = invoke(runner, "predict", folder, table, "--column", "sentence", "--model", model,
                    "--trusted", "--skip-bad", "--top-k", 2, "--output", output)
    assert result.exit_code == 0, result.output
    assert f"Skipped {folder / 'b' / 'd.TXT'}:1: bytes that are not UTF-8" in result.stderr
    rows = tables.read_rows(output)
    inputs = [str(folder / "a.txt"), str(folder / "b" / "c.txt"), *texts]
    assert [row["input"] for row in rows] == inputs
    contents = ["a good film", "=HYPERLINK(\"http://x\") dull", *texts]
    assert [row["label"] for row in rows] == \
        ["positive" if "good" in text else "negative" for text in contents]
    assert {float(row["probability"]) for row in rows} == {POSITIVE}
    raw = output.read_text(encoding="utf-8")
    assert "\n'-2 stars," in raw and "\n''plain' and dull," in raw  # never a formula


def test_printed_output_is_todays_for_a_handful_of_texts(runner, text_exports):
    model = text_exports["sentiment"]
    texts = ["good", "bad", "éh good"]
    source, task, results = predict_lib.predict(None, texts, model_path=model, top_k=2)
    result = invoke(runner, "predict", *texts, "--model", model, "--trusted", "--top-k", 2)
    assert result.stdout.splitlines() == [f"Model: {source}",
                                          *(task.prediction_line(*r) for r in results)]
    result = invoke(runner, "predict", *texts, "--model", model, "--trusted", "--top-k", 2,
                    "--json")
    assert result.stdout == json.dumps([task.prediction_record(*r) for r in results],
                                       indent=2) + "\n"
    result = invoke(runner, "predict", *texts, "--model", model, "--json", "--output", "x.csv")
    assert result.exit_code == 2 and "--output and --json" in result.output


def test_translator_table_holds_inputs_and_translations(runner, text_exports, tmp_path):
    lines = ["How are you?", "I am fine.", "=1+1"]
    source = tmp_path / "sentences.txt"
    source.write_text("\n".join(lines) + "\n")
    output = tmp_path / "translations.tsv"
    result = invoke(runner, "predict", "--file", source, "--model", text_exports["translator"],
                    "--trusted", "--output", output)
    assert result.exit_code == 0, result.output
    assert tables.read_rows(output, delimiter="\t") == \
        [{"input": line, "translation": line.upper()} for line in lines]


def test_results_are_read_and_predicted_one_batch_at_a_time(text_exports, tmp_path):
    folder = tmp_path / "texts"
    folder.mkdir()
    for i in range(5):
        (folder / f"{i}.txt").write_text("good" if i % 2 else "bad")
    progress = []
    _, _, results = predict_lib.predict(None, predict_lib.Inputs([folder]),
                                        model_path=text_exports["sentiment"], batch_size=2,
                                        progress=lambda done, total: progress.append(done))
    first_batch = [next(results), next(results)]
    assert progress == []  # nothing of the next batch read yet
    (folder / "4.txt").write_text("good now")  # read only when its batch comes
    rest = list(results)
    assert progress == [2, 4, 5]
    labels = [prediction[0][0] for _, prediction in first_batch + rest]
    assert labels == ["negative", "positive", "negative", "positive", "positive"]


def test_an_empty_folder_is_one_line(runner, text_exports, tmp_path):
    (tmp_path / "empty").mkdir()
    result = invoke(runner, "predict", tmp_path / "empty", "--model", text_exports["sentiment"],
                    "--trusted")
    assert result.exit_code == 1
    assert result.output.strip() == \
        f"Error: {tmp_path / 'empty'}: no inputs in this folder (looked for .txt files)"


def test_a_table_written_row_by_row_is_complete_or_absent(tmp_path):
    path = tmp_path / "t.csv"
    with pytest.raises(RuntimeError):
        with tables.writing_rows(path) as write_row:
            write_row(["input", "label"])
            write_row(["=x", "a"])
            raise RuntimeError("stopped midway")
    assert list(tmp_path.iterdir()) == []
    with tables.writing_rows(path) as write_row:
        write_row(["input", "label"])
        write_row(["=x", 0.5])
    assert tables.read_rows(path) == [{"input": "=x", "label": "0.5"}]
