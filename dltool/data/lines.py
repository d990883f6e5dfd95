"""Reading a UTF-8 text file line by line, each bad line named by its number.

The text, parallel-text and image-manifest readers all read their files
through `read_lines`. This module never imports TensorFlow.
"""

from pathlib import Path

from dltool.core.errors import DataError


def read_lines(path, skip_bad, report):
    """Reads a UTF-8 text file as a list of `(line_number, line)`.

    A byte order mark is dropped; see `decode_lines` for undecodable lines.

    Raises:
        DataError: unreadable or empty file; undecodable bytes (file and
            line) unless `skip_bad`.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: unreadable: {e.strerror}") from e
    if not raw.strip():
        raise DataError(f"{path} is empty")
    return decode_lines(path, raw.removeprefix(b"\xef\xbb\xbf"), skip_bad, report)


def decode_lines(path, raw, skip_bad, report, hint="fix the file or pass --skip-bad"):
    """Decodes `raw` line by line as UTF-8.

    Returns:
        A list of `(line_number, line)`, line endings kept.
    """
    lines, bad = [], []
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            lines.append((number, line.decode("utf-8")))
        except UnicodeDecodeError as e:
            bad.append((number, e.start))
    if bad and not skip_bad:
        number, column = bad[0]
        more = f" ({len(bad)} such lines)" if len(bad) > 1 else ""
        raise DataError(f"{path}:{number}: bytes that are not UTF-8 at column {column + 1}"
                        f"{more}; {hint}")
    if bad:
        report.append(f"skipped {len(bad)} line(s) of {path.name} that are not UTF-8 "
                      "(--skip-bad)")
    return lines
