"""Errors dltool raises for bad input.

Every error here carries a one-line message meant for the user. The CLI turns
them into `click.ClickException` so they print as one line with a non-zero
exit code and no traceback.
"""

import re


class DltoolError(Exception):
    """Base class of every user-facing dltool error."""


class TemplateError(DltoolError):
    """Unknown template, invalid project name, unsafe template content."""


class DestinationExistsError(TemplateError):
    """The destination of `dltool new` already exists."""


class ConfigError(DltoolError):
    """Unknown or invalid key in a project's config."""


class DataError(DltoolError):
    """Missing, empty or corrupt data."""


class ModelFileError(DltoolError):
    """A model file that is missing, corrupt or unsafe to load."""


class ProjectError(DltoolError):
    """Not a dltool project, or a step run before the one it needs."""


class StorageError(DltoolError):
    """A folder a command writes to cannot take the write: read-only, full, or
    not ours to write (the message names the folder and the reason)."""


class ReportedError(DltoolError):
    """A child process failed and has already printed why.

    Args:
        exit_code: The child's exit code, for the CLI to exit with.
    """

    def __init__(self, exit_code):
        super().__init__(f"a child process exited with code {exit_code}")
        self.exit_code = exit_code


def op_message(message, default="not accepted"):
    """The op's own words in a TensorFlow error message, one line.

    An eager op's error reads `{{function_node NAME}} WORDS [Op:NAME]`; a
    graph's starts with `Graph execution error:` and the node's stack and
    ends with the op's words, then `[[{{node NAME}}]]`. Both give WORDS
    (`jpeg::Uncompress failed. Invalid JPEG data or crop window.`), at most
    120 characters.

    Args:
        message: The error's message (`tf.errors.OpError.message`).
        default: What to return when there are no words.
    """
    lines = [line.strip() for line in str(message).splitlines()]
    words = [line for line in lines if line and not line.startswith(("[[", "<"))]
    text = words[-1] if words else ""
    if text.startswith("{{function_node"):
        text = text.split("}}", 1)[-1].strip()
    text = re.sub(r"\s*\[Op:[^\]]*\]$", "", text).strip()
    return (text or default)[:120]
