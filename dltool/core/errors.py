"""Errors dltool raises for bad input.

Every error here carries a one-line message meant for the user. The CLI turns
them into `click.ClickException` so they print as one line with a non-zero
exit code and no traceback.
"""


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
