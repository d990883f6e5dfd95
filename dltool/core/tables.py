"""Tables people open in a spreadsheet: the CSV and TSV files dltool writes.

A spreadsheet reads a cell that starts with `=`, `+`, `-`, `@`, a tab or a
carriage return as a formula, and a formula can run commands or send data
away (CSV injection). The inputs and labels in dltool's tables come from the
user's data, which may come from someone else, so every text cell that starts
like that is written with a leading apostrophe, as OWASP recommends
(owasp.org/www-community/attacks/CSV_Injection); a cell that starts with an
apostrophe gets one more, so `plain_cell` gives back exactly what was
written. Numbers are written as numbers.

This module never imports TensorFlow.
"""

import contextlib
import csv
import io

from dltool.core import files

# What makes a spreadsheet read a cell as a formula (OWASP's list).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
_QUOTE = "'"


def safe_cell(value):
    """Returns `value` as a spreadsheet shows it as text, never as a formula.

    Args:
        value: A cell: text, a number or None.

    Returns:
        `value` unchanged, or for text starting with a formula character or
        an apostrophe, the text with an apostrophe in front.
    """
    if isinstance(value, str) and value.startswith((*FORMULA_STARTS, _QUOTE)):
        return _QUOTE + value
    return value


def plain_cell(text):
    """Undoes `safe_cell` on a cell read back from a table dltool wrote."""
    return text[1:] if text.startswith(_QUOTE) else text


def format_rows(rows, delimiter=","):
    """Formats rows as CSV text (TSV with `delimiter="\\t"`), each text cell
    through `safe_cell`.

    Args:
        rows: Lists of cells, the header first.
        delimiter: The field separator.

    Returns:
        The table's text, lines ending in `\\n`.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\n")
    writer.writerows([safe_cell(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def write_rows(path, rows, delimiter=","):
    """Writes rows as a CSV (or TSV) file atomically; see `format_rows`."""
    with writing_rows(path, delimiter) as write_row:
        for row in rows:
            write_row(row)


@contextlib.contextmanager
def writing_rows(path, delimiter=","):
    """Writes a CSV (or TSV) file atomically, one row at a time.

    For tables too long to hold in memory (`dltool predict --output`): the
    rows go to a temporary file beside `path` as they come (`files.replacing`),
    which becomes `path` only when the block ends without an error, so the
    file is complete or absent. Cells are written as `format_rows` writes them.

    Args:
        path: The file to write.
        delimiter: The field separator.

    Yields:
        A function that writes one row (a list of cells; the header first).
    """
    with files.replacing(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter, lineterminator="\n")
        yield lambda row: writer.writerow([safe_cell(cell) for cell in row])


def read_rows(path, delimiter=","):
    """Reads a table `write_rows` wrote.

    Args:
        path: The file.
        delimiter: The field separator it was written with.

    Returns:
        A list of dicts, one per row, keyed by the header, each cell as it
        was before `safe_cell`.

    Raises:
        OSError: the file cannot be read.
        csv.Error: it is not a readable table.
    """
    with open(path, newline="", encoding="utf-8") as f:
        return [{plain_cell(k): plain_cell(v or "") for k, v in row.items() if k is not None}
                for row in csv.DictReader(f, delimiter=delimiter)]
