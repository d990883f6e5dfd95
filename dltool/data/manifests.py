"""Image manifests: a CSV or TSV file of `path,label` rows instead of class folders.

    path,label,split
    photos/cat-001.jpg,cat,train
    /data/shared/dog-17.png,dog,test

A header names the columns: `path` and `label`, and optionally `split`
(`train`, `val` or `validation`, `test`; rows without it, or with it empty,
are training rows, and `data.validation_split` then holds some out as for
folders). Relative paths are relative to the manifest's folder. The class
names are the training rows' labels, sorted.

For multi-label data (`data.multi_label = true`) the label cell holds the
example's labels separated by `data.label_separator` (`cat;dog`), read by
`dltool.data.splits.parse_labels`.

This module reads the manifest; `dltool.data.images` checks the images (the
same preflight as for folders) and makes the datasets.
"""

import csv
from pathlib import Path

from dltool.core.errors import DataError
from dltool.data.lines import read_lines
from dltool.data.splits import parse_labels

# A delimited file's delimiter, by suffix: manifests, and the text templates'
# TSV/CSV sources (`text.DELIMITED_SUFFIXES`).
DELIMITERS = {".tsv": "\t", ".csv": ","}
_SPLITS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_COLUMNS = ("path", "label")


def is_manifest(path):
    """Whether a `data.source` path names a manifest (a .csv or .tsv file)."""
    return Path(path).suffix.lower() in DELIMITERS


def read_manifest(path, skip_bad=False, report=None, separator=None, declared=None):
    """Reads a manifest's rows into splits of `(image path, label name)`.

    Args:
        path: The `.csv` (comma) or `.tsv` (tab) file.
        skip_bad: Skip rows whose image file is missing (named in `report`)
            instead of failing.
        report: A list that gets lines to show (skipped rows).
        separator: For multi-label data, what separates the labels of a
            label cell; None for one label per row.
        declared: The labels allowed (`data.labels` of multi-label data), or
            None: those of the training rows.

    Returns:
        A dict of split name (`train`, and `val` or `test` when rows name
        them) to a list of `(path string, label name)`; with `separator`,
        `(path string, tuple of label names)`.

    Raises:
        DataError: a missing, unreadable or empty file, a header without `path` or
            `label` (the columns found are listed), a row with too few
            fields, an empty label, an unknown split, a missing image or a
            label no training row has (file and line each), or no training
            rows.
    """
    report = [] if report is None else report
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data manifest {path} does not exist")
    lines = read_lines(path, skip_bad, report)
    delimiter = DELIMITERS[path.suffix.lower()]
    reader = csv.reader((line for _, line in lines), delimiter=delimiter)
    try:
        rows = [(lines[reader.line_num - 1][0], [f.strip() for f in row]) for row in reader
                if any(field.strip() for field in row)]
    except csv.Error as e:
        raise DataError(f"{path}:{lines[reader.line_num - 1][0]}: {e}") from e
    if not rows:
        raise DataError(f"{path} is empty")
    header = [name.lower() for name in rows[0][1]]
    if not set(_COLUMNS) <= set(header):
        raise DataError(f"{path}:1: a manifest's header names the columns path and label "
                        f"(and optionally split); found {', '.join(header) or 'nothing'}")
    index = {name: header.index(name) for name in (*_COLUMNS, "split") if name in header}
    splits, missing = {}, []
    for number, row in rows[1:]:
        where = f"{path}:{number}"
        if len(row) <= max(index["path"], index["label"]):
            raise DataError(f"{where}: expected the fields {', '.join(header)}; got {len(row)}")
        image, label = row[index["path"]], row[index["label"]]
        given = row[index["split"]].lower() if "split" in index and index["split"] < len(row) \
            else ""
        if separator is not None:
            label = parse_labels(label, separator, where)
        elif not label:
            raise DataError(f"{where}: empty label")
        if given and given not in _SPLITS:
            raise DataError(f"{where}: split {given!r} is not one of "
                            f"{', '.join(_SPLITS)} (or empty: train)")
        file = Path(image).expanduser()
        file = file if file.is_absolute() else path.parent / file
        if not file.is_file():
            missing.append((where, file))
            continue
        splits.setdefault(_SPLITS[given or "train"], []).append((str(file), label, where))
    if missing and not skip_bad:
        where, file = missing[0]
        more = f" ({len(missing)} such rows)" if len(missing) > 1 else ""
        raise DataError(f"{where}: no image file {file}{more}; fix the manifest or pass "
                        "--skip-bad")
    if missing:
        report.append(f"skipped {len(missing)} row(s) of {path.name} whose image file is "
                      "missing (--skip-bad)")
    if "train" not in splits:
        raise DataError(f"{path} has no training rows (split empty or train)")
    names = (lambda label: label) if separator is not None else (lambda label: (label,))
    labels = {name for _, label, _ in splits["train"] for name in names(label)}
    for split, entries in splits.items():
        unknown = next(((name, where) for _, label, where in entries for name in names(label)
                        if name not in (labels if declared is None else declared)), None)
        if unknown is not None and declared is not None:
            raise DataError(f"{unknown[1]}: label {unknown[0]!r} is not one of data.labels "
                            f"({', '.join(declared)})")
        if unknown is not None:
            raise DataError(f"{unknown[1]}: label {unknown[0]!r} of a {split} row has no "
                            f"training rows (labels: {', '.join(sorted(labels))})")
    return {split: [(file, label) for file, label, _ in entries]
            for split, entries in splits.items()}
